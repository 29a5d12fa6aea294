/* The node-local L7 proxy (cilia-proxy, src/cilia/proxy/): handing it a connection and taking
 * its upstream packets back.
 *
 *   to the proxy    from-container of the client: a connection whose destination's ingress entry
 *                   says VERDICT_REDIRECT is assigned (bpf_sk_assign) to the proxy's socket: the
 *                   established one for its tuple, else the IP_TRANSPARENT listener on PROXY_PORT.
 *                   The packet goes up the node's stack marked PROXY_MARK_TO, which the proxy's
 *                   policy route (fwmark -> table PROXY_ROUTE_TABLE: local default dev lo)
 *                   delivers locally although the destination is the server's address.
 *   from the proxy  the proxy connects to the server from the client's address (IP_TRANSPARENT)
 *                   with SO_MARK = PROXY_MARK_FROM | client identity: the server's to-container
 *                   judges the client's identity and records the connection with
 *                   LB_CONN_F_PROXY_UPSTREAM, so the server's replies go up the stack with
 *                   PROXY_MARK_TO (to the proxy's socket), not to the client pod.
 *   hairpin         a connection that meets the server's cil_to_container at its veth's egress
 *                   (from the node's own stack), where bpf_sk_assign refuses, is redirected to the
 *                   same veth's ingress marked PROXY_MARK_HAIRPIN | client identity and assigned
 *                   there by cil_from_container (bpf_lxc.c from_container_hairpin).
 * No listener (the proxy is down): the caller drops with DROP_PROXY_UNAVAILABLE. IPv4 and IPv6
 * (one listener each, on PROXY_PORT). */
#pragma once

#include "common.h"
#include "parse.h"

#define PROXY_PORT 15001
#define PROXY_MARK_MASK 0xff000000
#define PROXY_MARK_TO 0xc3000000   /* up the stack to a proxy socket */
#define PROXY_MARK_FROM 0xc2000000 /* sent by the proxy; low 24 bits: the client's identity */
#define PROXY_MARK_HAIRPIN 0xc4000000 /* to a veth's ingress, to be assigned there; low 24 bits: the client's identity */

/* The tuple of the packet as the socket lookups take it (saddr: the remote end, daddr: the local
 * socket's), and where its destination port is (the listener lookups replace it). Returns its size. */
__always_inline_fn __u32 proxy_tuple(const struct pkt *p, struct bpf_sock_tuple *t, __be16 **dport)
{
	if (p->t.family == AF_INET_) {
		t->ipv4.saddr = p->t.saddr.w[3];
		t->ipv4.daddr = p->t.daddr.w[3];
		t->ipv4.sport = p->t.sport;
		t->ipv4.dport = p->t.dport;
		*dport = &t->ipv4.dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->t.saddr.w, 16);
	__builtin_memcpy(t->ipv6.daddr, p->t.daddr.w, 16);
	t->ipv6.sport = p->t.sport;
	t->ipv6.dport = p->t.dport;
	*dport = &t->ipv6.dport;
	return sizeof(t->ipv6);
}

/* The proxy's TCP socket for the packet: the established (or request) socket of its tuple, else
 * the proxy's listener on `port`. A listener on the packet's own port is somebody else's (a
 * server in the node), never the proxy's. NULL when there is none; the caller releases the rest. */
__always_inline_fn struct bpf_sock *proxy_lookup_tcp(struct __sk_buff *ctx, struct bpf_sock_tuple *t, __u32 size,
						     __be16 *dport, __u16 port)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(ctx, t, size, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		sk = 0;
	}
	if (sk)
		return sk;
	*dport = bpf_htons(port);
	sk = bpf_skc_lookup_tcp(ctx, t, size, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return 0;
	}
	return sk;
}

/* Whether the proxy has a socket for the packet (its connection's, or the listener), where it
 * cannot be assigned (a veth's egress, before the hairpin to its ingress). */
__always_inline_fn bool proxy_has_socket(struct __sk_buff *ctx, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	__be16 *dport;

	if (p->t.proto != IPPROTO_TCP)
		return false;
	__u32 size = proxy_tuple(p, &t, &dport);
	struct bpf_sock *sk = proxy_lookup_tcp(ctx, &t, size, dport, PROXY_PORT);
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return true;
}

/* Hand the packet to `sk` (a reference the caller looked up; released here) and up the node's
 * stack to it. Returns 0, or -1 when the kernel refused (not at a device's ingress). */
__always_inline_fn int proxy_assign(struct __sk_buff *ctx, struct bpf_sock *sk)
{
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	ctx->mark = PROXY_MARK_TO;
	return 0;
}

/* Returns 0 when the packet is assigned to a proxy socket (then pass it with TC_ACT_OK). Only at a
 * device's tc ingress (a pod's from-container, or an endpoint's program tail-called from bpf_host /
 * bpf_overlay): bpf_sk_assign refuses anywhere else. */
__always_inline_fn int proxy_redirect(struct __sk_buff *ctx, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	__be16 *dport;

	if (p->t.proto != IPPROTO_TCP)
		return -1;
	__u32 size = proxy_tuple(p, &t, &dport);
	struct bpf_sock *sk = proxy_lookup_tcp(ctx, &t, size, dport, PROXY_PORT);
	if (!sk)
		return -1;
	return proxy_assign(ctx, sk);
}

/* The node's DNS proxy (cilia-proxy, src/cilia/proxy/dns.py): a pod's DNS query (UDP or TCP) that
 * its egress entry says VERDICT_REDIRECT for is assigned to the proxy's IP_TRANSPARENT sockets on
 * DNS_PROXY_PORT (UDP: the one unconnected socket; TCP: the established socket of its tuple, else
 * the listener). The proxy learns the original destination (IP(V6)_RECVORIGDSTADDR / getsockname)
 * and answers from it; the reply reaches the pod as the reply of the connection the pod's
 * from-container recorded. It queries the real server itself, from the node's own address. */
#define DNS_PROXY_PORT 15053

/* Returns 0 when the packet is assigned to the DNS proxy (then pass it with TC_ACT_OK). IPv4 and
 * IPv6 (the proxy has a UDP socket and a TCP listener per family on DNS_PROXY_PORT). */
__always_inline_fn int proxy_redirect_dns(struct __sk_buff *ctx, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__be16 *dport;

	__u32 size = proxy_tuple(p, &t, &dport);
	if (p->t.proto == IPPROTO_UDP) {
		*dport = bpf_htons(DNS_PROXY_PORT);
		sk = bpf_sk_lookup_udp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	} else if (p->t.proto == IPPROTO_TCP) {
		sk = proxy_lookup_tcp(ctx, &t, size, dport, DNS_PROXY_PORT);
	} else {
		return -1;
	}
	if (!sk)
		return -1;
	return proxy_assign(ctx, sk);
}
