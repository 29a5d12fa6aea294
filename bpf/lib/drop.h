/* Drop notification: the one exit for every dropped packet, an event naming the reason and the
 * line that decided it, counted per reason in the metrics map. */
#pragma once

#include "common.h"
#include "config.h"
#include "drop_reasons.h"
#include "events.h"
#include "metrics.h"

/* `endpoint_id` is charged (metrics, event); `rule_id` names the policy entry of a policy drop. */
__always_inline_fn void drop_notify(struct __sk_buff *ctx, __u8 reason, __u16 line, __u32 src_identity,
				    __u32 dst_identity, __u16 direction, __u16 endpoint_id, __u32 rule_id)
{
	metrics_count(endpoint_id, reason, direction, ctx->len);
	struct event *e = event_open(ctx, EVENT_DROP, reason, line, 0, src_identity, dst_identity, direction,
				     endpoint_id);
	if (!e)
		return;
	e->rule_id = rule_id;
	bpf_ringbuf_submit(e, 0);
}

/* Macros, not functions, for the caller's __LINE__. They evaluate to TC_ACT_SHOT. */
#define send_drop(ctx, reason, src_identity, dst_identity, direction)                                          \
	({                                                                                                     \
		drop_notify((ctx), (reason), __LINE__, (src_identity), (dst_identity), (direction),           \
			    CONFIG.endpoint_id, 0);                                                            \
		TC_ACT_SHOT;                                                                                   \
	})

/* A policy drop, charged to the endpoint whose policy decided (the destination's, for its ingress). */
#define send_policy_drop(ctx, reason, src_identity, dst_identity, direction, endpoint_id, rule_id)             \
	({                                                                                                     \
		drop_notify((ctx), (reason), __LINE__, (src_identity), (dst_identity), (direction),           \
			    (endpoint_id), (rule_id));                                                         \
		TC_ACT_SHOT;                                                                                   \
	})
