/* Packet parsing into one `struct pkt` summary: family, addresses, L4 ports and flags,
 * and for ICMP errors the tuple of the packet they quote. The common packet (IPv4 without options
 * or IPv6 without extension headers, carrying TCP or UDP, its headers in the skb's linear part) is
 * read by direct packet access, bounds-checked against data_end: one pass, no helper call per
 * header. Everything else (ICMP and its quoted packets, SCTP, options, extension headers, headers
 * beyond the linear part) takes bpf_skb_load_bytes into stack copies. Both fill `struct pkt` the
 * same way, so every stage sees the same validated, bounded data whichever read it. */
#pragma once

#include "common.h"

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_PSH 0x08
#define TCPF_ACK 0x10

struct tuple {
	union addr16 saddr;
	union addr16 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct pkt {
	struct tuple t;
	__u32 l3_off;
	__u32 l4_off;
	__u8 tcp_flags;
	__u8 ttl;
	__u8 icmp_type;
	__u8 is_icmp_error; /* t_inner holds the quoted packet's tuple */
	struct tuple t_inner;
};

/* ports of a TCP/UDP header or the ICMP echo id at `off`; returns <0 when truncated */
__always_inline_fn int parse_l4(struct __sk_buff *ctx, __u32 off, __u8 proto, struct tuple *t, __u8 *tcp_flags,
				__u8 *icmp_type, bool v6)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr th;
		if (bpf_skb_load_bytes(ctx, off, &th, sizeof(th)) < 0)
			return -1;
		t->sport = th.source;
		t->dport = th.dest;
		if (tcp_flags)
			*tcp_flags = ((__u8 *)&th)[13];
		return 0;
	}
	if (proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		/* SCTP's common header starts with the two ports, like UDP's */
		struct udphdr uh;
		if (bpf_skb_load_bytes(ctx, off, &uh, sizeof(uh)) < 0)
			return -1;
		t->sport = uh.source;
		t->dport = uh.dest;
		return 0;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		__u8 hdr[8];
		if (bpf_skb_load_bytes(ctx, off, hdr, sizeof(hdr)) < 0)
			return -1;
		__u8 type = hdr[0];
		__be16 id = *(__be16 *)&hdr[4];
		if (icmp_type)
			*icmp_type = type;
		/* Echo request and reply carry the id on opposite sides so the reply is the reverse tuple. */
		bool request = v6 ? type == ICMPV6_ECHO_REQUEST : type == ICMP_ECHO;
		bool reply = v6 ? type == ICMPV6_ECHO_REPLY : type == ICMP_ECHOREPLY;
		t->sport = request ? id : 0;
		t->dport = reply ? id : 0;
		return 0;
	}
	t->sport = 0;
	t->dport = 0;
	return 0;
}

__always_inline_fn bool icmp_is_error(__u8 type, bool v6)
{
	if (v6)
		return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG || type == ICMPV6_TIME_EXCEED ||
		       type == ICMPV6_PARAMPROB;
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/* TCP or UDP ports (and TCP's flags) at `l4` by direct access: false when the protocol is another
 * or the header is not all in the linear part (the caller then takes the load_bytes path). */
__always_inline_fn bool parse_l4_direct(void *l4, void *data_end, __u8 proto, struct pkt *p)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return false;
		p->t.sport = th->source;
		p->t.dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		return true;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return false;
		p->t.sport = uh->source;
		p->t.dport = uh->dest;
		return true;
	}
	return false;
}

/* IPv4 without options carrying TCP or UDP, by direct access: true when *p is filled as
 * parse_ipv4's load_bytes path would fill it. */
__always_inline_fn bool parse_ipv4_direct(struct __sk_buff *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN_;
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return false;
	__u8 proto = ip->protocol;
	if (!parse_l4_direct((void *)(ip + 1), data_end, proto, p))
		return false;
	p->t.family = AF_INET_;
	p->t.proto = proto;
	p->ttl = ip->ttl;
	addr_from_v4(&p->t.saddr, ip->saddr);
	addr_from_v4(&p->t.daddr, ip->daddr);
	p->l4_off = ETH_HLEN_ + sizeof(struct iphdr);
	return true;
}

/* IPv6 whose next header is TCP or UDP, by direct access (see parse_ipv4_direct). */
__always_inline_fn bool parse_ipv6_direct(struct __sk_buff *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN_;
	if ((void *)(ip6 + 1) > data_end)
		return false;
	__u8 proto = ip6->nexthdr;
	if (!parse_l4_direct((void *)(ip6 + 1), data_end, proto, p))
		return false;
	p->t.family = AF_INET6_;
	p->t.proto = proto;
	p->ttl = ip6->hop_limit;
	addr_from_v6(&p->t.saddr, &ip6->saddr);
	addr_from_v6(&p->t.daddr, &ip6->daddr);
	p->l4_off = ETH_HLEN_ + sizeof(struct ipv6hdr);
	return true;
}

__always_inline_fn int parse_ipv4(struct __sk_buff *ctx, struct pkt *p)
{
	struct iphdr ip;
	p->l3_off = ETH_HLEN_;
	if (parse_ipv4_direct(ctx, p))
		return 0;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN_, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return -1;
	p->t.family = AF_INET_;
	p->t.proto = ip.protocol;
	p->ttl = ip.ttl;
	addr_from_v4(&p->t.saddr, ip.saddr);
	addr_from_v4(&p->t.daddr, ip.daddr);
	p->l4_off = ETH_HLEN_ + ip.ihl * 4;
	if (parse_l4(ctx, p->l4_off, ip.protocol, &p->t, &p->tcp_flags, &p->icmp_type, false) < 0)
		return -1;
	if (ip.protocol == IPPROTO_ICMP && icmp_is_error(p->icmp_type, false)) {
		struct iphdr inner;
		__u32 inner_off = p->l4_off + 8;
		if (bpf_skb_load_bytes(ctx, inner_off, &inner, sizeof(inner)) < 0 || inner.ihl < 5)
			return 0; /* a truncated quote: treat as a plain ICMP packet */
		p->t_inner.family = AF_INET_;
		p->t_inner.proto = inner.protocol;
		addr_from_v4(&p->t_inner.saddr, inner.saddr);
		addr_from_v4(&p->t_inner.daddr, inner.daddr);
		if (parse_l4(ctx, inner_off + inner.ihl * 4, inner.protocol, &p->t_inner, NULL, NULL, false) == 0)
			p->is_icmp_error = 1;
	}
	return 0;
}

#define IPV6_MAX_EXT_HEADERS 4

/* Skip IPv6 extension headers (hop-by-hop, routing, fragment, destination options, AH), at most
 * IPV6_MAX_EXT_HEADERS of them, so policy and conntrack see the real L4 protocol. `*nexthdr`
 * and `*off` end at the upper-layer header; a non-first fragment reports IPPROTO_FRAGMENT_LATER
 * (it carries no L4 header). Returns <0 when a header is truncated or there are too many. */
#define IPPROTO_FRAGMENT_LATER 255
__always_inline_fn int ipv6_skip_ext(struct __sk_buff *ctx, __u8 *nexthdr, __u32 *off)
{
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		__u8 hdr[2];
		switch (*nexthdr) {
		case 0:  /* hop-by-hop options */
		case 43: /* routing */
		case 60: /* destination options */
			if (bpf_skb_load_bytes(ctx, *off, hdr, 2) < 0)
				return -1;
			*nexthdr = hdr[0];
			*off += ((__u32)hdr[1] + 1) * 8;
			break;
		case 51: /* authentication header: length in 4-byte units, minus 2 */
			if (bpf_skb_load_bytes(ctx, *off, hdr, 2) < 0)
				return -1;
			*nexthdr = hdr[0];
			*off += ((__u32)hdr[1] + 2) * 4;
			break;
		case 44: { /* fragment: fixed 8 bytes; only the first fragment carries the L4 header */
			__u8 frag[4];
			if (bpf_skb_load_bytes(ctx, *off, frag, 4) < 0)
				return -1;
			*off += 8;
			*nexthdr = ((frag[2] << 8 | frag[3]) & 0xfff8) ? IPPROTO_FRAGMENT_LATER : frag[0];
			if (*nexthdr == IPPROTO_FRAGMENT_LATER)
				return 0;
			break;
		}
		default:
			return 0;
		}
	}
	return (*nexthdr == 0 || *nexthdr == 43 || *nexthdr == 60 || *nexthdr == 51 || *nexthdr == 44) ? -1 : 0;
}

__always_inline_fn int parse_ipv6(struct __sk_buff *ctx, struct pkt *p)
{
	struct ipv6hdr ip6;
	p->l3_off = ETH_HLEN_;
	if (parse_ipv6_direct(ctx, p))
		return 0;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN_, &ip6, sizeof(ip6)) < 0)
		return -1;
	__u8 nexthdr = ip6.nexthdr;
	__u32 off = ETH_HLEN_ + sizeof(ip6);
	if (ipv6_skip_ext(ctx, &nexthdr, &off) < 0)
		return -1;
	p->t.family = AF_INET6_;
	p->t.proto = nexthdr == IPPROTO_FRAGMENT_LATER ? 44 : nexthdr;
	p->ttl = ip6.hop_limit;
	addr_from_v6(&p->t.saddr, &ip6.saddr);
	addr_from_v6(&p->t.daddr, &ip6.daddr);
	p->l4_off = off;
	if (nexthdr == IPPROTO_FRAGMENT_LATER) {
		p->t.sport = 0;
		p->t.dport = 0;
		return 0;
	}
	if (parse_l4(ctx, p->l4_off, nexthdr, &p->t, &p->tcp_flags, &p->icmp_type, true) < 0)
		return -1;
	if (nexthdr == IPPROTO_ICMPV6 && icmp_is_error(p->icmp_type, true)) {
		struct ipv6hdr inner;
		__u32 inner_off = p->l4_off + 8;
		if (bpf_skb_load_bytes(ctx, inner_off, &inner, sizeof(inner)) < 0)
			return 0;
		p->t_inner.family = AF_INET6_;
		p->t_inner.proto = inner.nexthdr;
		addr_from_v6(&p->t_inner.saddr, &inner.saddr);
		addr_from_v6(&p->t_inner.daddr, &inner.daddr);
		if (parse_l4(ctx, inner_off + sizeof(inner), inner.nexthdr, &p->t_inner, NULL, NULL, true) == 0)
			p->is_icmp_error = 1;
	}
	return 0;
}

/* An Ethernet frame's L3/L4 headers into *p: 0 when parsed, -1 when the frame is too short or
 * its IP header is bad, 1 when it carries neither IPv4 nor IPv6 (callers pass or drop those). */
/* The frame's EtherType (host order), by direct access when the Ethernet header is in the linear
 * part; -1 when the frame is shorter than one. */
__always_inline_fn int frame_proto(struct __sk_buff *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) <= data_end)
		return bpf_ntohs(eth->h_proto);
	struct ethhdr copy;
	if (bpf_skb_load_bytes(ctx, 0, &copy, sizeof(copy)) < 0)
		return -1;
	return bpf_ntohs(copy.h_proto);
}

__always_inline_fn int parse_frame(struct __sk_buff *ctx, struct pkt *p)
{
	int proto = frame_proto(ctx);
	if (proto < 0)
		return -1;
	if (proto == ETH_P_IP)
		return parse_ipv4(ctx, p) < 0 ? -1 : 0;
	if (proto == ETH_P_IPV6)
		return parse_ipv6(ctx, p) < 0 ? -1 : 0;
	return 1;
}
