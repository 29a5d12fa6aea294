/* Delivering a packet that came through another node's tunnel to a local endpoint, once its sender
 * is checked and its VNI read: the same code whether the node's VXLAN device decapsulated it
 * (bpf_overlay.c cil_from_overlay) or bpf_host did (lib/underlay.h, cil_from_netdev). The router's
 * hop (TTL, MACs), the source identity in the mark for the endpoint's to-container program, the
 * from-overlay trace, and the tail call into that program (lib/deliver.h). */
#pragma once

#include "common.h"
#include "deliver.h"
#include "direction.h"
#include "drop.h"
#include "endpoints.h"
#include "forward.h"
#include "overlay.h"
#include "parse.h"
#include "trace.h"

/* `p` is the inner packet, parsed; `ep` its local endpoint; `src_identity` the VNI, validated
 * (not unknown, <= IDENTITY_MAX) from a known node. Returns a tc verdict. */
__always_inline_fn int overlay_deliver(struct __sk_buff *ctx, const struct pkt *p, const struct endpoint_info *ep,
				       __u32 src_identity)
{
	int reason = forward_to_endpoint(ctx, p, ep);
	if (reason)
		return send_drop(ctx, reason, src_identity, ep->identity, DIR_INGRESS);
	ctx->mark = IDENTITY_MARK_MAGIC | src_identity;
	/* counted here; the event comes from the endpoint's to-container program */
	send_trace(ctx, OBS_FROM_OVERLAY, 0, src_identity, ep->identity, DIR_INGRESS, false, 0);
	return deliver_to_endpoint(ctx, ep);
}
