/* Policy enforcement: per-endpoint state, identity classes and an LPM of (class, protocol, port).
 *
 * The agent (cilia.policy.mapstate) compresses an endpoint's policy so that identities and ports
 * do not multiply:
 *   cilia_policy_state_v1  endpoint id -> flags (what to enforce, audit, active generation)
 *   cilia_policy_sel_v1    (identity, endpoint, direction+generation) -> identity class
 *   cilia_policy_v1        LPM (endpoint, class, direction+generation, protocol, port) -> verdict + rule id
 * Identities without a selector entry are class 0 (matched only by wildcard peers). A miss in
 * the LPM is the default deny. Entries are written under the inactive generation and made live
 * by one update of the state's generation bit, so a policy change is atomic per endpoint.
 * No state entry at all means the agent has not installed policy: fail closed. */
#pragma once

#include "common.h"
#include "direction.h"
#include "identity.h"
#include "parse.h"

/* policy_state.flags */
enum policy_state_flags {
	PSTATE_GENERATION = 1 << 0,
	PSTATE_INGRESS_LOOKUP = 1 << 1, /* else: ingress passes without a lookup */
	PSTATE_EGRESS_LOOKUP = 1 << 2,
	PSTATE_INGRESS_ENFORCED = 1 << 3,
	PSTATE_EGRESS_ENFORCED = 1 << 4,
	PSTATE_AUDIT = 1 << 5,
	PSTATE_ALLOW_HOST_INGRESS = 1 << 6,
	PSTATE_FAILED = 1 << 7, /* the agent could not install this endpoint's policy */
};

enum policy_verdict {
	VERDICT_ALLOW = 1,
	VERDICT_DENY = 2,
	VERDICT_DEFAULT_DENY = 3,
	VERDICT_NOT_INSTALLED = 4,
	VERDICT_REDIRECT = 5, /* policy_entry only: allowed, through the node's L7 proxy (lib/proxy.h) */
	VERDICT_REDIRECT_DNS = 6, /* policy_entry only: allowed, through the node's DNS proxy (lib/proxy.h) */
};

struct policy_state {
	__u32 flags;
	__u32 revision;
};

struct policy_sel_key {
	__u32 identity;
	__u16 endpoint_id;
	__u8 dir_gen; /* enum direction << 1 | generation */
	__u8 pad;
};

/* LPM: prefixlen counts from endpoint_id; 40 bits fix endpoint, class and direction+generation,
 * 48 the protocol, 64 the whole port. dport stays in network order so port prefixes work. */
struct policy_key {
	__u32 prefixlen;
	__u16 endpoint_id;
	__u16 class_id;
	__u8 dir_gen;
	__u8 proto;
	__be16 dport;
};

struct policy_entry {
	__u32 rule_id;
	__u8 verdict; /* VERDICT_ALLOW, VERDICT_DENY, VERDICT_REDIRECT or VERDICT_REDIRECT_DNS */
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct policy_state);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy_state_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_sel_key);
	__type(value, __u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy_sel_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy_v1 SEC(".maps");

struct policy_result {
	__u32 rule_id;
	__u8 verdict;
	__u8 enforced;
	__u8 audited; /* denied, but audit mode lets it through */
	__u8 redirect; /* allowed, but each request is the L7 proxy's (1) or query the DNS proxy's (2) to judge */
};

/* The port policy sees: L4 destination port, the ICMP type for ICMP, 0 otherwise. */
__always_inline_fn __be16 policy_port(const struct pkt *p)
{
	if (p->t.proto == IPPROTO_ICMP || p->t.proto == IPPROTO_ICMPV6)
		return bpf_htons(p->icmp_type);
	return p->t.dport;
}

/* Decide for endpoint `endpoint_id`, traffic in `dir` (enum direction) with `remote` as the peer's identity.
 * Returns true when the packet may pass (allowed, or denied in audit mode). */
__always_inline_fn bool policy_check(__u32 endpoint_id, __u8 dir, __u32 remote, const struct pkt *p,
				     struct policy_result *r)
{
	struct policy_state *st = bpf_map_lookup_elem(&cilia_policy_state_v1, &endpoint_id);
	r->rule_id = 0;
	r->audited = 0;
	r->redirect = 0;
	r->enforced = 1;
	if (!st || (st->flags & PSTATE_FAILED)) {
		r->verdict = VERDICT_NOT_INSTALLED;
		return false;
	}
	__u32 flags = st->flags;
	bool ingress = dir == DIR_INGRESS;
	r->enforced = (flags & (ingress ? PSTATE_INGRESS_ENFORCED : PSTATE_EGRESS_ENFORCED)) != 0;
	if (!(flags & (ingress ? PSTATE_INGRESS_LOOKUP : PSTATE_EGRESS_LOOKUP))) {
		r->verdict = VERDICT_ALLOW;
		return true;
	}
	if (ingress && remote == IDENTITY_HOST && (flags & PSTATE_ALLOW_HOST_INGRESS)) {
		r->verdict = VERDICT_ALLOW;
		return true;
	}
	__u8 dir_gen = (dir << 1) | (flags & PSTATE_GENERATION);
	struct policy_sel_key sk = {.identity = remote, .endpoint_id = endpoint_id, .dir_gen = dir_gen};
	__u32 *klass = bpf_map_lookup_elem(&cilia_policy_sel_v1, &sk);
	struct policy_key key = {
		.prefixlen = 64,
		.endpoint_id = endpoint_id,
		.class_id = klass ? *klass : 0,
		.dir_gen = dir_gen,
		.proto = p->t.proto,
		.dport = policy_port(p),
	};
	struct policy_entry *e = bpf_map_lookup_elem(&cilia_policy_v1, &key);
	if (e && (e->verdict == VERDICT_ALLOW || e->verdict == VERDICT_REDIRECT || e->verdict == VERDICT_REDIRECT_DNS)) {
		r->verdict = VERDICT_ALLOW;
		r->rule_id = e->rule_id;
		r->redirect = e->verdict == VERDICT_REDIRECT ? 1 : e->verdict == VERDICT_REDIRECT_DNS ? 2 : 0;
		return true;
	}
	r->verdict = e ? VERDICT_DENY : VERDICT_DEFAULT_DENY;
	r->rule_id = e ? e->rule_id : 0;
	if (flags & PSTATE_AUDIT) {
		r->audited = 1;
		return true;
	}
	return false;
}
