/* Forwarding a pod's packet to another node without the node's IP stack (native routing; what
 * Cilium calls BPF host routing): the route comes from a FIB lookup made as the kernel's forwarding
 * path makes it (on the ingress device, so the node's routes and forwarding settings decide), in
 * the main table (see fib_forward: the node's policy rules are not walked), the
 * hop is a router's (TTL lowered, MACs of the next hop) and the packet is redirected straight to the
 * egress device. It skips the node's netfilter (PREROUTING/FORWARD/POSTROUTING, and so netfilter
 * conntrack), which is why bpf_lxc.c uses it only where netfilter would do nothing to the packet:
 * destinations the ipcache flags IPCACHE_F_NATIVE (remote pods inside a native-routing CIDR, never
 * masqueraded). */
#pragma once

#include "common.h"
#include "forward.h"
#include "parse.h"

/* Marks a packet a pod's program sent straight to a device (this FIB path, or the tunnel): the
 * underlay's egress program (bpf_host.c cil_to_netdev) has nothing to reverse-translate in it.
 * Distinct from the service (0x0c1a), reply (0x0c1b) and identity (0xc1) marks. */
#define DIRECT_MARK 0x0c1c0000

#define FIB_FALLBACK 1 /* hand the packet to the stack: no route, no forwarding, TTL, MTU, ... */

/* Returns a tc verdict (the redirect) with the egress ifindex in *oif, FIB_FALLBACK when the
 * node's stack must handle the packet (untouched: it generates the ICMP errors, fragments, resolves
 * what the lookup could not), or <0 (a DROP_* reason, negated) when the packet could not be written. */
__always_inline_fn int fib_forward(struct __sk_buff *ctx, const struct pkt *p, __u32 *oif)
{
	struct bpf_fib_lookup fib = {};
	if (p->ttl <= 1)
		return FIB_FALLBACK; /* the stack answers with Time Exceeded */
	fib.ifindex = ctx->ifindex;
	fib.l4_protocol = p->t.proto;
	fib.sport = p->t.sport;
	fib.dport = p->t.dport;
	if (p->t.family == AF_INET_) {
		fib.family = AF_INET_;
		fib.ipv4_src = p->t.saddr.w[3];
		fib.ipv4_dst = p->t.daddr.w[3];
	} else {
		fib.family = AF_INET6_;
		__builtin_memcpy(fib.ipv6_src, p->t.saddr.w, 16);
		__builtin_memcpy(fib.ipv6_dst, p->t.daddr.w, 16);
	}
	/* tot_len 0: the kernel checks the packet (GSO included) against the egress MTU itself.
	 * BPF_FIB_LOOKUP_DIRECT: the main table, where the agent routes the other nodes' pod CIDRs
	 * (cilia.netlink.routes), without walking the node's policy rules. The node has one rule of
	 * its own, the L7 proxy's fwmark rule (cilia.proxy.transparent), which a lookup with mark 0
	 * never matches, yet its presence alone sends every full lookup through the rules (the local
	 * table, the fwmark rule, then main): about a third of the lookup's cost. A destination the
	 * main table does not route (e.g. one that only a policy rule's table routes) is not
	 * forwarded here: it falls back to the node's stack, whose routing consults every rule. Given
	 * up: a policy rule that would send a pod CIDR the main table routes somewhere else. */
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return FIB_FALLBACK;
	*oif = fib.ifindex;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__u8 macs[12];
		__builtin_memcpy(macs, fib.dmac, 6);
		__builtin_memcpy(macs + 6, fib.smac, 6);
		int reason = route_hop(ctx, p, macs);
		if (reason)
			return -reason;
		ctx->mark = DIRECT_MARK;
		return (int)bpf_redirect(fib.ifindex, 0);
	}
	int reason = route_hop(ctx, p, NULL);
	if (reason)
		return -reason;
	ctx->mark = DIRECT_MARK;
	/* the next hop's neighbour entry is not resolved yet: the kernel resolves it and fills L2 */
	struct bpf_redir_neigh nh = {};
	if (p->t.family == AF_INET_) {
		nh.nh_family = AF_INET_;
		nh.ipv4_nh = fib.ipv4_dst; /* the lookup replaced the destination by the gateway */
	} else {
		nh.nh_family = AF_INET6_;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	}
	return (int)bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}
