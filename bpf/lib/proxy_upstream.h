/* The L7 proxy's upstream connection to a pod on another node (lib/proxy.h), at the device it
 * leaves by: bpf_host.c cil_to_netdev (native routing, the underlay) and bpf_overlay.c
 * cil_to_overlay (tunnel routing, cilia_vxlan). The proxy connects from the client pod's address
 * (IP_TRANSPARENT) with SO_MARK = PROXY_MARK_FROM | client identity; the node's stack routes it
 * like the node's own traffic, so no endpoint program sees it on the way out. Here:
 *   - it is recorded in conntrack with LB_CONN_F_PROXY_UPSTREAM: the server's replies come back
 *     through the device's ingress to the client endpoint's program (cil_to_container_peer), which
 *     assigns them to the proxy's socket instead of delivering them into the client pod;
 *   - tunnel: the VNI becomes the client's identity (the encap route's is remote-node), so the
 *     server's node judges the client; native: the server's node takes the identity from its
 *     ipcache by the source address, which is the client pod's.
 * Everything not marked PROXY_MARK_FROM costs one compare of the mark. */
#pragma once

#include "common.h"
#include "conntrack.h"
#include "ipcache.h"
#include "lb_flags.h"
#include "overlay.h"
#include "parse.h"
#include "proxy.h"

/* The client identity of a packet of the proxy's upstream connection, 0 for anything else. */
__always_inline_fn __u32 proxy_upstream_identity(const struct __sk_buff *ctx)
{
	if ((ctx->mark & PROXY_MARK_MASK) != PROXY_MARK_FROM)
		return 0;
	return ctx->mark & IDENTITY_MAX;
}

/* Record (and keep alive) the connection of an upstream packet. A client pod's own connection on
 * the same tuple (the proxy's port choice does not see the pod's) gets the flag too: that pod's
 * packets reach the proxy at its from-container and the proxy's answers reach it through the node's
 * stack, neither of which looks at the flag. Returns <0 when the entry could not be written. */
__always_inline_fn int proxy_upstream_track(struct __sk_buff *ctx, struct pkt *p, __u32 identity)
{
	struct ct_result ct = {};
	if (p->t.proto != IPPROTO_TCP)
		return 0;
	ct_lookup(p, ctx->len, 0, 0, &ct);
	if (ct.status == CT_NEW)
		return ct_create(p, ctx->len, identity, 0, LB_CONN_F_PROXY_UPSTREAM);
	if (ct.status == CT_ESTABLISHED && !(ct.lb_flags & LB_CONN_F_PROXY_UPSTREAM))
		ct_add_lb_flags(p, LB_CONN_F_PROXY_UPSTREAM);
	return 0;
}

/* Tunnel: the client's identity in the VNI, to the node the ipcache says owns the destination.
 * Returns <0 when the key could not be set. */
__always_inline_fn int proxy_upstream_tunnel_key(struct __sk_buff *ctx, const struct pkt *p, __u32 identity)
{
	struct ipcache_value *remote = ipcache_lookup(&p->t.daddr, p->t.family);
	if (!remote || !remote->tunnel_endpoint)
		return 0; /* not a pod of another node: the route's key stays */
	return overlay_set_key(ctx, remote->tunnel_endpoint, identity);
}
