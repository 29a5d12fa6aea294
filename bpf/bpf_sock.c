/* bpf_sock: socket-level service load balancing, attached to the node's cgroup (never the root).
 *
 *   cil_sock4_connect / cil_sock6_connect      connect(): a service frontend becomes a backend,
 *                                              once per connection, before any packet exists
 *   cil_sock4_sendmsg / cil_sock6_sendmsg      the same for unconnected UDP sends
 *   cil_sock4_recvmsg / cil_sock6_recvmsg      UDP replies: the backend becomes the frontend again
 *   cil_sock4_getpeername / cil_sock6_getpeername  the peer reads as the frontend
 *
 * Connected sockets never carry the service address on the wire, so the per-packet path, NAT and
 * conntrack stay out of their way. A frontend without active backends refuses the connect at
 * once (ECONNREFUSED). Each translation is reported as a sock event for flows. */
#define SOURCE_FILE_ID SOURCE_FILE_SOCK

#include "lib/common.h"
#include "lib/events.h"
#include "lib/lb.h"
#include "lib/sock_event.h"

char LICENSE[] SEC("license") = "GPL";

#define ECONNREFUSED_ 111
#define SYS_REJECT 0
#define SYS_PROCEED 1

/* Pick the backend for this socket: the client's affine one, else a random active one. The
 * client on the socket path is the network namespace: every socket of a pod shares it. */
__always_inline_fn __u32 sock_select(struct bpf_sock_addr *ctx, const union addr16 *addr, __be16 port, __u8 proto,
				     const struct lb_service_value *svc)
{
	struct lb_affinity_key akey = {};
	bool affinity = (svc->flags & LB_SVC_F_AFFINITY) != 0;
	__u32 backend_id = 0;
	if (affinity) {
		__u64 netns = bpf_get_netns_cookie(ctx);
		akey.client.w[0] = (__u32)netns;
		akey.client.w[1] = (__u32)(netns >> 32);
		akey.rev_nat_id = svc->rev_nat_id;
		akey.netns = 1;
		backend_id = lb_affinity_get(&akey, svc);
	}
	if (!backend_id)
		backend_id = lb_select_random(addr, port, proto, svc);
	if (backend_id && !lb_backend_selectable(backend_id))
		backend_id = 0;
	if (backend_id && affinity)
		lb_affinity_set(&akey, backend_id);
	return backend_id;
}

/* Forward translation of the address in ctx. `remember`: keep (cookie, backend) -> frontend so
 * UDP replies and getpeername show the frontend. Returns the verdict for the hook. */
__always_inline_fn int sock_xlate_fwd(struct bpf_sock_addr *ctx, bool v6, bool remember)
{
	union addr16 addr;
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	if (v6) {
		addr.w[0] = ctx->user_ip6[0];
		addr.w[1] = ctx->user_ip6[1];
		addr.w[2] = ctx->user_ip6[2];
		addr.w[3] = ctx->user_ip6[3];
	} else {
		addr_from_v4(&addr, ctx->user_ip4);
	}
	__be16 port = (__be16)ctx->user_port;
	struct lb_service_value *svc = lb_lookup_service(&addr, port, proto);
	if (!svc)
		return SYS_PROCEED;
	__u16 rev_nat_id = svc->rev_nat_id;
	__u32 backend_id = sock_select(ctx, &addr, port, proto, svc);
	struct lb_backend *b = lb_backend(backend_id);
	if (!b) {
		bpf_set_retval(-ECONNREFUSED_);
		return SYS_REJECT;
	}
	if (v6) {
		ctx->user_ip6[0] = b->address.w[0];
		ctx->user_ip6[1] = b->address.w[1];
		ctx->user_ip6[2] = b->address.w[2];
		ctx->user_ip6[3] = b->address.w[3];
	} else {
		ctx->user_ip4 = b->address.w[3];
	}
	ctx->user_port = b->port;
	if (remember && proto == IPPROTO_UDP) {
		struct lb_sock_key key = {.cookie = bpf_get_socket_cookie(ctx), .address = b->address, .port = b->port};
		struct lb_sock_value value = {.address = addr, .port = port, .rev_nat_id = rev_nat_id};
		bpf_map_update_elem(&cilia_lb_sock_v1, &key, &value, BPF_ANY);
	}
	sock_event(ctx, v6 ? AF_INET6_ : AF_INET_, &addr, port, b, backend_id, rev_nat_id);
	return SYS_PROCEED;
}

/* Reverse translation: a peer that is a backend this socket was given reads as its frontend. */
__always_inline_fn int sock_xlate_rev(struct bpf_sock_addr *ctx, bool v6)
{
	struct lb_sock_key key = {.cookie = bpf_get_socket_cookie(ctx), .port = (__be16)ctx->user_port};
	if (v6) {
		key.address.w[0] = ctx->user_ip6[0];
		key.address.w[1] = ctx->user_ip6[1];
		key.address.w[2] = ctx->user_ip6[2];
		key.address.w[3] = ctx->user_ip6[3];
	} else {
		addr_from_v4(&key.address, ctx->user_ip4);
	}
	struct lb_sock_value *v = bpf_map_lookup_elem(&cilia_lb_sock_v1, &key);
	if (!v)
		return SYS_PROCEED;
	if (v6) {
		ctx->user_ip6[0] = v->address.w[0];
		ctx->user_ip6[1] = v->address.w[1];
		ctx->user_ip6[2] = v->address.w[2];
		ctx->user_ip6[3] = v->address.w[3];
	} else {
		ctx->user_ip4 = v->address.w[3];
	}
	ctx->user_port = v->port;
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, false, true);
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, false, true);
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, false);
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, false);
}

SEC("cgroup/connect6")
int cil_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, true, true);
}

SEC("cgroup/sendmsg6")
int cil_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, true, true);
}

SEC("cgroup/recvmsg6")
int cil_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, true);
}

SEC("cgroup/getpeername6")
int cil_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, true);
}
