/* Address and port rewriting for the per-packet service path (DNAT to a backend, reverse NAT of
 * its replies), with the IPv4 header and TCP/UDP checksums kept right. The kernel helpers handle
 * CHECKSUM_PARTIAL packets (offloaded checksums, what pods usually send). */
#pragma once

#include "common.h"
#include "parse.h"

#define NAT_SRC 0
#define NAT_DST 1

__always_inline_fn int nat_l4_csum_off(const struct pkt *p, __u32 *off, __u64 *flags)
{
	if (p->t.proto == IPPROTO_TCP) {
		*off = p->l4_off + offsetof(struct tcphdr, check);
		*flags = 0;
		return 0;
	}
	if (p->t.proto == IPPROTO_UDP) {
		*off = p->l4_off + offsetof(struct udphdr, check);
		*flags = BPF_F_MARK_MANGLED_0; /* an IPv4 UDP checksum of 0 means none: keep it so */
		return 0;
	}
	return -1;
}

/* Rewrite the source or destination address and L4 port of the packet and of p->t. */
__always_inline_fn int nat_rewrite(struct __sk_buff *ctx, struct pkt *p, int which, const union addr16 *addr,
				   __be16 port)
{
	__u32 csum_off;
	__u64 csum_flags;
	if (nat_l4_csum_off(p, &csum_off, &csum_flags) < 0)
		return -1;
	union addr16 *cur_addr = which == NAT_DST ? &p->t.daddr : &p->t.saddr;
	__be16 *cur_port = which == NAT_DST ? &p->t.dport : &p->t.sport;
	if (p->t.family == AF_INET_) {
		__be32 old = cur_addr->w[3], new = addr->w[3];
		__u32 addr_off = ETH_HLEN_ + (which == NAT_DST ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
		if (old != new) {
			if (bpf_l4_csum_replace(ctx, csum_off, old, new, csum_flags | BPF_F_PSEUDO_HDR | 4) < 0 ||
			    bpf_l3_csum_replace(ctx, ETH_HLEN_ + offsetof(struct iphdr, check), old, new, 4) < 0 ||
			    bpf_skb_store_bytes(ctx, addr_off, &new, 4, 0) < 0)
				return -1;
		}
	} else {
		union addr16 old = *cur_addr, new = *addr;
		__u32 addr_off =
			ETH_HLEN_ + (which == NAT_DST ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		__s64 diff = bpf_csum_diff(old.w, 16, new.w, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(ctx, csum_off, 0, diff, csum_flags | BPF_F_PSEUDO_HDR) < 0 ||
		    bpf_skb_store_bytes(ctx, addr_off, new.b, 16, 0) < 0)
			return -1;
	}
	*cur_addr = *addr;
	if (*cur_port != port) {
		__u32 port_off = p->l4_off + (which == NAT_DST ? 2 : 0);
		if (bpf_l4_csum_replace(ctx, csum_off, *cur_port, port, csum_flags | 2) < 0 ||
		    bpf_skb_store_bytes(ctx, port_off, &port, 2, 0) < 0)
			return -1;
		*cur_port = port;
	}
	return 0;
}
