/* Delivery into a local pod from the node's devices (bpf_host.c from the underlay, bpf_overlay.c
 * from the tunnel): a tail call into that endpoint's own ingress program (bpf_lxc.c
 * cil_to_container_peer: its CONFIG, the same ingress policy and conntrack as cil_to_container),
 * which ends with bpf_redirect_peer() into the pod's eth0. The packet does not queue on the
 * host-side veth and pass the backlog a second time, and ingress policy stays in one place.
 *
 *   cilia_ingress_calls_v1  endpoint id -> that endpoint's cil_to_container_peer (the agent writes
 *                           it when it attaches the endpoint and deletes it on detach)
 *
 * An endpoint without an entry (attached by an agent from before, or being re-attached) is reached
 * as before: redirected to the egress of its host-side veth, where cil_to_container runs. */
#pragma once

#include "common.h"
#include "endpoints.h"

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ingress_calls_v1 SEC(".maps");

#define PACKET_HOST_ 0

/* The packet is routed to the endpoint already (TTL, MACs: lib/forward.h). Returns a tc verdict. */
__always_inline_fn int deliver_to_endpoint(struct __sk_buff *ctx, const struct endpoint_info *ep)
{
	/* the pod's stack takes only packets for it: a tunnelled frame was addressed to the sending
	 * node's gateway MAC, and redirect_peer does not classify it again as a veth would */
	bpf_skb_change_type(ctx, PACKET_HOST_);
	bpf_tail_call(ctx, &cilia_ingress_calls_v1, ep->endpoint_id);
	return (int)bpf_redirect(ep->ifindex, 0);
}
