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

/* The router's hop by direct packet access: TTL or hop limit lowered by one, and the Ethernet addresses (`macs`: destination then
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

/* The same hop through the helpers, in one write: the Ethernet header and the IP header's first
 * words (through the IPv4 checksum; for IPv6 through the hop limit and the start of the source
 * address, rewritten unchanged) are read (directly when linear), changed on the stack and stored
 * back by one bpf_skb_store_bytes, which makes a clone's header writable only then. One helper
 * call where a load, a checksum replace and two stores were four: each is a call and a return,
 * costly with the CPU's return-stack mitigation, on every packet of the native path (lib/fib.h).
 * The IPv4 checksum is updated incrementally as in route_hop_direct. */
#define HOP_SPAN (ETH_HLEN_ + 12) /* through the IPv4 header checksum; inside any IPv6 header */

__always_inline_fn int route_hop_helpers(struct __sk_buff *ctx, const struct pkt *p, const __u8 *macs)
{
	__u8 buf[HOP_SPAN];
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + HOP_SPAN <= data_end)
		__builtin_memcpy(buf, data, HOP_SPAN);
	else if (bpf_skb_load_bytes(ctx, 0, buf, HOP_SPAN) < 0)
		return DROP_INVALID_PACKET;
	if (p->t.family == AF_INET_) {
		struct iphdr *ip = (struct iphdr *)(buf + ETH_HLEN_);
		if (ip->ttl != p->ttl)
			return DROP_INVALID_PACKET;
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl = p->ttl - 1;
	} else {
		struct ipv6hdr *ip6 = (struct ipv6hdr *)(buf + ETH_HLEN_);
		ip6->hop_limit = p->ttl - 1;
	}
	if (macs)
		__builtin_memcpy(buf, macs, 12);
	if (bpf_skb_store_bytes(ctx, 0, buf, HOP_SPAN, 0) < 0)
		return DROP_INVALID_PACKET;
	return 0;
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
	return route_hop_helpers(ctx, p, macs);
}

/* Returns 0, or the DROP_* reason the caller reports. */
__always_inline_fn int forward_to_endpoint(struct __sk_buff *ctx, const struct pkt *p, const struct endpoint_info *ep)
{
	__u8 macs[12];
	__builtin_memcpy(macs, ep->mac, 6);
	__builtin_memcpy(macs + 6, ep->lxc_mac, 6);
	return route_hop(ctx, p, macs);
}
