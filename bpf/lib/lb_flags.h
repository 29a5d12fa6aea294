/* The flags of a load-balanced connection (lb_conn.flags) and of a conntrack entry
 * (ct_entry.lb_flags), apart from lb.h so that programs without the service maps can test them. */
#pragma once

enum lb_conn_flags {
	LB_CONN_F_HAIRPIN = 1 << 0, /* the client is its own backend: its source was rewritten too */
	LB_CONN_F_PROXY_UPSTREAM = 1 << 1, /* ct_entry only: the L7 proxy's upstream connection (lib/proxy.h, lib/proxy_upstream.h) */
};
