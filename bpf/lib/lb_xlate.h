/* The per-packet service path for tc programs: a packet to a service frontend is given a
 * backend (kept for the whole connection in cilia_lb_conn_v1) and DNATed to it before
 * conntrack and policy see it, so policy decides on the backend, not the service address.
 * Replies are reverse-NATed by the program that sees them leave the backend (bpf_lxc.c), using
 * the rev-NAT id conntrack stored for the connection. */
#pragma once

#include "common.h"
#include "drop_reasons.h"
#include "host_config.h"
#include "lb.h"
#include "nat.h"
#include "parse.h"

struct lb_xlate {
	__u16 rev_nat_id; /* 0: the packet was not for a service */
	__u8 flags;       /* LB_CONN_F_* */
	__u8 no_backend;  /* a frontend with no backend to take a new connection */
};

struct lb_select_opts {
	bool external_only; /* only frontends reachable from outside (the node's device program) */
	bool maglev;        /* choose by the Maglev table when the frontend has one */
};

/* Maglev selection (external frontends, the node's device program): M and the seed come from
 * HOST (lib/host_config.h), a load-time constant every includer has, so what is compiled does not
 * depend on include order. Pod programs leave HOST zero and never set lb_select_opts.maglev. */
__always_inline_fn __u32 lb_select_maglev(const struct tuple *t, __u32 rev_nat_id)
{
	__u32 key = rev_nat_id;
	__u32 *table = bpf_map_lookup_elem(&cilia_lb_maglev_v1, &key);
	__u32 size = HOST.maglev_size;
	if (!table || !size)
		return 0;
	__u32 index = lb_tuple_hash(t, HOST.maglev_seed) % size;
	if (index >= HOST.maglev_size)
		return 0;
	return table[index];
}

/* Translate the packet if it is for a service. Returns 0 when it passes on (translated or not a
 * service packet), a DROP_* reason otherwise; x->no_backend says the frontend had no backend. */
__always_inline_fn int lb_xlate_packet(struct __sk_buff *ctx, struct pkt *p, const struct lb_select_opts *o,
				       struct lb_xlate *x)
{
	if ((p->t.proto != IPPROTO_TCP && p->t.proto != IPPROTO_UDP) || p->is_icmp_error)
		return 0;
	struct lb_service_value *svc = lb_lookup_service(&p->t.daddr, p->t.dport, p->t.proto);
	if (!svc || (o->external_only && !(svc->flags & LB_SVC_F_EXTERNAL)))
		return 0;
	struct tuple orig = p->t;
	__u16 rev_nat_id = svc->rev_nat_id;
	bool syn = p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
	__u32 backend_id = 0;
	bool remember = true;
	struct lb_conn *conn = bpf_map_lookup_elem(&cilia_lb_conn_v1, &orig);
	if (conn && conn->rev_nat_id == rev_nat_id) {
		/* an established connection keeps its backend while it exists, even terminating;
		 * a new SYN on a reused tuple is a new connection and needs an active one */
		struct lb_backend *kept = lb_backend(conn->backend_id);
		if (kept && (!syn || kept->state == LB_BACKEND_ACTIVE)) {
			backend_id = conn->backend_id;
			remember = false;
		}
	}
	if (!backend_id) {
		struct lb_affinity_key akey = {};
		bool affinity = (svc->flags & LB_SVC_F_AFFINITY) != 0;
		if (affinity) {
			akey.client = p->t.saddr;
			akey.rev_nat_id = rev_nat_id;
			backend_id = lb_affinity_get(&akey, svc);
		}
		if (!backend_id && o->maglev && (svc->flags & LB_SVC_F_MAGLEV))
			backend_id = lb_select_maglev(&orig, rev_nat_id);
		if (!backend_id)
			backend_id = lb_select_random(&orig.daddr, orig.dport, orig.proto, svc);
		if (!backend_id || !lb_backend_selectable(backend_id)) {
			x->no_backend = 1;
			return DROP_NO_SERVICE;
		}
		if (affinity)
			lb_affinity_set(&akey, backend_id);
	}
	struct lb_backend *b = lb_backend(backend_id);
	if (!b) {
		x->no_backend = 1;
		return DROP_NO_SERVICE;
	}
	union addr16 to = b->address;
	__be16 to_port = b->port;
	__u8 flags = 0;
	if (p->t.family == AF_INET_ && to.w[3] == p->t.saddr.w[3])
		flags |= LB_CONN_F_HAIRPIN;
	if (nat_rewrite(ctx, p, NAT_DST, &to, to_port) < 0)
		return DROP_INVALID_PACKET;
	if (flags & LB_CONN_F_HAIRPIN) {
		union addr16 loopback;
		addr_from_v4(&loopback, LB_HAIRPIN_V4);
		if (nat_rewrite(ctx, p, NAT_SRC, &loopback, p->t.sport) < 0)
			return DROP_INVALID_PACKET;
	}
	if (remember) {
		struct lb_conn fresh = {.backend_id = backend_id, .rev_nat_id = rev_nat_id, .flags = flags};
		bpf_map_update_elem(&cilia_lb_conn_v1, &orig, &fresh, BPF_ANY);
	}
	x->rev_nat_id = rev_nat_id;
	x->flags = flags;
	return 0;
}

/* A reply leaving a backend: its source becomes the frontend again (and, for a pod that reached
 * itself, the destination becomes the pod again). Returns <0 on a rewrite failure. */
__always_inline_fn int lb_rev_nat(struct __sk_buff *ctx, struct pkt *p, __u32 rev_nat_id, __u8 lb_flags)
{
	struct lb_rev_nat *rn = bpf_map_lookup_elem(&cilia_lb_revnat_v1, &rev_nat_id);
	if (!rn)
		return 0; /* the service is gone: the reply leaves as it is */
	union addr16 from = rn->address;
	union addr16 self = p->t.saddr; /* hairpin: the backend is also the client */
	if (nat_rewrite(ctx, p, NAT_SRC, &from, rn->port) < 0)
		return -1;
	/* the pod was both ends: it answered the loopback source, which stands for itself */
	if ((lb_flags & LB_CONN_F_HAIRPIN) && nat_rewrite(ctx, p, NAT_DST, &self, p->t.dport) < 0)
		return -1;
	return 0;
}

/* A TCP SYN to a frontend without backends becomes a RST back to its sender, so connect() fails
 * at once instead of waiting out its retries. Addresses and ports are swapped (which leaves the
 * checksums as they are); sequence numbers and flags change with a checksum update. The caller
 * redirects the packet back where it came from. */
__always_inline_fn int lb_reject_syn(struct __sk_buff *ctx, struct pkt *p)
{
	struct ethhdr eth;
	struct tcphdr th;
	if (bpf_skb_load_bytes(ctx, 0, &eth, sizeof(eth)) < 0 || bpf_skb_load_bytes(ctx, p->l4_off, &th, sizeof(th)) < 0)
		return -1;
	__u8 mac[6];
	__builtin_memcpy(mac, eth.h_source, 6);
	__builtin_memcpy(eth.h_source, eth.h_dest, 6);
	__builtin_memcpy(eth.h_dest, mac, 6);
	if (bpf_skb_store_bytes(ctx, 0, &eth, sizeof(eth), 0) < 0)
		return -1;
	if (p->t.family == AF_INET_) {
		__be32 s = p->t.saddr.w[3], d = p->t.daddr.w[3];
		if (bpf_skb_store_bytes(ctx, ETH_HLEN_ + offsetof(struct iphdr, saddr), &d, 4, 0) < 0 ||
		    bpf_skb_store_bytes(ctx, ETH_HLEN_ + offsetof(struct iphdr, daddr), &s, 4, 0) < 0)
			return -1;
	} else {
		union addr16 s = p->t.saddr, d = p->t.daddr;
		if (bpf_skb_store_bytes(ctx, ETH_HLEN_ + offsetof(struct ipv6hdr, saddr), d.b, 16, 0) < 0 ||
		    bpf_skb_store_bytes(ctx, ETH_HLEN_ + offsetof(struct ipv6hdr, daddr), s.b, 16, 0) < 0)
			return -1;
	}
	/* seq, ack_seq and the data-offset/flags word; then the rewritten header in one store */
	__u32 old_words[3], new_words[3];
	__builtin_memcpy(old_words, (__u8 *)&th + 4, 12);
	__be16 sport = th.source;
	th.source = th.dest;
	th.dest = sport;
	th.ack_seq = bpf_htonl(bpf_ntohl(th.seq) + 1);
	th.seq = 0;
	((__u8 *)&th)[13] = TCPF_RST | TCPF_ACK;
	th.window = 0;
	__builtin_memcpy(new_words, (__u8 *)&th + 4, 12);
	__s64 diff = bpf_csum_diff(old_words, 12, new_words, 12, 0);
	if (diff < 0 || bpf_l4_csum_replace(ctx, p->l4_off + offsetof(struct tcphdr, check), 0, diff, 0) < 0)
		return -1;
	/* the checksum field was just updated in the packet: keep it when storing the header */
	__sum16 check;
	if (bpf_skb_load_bytes(ctx, p->l4_off + offsetof(struct tcphdr, check), &check, 2) < 0)
		return -1;
	th.check = check;
	return bpf_skb_store_bytes(ctx, p->l4_off, &th, sizeof(th), 0);
}
