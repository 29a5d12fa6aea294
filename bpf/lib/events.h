/* Trace and drop events into the ring buffer, and the per-endpoint metrics they count.
 *
 * Record layout (168 bytes; cilia.monitor.events decodes it):
 *   0 ktime_ns u64 | 8 type u8 | 9 subtype u8 (observation point or drop reason) |
 *  10 source file id u8 | 11 ct status u8 | 12 source line u16 | 14 endpoint id u16 |
 *  16 ifindex u32 | 20 src identity u32 | 24 dst identity u32 | 28 original length u32 |
 *  32 captured length u16 | 34 flags u16 (1 = seen leaving the pod, 2 = entering it) |
 *  36 rule id u32 (policy drops and verdicts: the policy entry that decided, 0 = default deny;
 *     trace events of service traffic: the frontend's rev-NAT id) |
 *  40 the packet's first 128 bytes, from the Ethernet header
 * A policy-verdict event's subtype is the verdict (policy.h VERDICT_*), with 0x80 set when audit
 * mode let a denied packet through. */
#pragma once

#include "common.h"
#include "config.h"
#include "drop_reasons.h"
#include "maps.h"

#define EVENT_TRACE 1
#define EVENT_DROP 2
#define EVENT_POLICY_VERDICT 3

/* Observation points (subtype of a trace event). */
#define OBS_TO_ENDPOINT 1
#define OBS_TO_STACK 2
#define OBS_FROM_ENDPOINT 3
#define OBS_TO_HOST 4

#define DIR_EGRESS 1  /* packet leaving the pod (from-container) */
#define DIR_INGRESS 2 /* packet entering the pod (to-container) */

#define EVENT_CAPTURE 128

struct event {
	__u64 ktime;
	__u8 type;
	__u8 subtype;
	__u8 file;
	__u8 ct_status;
	__u16 line;
	__u16 endpoint_id;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 orig_len;
	__u16 cap_len;
	__u16 flags;
	__u32 rule_id;
	__u8 data[EVENT_CAPTURE];
};

__always_inline_fn void metrics_count(__u16 endpoint_id, __u8 reason, __u8 direction, __u32 len)
{
	struct metrics_key key = {.endpoint_id = endpoint_id, .reason = reason, .direction = direction};
	struct metrics_value *value = bpf_map_lookup_elem(&cilia_metrics_v1, &key);
	if (!value) {
		struct metrics_value zero = {};
		bpf_map_update_elem(&cilia_metrics_v1, &key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&cilia_metrics_v1, &key);
		if (!value)
			return;
	}
	value->packets += 1; /* per-CPU: no atomics needed */
	value->bytes += len;
}

__always_inline_fn void emit_event(struct __sk_buff *ctx, __u8 type, __u8 subtype, __u8 file, __u16 line,
				   __u8 ct_status, __u32 src_identity, __u32 dst_identity, __u16 direction,
				   __u16 endpoint_id, __u32 rule_id)
{
	struct event *e = bpf_ringbuf_reserve(&cilia_events_v1, sizeof(*e), 0);
	if (!e) {
		count_lost_event();
		return;
	}
	e->ktime = bpf_ktime_get_ns();
	e->type = type;
	e->subtype = subtype;
	e->file = file;
	e->ct_status = ct_status;
	e->line = line;
	e->endpoint_id = endpoint_id;
	e->ifindex = ctx->ifindex;
	e->src_identity = src_identity;
	e->dst_identity = dst_identity;
	e->orig_len = ctx->len;
	e->flags = direction;
	e->rule_id = rule_id;
	__u32 cap = ctx->len < EVENT_CAPTURE ? ctx->len : EVENT_CAPTURE;
	e->cap_len = 0;
	if (cap > 0 && cap <= EVENT_CAPTURE && bpf_skb_load_bytes(ctx, 0, e->data, cap) == 0)
		e->cap_len = cap;
	bpf_ringbuf_submit(e, 0);
}

/* `rev_nat_id`: the service frontend the packet was translated from or to (0: none). */
__always_inline_fn void send_trace(struct __sk_buff *ctx, __u8 obs, __u8 ct_status, __u32 src_identity,
				   __u32 dst_identity, __u16 direction, bool report, __u32 rev_nat_id)
{
	metrics_count(CONFIG.endpoint_id, REASON_FORWARDED, direction, ctx->len);
	if (report)
		emit_event(ctx, EVENT_TRACE, obs, SOURCE_FILE_ID, 0, ct_status, src_identity, dst_identity, direction,
			   CONFIG.endpoint_id, rev_nat_id);
}

#define VERDICT_AUDIT_FLAG 0x80

/* A policy decision on the first packet of a connection (allowed, denied or audited). */
__always_inline_fn void send_policy_verdict(struct __sk_buff *ctx, __u8 verdict, bool audited, __u32 rule_id,
					    __u32 src_identity, __u32 dst_identity, __u16 direction,
					    __u16 endpoint_id)
{
	emit_event(ctx, EVENT_POLICY_VERDICT, verdict | (audited ? VERDICT_AUDIT_FLAG : 0), SOURCE_FILE_ID, 0,
		   1 /* CT_NEW */, src_identity, dst_identity, direction, endpoint_id, rule_id);
}

/* The one exit for every drop: an event naming the reason and the line that decided it. */
#define send_drop(ctx, reason, src_identity, dst_identity, direction)                                          \
	({                                                                                                     \
		metrics_count(CONFIG.endpoint_id, (reason), (direction), (ctx)->len);                         \
		emit_event((ctx), EVENT_DROP, (reason), SOURCE_FILE_ID, __LINE__, 0, (src_identity),          \
			   (dst_identity), (direction), CONFIG.endpoint_id, 0);                                \
		TC_ACT_SHOT;                                                                                   \
	})

/* A policy drop, charged to the endpoint whose policy decided (the destination's, for its ingress). */
#define send_policy_drop(ctx, reason, src_identity, dst_identity, direction, endpoint_id, rule_id)             \
	({                                                                                                     \
		metrics_count((endpoint_id), (reason), (direction), (ctx)->len);                              \
		emit_event((ctx), EVENT_DROP, (reason), SOURCE_FILE_ID, __LINE__, 0, (src_identity),          \
			   (dst_identity), (direction), (endpoint_id), (rule_id));                             \
		TC_ACT_SHOT;                                                                                   \
	})
