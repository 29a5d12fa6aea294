/* Not a program: an object that is never loaded, built only so its BTF describes every type the
 * Python side mirrors (tests/kernel/test_datapath_contract.py reads it next to the programs).
 *
 * clang writes BTF only for types reachable from globals, functions and map definitions. Ring
 * records (reserved by size only) and enums (folded to constants) are reachable from none, so
 * this one global holds a member of each; map key/value types are also checked in the programs'
 * own objects, where their map definitions name them. Being a separate object, it costs the
 * loaded programs nothing (no extra .bss map per endpoint). */
#define SOURCE_FILE_ID 0 /* emits no events */

#include "lib/common.h"
#include "lib/config.h"
#include "lib/conntrack.h"
#include "lib/direction.h"
#include "lib/drop.h"
#include "lib/drop_reasons.h"
#include "lib/endpoints.h"
#include "lib/events.h"
#include "lib/host_config.h"
#include "lib/identity.h"
#include "lib/ipcache.h"
#include "lib/lb.h"
#include "lib/lb_xlate.h"
#include "lib/metrics.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/policy_verdict.h"
#include "lib/sock_event.h"
#include "lib/trace.h"

struct datapath_contract {
	/* records */
	struct event event;
	struct sock_event sock_event;
	struct ep_config ep_config;
	struct host_config host_config;
	/* constant tables */
	enum aggregation aggregation;
	enum ct_status ct_status;
	enum direction direction;
	enum drop_reason drop_reason;
	enum ep_flags ep_flags;
	enum event_type event_type;
	enum ipcache_flags ipcache_flags;
	enum lb_backend_state lb_backend_state;
	enum lb_conn_flags lb_conn_flags;
	enum lb_sizes lb_sizes;
	enum lb_svc_flags lb_svc_flags;
	enum obs_point obs_point;
	enum policy_state_flags policy_state_flags;
	enum policy_verdict policy_verdict;
	enum reserved_identity reserved_identity;
	enum sock_xlate_point sock_xlate_point;
	enum source_file source_file;
	enum verdict_flags verdict_flags;
};

struct datapath_contract CONTRACT __attribute__((used));

