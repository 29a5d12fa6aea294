/* Load-time configuration of bpf_host (cilia.datapath.config.HostConfig): the service path's Maglev
 * selection, and the tunnel port whose packets from known nodes pass first (lib/underlay.h).
 *
 * Only the node's device program (bpf_host.o) selects by Maglev; the agent patches HOST in its
 * .rodata before the load. Every object that includes lb_xlate.h carries HOST, so whether Maglev
 * is compiled in no longer depends on what a program defined before an include: in the pod
 * programs HOST stays zero and their lb_select_opts never ask for Maglev. The bound check reads
 * the size straight from .rodata, so the verifier knows it as a constant and can prove the table
 * index inside the map value. */
#pragma once

#include "common.h"

struct host_config {
	__u32 maglev_size; /* M: entries of each Maglev table (a prime) */
	__u32 maglev_seed;
	__u32 tunnel_port; /* tunnel mode: the VXLAN UDP port (host order), 0 = no tunnel (lib/underlay.h) */
	__u32 pad;
};

const volatile struct host_config HOST = {};
