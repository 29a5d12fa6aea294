/* metrics: per-CPU packets and bytes per (endpoint, reason, direction); reason 0 = forwarded.
 * v2: the direction became enum direction (0 = ingress, 1 = egress; v1 had 1 = egress, 2 = ingress). */
#pragma once

#include "common.h"
#include "direction.h"

struct metrics_key {
	__u16 endpoint_id;
	__u8 reason;    /* enum drop_reason */
	__u8 direction; /* enum direction */
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_metrics_v2 SEC(".maps");

__always_inline_fn void metrics_count(__u16 endpoint_id, __u8 reason, __u8 direction, __u32 len)
{
	struct metrics_key key = {.endpoint_id = endpoint_id, .reason = reason, .direction = direction};
	struct metrics_value *value = bpf_map_lookup_elem(&cilia_metrics_v2, &key);
	if (!value) {
		struct metrics_value zero = {};
		bpf_map_update_elem(&cilia_metrics_v2, &key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&cilia_metrics_v2, &key);
		if (!value)
			return;
	}
	value->packets += 1; /* per-CPU: no atomics needed */
	value->bytes += len;
}
