/* The one encoding of traffic direction, seen from the pod: ingress = entering it (to-container),
 * egress = leaving it (from-container). Policy keys (dir_gen), metrics keys and event records
 * all carry it; cilia.maps.direction.TrafficDirection mirrors it (tests/kernel/test_datapath_contract.py
 * checks the two against this object's BTF). INGRESS is 0 so the policy map's encoding, the
 * biggest pinned state, kept its meaning when the three encodings became one. */
#pragma once

enum direction {
	DIR_INGRESS = 0, /* packet entering the pod (to-container) */
	DIR_EGRESS = 1,  /* packet leaving the pod (from-container) */
};
