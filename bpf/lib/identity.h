/* Reserved security identities, mirrored by cilia.identity.reserved.ReservedIdentity. */
#pragma once

#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_UNMANAGED 3
#define IDENTITY_HEALTH 4
#define IDENTITY_INIT 5
#define IDENTITY_REMOTE_NODE 6
#define IDENTITY_KUBE_APISERVER 7
#define IDENTITY_INGRESS 8
#define MIN_CLUSTER_IDENTITY 256
