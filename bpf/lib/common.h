/* Shared includes, types and small helpers for every cilia BPF program. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define __always_inline_fn static __always_inline

#define AF_INET_ 2
#define AF_INET6_ 10

#define ETH_HLEN_ 14

/* A 16-byte address for either family: IPv4 is stored v4-mapped (::ffff:a.b.c.d) so one
 * key layout serves both families in conntrack and the endpoints map. */
union addr16 {
	__u8 b[16];
	__u32 w[4];
};

__always_inline_fn void addr_from_v4(union addr16 *a, __u32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = v4;
}

__always_inline_fn void addr_from_v6(union addr16 *a, const struct in6_addr *v6)
{
	__builtin_memcpy(a->b, v6, 16);
}

__always_inline_fn bool mac_eq(const __u8 *a, const volatile __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* Compare a 16-byte address with one in CONFIG (no memcmp in BPF). */
__always_inline_fn bool addr16_eq_cfg(const __u8 *a, const volatile __u8 *b)
{
	bool eq = true;
#pragma unroll
	for (int i = 0; i < 16; i++)
		eq = eq && a[i] == b[i];
	return eq;
}

/* Copy a MAC out of CONFIG. The reads must stay volatile: a plain memcpy from the const
 * global lets clang fold in its zero initializer instead of the value patched at load. */
__always_inline_fn void mac_from_cfg(__u8 *dst, const volatile __u8 *src)
{
#pragma unroll
	for (int i = 0; i < 6; i++)
		dst[i] = src[i];
}

/* Seconds of CLOCK_MONOTONIC, for expiry and aggregation (the agent compares with time.monotonic()).
 * The coarse clock (updated every tick) is exact enough for second-granular deadlines and costs a
 * memory read where the precise one reads the clock source (a pvclock read in a VM), which the
 * conntrack paths did on every packet. Events keep the precise bpf_ktime_get_ns(). */
__always_inline_fn __u64 now_seconds(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

/* ICMPv4 types, defined here because <linux/icmp.h> includes <linux/if.h>, which pulls glibc's
 * <sys/socket.h> (and its 32-bit stubs) into a -target bpf build. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define NDISC_NEIGHBOUR_SOLICITATION_ 135
#define NDISC_NEIGHBOUR_ADVERTISEMENT_ 136
