/* Trace events: a packet forwarded at an observation point, subject to monitor aggregation,
 * and counted in the metrics map as forwarded. */
#pragma once

#include "common.h"
#include "config.h"
#include "drop_reasons.h"
#include "events.h"
#include "metrics.h"

/* Observation points (subtype of a trace event). */
enum obs_point {
	OBS_TO_ENDPOINT = 1,
	OBS_TO_STACK = 2,
	OBS_FROM_ENDPOINT = 3,
	OBS_TO_HOST = 4,
	OBS_TO_OVERLAY = 5,   /* encapsulated towards another node (bpf_lxc.c) */
	OBS_FROM_OVERLAY = 6, /* from another node's tunnel to a local endpoint (bpf_overlay.c) */
	OBS_FROM_NETWORK = 7, /* from the underlay to a local endpoint (bpf_host.c, native routing) */
	OBS_TO_NETWORK = 8,   /* from a pod straight to the underlay (bpf_lxc.c, native routing, lib/fib.h) */
};

/* `report`: aggregation says this packet deserves an event. `rev_nat_id`: the service frontend the
 * packet was translated from or to (0: none). */
__always_inline_fn void send_trace(struct __sk_buff *ctx, __u8 obs, __u8 ct_status, __u32 src_identity,
				   __u32 dst_identity, __u16 direction, bool report, __u32 rev_nat_id)
{
	metrics_count(CONFIG.endpoint_id, REASON_FORWARDED, direction, ctx->len);
	if (!report)
		return;
	struct event *e = event_open(ctx, EVENT_TRACE, obs, 0, ct_status, src_identity, dst_identity, direction,
				     CONFIG.endpoint_id);
	if (!e)
		return;
	e->rev_nat_id = rev_nat_id;
	bpf_ringbuf_submit(e, 0);
}
