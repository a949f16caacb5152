/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The one definition of every map's key and value layout shared by the eBPF
 * programs and the Rust side (bpf/src/maps.rs mirrors it; a test checks sizes
 * and offsets agree). All addresses are IPv4 in network byte order; ports are
 * in host byte order in keys (the program converts once).
 */
#ifndef CNPILOT_H
#define CNPILOT_H

#include <linux/types.h>

/* Identities: Cilium's numbers for the reserved ones. 0 never names a peer:
 * in a policy key it is the wildcard "any peer". */
#define CNP_ID_ANY 0
#define CNP_ID_HOST 1
#define CNP_ID_WORLD 2
#define CNP_ID_UNMANAGED 3
#define CNP_ID_HEALTH 4
#define CNP_ID_INIT 5
#define CNP_ID_REMOTE_NODE 6
#define CNP_ID_KUBE_APISERVER 7
#define CNP_ID_INGRESS 8

/* Direction, from the subject endpoint's point of view. */
#define CNP_DIR_INGRESS 0 /* traffic into the subject */
#define CNP_DIR_EGRESS 1  /* traffic out of the subject */

/* Per-namespace mode. */
#define CNP_MODE_OFF 0     /* pass, no evaluation */
#define CNP_MODE_AUDIT 1   /* pass, record a would-drop */
#define CNP_MODE_ENFORCE 2 /* drop */

/* Policy actions. */
#define CNP_ACTION_ALLOW 1
#define CNP_ACTION_DENY 2
#define CNP_ACTION_REDIRECT 3 /* allowed at L3/L4, hand to the L7 proxy */
/* Allowed at L3/L4 and handed to the proxy only to be recorded (audit
 * HTTP visibility): no L7 rule applies, so a connection that reaches the
 * server without the proxy (from the host, say) is not a bypass. */
#define CNP_ACTION_VISIBILITY 4

/* Event verdicts. */
#define CNP_VERDICT_FORWARDED 0
#define CNP_VERDICT_WOULD_DROP 1
#define CNP_VERDICT_DROPPED 2
#define CNP_VERDICT_REDIRECTED 3

/* skb->mark values of the L7 redirect (the nibble 0x0F00 says which kind,
 * as in Cilium). TO_PROXY: set by cnp_from_pod on a packet it assigned to
 * the proxy's socket; `ip rule fwmark 0x200/0xf00 lookup 2004` + a `local`
 * route in table 2004 (node namespace only) deliver it locally.
 * FROM_PROXY: the proxy's upstream sockets carry SO_MARK
 * ((id & 0xFFFF) << 16) | 0x0A00 | ((id >> 16) & 0xFF), Cilium's
 * MagicMarkIngress, so the destination's ingress sees the client's identity
 * instead of the node's. Pods cannot forge either: a veth crossing into
 * another namespace scrubs skb->mark. */
#define CNP_MARK_MAGIC_MASK 0x0F00
#define CNP_MARK_TO_PROXY 0x0200
#define CNP_MARK_FROM_PROXY 0x0A00
#define CNP_PROXY_ROUTE_TABLE 2004

/* Why a flow was (or would be) dropped. */
#define CNP_REASON_NONE 0
#define CNP_REASON_DEFAULT_DENY 1 /* subject selected in this direction, no allow matched */
#define CNP_REASON_DENY_RULE 2    /* an explicit deny entry matched */
#define CNP_REASON_PROXY_BYPASSED 3 /* L7 rules apply but the connection did not come through the proxy */
/* A connection between the host and a local pod is judged at the pod's veth
 * by both sides' policies (hostpath.h); the high bits of its reason say
 * whose denial it is. The low bits stay a CNP_REASON_*. */
#define CNP_REASON_CODE_MASK 0x3F
#define CNP_REASON_F_HOST 0x80 /* the host's policy denied it (reason, rule: the host's), the pod's allowed it */
#define CNP_REASON_F_HOST_TOO 0x40 /* the pod's policy denied it (reason, rule: the pod's), and the host's too */

/* ipcache: LPM trie, address/prefix -> identity. The key must be a struct
 * whose first member is the prefix length, or map creation fails. */
struct ipcache_key {
	__u32 prefixlen;
	__u32 addr;
};

struct ipcache_value {
	__u32 identity;
	__u32 flags; /* CNP_IPCACHE_F_* */
};
#define CNP_IPCACHE_F_LOCAL_ENDPOINT 1

/* endpoints: host-side veth ifindex -> the pod behind it. */
struct endpoint_key {
	__u32 ifindex;
};

struct endpoint_value {
	__u32 identity;
	__u32 ns_id; /* key of ns_mode */
	__u32 addr;
	__u32 flags; /* CNP_ENDPOINT_F_* */
};
/* The node's own device (uplink, link to another node): the endpoint is the
 * host, `addr` its address, and only packets to or from that address are
 * the host's (forwarded pod traffic is judged at the pods' veths). */
#define CNP_ENDPOINT_F_HOST 1
/* The reserved key ifindex 0 (no interface has it) holds the host's entry
 * (identity, ns_mode key, the node's address, CNP_ENDPOINT_F_HOST) while
 * the host firewall is on: the pods' veths judge host <-> pod connections by
 * the host's policy too (hostpath.h). Absent: the host firewall is off. */
#define CNP_ENDPOINT_HOST_KEY 0

/* ns_mode: namespace id -> CNP_MODE_*. Flipping a namespace is one update. */
struct ns_mode_value {
	__u32 mode;
};

/* subjects: is an identity default-deny in a direction? An identity no rule
 * selects in a direction has no entry and is allowed in that direction. */
struct subject_key {
	__u32 identity;
	__u32 direction;
};

struct subject_value {
	__u32 flags; /* CNP_SUBJECT_F_* */
};
#define CNP_SUBJECT_F_DEFAULT_DENY 1

/* policy: (subject, direction, peer, proto, port) -> action. The program
 * looks up, in order: exact; port 0 (any port, this proto); proto 0 + port 0
 * (any L4, an L3-only rule); then the same three with peer CNP_ID_ANY. A deny
 * in any of them wins. Port ranges are expanded by the compiler. */
struct policy_key {
	__u32 subject;
	__u32 peer;
	__u16 dport;
	__u8 proto; /* IPPROTO_*; 0 = any */
	__u8 direction;
};

struct policy_value {
	__u8 action;
	__u8 pad;
	__u16 proxy_port; /* for CNP_ACTION_REDIRECT */
	__u32 rule_id;    /* index into the compiler's rule table, for evidence */
};

/* conntrack and flow counters, one entry per connection as seen at this
 * endpoint (cnp_flows): the verdict decided at its first packet (verdict,
 * reason, rule_id, proxy_port) and its counters. */
struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 direction; /* CNP_DIR_* of the endpoint whose veth saw it */
	__u16 pad;
	__u32 ifindex;
};

struct flow_counters {
	__u64 packets;
	__u64 bytes;
	__u64 first_seen_ns; /* the first packet's, when the verdict was decided */
	__u64 last_seen_ns;
	__u32 src_identity;
	__u32 dst_identity;
	__u8 verdict; /* CNP_VERDICT_*, under the namespace's current mode */
	__u8 reason;
	__u16 proxy_port; /* the L7 proxy's port for CNP_VERDICT_REDIRECTED */
	__u32 rule_id;
};

/* ring buffer events: one per new connection (and per drop). */
struct flow_event {
	__u64 ts_ns;
	__u32 saddr;
	__u32 daddr;
	__u32 src_identity;
	__u32 dst_identity;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 direction;
	__u8 verdict;
	__u8 reason;
	__u32 ifindex;
	__u32 rule_id;
	__u32 ns_id;
	__u32 pad;
};

#endif /* CNPILOT_H */
