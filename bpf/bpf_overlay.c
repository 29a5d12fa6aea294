/* bpf_overlay: the node's VXLAN device (tc ingress of cilia_vxlan, tunnel routing): packets other
 * nodes' pods sent through the tunnel (bpf_lxc.c encapsulates, lib/overlay.h) that bpf_host did not
 * decapsulate itself (it does for a known node's packet to a local endpoint that passes its checks,
 * lib/underlay.h, and delivers it with the same code as here, lib/overlay_deliver.h): packets for
 * the node itself, and whatever bpf_host had a doubt about.
 *
 *   cil_from_overlay  the tunnel key says who sent it: the outer source must be a known node (its
 *                     ipcache entry is remote-node), else the packet is dropped (UNKNOWN_SENDER),
 *                     so nobody off the cluster can claim an identity; the VNI is then the source
 *                     pod's security identity. A packet for a local endpoint is routed to it (TTL,
 *                     MACs) and handed, with the identity in the mark, to the endpoint's own ingress
 *                     program (a tail call, lib/deliver.h; without one: the egress of its host-side
 *                     veth), which enforces its ingress policy on that identity, tracks the
 *                     connection and redirects it into the pod (or, an ingress L7 rule covering
 *                     it, assigns it to the node's proxy). Anything else (the node itself) goes up
 *                     the node's stack.
 *   cil_to_overlay    tc egress of cilia_vxlan: what the node's stack sends into the tunnel by
 *                     route (pods' packets arrive with their key set). The L7 proxy's upstream leg
 *                     to another node's pod gets the client's identity in the VNI and is recorded
 *                     for its replies (lib/proxy_upstream.h); everything else passes on one compare. */
#define SOURCE_FILE_ID SOURCE_FILE_OVERLAY

#include "lib/common.h"
#include "lib/deliver.h"
#include "lib/direction.h"
#include "lib/drop.h"
#include "lib/endpoints.h"
#include "lib/forward.h"
#include "lib/identity.h"
#include "lib/ipcache.h"
#include "lib/overlay.h"
#include "lib/overlay_deliver.h"
#include "lib/parse.h"
#include "lib/proxy_upstream.h"
#include "lib/trace.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tc")
int cil_from_overlay(struct __sk_buff *ctx)
{
	struct bpf_tunnel_key key = {};
	if (bpf_skb_get_tunnel_key(ctx, &key, sizeof(key), 0) < 0)
		return send_drop(ctx, DROP_NO_TUNNEL_KEY, 0, 0, DIR_INGRESS);
	union addr16 outer;
	addr_from_v4(&outer, bpf_htonl(key.remote_ipv4));
	if (ipcache_identity(&outer, AF_INET_) != IDENTITY_REMOTE_NODE)
		return send_drop(ctx, DROP_UNKNOWN_SENDER, 0, 0, DIR_INGRESS);
	__u32 src_identity = key.tunnel_id;
	if (src_identity == IDENTITY_UNKNOWN || src_identity > IDENTITY_MAX)
		return send_drop(ctx, DROP_INVALID_IDENTITY, 0, 0, DIR_INGRESS);

	struct pkt p = {};
	int parsed = parse_frame(ctx, &p);
	if (parsed != 0)
		return send_drop(ctx, parsed < 0 ? DROP_INVALID_PACKET : DROP_UNSUPPORTED_L2, src_identity, 0,
				 DIR_INGRESS);
	struct endpoint_info *ep = endpoint_lookup(&p.t.daddr, p.t.family);
	if (!ep) {
		/* for the node itself (e.g. its router address): the inner frame is addressed to the
		 * sender's gateway MAC, not this device's, so tell the stack it is ours */
		bpf_skb_change_type(ctx, 0 /* PACKET_HOST */);
		return TC_ACT_OK;
	}
	return overlay_deliver(ctx, &p, ep, src_identity);
}

SEC("tc")
int cil_to_overlay(struct __sk_buff *ctx)
{
	__u32 identity = proxy_upstream_identity(ctx);
	if (!identity)
		return TC_ACT_OK;
	struct pkt p = {};
	if (parse_frame(ctx, &p) != 0)
		return TC_ACT_OK;
	if (proxy_upstream_track(ctx, &p, identity) < 0)
		return send_drop(ctx, DROP_CT_MAP_INSERT_FAILED, identity, 0, DIR_EGRESS);
	if (proxy_upstream_tunnel_key(ctx, &p, identity) < 0)
		return send_drop(ctx, DROP_INVALID_PACKET, identity, 0, DIR_EGRESS);
	return TC_ACT_OK;
}
