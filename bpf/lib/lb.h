/* Service load balancing: the maps and the backend selection shared by the socket hooks
 * (bpf_sock.c), the per-packet path of the pod programs (bpf_lxc.c) and the node's device
 * program (bpf_host.c). The agent (cilia.maps.lb) writes every map; the datapath only reads,
 * except the affinity, connection and socket tables it keeps itself.
 *
 *   cilia_lb_services_v1  (frontend address, port, protocol, slot) -> slot 0: the service
 *                         (active backend count, rev-NAT id, flags, affinity timeout);
 *                         slot 1..count: one active backend id each. Terminating and
 *                         quarantined backends have no slot, so they get no new connections.
 *   cilia_lb_backends_v1  backend id -> address, port, state (kept while connections may use it)
 *   cilia_lb_revnat_v1    rev-NAT id -> the frontend address and port replies are rewritten to
 *   cilia_lb_affinity_v1  (client, rev-NAT id) -> backend id and when it was last used (LRU)
 *   cilia_lb_conn_v1      a per-packet connection's tuple to the frontend -> its backend (LRU),
 *                         so every packet of a connection goes to the backend its first got
 *   cilia_lb_sock_v1      (socket cookie, backend address, port) -> frontend (socket path, UDP
 *                         replies and getpeername)
 *   cilia_lb_maglev_v1    rev-NAT id -> Maglev lookup table of M backend ids (external frontends)
 *
 * The slot-0-plus-slots layout keeps a service's lookup to two hash probes whatever the number
 * of services: the cost per connection does not grow with the size of the cluster. */
#pragma once

#include "common.h"
#include "lb_flags.h"
#include "parse.h"

/* lb_service_value.flags */
enum lb_svc_flags {
	LB_SVC_F_EXTERNAL = 1 << 0, /* NodePort, LoadBalancer or externalIP: reachable from outside */
	LB_SVC_F_AFFINITY = 1 << 1, /* sessionAffinity ClientIP; affinity_timeout seconds */
	LB_SVC_F_MAGLEV = 1 << 2,   /* a Maglev table exists under the rev-NAT id */
};

/* lb_backend.state */
enum lb_backend_state {
	LB_BACKEND_ACTIVE = 0,
	LB_BACKEND_TERMINATING = 1,
	LB_BACKEND_QUARANTINED = 2,
};


/* The node's device program marks a packet it translated so the backend's to-container program
 * can record the frontend in conntrack: magic in the high half, rev-NAT id in the low half. */
#define LB_MARK_MAGIC 0x0c1a0000
#define LB_MARK_MASK 0xffff0000

enum lb_sizes {
	LB_MAP_MAX = 65536, /* default of --bpf-lb-map-max: the agent sizes the maps at load */
	LB_CONN_MAX = 262144,
	LB_MAGLEV_DEFAULT_SIZE = 16381, /* M, a prime: the agent sets the real one at load */
};

/* A pod that reaches itself through a service (hairpin) sees this source instead of its own
 * address, which its stack would drop as a martian. */
#define LB_HAIRPIN_V4 bpf_htonl(0xa9fe2a01) /* 169.254.42.1 */

struct lb_service_key {
	union addr16 address; /* frontend, v4-mapped for IPv4 */
	__be16 dport;
	__u16 slot; /* 0: the service itself; 1..count: its active backends */
	__u8 proto;
	__u8 pad[3];
};

struct lb_service_value {
	__u32 backend_id;       /* slot > 0 */
	__u32 affinity_timeout; /* slot 0: seconds */
	__u16 count;            /* slot 0: active backends */
	__u16 rev_nat_id;
	__u8 flags; /* LB_SVC_F_* */
	__u8 pad[3];
};

struct lb_backend {
	union addr16 address;
	__be16 port;
	__u8 proto;
	__u8 state; /* LB_BACKEND_* */
};

struct lb_rev_nat {
	union addr16 address;
	__be16 port;
	__u16 pad;
};

struct lb_affinity_key {
	union addr16 client; /* client address; on the socket path the netns cookie in w[0..1] */
	__u32 rev_nat_id;
	__u32 netns; /* 1: `client` is a netns cookie (socket path), 0: an address (per-packet) */
};

struct lb_affinity_value {
	__u32 backend_id;
	__u32 last_used; /* seconds, CLOCK_MONOTONIC */
};

struct lb_conn {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u8 flags; /* LB_CONN_F_* */
	__u8 pad;
};

struct lb_sock_key {
	__u64 cookie;
	union addr16 address; /* the backend */
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct lb_sock_value {
	union addr16 address; /* the frontend */
	__be16 port;
	__u16 rev_nat_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_service_key);
	__type(value, struct lb_service_value);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_services_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_backends_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_rev_nat);
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_revnat_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_value);
	__uint(max_entries, LB_MAP_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_affinity_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tuple);
	__type(value, struct lb_conn);
	__uint(max_entries, LB_CONN_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_conn_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_sock_key);
	__type(value, struct lb_sock_value);
	__uint(max_entries, LB_CONN_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_sock_v1 SEC(".maps");

/* The value is M backend ids; M (a prime, LB_MAGLEV_DEFAULT_SIZE by default) is chosen by the agent, which sets the
 * value size of every object it loads before the load. No BTF value type: its size varies. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, LB_MAGLEV_DEFAULT_SIZE * sizeof(__u32));
	__uint(max_entries, LB_MAP_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_maglev_v1 SEC(".maps");

__always_inline_fn struct lb_service_value *lb_lookup_service(const union addr16 *addr, __be16 port, __u8 proto)
{
	struct lb_service_key key = {};
	key.address = *addr;
	key.dport = port;
	key.proto = proto;
	return bpf_map_lookup_elem(&cilia_lb_services_v1, &key);
}

__always_inline_fn __u32 lb_slot_backend(const union addr16 *addr, __be16 port, __u8 proto, __u16 slot)
{
	struct lb_service_key key = {};
	key.address = *addr;
	key.dport = port;
	key.proto = proto;
	key.slot = slot;
	struct lb_service_value *v = bpf_map_lookup_elem(&cilia_lb_services_v1, &key);
	return v ? v->backend_id : 0;
}

__always_inline_fn struct lb_backend *lb_backend(__u32 backend_id)
{
	return backend_id ? bpf_map_lookup_elem(&cilia_lb_backends_v1, &backend_id) : NULL;
}

__always_inline_fn bool lb_backend_selectable(__u32 backend_id)
{
	struct lb_backend *b = lb_backend(backend_id);
	return b && b->state == LB_BACKEND_ACTIVE;
}

/* A random active backend of the service (in-cluster traffic). */
__always_inline_fn __u32 lb_select_random(const union addr16 *addr, __be16 port, __u8 proto,
					  const struct lb_service_value *svc)
{
	if (!svc->count)
		return 0;
	__u16 slot = (bpf_get_prandom_u32() % svc->count) + 1;
	return lb_slot_backend(addr, port, proto, slot);
}

/* ClientIP session affinity: the backend this client had, if still active and used within
 * the service's timeout. */
__always_inline_fn __u32 lb_affinity_get(const struct lb_affinity_key *key, const struct lb_service_value *svc)
{
	struct lb_affinity_value *v = bpf_map_lookup_elem(&cilia_lb_affinity_v1, key);
	if (!v)
		return 0;
	__u32 now = (__u32)now_seconds();
	if (now - v->last_used > svc->affinity_timeout || !lb_backend_selectable(v->backend_id))
		return 0;
	if (v->last_used != now)
		v->last_used = now;
	return v->backend_id;
}

__always_inline_fn void lb_affinity_set(const struct lb_affinity_key *key, __u32 backend_id)
{
	struct lb_affinity_value v = {.backend_id = backend_id, .last_used = (__u32)now_seconds()};
	bpf_map_update_elem(&cilia_lb_affinity_v1, key, &v, BPF_ANY);
}

/* A 32-bit mix of the flow tuple (Bob Jenkins' final mix), seeded: Maglev's packet hash. */
#define LB_ROT(x, k) (((x) << (k)) | ((x) >> (32 - (k))))
__always_inline_fn __u32 lb_mix(__u32 a, __u32 b, __u32 c)
{
	c ^= b;
	c -= LB_ROT(b, 14);
	a ^= c;
	a -= LB_ROT(c, 11);
	b ^= a;
	b -= LB_ROT(a, 25);
	c ^= b;
	c -= LB_ROT(b, 16);
	a ^= c;
	a -= LB_ROT(c, 4);
	b ^= a;
	b -= LB_ROT(a, 14);
	c ^= b;
	c -= LB_ROT(b, 24);
	return c;
}

__always_inline_fn __u32 lb_tuple_hash(const struct tuple *t, __u32 seed)
{
	__u32 a = t->saddr.w[0] ^ t->saddr.w[1] ^ t->saddr.w[2] ^ t->saddr.w[3];
	__u32 b = t->daddr.w[0] ^ t->daddr.w[1] ^ t->daddr.w[2] ^ t->daddr.w[3];
	__u32 c = ((__u32)t->sport << 16 | t->dport) ^ ((__u32)t->proto << 24) ^ seed;
	return lb_mix(a + 0x9e3779b9, b + 0x9e3779b9, c);
}
