/* bpf_host: the node's underlay device (tc ingress of eth0): service traffic from outside, and
 * packets for local pods from other nodes (native routing) or from outside.
 *
 *   cil_from_netdev  a packet for a NodePort, LoadBalancer or externalIP frontend gets a backend,
 *                    chosen by Maglev so any node would choose the same, kept for the connection
 *                    in cilia_lb_conn_v1, and is DNATed to it. A packet for a local endpoint is
 *                    routed to it here (TTL, MACs) and handed to the endpoint's own ingress
 *                    program by a tail call (lib/deliver.h), which redirects it into the pod
 *                    (redirect_peer): no detour through the node's stack and iptables, and the
 *                    endpoint's ingress policy sees the source's identity from the ipcache (a pod
 *                    on another node: its real identity) and conntrack records the connection. Everything else passes untouched.
 *                    A service connection whose backend is on another node is recorded in
 *                    conntrack (with its rev-NAT id) and goes up the stack with the service mark,
 *                    routed (native) or tunnelled (a tunnel route) to that node; the node's
 *                    netfilter SNATs marked packets to the node's address (cilia.netlink.node), so
 *                    the backend answers through this node. Tunnel mode: another node's VXLAN
 *                    packet is taken first, before all of that (lib/underlay.h): for a local
 *                    endpoint decapsulated here and delivered as cil_from_overlay would
 *                    (lib/overlay_deliver.h: the VNI's identity in the mark, the tail call), so the
 *                    kernel's VXLAN device is off its path; anything else goes to cilia_vxlan.
 *   cil_to_netdev    tc egress of eth0: such a reply, its SNAT undone by netfilter, gets its
 *                    source rewritten back to the frontend (reverse NAT through that entry). The
 *                    L7 proxy's upstream leg to another node's pod (marked PROXY_MARK_FROM) is
 *                    recorded for its replies (lib/proxy_upstream.h), which cil_from_netdev hands
 *                    to the client endpoint's program, and that one to the proxy's socket.
 *
 * An ingress L7 rule of a local pod judges another node's pod too: its packets, delivered by the
 * tail call below, are assigned to the node's proxy by the endpoint's program (bpf_lxc.c
 * to_container, where the policy lookup already is: nothing more per packet here).
 *
 * A service packet whose backend is a local endpoint is delivered to it the same way (tail call);
 * the skb mark tells the backend's to-container program which frontend it came through, so
 * conntrack can record it and the backend's replies are reverse-NATed on their way out
 * (bpf_lxc.c). ClusterIPs are not reachable from outside. */
#define SOURCE_FILE_ID SOURCE_FILE_HOST

#include "lib/common.h"
#include "lib/config.h"
#include "lib/conntrack.h"
#include "lib/deliver.h"
#include "lib/direction.h"
#include "lib/drop.h"
#include "lib/endpoints.h"
#include "lib/fib.h"
#include "lib/forward.h"
#include "lib/host_config.h"
#include "lib/ipcache.h"
#include "lib/lb.h"
#include "lib/lb_xlate.h"
#include "lib/overlay_deliver.h"
#include "lib/parse.h"
#include "lib/proxy_upstream.h"
#include "lib/trace.h"
#include "lib/underlay.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tc")
int cil_from_netdev(struct __sk_buff *ctx)
{
	struct pkt p = {};

	if (underlay_tunnel_from_node(ctx, HOST.tunnel_port)) {
		/* another node's VXLAN packet (lib/underlay.h): for a local endpoint decapsulated and
		 * delivered here, as cil_from_overlay would; anything else for cilia_vxlan */
		struct underlay_inner in = {};
		if (!underlay_tunnel_inner(ctx, &in) || underlay_tunnel_decap(ctx, in.family) < 0)
			return TC_ACT_OK;
		int parsed = parse_frame(ctx, &p);
		if (parsed != 0)
			return send_drop(ctx, parsed < 0 ? DROP_INVALID_PACKET : DROP_UNSUPPORTED_L2, in.vni, 0,
					 DIR_INGRESS);
		return overlay_deliver(ctx, &p, in.ep, in.vni);
	}
	if (parse_frame(ctx, &p) != 0)
		return TC_ACT_OK; /* not IP, or not parseable: the node's stack decides */
	struct lb_select_opts o = {.external_only = true, .maglev = true};
	struct lb_xlate x = {};
	int reason = lb_xlate_packet(ctx, &p, &o, &x);
	if (reason) {
		__u32 src_identity = ipcache_identity(&p.t.saddr, p.t.family);
		(void)send_drop(ctx, reason, src_identity, 0, DIR_INGRESS);
		if (x.no_backend && p.t.proto == IPPROTO_TCP && (p.tcp_flags & TCPF_SYN) && lb_reject_syn(ctx, &p) == 0)
			return bpf_redirect(ctx->ifindex, 0);
		return TC_ACT_SHOT;
	}
	struct endpoint_info *ep = endpoint_lookup(&p.t.daddr, p.t.family);
	if (x.rev_nat_id) {
		ctx->mark = LB_MARK_MAGIC | x.rev_nat_id;
		if (!ep) {
			/* the backend is on another node: remember the connection for the replies, which
			 * come back through this node (SNAT) and leave by cil_to_netdev */
			struct ct_result ct = {};
			ct_lookup(&p, ctx->len, CONFIG.aggregation, CONFIG.aggregation_interval, &ct);
			if (ct.status == CT_NEW &&
			    ct_create(&p, ctx->len, ipcache_identity(&p.t.saddr, p.t.family), x.rev_nat_id, x.flags) < 0)
				return send_drop(ctx, DROP_CT_MAP_INSERT_FAILED, 0, 0, DIR_INGRESS);
			return TC_ACT_OK;
		}
		/* a local backend: delivered below like any packet for a local endpoint, the mark telling
		 * its program the frontend. Not up the stack: with an ingress L7 rule, the node's proxy has a
		 * socket with the backend's address for the connection, which the stack's early demux would
		 * give the packet to, and forwarding drops a packet that has a socket. */
	}
	if (!ep)
		return TC_ACT_OK;
	reason = forward_to_endpoint(ctx, &p, ep);
	if (reason)
		return send_drop(ctx, reason, ipcache_identity(&p.t.saddr, p.t.family), ep->identity, DIR_INGRESS);
	/* counted here; the event (with the source identity from the ipcache) comes from the
	 * endpoint's to-container program, so this one does not look the source up */
	send_trace(ctx, OBS_FROM_NETWORK, 0, 0, ep->identity, DIR_INGRESS, false, 0);
	return deliver_to_endpoint(ctx, ep);
}

/* The reply of a service connection this node forwarded to another node's backend: its entry
 * (created by cil_from_netdev) holds the frontend. Updated as a reply (flags, expiry) so the
 * connection lives as long as it is used in either direction. */
__always_inline_fn struct ct_entry *service_reply_entry(const struct pkt *p)
{
	struct tuple rev = {};
	tuple_reverse(&p->t, &rev);
	struct ct_entry *e = bpf_map_lookup_elem(ct_map(p->t.proto), &rev);
	if (!e || !e->rev_nat_id)
		return NULL;
	__u8 flags = p->tcp_flags;
	if (flags & ~e->rx_flags_seen)
		e->rx_flags_seen |= flags;
	if ((flags & (TCPF_FIN | TCPF_RST)) && !e->closing)
		e->closing = 1;
	__u64 expires = now_seconds() + ct_lifetime(e, p->t.proto);
	if (e->expires != expires)
		e->expires = expires;
	return e;
}

SEC("tc")
int cil_to_netdev(struct __sk_buff *ctx)
{
	struct pkt p = {};

	if (ctx->mark == DIRECT_MARK)
		return TC_ACT_OK; /* a pod's packet its own program sent here (lib/fib.h): no reply of ours */
	if (parse_frame(ctx, &p) != 0)
		return TC_ACT_OK; /* not IP, or not parseable: the node's stack decides */
	__u32 proxied = proxy_upstream_identity(ctx);
	if (proxied) {
		/* the L7 proxy's upstream leg to another node's pod, from the client pod's address:
		 * recorded so its replies reach the proxy's socket (lib/proxy_upstream.h) */
		if (proxy_upstream_track(ctx, &p, proxied) < 0)
			return send_drop(ctx, DROP_CT_MAP_INSERT_FAILED, proxied, 0, DIR_EGRESS);
		return TC_ACT_OK;
	}
	if ((p.t.proto != IPPROTO_TCP && p.t.proto != IPPROTO_UDP) || p.is_icmp_error)
		return TC_ACT_OK;
	struct ct_entry *e = service_reply_entry(&p);
	if (!e)
		return TC_ACT_OK;
	__u32 rev_nat_id = e->rev_nat_id;
	if (lb_rev_nat(ctx, &p, rev_nat_id, e->lb_flags) < 0)
		return send_drop(ctx, DROP_INVALID_PACKET, 0, 0, DIR_EGRESS);
	return TC_ACT_OK;
}
