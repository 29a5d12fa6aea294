/* The underlay's fast pass (tunnel mode): the outer packet of the VXLAN tunnel, UDP to the tunnel
 * port from another node of the cluster, is the node's own traffic for its VXLAN device, where
 * bpf_overlay.c checks the sender again and takes the identity from the VNI. bpf_host lets it
 * through before its parse, service and endpoint lookups, which it always passed anyway: the
 * tunnel port belongs to the tunnel (no service frontend or pod is reached on it), and a node's
 * address is no endpoint. Only for a sender the ipcache knows as a node (remote-node): anything
 * else on the port takes the full path, as before. Read by direct packet access (bounds-checked
 * against data_end); a frame whose headers are not in the linear part, an IPv4 header with
 * options or a fragment also take the full path. */
#pragma once

#include "common.h"
#include "identity.h"
#include "ipcache.h"

#define IPV4_FRAG_MASK 0x3fff /* more-fragments flag and offset */

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
