/* Load-time configuration of one endpoint's program instance.
 *
 * The agent loads bpf_lxc.o once per endpoint and patches this one `const volatile` global in
 * .rodata before the load (cilia.datapath.config.EndpointConfig mirrors the layout field by
 * field; tests/kernel/test_datapath_contract.py checks every offset against this object's BTF and
 * the loader refuses a size mismatch). Being read-only data, the verifier treats the values as
 * constants and dead-code-eliminates what an endpoint does not use. Integers are little-endian,
 * addresses in network order. */
#pragma once

#include "common.h"

enum ep_flags {
	EP_FLAG_HAS_IPV4 = 1 << 0,
	EP_FLAG_HAS_IPV6 = 1 << 1,
};

enum aggregation {
	AGGREGATION_NONE = 0,   /* a trace event for every packet */
	AGGREGATION_MEDIUM = 1, /* new flows, TCP SYN/FIN/RST, then once per interval */
};

struct ep_config {
	__u32 endpoint_id;
	__u32 identity;
	__u32 lxc_ifindex;
	__u32 flags; /* enum ep_flags */
	__u8 lxc_mac[6];
	__u8 pod_mac[6];
	__u32 pod_ipv4;
	__u8 pod_ipv6[16];
	__u32 router_ipv4;
	__u8 router_ipv6[16];
	__u32 aggregation; /* enum aggregation */
	__u32 aggregation_interval;
	__u32 tunnel_ifindex; /* cilia_vxlan (tunnel mode): a destination with a tunnel endpoint is encapsulated there; 0 = native routing */
};

const volatile struct ep_config CONFIG = {};
