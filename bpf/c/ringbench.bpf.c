// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * cnpilot ring-buffer benchmark: a real producer for `cnpilot bench ingest`.
 *
 * The datapath emits one event per new connection, and this machine cannot
 * open a million connections a second; so this program emits a flow event
 * of the datapath's exact layout into a ring buffer of the agent's size on
 * every system call of one thread (the benchmark's producer, which calls
 * getppid in a loop). What user space then reads is a real BPF ring buffer
 * under a known load, with every reservation that failed counted.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "cnpilot.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct ringbench_config {
	__u32 tid;   /* the producer thread; 0 = off */
	__u32 peers; /* entries used in cnp_rb_peers */
};

struct ringbench_peer {
	__u32 addr; /* network byte order */
	__u32 identity;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ringbench_config);
} cnp_rb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct ringbench_peer);
} cnp_rb_peers SEC(".maps");

/* [0] events attempted, [1] ring full (reservation failed) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} cnp_rb_stats SEC(".maps");

/* Sized at load time like the agent's cnp_events (--ring-buffer-mib). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} cnp_rb_events SEC(".maps");

SEC("raw_tracepoint/sys_enter")
int cnp_ringbench(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0, one = 1;
	struct ringbench_config *cfg = bpf_map_lookup_elem(&cnp_rb_config, &zero);
	if (!cfg || cfg->tid == 0 || (__u32)bpf_get_current_pid_tgid() != cfg->tid)
		return 0;
	__u64 *attempted = bpf_map_lookup_elem(&cnp_rb_stats, &zero);
	__u64 *full = bpf_map_lookup_elem(&cnp_rb_stats, &one);
	if (!attempted || !full)
		return 0;
	__u64 n = __sync_fetch_and_add(attempted, 1);

	__u32 count = cfg->peers;
	if (count == 0 || count > 256)
		count = 1;
	__u32 si = ((__u32)n * 7) % count;
	__u32 di = ((__u32)n * 13 + 5) % count;
	struct ringbench_peer *src = bpf_map_lookup_elem(&cnp_rb_peers, &si);
	struct ringbench_peer *dst = bpf_map_lookup_elem(&cnp_rb_peers, &di);
	if (!src || !dst)
		return 0;

	struct flow_event *e = bpf_ringbuf_reserve(&cnp_rb_events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(full, 1);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->saddr = src->addr;
	e->daddr = dst->addr;
	e->src_identity = src->identity;
	e->dst_identity = dst->identity;
	e->sport = 30000 + (__u16)((__u32)n % 30000);
	e->dport = 8080;
	e->proto = 6;
	e->direction = 1;
	e->verdict = ((__u32)n % 20) == 0;
	e->reason = 0;
	e->ifindex = 0;
	e->rule_id = 0;
	e->ns_id = 0;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
