/* Policy-verdict events: the decision on the first packet of a connection (allowed, denied or
 * audited). The subtype is the verdict (enum policy_verdict), with VERDICT_AUDIT_FLAG set when
 * audit mode let a denied packet through; rule_id names the policy entry that decided. */
#pragma once

#include "common.h"
#include "conntrack.h"
#include "events.h"
#include "policy.h"

enum verdict_flags {
	VERDICT_AUDIT_FLAG = 0x80,
};

__always_inline_fn void send_policy_verdict(struct __sk_buff *ctx, __u8 verdict, bool audited, __u32 rule_id,
					    __u32 src_identity, __u32 dst_identity, __u16 direction,
					    __u16 endpoint_id)
{
	struct event *e = event_open(ctx, EVENT_POLICY_VERDICT, verdict | (audited ? VERDICT_AUDIT_FLAG : 0), 0,
				     CT_NEW, src_identity, dst_identity, direction, endpoint_id);
	if (!e)
		return;
	e->rule_id = rule_id;
	bpf_ringbuf_submit(e, 0);
}
