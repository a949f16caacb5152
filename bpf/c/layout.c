/* Host program run by build.rs: prints the C side of every shared layout as
 * Rust source, so a test can compare it with the #[repr(C)] mirrors. */
#include <stddef.h>
#include <stdio.h>
#include "cnpilot.h"

#define T(ty) printf("(\"%s\", \"\", %zu, %zu),\n", #ty, sizeof(struct ty), (size_t)0)
#define F(ty, f) printf("(\"%s\", \"%s\", %zu, %zu),\n", #ty, #f, offsetof(struct ty, f), sizeof(((struct ty *)0)->f))

int main(void)
{
	printf("pub const C_LAYOUT: &[(&str, &str, usize, usize)] = &[\n");
	T(ipcache_key); F(ipcache_key, prefixlen); F(ipcache_key, addr);
	T(ipcache_value); F(ipcache_value, identity); F(ipcache_value, flags);
	T(endpoint_key); F(endpoint_key, ifindex);
	T(endpoint_value); F(endpoint_value, identity); F(endpoint_value, ns_id); F(endpoint_value, addr); F(endpoint_value, flags);
	T(ns_mode_value); F(ns_mode_value, mode);
	T(subject_key); F(subject_key, identity); F(subject_key, direction);
	T(subject_value); F(subject_value, flags);
	T(policy_key); F(policy_key, subject); F(policy_key, peer); F(policy_key, dport); F(policy_key, proto); F(policy_key, direction);
	T(policy_value); F(policy_value, action); F(policy_value, pad); F(policy_value, proxy_port); F(policy_value, rule_id);
	T(flow_key); F(flow_key, saddr); F(flow_key, daddr); F(flow_key, sport); F(flow_key, dport); F(flow_key, proto); F(flow_key, direction); F(flow_key, pad); F(flow_key, ifindex);
	T(flow_counters); F(flow_counters, packets); F(flow_counters, bytes); F(flow_counters, first_seen_ns); F(flow_counters, last_seen_ns);
	F(flow_counters, src_identity); F(flow_counters, dst_identity); F(flow_counters, verdict); F(flow_counters, reason); F(flow_counters, proxy_port); F(flow_counters, rule_id);
	T(flow_event); F(flow_event, ts_ns); F(flow_event, saddr); F(flow_event, daddr); F(flow_event, src_identity); F(flow_event, dst_identity);
	F(flow_event, sport); F(flow_event, dport); F(flow_event, proto); F(flow_event, direction); F(flow_event, verdict); F(flow_event, reason);
	F(flow_event, ifindex); F(flow_event, rule_id); F(flow_event, ns_id); F(flow_event, pad);
	printf("];\n");
	return 0;
}
