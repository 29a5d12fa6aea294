/* Load-time configuration of one endpoint's program instance.
 *
 * The agent loads bpf_lxc.o once per endpoint and patches this one `const volatile` global in
 * .rodata before the load (cilia.datapath.config.EndpointConfig mirrors the layout byte for
 * byte; the loader refuses a size mismatch). Being read-only data, the verifier treats the
 * values as constants and dead-code-eliminates what an endpoint does not use.
 *
 * Layout (80 bytes, little-endian integers, addresses in network order):
 *   0 endpoint_id  4 identity  8 lxc_ifindex  12 flags
 *  16 lxc_mac[6]  22 pod_mac[6]  28 pod_ipv4  32 pod_ipv6[16]
 *  48 router_ipv4  52 router_ipv6[16]  68 aggregation  72 aggregation_interval  76 pad
 */
#pragma once

#include "common.h"

#define EP_FLAG_HAS_IPV4 (1 << 0)
#define EP_FLAG_HAS_IPV6 (1 << 1)

#define AGGREGATION_NONE 0   /* a trace event for every packet */
#define AGGREGATION_MEDIUM 1 /* new flows, TCP SYN/FIN/RST, then once per interval */

struct ep_config {
	__u32 endpoint_id;
	__u32 identity;
	__u32 lxc_ifindex;
	__u32 flags;
	__u8 lxc_mac[6];
	__u8 pod_mac[6];
	__u32 pod_ipv4;
	__u8 pod_ipv6[16];
	__u32 router_ipv4;
	__u8 router_ipv6[16];
	__u32 aggregation;
	__u32 aggregation_interval;
	__u32 pad;
};

const volatile struct ep_config CONFIG = {};
