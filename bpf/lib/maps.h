/* Every map the datapath shares between endpoints. All are pinned by name under the node's
 * bpffs directory, so each endpoint's program instance and a restarted agent see the same
 * maps. The `_v1` suffix is the layout version: a layout change means a new name. */
#pragma once

#include "common.h"

/* ipcache: longest-prefix match from an address to its security identity.
 * The LPM key's prefixlen counts the 32 bits of family+pad too, so v4 and v6 never collide. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	union addr16 addr;
};

struct ipcache_value {
	__u32 identity;
	__u32 tunnel_endpoint; /* multi-node: the node that owns the prefix (0 = local/none) */
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ipcache_v1 SEC(".maps");

/* endpoints: every local pod address -> where to deliver it. */
struct endpoint_key {
	__u8 family;
	__u8 pad[3];
	union addr16 addr;
};

struct endpoint_info {
	__u32 ifindex; /* host-side veth */
	__u16 endpoint_id;
	__u16 flags;
	__u8 mac[6];     /* the pod's eth0 */
	__u8 lxc_mac[6]; /* the host-side veth: the pod's gateway MAC */
	__u32 identity;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65535);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_endpoints_v1 SEC(".maps");

/* metrics: packets and bytes per (endpoint, reason, direction); reason 0 = forwarded. */
struct metrics_key {
	__u16 endpoint_id;
	__u8 reason;
	__u8 direction; /* 1 = egress (from the pod), 2 = ingress (to the pod) */
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
} cilia_metrics_v1 SEC(".maps");

/* events: trace and drop records for the agent (see events.h). */
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
static __always_inline void count_lost_event(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&cilia_events_lost_v1, &zero);
	if (lost)
		*lost += 1; /* per-CPU slot: no atomics needed */
}
