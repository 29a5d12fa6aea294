/* Drop reason codes carried by drop events and the metrics map (0: forwarded).
 * Mirrored by cilia.monitor.events.DropReason; the contract test checks the two agree. */
#pragma once

enum drop_reason {
	REASON_FORWARDED = 0,
	DROP_INVALID_SOURCE_MAC = 130,
	DROP_INVALID_DEST_MAC = 131,
	DROP_INVALID_SOURCE_IP = 132,
	DROP_POLICY_DENIED = 133,
	DROP_INVALID_PACKET = 134,
	DROP_CT_INVALID_HEADER = 135,
	DROP_UNKNOWN_L4 = 137,
	DROP_UNSUPPORTED_L3 = 139,
	DROP_CT_MAP_INSERT_FAILED = 143,
	DROP_UNSUPPORTED_L2 = 154,
	DROP_NO_SERVICE = 158, /* a service frontend without a backend to take the connection */
	DROP_NO_TUNNEL_KEY = 147, /* an overlay packet without tunnel metadata */
	DROP_TTL_EXCEEDED = 164,
	DROP_NO_ENDPOINT = 165,
	DROP_INVALID_IDENTITY = 171, /* a VNI that is no security identity */
	DROP_UNKNOWN_SENDER = 172,   /* an overlay packet whose outer source is no known node (remote-node) */
	DROP_POLICY_DENY = 181,
	DROP_POLICY_NOT_INSTALLED = 220, /* cilia: no policy state for the endpoint (fail closed) */
	DROP_PROXY_UNAVAILABLE = 221,    /* cilia: an L7 rule covers the connection and no proxy takes it */
};
