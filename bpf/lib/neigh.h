/* The pod's gateway: answer ARP requests and IPv6 Neighbor Solicitations with the host-side
 * veth's MAC, so pods need no bridge and no static neighbour entries. */
#pragma once

#include "common.h"
#include "config.h"

struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__be32 sip;
	__u8 tha[6];
	__be32 tip;
} __attribute__((packed));

/* Returns a tc verdict when the packet was an ARP request we answered, or -1 to go on. */
__always_inline_fn int arp_respond(struct __sk_buff *ctx)
{
	struct arp_eth_ipv4 arp;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN_, &arp, sizeof(arp)) < 0)
		return -1;
	if (arp.op != bpf_htons(1) || arp.ptype != bpf_htons(ETH_P_IP) || arp.hlen != 6 || arp.plen != 4)
		return -1;
	if (arp.tip == CONFIG.pod_ipv4)
		return -1; /* the pod asking about itself (gratuitous/duplicate detection) */
	struct arp_eth_ipv4 reply = arp;
	__u8 lxc_mac[6];
	mac_from_cfg(lxc_mac, CONFIG.lxc_mac);
	reply.op = bpf_htons(2);
	__builtin_memcpy(reply.sha, lxc_mac, 6);
	reply.sip = arp.tip;
	__builtin_memcpy(reply.tha, arp.sha, 6);
	reply.tip = arp.sip;
	struct ethhdr eth;
	__builtin_memcpy(eth.h_dest, arp.sha, 6);
	__builtin_memcpy(eth.h_source, lxc_mac, 6);
	eth.h_proto = bpf_htons(ETH_P_ARP);
	if (bpf_skb_store_bytes(ctx, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN_, &reply, sizeof(reply), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(CONFIG.lxc_ifindex, 0); /* back out of the veth, to the pod */
}

/* The ICMPv6 checksum of a 32-byte NA from scratch: pseudo-header + message. */
struct na_csum_buf {
	struct in6_addr saddr;
	struct in6_addr daddr;
	__be32 len;
	__be32 next;
	__u8 msg[32];
};

__always_inline_fn __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Answer a Neighbor Solicitation (with a source link-layer option, as Linux sends) for any
 * target but the pod's own address. A Neighbor Advertisement (the pod answering the node's stack,
 * which resolves a pod's address when it sends to it by route: the L7 proxy's answers) goes to the
 * node's stack whatever the pod's egress policy, as an ARP reply does. Returns a tc verdict, or -1
 * to go on. */
__always_inline_fn int ndp_respond(struct __sk_buff *ctx)
{
	struct ipv6hdr ip6;
	__u8 ns[32];
	if (bpf_skb_load_bytes(ctx, ETH_HLEN_, &ip6, sizeof(ip6)) < 0)
		return -1;
	if (ip6.nexthdr != IPPROTO_ICMPV6)
		return -1;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN_ + sizeof(ip6), ns, 1) < 0)
		return -1;
	if (ns[0] == NDISC_NEIGHBOUR_ADVERTISEMENT_)
		return TC_ACT_OK;
	if (ip6.payload_len != bpf_htons(32))
		return -1;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN_ + sizeof(ip6), ns, sizeof(ns)) < 0)
		return -1;
	if (ns[0] != NDISC_NEIGHBOUR_SOLICITATION_ || ns[24] != 1 /* source link-layer option */)
		return -1;
	if (addr16_eq_cfg(&ns[8], CONFIG.pod_ipv6))
		return -1;
	if (ip6.saddr.in6_u.u6_addr32[0] == 0 && ip6.saddr.in6_u.u6_addr32[1] == 0 &&
	    ip6.saddr.in6_u.u6_addr32[2] == 0 && ip6.saddr.in6_u.u6_addr32[3] == 0)
		return -1; /* duplicate address detection: stay silent */

	__u8 lxc_mac[6];
	mac_from_cfg(lxc_mac, CONFIG.lxc_mac);
	struct na_csum_buf buf = {};
	__builtin_memcpy(&buf.saddr, &ns[8], 16); /* we answer as the target */
	buf.daddr = ip6.saddr;
	buf.len = bpf_htonl(32);
	buf.next = bpf_htonl(IPPROTO_ICMPV6);
	buf.msg[0] = NDISC_NEIGHBOUR_ADVERTISEMENT_;
	buf.msg[4] = 0xe0; /* router, solicited, override */
	__builtin_memcpy(&buf.msg[8], &ns[8], 16);
	buf.msg[24] = 2; /* target link-layer address option */
	buf.msg[25] = 1;
	__builtin_memcpy(&buf.msg[26], lxc_mac, 6);
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)&buf, sizeof(buf), 0);
	if (sum < 0)
		return TC_ACT_SHOT;
	__u16 csum = csum_fold((__u64)sum);
	buf.msg[2] = csum & 0xff; /* csum_fold result is in network byte order already */
	buf.msg[3] = csum >> 8;

	struct ipv6hdr out = ip6;
	out.saddr = buf.saddr;
	out.daddr = buf.daddr;
	out.hop_limit = 255;
	struct ethhdr eth;
	if (bpf_skb_load_bytes(ctx, 0, &eth, sizeof(eth)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth.h_dest, eth.h_source, 6);
	__builtin_memcpy(eth.h_source, lxc_mac, 6);
	if (bpf_skb_store_bytes(ctx, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN_, &out, sizeof(out), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN_ + sizeof(out), buf.msg, sizeof(buf.msg), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(CONFIG.lxc_ifindex, 0);
}
