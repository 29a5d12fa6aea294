/* bpf_lxc: the programs on a pod's host-side veth.
 *
 *   cil_from_container  tc ingress of lxcXXX = packets leaving the pod
 *   cil_to_container    tc egress of lxcXXX  = packets the node's stack sends to the pod
 *
 * One loaded instance per endpoint; CONFIG (lib/config.h) carries the endpoint's values.
 * Pipeline: parse -> source check -> service translation (lib/lb_xlate.h: per-packet path for
 * processes the socket hooks do not see) -> identities -> conntrack (replies of service
 * connections get reverse NAT) -> policy (lib/policy.h, on the backend) -> deliver
 * (redirect_peer to a local pod; in tunnel mode a destination whose ipcache entry names a tunnel
 * endpoint is encapsulated to that node through cilia_vxlan, lib/overlay.h; anything else up the
 * node's stack, which routes other nodes' pod CIDRs over the underlay in native mode) -> trace.
 * To-container takes the source identity from the overlay's mark, else the ipcache, and reverse-
 * NATs the replies of a service connection whose backend was on another node. An ingress L7 rule's
 * connection is assigned to the node's proxy at a device's ingress (cil_to_container_peer); from
 * the node's own stack (the veth's egress) it is hairpinned to the veth's ingress first, where
 * cil_from_container assigns it (PROXY_MARK_HAIRPIN, lib/proxy.h). Every drop leaves
 * through send_drop(), which names the reason and the line. */
#define SOURCE_FILE_ID SOURCE_FILE_LXC
#define EVENT_IFINDEX(ctx) (CONFIG.lxc_ifindex ? CONFIG.lxc_ifindex : (ctx)->ifindex)
#define FORWARD_HELPERS_ONLY /* no direct packet writes: TCP's clones pass unwritten (lib/forward.h) */

#include "lib/common.h"
#include "lib/config.h"
#include "lib/conntrack.h"
#include "lib/deliver.h"
#include "lib/direction.h"
#include "lib/drop.h"
#include "lib/endpoints.h"
#include "lib/fib.h"
#include "lib/forward.h"
#include "lib/identity.h"
#include "lib/ipcache.h"
#include "lib/lb.h"
#include "lib/lb_xlate.h"
#include "lib/neigh.h"
#include "lib/overlay.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/policy_verdict.h"
#include "lib/proxy.h"
#include "lib/trace.h"

char LICENSE[] SEC("license") = "GPL";

/* Decide one side's policy for this packet and report it: a policy-verdict event for the first
 * packet of a connection, and a drop naming the deciding rule when it does not pass.
 * Returns <0 when the packet must be dropped (the drop event is already sent), 1 when it is
 * allowed through the L7 proxy (lib/proxy.h), 2 through the DNS proxy, 0 when it is allowed.
 *
 * A global (BTF) function, not inlined: the verifier checks it once, on its own, instead of once
 * per call site and per path into it (four call sites in cil_from_container alone), which keeps
 * the program far from the verifier's 1M-instruction limit and its load time short. */
struct policy_call {
	__u32 endpoint_id;  /* whose policy */
	__u32 dir;          /* enum direction */
	__u32 remote;       /* the identity on the other end */
	__u32 src_identity; /* for the events */
	__u32 dst_identity;
	__u32 new_conn;     /* first packet of a connection: report the verdict */
};

__attribute__((noinline)) int enforce_policy(struct __sk_buff *ctx, const struct pkt *p, const struct policy_call *c)
{
	struct policy_result r = {};
	if (!p || !c)
		return -1;
	bool pass = policy_check(c->endpoint_id, c->dir, c->remote, p, &r);
	if (c->new_conn && (r.enforced || r.verdict != VERDICT_ALLOW))
		send_policy_verdict(ctx, r.verdict, r.audited, r.rule_id, c->src_identity, c->dst_identity, c->dir,
				    c->endpoint_id);
	if (pass)
		return r.redirect;
	__u8 reason = r.verdict == VERDICT_DENY		 ? DROP_POLICY_DENY
		      : r.verdict == VERDICT_NOT_INSTALLED ? DROP_POLICY_NOT_INSTALLED
							   : DROP_POLICY_DENIED;
	(void)send_policy_drop(ctx, reason, c->src_identity, c->dst_identity, c->dir, c->endpoint_id, r.rule_id);
	return -1;
}

/* Conntrack lookup (lib/conntrack.h), global like enforce_policy: checked once, not per path. */
__attribute__((noinline)) int lxc_ct_lookup(struct pkt *p, __u32 len, struct ct_result *res)
{
	if (!p || !res)
		return -1;
	ct_lookup(p, len, CONFIG.aggregation, CONFIG.aggregation_interval, res);
	return 0;
}

__always_inline_fn bool is_ipv6_link_local(const union addr16 *a)
{
	return a->b[0] == 0xfe && (a->b[1] & 0xc0) == 0x80;
}

__always_inline_fn bool source_is_pod(const struct pkt *p)
{
	if (p->t.family == AF_INET_)
		return p->t.saddr.w[3] == CONFIG.pod_ipv4;
	return addr16_eq_cfg(p->t.saddr.b, CONFIG.pod_ipv6);
}

/* Rewrite MACs, lower the TTL and hand the packet straight to the destination pod's eth0. */
__always_inline_fn int deliver_local(struct __sk_buff *ctx, struct pkt *p, struct endpoint_info *ep,
				     struct ct_result *ct, __u32 dst_identity, __u32 rev_nat_id)
{
	int reason = forward_to_endpoint(ctx, p, ep);
	if (reason)
		return send_drop(ctx, reason, CONFIG.identity, dst_identity, DIR_EGRESS);
	send_trace(ctx, OBS_TO_ENDPOINT, ct->status, CONFIG.identity, dst_identity, DIR_EGRESS, ct->report,
		   rev_nat_id);
	return bpf_redirect_peer(ep->ifindex, 0);
}

__always_inline_fn int from_container_ip(struct __sk_buff *ctx, struct pkt *p)
{
	if (!source_is_pod(p)) {
		/* Neighbour discovery and MLD (behind a hop-by-hop header) use link-local or unspecified
		 * sources: they are for the node's stack, not pod traffic. */
		if (p->t.family == AF_INET6_ &&
		    (is_ipv6_link_local(&p->t.saddr) || (p->t.saddr.w[0] | p->t.saddr.w[1] | p->t.saddr.w[2] |
							  p->t.saddr.w[3]) == 0))
			return TC_ACT_OK;
		return send_drop(ctx, DROP_INVALID_SOURCE_IP, CONFIG.identity, 0, DIR_EGRESS);
	}
	struct endpoint_info *ep = endpoint_lookup(&p->t.daddr, p->t.family);
	struct lb_xlate x = {};
	if (!ep) {
		/* Not a local pod: perhaps a service frontend this pod's process reached without the
		 * socket hooks (it is outside the node's cgroup). Translate before anything decides. */
		struct lb_select_opts o = {};
		int reason = lb_xlate_packet(ctx, p, &o, &x);
		if (reason) {
			(void)send_drop(ctx, reason, CONFIG.identity, 0, DIR_EGRESS);
			if (x.no_backend && p->t.proto == IPPROTO_TCP && (p->tcp_flags & TCPF_SYN) &&
			    lb_reject_syn(ctx, p) == 0)
				return bpf_redirect_peer(CONFIG.lxc_ifindex, 0); /* connection refused, at once */
			return TC_ACT_SHOT;
		}
		if (x.rev_nat_id)
			ep = endpoint_lookup(&p->t.daddr, p->t.family);
	}
	struct ct_result ct = {};
	lxc_ct_lookup(p, ctx->len, &ct);
	if (ct.status == CT_ESTABLISHED && ct.rev_nat_id != x.rev_nat_id && p->t.proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		/* a SYN translated differently from the entry's connection (service vs direct, or
		 * another frontend) starts a new connection on a reused tuple */
		ct_forget(p);
		ct.status = CT_NEW;
		ct.report = true;
		ct.rev_nat_id = 0;
		ct.lb_flags = 0;
	}
	if (ct.status == CT_REPLY && (ct.lb_flags & LB_CONN_F_PROXY_UPSTREAM)) {
		/* this pod answering the L7 proxy's upstream connection: to the proxy's socket */
		ctx->mark = PROXY_MARK_TO;
		send_trace(ctx, OBS_TO_STACK, ct.status, CONFIG.identity, 0, DIR_EGRESS, ct.report, 0);
		return TC_ACT_OK;
	}
	__u32 rev_nat_id = x.rev_nat_id;
	if (ct.status == CT_REPLY && ct.rev_nat_id) {
		/* a backend answering a service connection: the client sees the frontend answer */
		if (lb_rev_nat(ctx, p, ct.rev_nat_id, ct.lb_flags) < 0)
			return send_drop(ctx, DROP_INVALID_PACKET, CONFIG.identity, 0, DIR_EGRESS);
		rev_nat_id = ct.rev_nat_id;
		ep = endpoint_lookup(&p->t.daddr, p->t.family);
	}
	/* a pod reaching itself through a service (hairpin) is delivered back to itself */
	bool hairpin = ((x.flags | ct.lb_flags) & LB_CONN_F_HAIRPIN) != 0;
	bool local = ep && (ep->endpoint_id != CONFIG.endpoint_id || hairpin);
	__u32 dst_identity = IDENTITY_WORLD;
	__be32 tunnel_endpoint = 0; /* the destination's node, when it is reached through the tunnel */
	bool native = false;        /* a remote pod reached over the underlay without masquerade */
	if (local) {
		dst_identity = ep->identity;
	} else {
		struct ipcache_value *remote = ipcache_lookup(&p->t.daddr, p->t.family);
		if (remote) {
			dst_identity = remote->identity;
			tunnel_endpoint = remote->tunnel_endpoint;
			native = (remote->flags & IPCACHE_F_NATIVE) != 0;
		}
	}
	/* Replies and related ICMP errors of an allowed connection pass; everything the initiator
	 * sends is checked, so a policy change cuts an established connection at its next packet. */
	if (ct.status == CT_NEW || ct.status == CT_ESTABLISHED) {
		bool fresh = ct.status == CT_NEW;
		struct policy_call egress = {CONFIG.endpoint_id, DIR_EGRESS, dst_identity, CONFIG.identity,
					     dst_identity, fresh};
		/* 1: an L7 rule of this pod's egress covers the connection (the proxy judges each request);
		 * 2: an egress DNS rule covers it (the DNS proxy judges each query) */
		int egress_redirect = enforce_policy(ctx, p, &egress);
		if (egress_redirect < 0)
			return TC_ACT_SHOT;
		/* A local destination is reached by redirect_peer, which skips its to-container
		 * program: its ingress policy is decided here, charged to that endpoint. */
		int redirect = egress_redirect == 1;
		if (local) {
			struct policy_call ingress = {ep->endpoint_id, DIR_INGRESS, CONFIG.identity,
						      CONFIG.identity, dst_identity, fresh};
			int ingress_redirect = enforce_policy(ctx, p, &ingress);
			if (ingress_redirect < 0)
				return TC_ACT_SHOT;
			redirect |= ingress_redirect;
		}
		if (fresh && ct_create(p, ctx->len, CONFIG.identity, x.rev_nat_id, x.flags) < 0)
			return send_drop(ctx, DROP_CT_MAP_INSERT_FAILED, CONFIG.identity, dst_identity, DIR_EGRESS);
		if (egress_redirect == 2) {
			/* an egress DNS rule covers the port: the node's DNS proxy takes the query */
			if (proxy_redirect_dns(ctx, p) < 0)
				return send_drop(ctx, DROP_PROXY_UNAVAILABLE, CONFIG.identity, dst_identity, DIR_EGRESS);
			send_trace(ctx, OBS_TO_STACK, ct.status, CONFIG.identity, dst_identity, DIR_EGRESS, ct.report,
				   rev_nat_id);
			return TC_ACT_OK;
		}
		if (redirect) {
			/* an L7 rule (this pod's egress, the local destination's ingress) covers the
			 * connection: the node's proxy takes it, or nobody does */
			if (proxy_redirect(ctx, p) < 0)
				return send_drop(ctx, DROP_PROXY_UNAVAILABLE, CONFIG.identity, dst_identity,
						 egress_redirect ? DIR_EGRESS : DIR_INGRESS);
			send_trace(ctx, OBS_TO_STACK, ct.status, CONFIG.identity, dst_identity, DIR_EGRESS, ct.report,
				   rev_nat_id);
			return TC_ACT_OK;
		}
	}
	if (local)
		return deliver_local(ctx, p, ep, &ct, dst_identity, rev_nat_id);
	if (tunnel_endpoint && CONFIG.tunnel_ifindex) {
		/* another node's pod: VXLAN to that node, our identity in the VNI */
		if (overlay_set_key(ctx, tunnel_endpoint, CONFIG.identity) < 0)
			return send_drop(ctx, DROP_INVALID_PACKET, CONFIG.identity, dst_identity, DIR_EGRESS);
		ctx->mark = DIRECT_MARK;
		send_trace(ctx, OBS_TO_OVERLAY, ct.status, CONFIG.identity, dst_identity, DIR_EGRESS, ct.report,
			   rev_nat_id);
		return bpf_redirect(CONFIG.tunnel_ifindex, 0);
	}
	if (native) {
		/* another node's pod in native routing: routed here, straight to the underlay device,
		 * not through the node's stack and netfilter, which would only pass it (lib/fib.h) */
		__u32 oif = 0;
		int verdict = fib_forward(ctx, p, &oif);
		if (verdict < 0)
			return send_drop(ctx, -verdict, CONFIG.identity, dst_identity, DIR_EGRESS);
		if (verdict != FIB_FALLBACK) {
			send_trace(ctx, OBS_TO_NETWORK, ct.status, CONFIG.identity, dst_identity, DIR_EGRESS, ct.report,
				   rev_nat_id);
			return verdict;
		}
	}
	if (ct.status == CT_REPLY || ct.status == CT_RELATED)
		ctx->mark = REPLY_MARK; /* the answer keeps the pod's address (no masquerade) */
	send_trace(ctx, OBS_TO_STACK, ct.status, CONFIG.identity, dst_identity, DIR_EGRESS, ct.report, rev_nat_id);
	return TC_ACT_OK;
}

__always_inline_fn bool dest_is_pod(const struct pkt *p)
{
	if (p->t.family == AF_INET_)
		return p->t.daddr.w[3] == CONFIG.pod_ipv4;
	return addr16_eq_cfg(p->t.daddr.b, CONFIG.pod_ipv6);
}

/* The second half of the hairpin (to_container): a packet for this pod that an ingress L7 rule
 * covers, which met cil_to_container at this veth's egress and was redirected to its ingress with
 * PROXY_MARK_HAIRPIN | the client's identity: assigned here to the node's proxy, and up the stack.
 *
 * Why a pod cannot forge this: its own packets cross from its netns into the node's through the
 * veth, which scrubs skb->mark (a netns change), so they arrive here with mark 0 whatever SO_MARK
 * or tc program the pod has. And only a packet to this pod's own address from any other address is
 * taken (a pod reaches its own address over its lo, never through eth0): even a forged one could
 * only have this pod's own ingress L7 rules judge it and reach this pod again. Nothing else of
 * cil_from_container runs for it: it is not the pod's traffic, and to_container already judged it
 * and recorded the connection (the proxy's replies to the client leave from the proxy's socket). */
__always_inline_fn int from_container_hairpin(struct __sk_buff *ctx, struct pkt *p)
{
	__u32 src_identity = ctx->mark & IDENTITY_MAX;

	ctx->mark = 0;
	if (parse_frame(ctx, p) != 0 || !dest_is_pod(p) || source_is_pod(p))
		return send_drop(ctx, DROP_INVALID_PACKET, src_identity, CONFIG.identity, DIR_INGRESS);
	/* addressed to the pod's MAC: the node's stack would leave a frame for another host alone */
	bpf_skb_change_type(ctx, PACKET_HOST_);
	if (proxy_redirect(ctx, p) < 0)
		return send_drop(ctx, DROP_PROXY_UNAVAILABLE, src_identity, CONFIG.identity, DIR_INGRESS);
	return TC_ACT_OK;
}

SEC("tc")
int cil_from_container(struct __sk_buff *ctx)
{
	struct pkt p = {};
	int ret;

	if ((ctx->mark & PROXY_MARK_MASK) == PROXY_MARK_HAIRPIN)
		return from_container_hairpin(ctx, &p);
	int proto = frame_proto(ctx);
	if (proto < 0)
		return send_drop(ctx, DROP_INVALID_PACKET, CONFIG.identity, 0, DIR_EGRESS);
	switch (proto) {
	case ETH_P_ARP:
		ret = arp_respond(ctx);
		return ret >= 0 ? ret : TC_ACT_OK;
	case ETH_P_IP:
		if (!(CONFIG.flags & EP_FLAG_HAS_IPV4))
			return send_drop(ctx, DROP_UNSUPPORTED_L3, CONFIG.identity, 0, DIR_EGRESS);
		if (parse_ipv4(ctx, &p) < 0)
			return send_drop(ctx, DROP_INVALID_PACKET, CONFIG.identity, 0, DIR_EGRESS);
		return from_container_ip(ctx, &p);
	case ETH_P_IPV6:
		if (!(CONFIG.flags & EP_FLAG_HAS_IPV6))
			return send_drop(ctx, DROP_UNSUPPORTED_L3, CONFIG.identity, 0, DIR_EGRESS);
		ret = ndp_respond(ctx);
		if (ret >= 0)
			return ret;
		if (parse_ipv6(ctx, &p) < 0)
			return send_drop(ctx, DROP_INVALID_PACKET, CONFIG.identity, 0, DIR_EGRESS);
		if (p.t.proto == IPPROTO_ICMPV6 && p.icmp_type == NDISC_NEIGHBOUR_ADVERTISEMENT_ &&
		    is_ipv6_link_local(&p.t.daddr))
			return TC_ACT_OK; /* the pod answers the node's own neighbour discovery (to_container
					   * lets it in): the node's stack reaches the pod, e.g. the DNS proxy's
					   * IPv6 answers, without an egress policy for it */
		return from_container_ip(ctx, &p);
	default:
		return send_drop(ctx, DROP_UNSUPPORTED_L2, CONFIG.identity, 0, DIR_EGRESS);
	}
}

/* `peer`: tail-called at a node device's ingress (bpf_host, bpf_overlay), where a packet can still
 * be assigned to the node's L7 proxy; *to_stack then says it was (pass it up the node's stack
 * instead of into the pod). */
__always_inline_fn int to_container(struct __sk_buff *ctx, bool peer, bool *to_stack)
{
	struct pkt p = {};

	int proto = frame_proto(ctx);
	if (proto < 0)
		return send_drop(ctx, DROP_INVALID_PACKET, 0, CONFIG.identity, DIR_INGRESS);
	if (proto == ETH_P_IP) {
		if (parse_ipv4(ctx, &p) < 0)
			return send_drop(ctx, DROP_INVALID_PACKET, 0, CONFIG.identity, DIR_INGRESS);
	} else if (proto == ETH_P_IPV6) {
		if (parse_ipv6(ctx, &p) < 0)
			return send_drop(ctx, DROP_INVALID_PACKET, 0, CONFIG.identity, DIR_INGRESS);
		if (p.t.proto == IPPROTO_ICMPV6 &&
		    (is_ipv6_link_local(&p.t.saddr) || p.icmp_type == NDISC_NEIGHBOUR_SOLICITATION_ ||
		     p.icmp_type == NDISC_NEIGHBOUR_ADVERTISEMENT_))
			return TC_ACT_OK; /* the node's own neighbour discovery (also from its router address:
					   * the answer to the pod's probe of its gateway), never policy's */
	} else {
		return TC_ACT_OK; /* ARP from the node's stack */
	}
	/* the node's device program translated this packet for a service frontend (lb.h) */
	__u16 lb_rev_nat_id = 0;
	if ((ctx->mark & LB_MARK_MASK) == LB_MARK_MAGIC) {
		lb_rev_nat_id = ctx->mark & 0xffff;
		ctx->mark = 0;
	}
	/* delivered from another node's tunnel (bpf_overlay.c): the identity its VNI carried */
	__u32 src_identity;
	bool from_proxy = false; /* the node's L7 proxy, connecting on the client's behalf (lib/proxy.h) */
	if ((ctx->mark & IDENTITY_MARK_MASK) == IDENTITY_MARK_MAGIC) {
		src_identity = ctx->mark & IDENTITY_MAX;
		ctx->mark = 0;
	} else if ((ctx->mark & PROXY_MARK_MASK) == PROXY_MARK_FROM) {
		src_identity = ctx->mark & IDENTITY_MAX;
		from_proxy = true;
		ctx->mark = 0;
	} else {
		src_identity = ipcache_identity(&p.t.saddr, p.t.family);
	}
	struct ct_result ct = {};
	lxc_ct_lookup(&p, ctx->len, &ct);
	if (ct.status == CT_REPLY && ct.rev_nat_id && !lb_rev_nat_id) {
		/* a backend on another node answering this pod's service connection (translated by our
		 * from-container): the pod sees the frontend answer. A local backend's replies were
		 * translated by its own from-container already, and no longer match the entry. */
		if (lb_rev_nat(ctx, &p, ct.rev_nat_id, ct.lb_flags) < 0)
			return send_drop(ctx, DROP_INVALID_PACKET, src_identity, CONFIG.identity, DIR_INGRESS);
	}
	if (peer && ct.status == CT_REPLY && (ct.lb_flags & LB_CONN_F_PROXY_UPSTREAM) && proxy_redirect(ctx, &p) == 0) {
		/* a server on another node answering the L7 proxy's upstream connection, which left from
		 * this pod's address (lib/proxy_upstream.h): to the proxy's socket, not into the pod */
		*to_stack = true;
		send_trace(ctx, OBS_TO_STACK, ct.status, src_identity, CONFIG.identity, DIR_INGRESS, ct.report, 0);
		return TC_ACT_OK;
	}
	if (ct.status == CT_NEW || ct.status == CT_ESTABLISHED) {
		bool fresh = ct.status == CT_NEW;
		struct policy_call ingress = {CONFIG.endpoint_id, DIR_INGRESS, src_identity, src_identity,
					      CONFIG.identity, fresh};
		int verdict = enforce_policy(ctx, &p, &ingress);
		if (verdict < 0)
			return TC_ACT_SHOT;
		/* L7-covered traffic that did not come through the proxy is handed to this node's proxy, so
		 * this pod's ingress L7 rules judge it with the source identity known here (the VNI's, or the
		 * ipcache's: another node's pod, the host, the world, a remote node); the proxy's upstream
		 * leg comes back through cil_to_container from_proxy. At a device's ingress (`peer`: from
		 * another node's pod) it is assigned here. At the veth's egress (the node's own stack: a
		 * process in the node's netns, a NodePort connection to this local backend, an endpoint
		 * without a tail-call entry) nothing can be assigned: the packet is hairpinned to this
		 * veth's ingress, where cil_from_container assigns it (from_container_hairpin), after a
		 * look that the proxy has a socket for it. No proxy: dropped, never let through. */
		if (verdict > 0 && !from_proxy) {
			if (verdict != 1 || (peer ? proxy_redirect(ctx, &p) < 0 : !proxy_has_socket(ctx, &p)))
				return send_drop(ctx, DROP_PROXY_UNAVAILABLE, src_identity, CONFIG.identity, DIR_INGRESS);
			*to_stack = true;
		}
		if (fresh && ct_create(&p, ctx->len, src_identity, lb_rev_nat_id,
				       from_proxy ? LB_CONN_F_PROXY_UPSTREAM : 0) < 0)
			return send_drop(ctx, DROP_CT_MAP_INSERT_FAILED, src_identity, CONFIG.identity, DIR_INGRESS);
		/* the proxy's port choice does not see a client pod's own connection to this pod: its
		 * upstream leg can land on that connection's tuple, whose entry then needs the flag too
		 * (this pod's replies go to the proxy's socket; the client's own packets are the proxy's
		 * already, at its from-container) */
		if (from_proxy && !fresh && !(ct.lb_flags & LB_CONN_F_PROXY_UPSTREAM))
			ct_add_lb_flags(&p, LB_CONN_F_PROXY_UPSTREAM);
	}
	send_trace(ctx, *to_stack ? OBS_TO_STACK : OBS_TO_ENDPOINT, ct.status, src_identity, CONFIG.identity,
		   DIR_INGRESS, ct.report, lb_rev_nat_id ? lb_rev_nat_id : ct.rev_nat_id);
	if (*to_stack && !peer) {
		/* the hairpin: to this veth's ingress (skb->mark survives a redirect within the netns) */
		ctx->mark = PROXY_MARK_HAIRPIN | (src_identity & IDENTITY_MAX);
		return (int)bpf_redirect(CONFIG.lxc_ifindex, BPF_F_INGRESS);
	}
	return TC_ACT_OK;
}

/* tc egress of the host-side veth: what the node's stack (or an older bpf_host) sends the pod */
SEC("tc")
int cil_to_container(struct __sk_buff *ctx)
{
	bool to_stack = false;
	return to_container(ctx, false, &to_stack);
}

/* Tail-called by bpf_host / bpf_overlay at their device's ingress (lib/deliver.h), the packet
 * already routed to this pod: the same checks, then straight into the pod's eth0, or (L7-covered,
 * or a reply of the proxy's upstream connection) up the node's stack to the proxy's socket. */
SEC("tc")
int cil_to_container_peer(struct __sk_buff *ctx)
{
	bool to_stack = false;
	int verdict = to_container(ctx, true, &to_stack);
	if (verdict != TC_ACT_OK || to_stack)
		return verdict; /* dropped, or the node's L7 proxy's (up the stack to its socket) */
	return (int)bpf_redirect_peer(CONFIG.lxc_ifindex, 0);
}
