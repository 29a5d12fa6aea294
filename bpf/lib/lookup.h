/* ipcache and endpoints map lookups. */
#pragma once

#include "common.h"
#include "identity.h"
#include "maps.h"
#include "parse.h"

__always_inline_fn __u32 ipcache_identity(const union addr16 *addr, __u8 family)
{
	struct ipcache_key key = {};
	key.family = family;
	key.addr = *addr;
	if (family == AF_INET_) {
		/* v4 lives in the last 4 bytes of the mapped form; the LPM key wants it first */
		key.addr.w[0] = addr->w[3];
		key.addr.w[1] = 0;
		key.addr.w[2] = 0;
		key.addr.w[3] = 0;
		key.prefixlen = 32 + 32;
	} else {
		key.prefixlen = 32 + 128;
	}
	struct ipcache_value *v = bpf_map_lookup_elem(&cilia_ipcache_v1, &key);
	return v ? v->identity : IDENTITY_WORLD;
}

__always_inline_fn struct endpoint_info *endpoint_lookup(const union addr16 *addr, __u8 family)
{
	struct endpoint_key key = {};
	key.family = family;
	key.addr = *addr;
	return bpf_map_lookup_elem(&cilia_endpoints_v1, &key);
}
