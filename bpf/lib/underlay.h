/* The tunnel's outer packets at the underlay (tunnel mode): IPv4 UDP to the tunnel port from
 * another node of the cluster, seen by bpf_host's cil_from_netdev before its parse, service and
 * endpoint lookups (which it always passed anyway: the tunnel port belongs to the tunnel, no service
 * frontend or pod is reached on it, and a node's address is no endpoint). Only for a sender the
 * ipcache knows as a node (remote-node): anything else on the port takes the full path.
 *
 * Such a packet whose inner destination is a local endpoint is decapsulated here, in BPF
 * (underlay_tunnel_decap): the kernel's VXLAN device, and with it the outer packet's IP input,
 * netfilter hooks, UDP socket lookup, vxlan_rcv and the GRO cells' NAPI pass, is off its path.
 * bpf_host then delivers it as cil_from_overlay would (lib/overlay_deliver.h: identity from the
 * VNI in the mark, the endpoint's to-container program enforcing policy on it). Checked before
 * anything is changed, by direct packet access (bounds-checked against data_end), as the kernel's
 * IP, UDP and VXLAN receive would: outer IPv4 version 4 without options, not a fragment, header
 * checksum right, lengths matching the frame, destination an address of this node (its ipcache
 * identity is host), VXLAN flags exactly "VNI present" and reserved bits zero, VNI not the unknown
 * identity, the inner frame IPv4 or IPv6 for an address the endpoints map holds. Not checked: the
 * outer UDP checksum (the nodes' VXLAN senders leave it 0 over IPv4, which UDP accepts unchecked;
 * the inner packet's own checksums still hold). Everything else
 * (the node itself, no endpoint, a frame whose headers are not all in the linear part, a check
 * failing) passes untouched to the node's VXLAN device (cilia_vxlan), where bpf_overlay.c checks
 * the sender again and drops what it must drop, with its reasons. */
#pragma once

#include "common.h"
#include "endpoints.h"
#include "identity.h"
#include "ipcache.h"
#include "overlay.h"

#define IPV4_FRAG_MASK 0x3fff /* more-fragments flag and offset */
#define VXLAN_FLAGS_VNI 0x08000000 /* the first word of the VXLAN header: only the I flag (RFC 7348) */
#define VXLAN_HLEN_ 8
/* what the decapsulation removes behind the outer Ethernet header: outer IPv4, UDP, VXLAN and the
 * inner Ethernet header (the outer one stays, its EtherType fixed, its MACs rewritten on delivery) */
#define UNDERLAY_TUNNEL_HLEN (sizeof(struct iphdr) + sizeof(struct udphdr) + VXLAN_HLEN_ + ETH_HLEN_)
#define UNDERLAY_INNER_L3 (ETH_HLEN_ + UNDERLAY_TUNNEL_HLEN)
/* bpf_skb_adjust_room flags newer than some distributions' UAPI headers (kernel 6.3+) */
#define ADJ_ROOM_DECAP_L3_IPV4_ (1ULL << 7)
#define ADJ_ROOM_DECAP_L3_IPV6_ (1ULL << 8)

/* True when the frame is IPv4 UDP to `tunnel_port` (host order; 0 = no tunnel) from a cluster node. */
__always_inline_fn bool underlay_tunnel_from_node(const struct __sk_buff *ctx, __u32 tunnel_port)
{
	if (!tunnel_port)
		return false;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN_;
	struct udphdr *udp = data + ETH_HLEN_ + sizeof(struct iphdr);
	if ((void *)(udp + 1) > data_end)
		return false;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(IPV4_FRAG_MASK)) || udp->dest != bpf_htons((__u16)tunnel_port))
		return false;
	union addr16 src;
	addr_from_v4(&src, ip->saddr);
	return ipcache_identity(&src, AF_INET_) == IDENTITY_REMOTE_NODE;
}

/* The IPv4 header checksum over its 20 bytes (no options) is right, as ip_rcv requires. */
__always_inline_fn bool ipv4_csum_ok(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* What the decapsulation needs, read from a known node's tunnel packet (underlay_tunnel_from_node
 * true) before anything is changed. */
struct underlay_inner {
	__u32 vni;                /* the source pod's identity */
	__u8 family;              /* AF_INET_ / AF_INET6_ */
	struct endpoint_info *ep; /* the inner destination's local endpoint */
};

/* True when the packet can be decapsulated here (*in filled): see the header comment. */
__always_inline_fn bool underlay_tunnel_inner(const struct __sk_buff *ctx, struct underlay_inner *in)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN_;
	struct udphdr *udp = (void *)(ip + 1);
	__u32 *vxlan = (void *)(udp + 1);
	struct ethhdr *inner_eth = (void *)(vxlan + 2);
	if ((void *)(inner_eth + 1) > data_end)
		return false;
	if (ip->version != 4 || bpf_ntohs(ip->tot_len) != ctx->len - ETH_HLEN_ ||
	    bpf_ntohs(udp->len) != ctx->len - ETH_HLEN_ - sizeof(struct iphdr) || !ipv4_csum_ok(ip))
		return false;
	if (vxlan[0] != bpf_htonl(VXLAN_FLAGS_VNI) || (vxlan[1] & bpf_htonl(0xff)))
		return false;
	__u32 vni = bpf_ntohl(vxlan[1]) >> 8;
	if (vni == IDENTITY_UNKNOWN || vni > IDENTITY_MAX)
		return false; /* bpf_overlay drops it, with its reason */
	union addr16 daddr;
	if (inner_eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iip = (void *)(inner_eth + 1);
		if ((void *)(iip + 1) > data_end || iip->version != 4)
			return false;
		addr_from_v4(&daddr, iip->daddr);
		in->family = AF_INET_;
	} else if (inner_eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *iip6 = (void *)(inner_eth + 1);
		if ((void *)(iip6 + 1) > data_end || iip6->version != 6)
			return false;
		addr_from_v6(&daddr, &iip6->daddr);
		in->family = AF_INET6_;
	} else {
		return false;
	}
	in->ep = endpoint_lookup(&daddr, in->family);
	if (!in->ep)
		return false; /* the node itself, or nobody here: the device and bpf_overlay decide */
	/* last, the one lookup more than the sender check: the kernel's VXLAN socket only sees what
	 * IP input delivers locally, so a packet for an address not this node's is not decapsulated */
	union addr16 outer_dst;
	addr_from_v4(&outer_dst, ip->daddr);
	if (ipcache_identity(&outer_dst, AF_INET_) != IDENTITY_HOST)
		return false;
	in->vni = vni;
	return true;
}

/* Remove the outer IPv4, UDP, VXLAN and inner Ethernet headers, keeping the outer Ethernet header
 * with the inner packet's EtherType. A GSO packet (a TCP stream's large segments, SKB_GSO_UDP_TUNNEL
 * over the veths) keeps its gso_size (FIXED_GSO: the inner MSS does not change by removing outer
 * headers); the kernel accepts that for TCP and UDP-L4 GSO and refuses others, before it changes
 * anything. Returns 0, or <0 with the packet as it was (the caller passes it to the device). */
__always_inline_fn int underlay_tunnel_decap(struct __sk_buff *ctx, __u8 family)
{
	bool v6 = family == AF_INET6_;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | (v6 ? ADJ_ROOM_DECAP_L3_IPV6_ : ADJ_ROOM_DECAP_L3_IPV4_);
	if (bpf_skb_adjust_room(ctx, -(__s32)UNDERLAY_TUNNEL_HLEN, BPF_ADJ_ROOM_MAC, flags) < 0)
		return -1;
	if (v6) {
		/* the Ethernet header is there (it was before); were it not, the parse drops the packet */
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) <= data_end)
			eth->h_proto = bpf_htons(ETH_P_IPV6);
	}
	return 0;
}
