/* endpoints: every local pod address -> where to deliver it, and its lookup. */
#pragma once

#include "common.h"

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

__always_inline_fn struct endpoint_info *endpoint_lookup(const union addr16 *addr, __u8 family)
{
	struct endpoint_key key = {};
	key.family = family;
	key.addr = *addr;
	return bpf_map_lookup_elem(&cilia_endpoints_v1, &key);
}
