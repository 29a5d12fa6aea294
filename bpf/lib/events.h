/* The ring buffer every program reports into, the lost-event counter, and the record that trace,
 * drop and policy-verdict events share (cilia.monitor.events decodes it; the contract test checks
 * the Python layout against this BTF). bpf_sock.c's record is lib/sock_event.h.
 *
 * A program defines SOURCE_FILE_ID (enum source_file) before including this header: each event
 * names the file and, for drops, the line that sent it. */
#pragma once

#include "common.h"
#include "direction.h"

/* The interface an event names: the device the program runs on, unless the program file says
 * otherwise (bpf_lxc.c: its pod's veth, also when bpf_host tail-called it at the underlay). */
#ifndef EVENT_IFINDEX
#define EVENT_IFINDEX(ctx) ((ctx)->ifindex)
#endif

#ifndef SOURCE_FILE_ID
#error "define SOURCE_FILE_ID (enum source_file) before including lib/events.h"
#endif

enum event_type {
	EVENT_TRACE = 1,
	EVENT_DROP = 2,
	EVENT_POLICY_VERDICT = 3,
	EVENT_SOCK = 4, /* lib/sock_event.h: a socket-level service translation */
};

enum source_file {
	SOURCE_FILE_LXC = 1,  /* bpf_lxc.c */
	SOURCE_FILE_HOST = 2, /* bpf_host.c */
	SOURCE_FILE_SOCK = 3, /* bpf_sock.c */
	SOURCE_FILE_OVERLAY = 4, /* bpf_overlay.c */
};

#define EVENT_CAPTURE 128

struct event {
	__u64 ktime;
	__u8 type;    /* enum event_type */
	__u8 subtype; /* trace: enum obs_point; drop: enum drop_reason; policy verdict: enum policy_verdict */
	__u8 file;    /* enum source_file */
	__u8 ct_status;
	__u16 line; /* drops: the source line that decided */
	__u16 endpoint_id;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 orig_len;
	__u16 cap_len;
	__u16 direction; /* enum direction */
	/* one slot, two meanings: which one the event type says */
	union {
		__u32 rule_id;    /* drop, policy verdict: the policy entry that decided (0: default deny) */
		__u32 rev_nat_id; /* trace: the service frontend the packet was translated from or to (0: none) */
	};
	__u8 data[EVENT_CAPTURE]; /* the packet's first bytes, from the Ethernet header */
};

/* events: trace, drop, policy-verdict and sock records for the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_events_v1 SEC(".maps");

/* events_lost: per-CPU count of events the ring buffer had no room for (the agent sums it). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_events_lost_v1 SEC(".maps");

/* An event the ring buffer had no room for: counted so `cilia status` can say how many were lost. */
__always_inline_fn void count_lost_event(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&cilia_events_lost_v1, &zero);
	if (lost)
		*lost += 1; /* per-CPU slot: no atomics needed */
}

/* Reserve and fill a record with the packet's first bytes; the caller sets the slot its type
 * names (rule_id or rev_nat_id, zero otherwise) and submits. NULL when the ring was full (counted). */
__always_inline_fn struct event *event_open(struct __sk_buff *ctx, __u8 type, __u8 subtype, __u16 line,
					    __u8 ct_status, __u32 src_identity, __u32 dst_identity,
					    __u16 direction, __u16 endpoint_id)
{
	struct event *e = bpf_ringbuf_reserve(&cilia_events_v1, sizeof(*e), 0);
	if (!e) {
		count_lost_event();
		return NULL;
	}
	e->ktime = bpf_ktime_get_ns();
	e->type = type;
	e->subtype = subtype;
	e->file = SOURCE_FILE_ID;
	e->ct_status = ct_status;
	e->line = line;
	e->endpoint_id = endpoint_id;
	e->ifindex = EVENT_IFINDEX(ctx);
	e->src_identity = src_identity;
	e->dst_identity = dst_identity;
	e->orig_len = ctx->len;
	e->direction = direction;
	e->rule_id = 0;
	__u32 cap = ctx->len < EVENT_CAPTURE ? ctx->len : EVENT_CAPTURE;
	e->cap_len = 0;
	if (cap > 0 && cap <= EVENT_CAPTURE && bpf_skb_load_bytes(ctx, 0, e->data, cap) == 0)
		e->cap_len = cap;
	return e;
}
