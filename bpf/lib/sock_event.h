/* Sock events: bpf_sock.c's ring-buffer record of a socket-level service translation
 * (cilia.monitor.events.decode_sock decodes it; the contract test checks the layout). */
#pragma once

#include "common.h"
#include "events.h"
#include "lb.h"

/* The hook that translated (sock_event.point). */
enum sock_xlate_point {
	SOCK_XLATE_FWD = 1, /* connect / sendmsg: frontend -> backend */
};

struct sock_event {
	__u64 ktime;
	__u8 type;  /* EVENT_SOCK */
	__u8 point; /* enum sock_xlate_point */
	__u8 proto;
	__u8 family;
	__u16 rev_nat_id;
	__u16 pad;
	__u64 cookie;
	__u64 netns;
	__u64 cgroup;
	union addr16 frontend;
	union addr16 backend;
	__be16 frontend_port;
	__be16 backend_port;
	__u32 backend_id;
	__u64 pad2;
};

__always_inline_fn void sock_event(struct bpf_sock_addr *ctx, __u8 family, const union addr16 *frontend,
				   __be16 frontend_port, const struct lb_backend *b, __u32 backend_id, __u16 rev_nat_id)
{
	struct sock_event *e = bpf_ringbuf_reserve(&cilia_events_v1, sizeof(*e), 0);
	if (!e) {
		count_lost_event();
		return;
	}
	e->ktime = bpf_ktime_get_ns();
	e->type = EVENT_SOCK;
	e->point = SOCK_XLATE_FWD;
	e->proto = ctx->protocol;
	e->family = family;
	e->rev_nat_id = rev_nat_id;
	e->pad = 0;
	e->cookie = bpf_get_socket_cookie(ctx);
	e->netns = bpf_get_netns_cookie(ctx);
	e->cgroup = bpf_get_current_cgroup_id();
	e->frontend = *frontend;
	e->backend = b->address;
	e->frontend_port = frontend_port;
	e->backend_port = b->port;
	e->backend_id = backend_id;
	e->pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}
