/* Handing a routed packet to a local endpoint: the hop a router makes (TTL/hop limit lowered, the
 * IPv4 checksum kept right) and the Ethernet header rewritten to the pod's MAC from its gateway's
 * (the host-side veth). Shared by the pod programs (redirect_peer to a pod on the same node) and
 * the node's programs that deliver what arrives from other nodes (bpf_host.c, bpf_overlay.c). */
#pragma once

#include "common.h"
#include "drop_reasons.h"
#include "endpoints.h"
#include "parse.h"

/* A pod's reply (or related ICMP error) handed to the node's stack carries this mark, and the
 * node's masquerade rule skips marked packets (cilia.netlink.node): the node's programs deliver
 * to pods without netfilter (bpf_host.c, bpf_overlay.c), so netfilter never saw the request and
 * would take the reply for a new connection to masquerade. A pod's own connections stay
 * masqueraded. Distinct from the service mark (0x0c1a high half, lib/lb.h). */
#define REPLY_MARK 0x0c1b0000

/* The router's hop by bpf_skb_* helpers: TTL (IPv4, checksum kept right) or hop limit lowered by
 * one. Returns 0, or the DROP_* reason the caller reports. */
__always_inline_fn int ttl_decrement(struct __sk_buff *ctx, const struct pkt *p)
{
	if (p->t.family == AF_INET_) {
		/* ttl shares a 16-bit word with protocol: fix the checksum for that word */
		__u32 off = ETH_HLEN_ + offsetof(struct iphdr, ttl);
		__u16 old_word, new_word;
		if (bpf_skb_load_bytes(ctx, off, &old_word, 2) < 0)
			return DROP_INVALID_PACKET;
		__u8 ttl = p->ttl - 1;
		new_word = old_word;
		((__u8 *)&new_word)[0] = ttl;
		if (bpf_l3_csum_replace(ctx, ETH_HLEN_ + offsetof(struct iphdr, check), old_word, new_word, 2) < 0 ||
		    bpf_skb_store_bytes(ctx, off, &ttl, 1, 0) < 0)
			return DROP_INVALID_PACKET;
	} else {
		__u8 hop = p->ttl - 1;
		if (bpf_skb_store_bytes(ctx, ETH_HLEN_ + offsetof(struct ipv6hdr, hop_limit), &hop, 1, 0) < 0)
			return DROP_INVALID_PACKET;
	}
	return 0;
}

/* The same hop by direct packet access, and the Ethernet addresses (`macs`: destination then
 * source, 12 bytes; NULL: left as they are): false when the IP header is not in the linear part
 * (nothing written then). The IPv4 checksum is updated incrementally for the TTL's word (RFC 1624),
 * as the kernel's own forwarding does. */
__always_inline_fn bool route_hop_direct(struct __sk_buff *ctx, const struct pkt *p, const __u8 *macs)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (p->t.family == AF_INET_) {
		struct iphdr *ip = data + ETH_HLEN_;
		if ((void *)(ip + 1) > data_end || ip->ttl != p->ttl)
			return false;
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl = p->ttl - 1;
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN_;
		if ((void *)(ip6 + 1) > data_end)
			return false;
		ip6->hop_limit = p->ttl - 1;
	}
	if (macs)
		__builtin_memcpy(data, macs, 12);
	return true;
}

/* The router's hop: TTL or hop limit lowered by one and, when `macs` is given, the Ethernet header
 * rewritten. Returns 0, or the DROP_* reason the caller reports.
 *
 * A program that writes the packet directly gets the verifier's unclone prologue: every cloned skb
 * it sees is made writable first (bpf_skb_pull_data), whatever path it then takes. A pod's TCP
 * packets reach its from-container program as TCP's clones, and most of them (to the tunnel, up the
 * stack) are never written there, so bpf_lxc.c defines FORWARD_HELPERS_ONLY and writes through the
 * helpers, which copy only when they do write. The node's programs see the wire's packets. */
__always_inline_fn int route_hop(struct __sk_buff *ctx, const struct pkt *p, const __u8 *macs)
{
	if (p->ttl <= 1)
		return DROP_TTL_EXCEEDED;
#ifndef FORWARD_HELPERS_ONLY
	if (route_hop_direct(ctx, p, macs))
		return 0;
#endif
	int reason = ttl_decrement(ctx, p);
	if (reason)
		return reason;
	if (macs && bpf_skb_store_bytes(ctx, 0, macs, 12, 0) < 0)
		return DROP_INVALID_PACKET;
	return 0;
}

/* Returns 0, or the DROP_* reason the caller reports. */
__always_inline_fn int forward_to_endpoint(struct __sk_buff *ctx, const struct pkt *p, const struct endpoint_info *ep)
{
	__u8 macs[12];
	__builtin_memcpy(macs, ep->mac, 6);
	__builtin_memcpy(macs + 6, ep->lxc_mac, 6);
	return route_hop(ctx, p, macs);
}
