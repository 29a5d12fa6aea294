/* Drop reason codes carried by drop events and the metrics map.
 * Mirrored by cilia.monitor.events.DROP_REASONS; a unit test checks the two agree. */
#pragma once

#define REASON_FORWARDED 0
#define DROP_INVALID_SOURCE_MAC 130
#define DROP_INVALID_DEST_MAC 131
#define DROP_INVALID_SOURCE_IP 132
#define DROP_POLICY_DENIED 133
#define DROP_INVALID_PACKET 134
#define DROP_CT_INVALID_HEADER 135
#define DROP_UNKNOWN_L4 137
#define DROP_UNSUPPORTED_L3 139
#define DROP_CT_MAP_INSERT_FAILED 143
#define DROP_UNSUPPORTED_L2 154
#define DROP_NO_SERVICE 158 /* a service frontend without a backend to take the connection */
#define DROP_TTL_EXCEEDED 164
#define DROP_NO_ENDPOINT 165
#define DROP_POLICY_DENY 181
#define DROP_POLICY_NOT_INSTALLED 220 /* cilia: no policy state for the endpoint (fail closed) */
