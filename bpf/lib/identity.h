/* Reserved security identities, mirrored by cilia.identity.reserved.ReservedIdentity. */
#pragma once

enum reserved_identity {
	IDENTITY_UNKNOWN = 0,
	IDENTITY_HOST = 1,
	IDENTITY_WORLD = 2,
	IDENTITY_UNMANAGED = 3,
	IDENTITY_HEALTH = 4,
	IDENTITY_INIT = 5,
	IDENTITY_REMOTE_NODE = 6,
	IDENTITY_KUBE_APISERVER = 7,
	IDENTITY_INGRESS = 8,
	MIN_CLUSTER_IDENTITY = 256, /* the first identity the allocator hands out */
};
