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
 * No listener (the proxy is down): the caller drops with DROP_PROXY_UNAVAILABLE. IPv4 and IPv6
 * (one listener each, on PROXY_PORT). */
#pragma once

#include "common.h"
#include "parse.h"

#define PROXY_PORT 15001
#define PROXY_MARK_MASK 0xff000000
#define PROXY_MARK_TO 0xc3000000   /* up the stack to a proxy socket */
#define PROXY_MARK_FROM 0xc2000000 /* sent by the proxy; low 24 bits: the client's identity */

/* Returns 0 when the packet is assigned to a proxy socket (then pass it with TC_ACT_OK). */
__always_inline_fn int proxy_redirect(struct __sk_buff *ctx, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size;

	if (p->t.proto != IPPROTO_TCP)
		return -1;
	if (p->t.family == AF_INET_) {
		t.ipv4.saddr = p->t.saddr.w[3];
		t.ipv4.daddr = p->t.daddr.w[3];
		t.ipv4.sport = p->t.sport;
		t.ipv4.dport = p->t.dport;
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->t.saddr.w, 16);
		__builtin_memcpy(t.ipv6.daddr, p->t.daddr.w, 16);
		t.ipv6.sport = p->t.sport;
		t.ipv6.dport = p->t.dport;
		size = sizeof(t.ipv6);
	}
	sk = bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk); /* somebody's listener on the real port: not the proxy */
		sk = 0;
	}
	if (!sk) {
		if (p->t.family == AF_INET_)
			t.ipv4.dport = bpf_htons(PROXY_PORT);
		else
			t.ipv6.dport = bpf_htons(PROXY_PORT);
		sk = bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return -1;
		}
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	ctx->mark = PROXY_MARK_TO;
	return 0;
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
	struct bpf_sock *sk = 0;
	__u32 size;
	int v4 = p->t.family == AF_INET_;

	if (v4) {
		t.ipv4.saddr = p->t.saddr.w[3];
		t.ipv4.daddr = p->t.daddr.w[3];
		t.ipv4.sport = p->t.sport;
		t.ipv4.dport = bpf_htons(DNS_PROXY_PORT);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->t.saddr.w, 16);
		__builtin_memcpy(t.ipv6.daddr, p->t.daddr.w, 16);
		t.ipv6.sport = p->t.sport;
		t.ipv6.dport = bpf_htons(DNS_PROXY_PORT);
		size = sizeof(t.ipv6);
	}
	if (p->t.proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
	} else if (p->t.proto == IPPROTO_TCP) {
		if (v4)
			t.ipv4.dport = p->t.dport;
		else
			t.ipv6.dport = p->t.dport;
		sk = bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->state == BPF_TCP_LISTEN) {
			bpf_sk_release(sk); /* a listener on the real port in the node: not the proxy */
			sk = 0;
		}
		if (!sk) {
			if (v4)
				t.ipv4.dport = bpf_htons(DNS_PROXY_PORT);
			else
				t.ipv6.dport = bpf_htons(DNS_PROXY_PORT);
			sk = bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
			if (!sk)
				return -1;
			if (sk->state != BPF_TCP_LISTEN) {
				bpf_sk_release(sk);
				return -1;
			}
		}
	} else {
		return -1;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	ctx->mark = PROXY_MARK_TO;
	return 0;
}
