/* ipcache: longest-prefix match from an address to its security identity (and, for a prefix on another
 * node in tunnel mode, that node's underlay IPv4), and its lookup.
 * The LPM key's prefixlen counts the 32 bits of family+pad too, so v4 and v6 never collide.
 * Pinned by name like every shared map: the `_v1` suffix is the layout version, and a layout or
 * meaning change means a new name. */
#pragma once

#include "common.h"
#include "identity.h"

struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	union addr16 addr;
};

/* ipcache_value.flags */
enum ipcache_flags {
	IPCACHE_F_CLUSTER = 1 << 0, /* written by the agent's cluster sync (remote endpoint or node) */
	IPCACHE_F_NATIVE = 1 << 1,  /* native routing, never masqueraded: a pod's program forwards it itself (lib/fib.h) */
	IPCACHE_F_FQDN = 1 << 2,    /* written by the DNS proxy: an IP an allowed DNS answer named (FQDN identity) */
};

struct ipcache_value {
	__u32 identity;
	__be32 tunnel_endpoint; /* tunnel mode: the underlay IPv4 of the node that owns the prefix (0 = none) */
	__u32 flags;            /* enum ipcache_flags */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ipcache_v1 SEC(".maps");

__always_inline_fn struct ipcache_value *ipcache_lookup(const union addr16 *addr, __u8 family)
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
	return bpf_map_lookup_elem(&cilia_ipcache_v1, &key);
}

__always_inline_fn __u32 ipcache_identity(const union addr16 *addr, __u8 family)
{
	struct ipcache_value *v = ipcache_lookup(addr, family);
	return v ? v->identity : IDENTITY_WORLD;
}
