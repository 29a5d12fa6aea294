"""Reserved security identities, shared with the datapath (bpf/lib/identity.h)."""

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


MIN_CLUSTER_IDENTITY = 256
MAX_CLUSTER_IDENTITY = 65535
