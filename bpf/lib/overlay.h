/* The VXLAN tunnel between nodes (tunnel routing): the sender puts the source pod's security
 * identity in the VNI and the remote node's underlay IPv4 in the tunnel key, then redirects to the
 * node's collect-metadata device (cilia_vxlan); the receiver (bpf_overlay.c) trusts the VNI only
 * from a known node and hands the identity to the destination's to-container program in the mark. */
#pragma once

#include "common.h"

/* A packet delivered from the overlay carries its source identity in the skb mark for the
 * destination endpoint's to-container program: magic in the top byte (distinct from the service
 * mark's 0x0c1a high half, lib/lb.h), identity in the low 24 bits. The mark never crosses a
 * namespace (veth scrubs it), so a pod cannot forge it. */
#define IDENTITY_MARK_MAGIC 0xc1000000
#define IDENTITY_MARK_MASK 0xff000000
#define IDENTITY_MAX 0x00ffffff /* a VNI is 24 bits */
#define TUNNEL_TTL 64

/* Set the tunnel key: remote = the node's underlay IPv4 (network order, as the ipcache has it),
 * VNI = the source identity. Returns <0 on failure. */
__always_inline_fn int overlay_set_key(struct __sk_buff *ctx, __be32 node, __u32 src_identity)
{
	struct bpf_tunnel_key key = {};
	key.remote_ipv4 = bpf_ntohl(node);
	key.tunnel_id = src_identity;
	key.tunnel_ttl = TUNNEL_TTL;
	return (int)bpf_skb_set_tunnel_key(ctx, &key, sizeof(key), BPF_F_ZERO_CSUM_TX);
}
