/* Connection tracking: one LRU table for TCP and one for everything else.
 *
 * An entry is keyed by the tuple of the connection's first packet. A packet whose tuple is
 * found is ESTABLISHED (same direction); one whose reversed tuple is found is a REPLY; an ICMP
 * error quoting a tracked tuple is RELATED; anything else creates an entry and is NEW (for TCP
 * any packet creates one, as in Cilium, so connections that predate the agent recover).
 * Expiry is in seconds of CLOCK_MONOTONIC: the agent's GC compares with time.monotonic(). */
#pragma once

#include "common.h"
#include "parse.h"

/* Status of a packet's connection (trace events carry it; 0: not looked up). */
enum ct_status {
	CT_NEW = 1,
	CT_ESTABLISHED = 2,
	CT_REPLY = 3,
	CT_RELATED = 4,
};

#define CT_LIFETIME_SYN 60
#define CT_LIFETIME_TCP 21600
#define CT_LIFETIME_CLOSE 10
#define CT_LIFETIME_NONTCP 60

struct ct_entry {
	__u64 expires;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u32 last_report;    /* seconds; aggregation */
	__u32 src_identity;   /* identity of the connection's initiator */
	__u8 tx_flags_seen;   /* TCP flags seen from the initiator */
	__u8 rx_flags_seen;   /* TCP flags seen from the responder */
	__u8 tx_flags_report; /* TCP flags already reported per direction */
	__u8 rx_flags_report;
	__u8 closing;
	__u8 lb_flags;      /* LB_CONN_F_* of a service connection */
	__u16 rev_nat_id;   /* service connection: replies get the frontend as their source */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, 1048576);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ct_tcp_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ct_any_v1 SEC(".maps");

__always_inline_fn void *ct_map(__u8 proto)
{
	return proto == IPPROTO_TCP ? (void *)&cilia_ct_tcp_v1 : (void *)&cilia_ct_any_v1;
}

__always_inline_fn void tuple_reverse(const struct tuple *in, struct tuple *out)
{
	out->saddr = in->daddr;
	out->daddr = in->saddr;
	out->sport = in->dport;
	out->dport = in->sport;
	out->proto = in->proto;
	out->family = in->family;
	out->pad = 0;
}

__always_inline_fn __u32 ct_lifetime(const struct ct_entry *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (e->closing)
		return CT_LIFETIME_CLOSE;
	if ((e->tx_flags_seen & TCPF_ACK) && (e->rx_flags_seen & TCPF_ACK))
		return CT_LIFETIME_TCP;
	return CT_LIFETIME_SYN;
}

struct ct_result {
	int status; /* enum ct_status */
	bool report; /* aggregation says this packet deserves a trace event */
	__u32 src_identity;
	__u16 rev_nat_id; /* the connection went to a service backend through the per-packet path */
	__u8 lb_flags;
};

/* Look the packet's connection up and update it. A packet of no known connection is CT_NEW and
 * nothing is created yet: policy decides first, then ct_create() records an allowed connection
 * (so denied packets leave no entry behind). `report` follows the monitor aggregation setting. */
__always_inline_fn void ct_lookup(struct pkt *p, __u32 len, __u32 aggregation, __u32 interval, struct ct_result *res)
{
	void *map = ct_map(p->t.proto);
	__u64 now = now_seconds();
	struct tuple rev = {};
	struct ct_entry *e;
	bool reply = false;

	res->report = aggregation == 0;
	if (p->is_icmp_error) {
		void *inner_map = ct_map(p->t_inner.proto);
		/* The quote is the packet the receiver of this error sent: its own forward tuple,
		 * which from our side may be either direction of a tracked connection. */
		if (bpf_map_lookup_elem(inner_map, &p->t_inner)) {
			res->status = CT_RELATED;
			res->report = true;
			return;
		}
		tuple_reverse(&p->t_inner, &rev);
		if (bpf_map_lookup_elem(inner_map, &rev)) {
			res->status = CT_RELATED;
			res->report = true;
			return;
		}
	}

	e = bpf_map_lookup_elem(map, &p->t);
	if (!e) {
		tuple_reverse(&p->t, &rev);
		e = bpf_map_lookup_elem(map, &rev);
		reply = e != NULL;
	}
	if (!e) {
		res->status = CT_NEW;
		res->report = true;
		return;
	}

	__u8 flags = p->tcp_flags;
	if (!reply && e->closing && (flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		/* A new connection on the tuple of one that closed (ports are reused fast): it is new,
		 * not a continuation. Forget the old entry so policy decides again and nothing of the old
		 * connection (a service's reverse NAT, its counters) carries over. */
		bpf_map_delete_elem(map, &p->t);
		res->status = CT_NEW;
		res->report = true;
		return;
	}
	if (reply) {
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, len);
		if (flags & ~e->rx_flags_seen)
			e->rx_flags_seen |= flags; /* write only on change: the line is shared by both directions */
		if (flags & ~e->rx_flags_report & (TCPF_SYN | TCPF_FIN | TCPF_RST)) {
			e->rx_flags_report |= flags;
			res->report = true;
		}
	} else {
		__sync_fetch_and_add(&e->tx_packets, 1);
		__sync_fetch_and_add(&e->tx_bytes, len);
		if (flags & ~e->tx_flags_seen)
			e->tx_flags_seen |= flags;
		if (flags & ~e->tx_flags_report & (TCPF_SYN | TCPF_FIN | TCPF_RST)) {
			e->tx_flags_report |= flags;
			res->report = true;
		}
	}
	if ((flags & (TCPF_FIN | TCPF_RST)) && !e->closing)
		e->closing = 1;
	/* The expiry moves once a second at most; skipping equal writes keeps the entry's cache
	 * line from bouncing between the CPUs of sender and receiver on every packet. */
	__u64 expires = now + ct_lifetime(e, p->t.proto);
	if (e->expires != expires)
		e->expires = expires;
	if (now - e->last_report >= interval) {
		e->last_report = now;
		res->report = true;
	}
	res->status = reply ? CT_REPLY : CT_ESTABLISHED;
	res->src_identity = e->src_identity;
	res->rev_nat_id = e->rev_nat_id;
	res->lb_flags = e->lb_flags;
}

/* Forget the connection of this packet's tuple (the initiator's direction). */
__always_inline_fn void ct_forget(const struct pkt *p)
{
	bpf_map_delete_elem(ct_map(p->t.proto), &p->t);
}

/* Add LB_CONN_F_* flags to the entry of an established connection (the one its tuple keys). */
__always_inline_fn void ct_add_lb_flags(const struct pkt *p, __u8 lb_flags)
{
	struct ct_entry *e = bpf_map_lookup_elem(ct_map(p->t.proto), &p->t);
	if (e)
		e->lb_flags |= lb_flags;
}

/* Record a new connection that policy allowed. Losing a race to another CPU is fine.
 * `rev_nat_id` (0: none) marks a connection to a service backend, whose replies get reverse NAT. */
__always_inline_fn int ct_create(struct pkt *p, __u32 len, __u32 src_identity, __u16 rev_nat_id, __u8 lb_flags)
{
	__u64 now = now_seconds();
	struct ct_entry fresh = {};
	fresh.tx_packets = 1;
	fresh.tx_bytes = len;
	fresh.tx_flags_seen = p->tcp_flags;
	fresh.tx_flags_report = p->tcp_flags;
	fresh.src_identity = src_identity;
	fresh.last_report = now;
	fresh.closing = (p->tcp_flags & (TCPF_FIN | TCPF_RST)) != 0;
	fresh.rev_nat_id = rev_nat_id;
	fresh.lb_flags = lb_flags;
	fresh.expires = now + ct_lifetime(&fresh, p->t.proto);
	int err = bpf_map_update_elem(ct_map(p->t.proto), &p->t, &fresh, BPF_NOEXIST);
	return err == -17 /* EEXIST */ ? 0 : err;
}
