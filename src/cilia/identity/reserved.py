"""Reserved security identities, shared with the datapath (C: enum reserved_identity, bpf/lib/identity.h;
the datapath contract test checks the two agree)."""

from __future__ import annotations

from enum import IntEnum


class ReservedIdentity(IntEnum):
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8


UNKNOWN_IDENTITY = 0  # C: IDENTITY_UNKNOWN; never allocated (a drop before the source is known carries it)
MIN_CLUSTER_IDENTITY = 256
MAX_CLUSTER_IDENTITY = 65535
