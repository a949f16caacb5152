// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * cnpilot datapath: tc programs on the host side of each pod's veth.
 *
 *   cnp_from_pod: tc ingress on the host-side veth = the pod's EGRESS
 *   cnp_to_pod:   tc egress  on the host-side veth = the pod's INGRESS
 *
 * and, for the host firewall, on the node's own devices the other way
 * round: cnp_from_pod at tc egress (the host's EGRESS), cnp_to_pod at tc
 * ingress (the host's INGRESS).
 *
 * A connection's verdict is decided at its first packet and kept in
 * conntrack; what a verdict *means* (pass or drop) is decided per packet
 * from the namespace's current mode, so flipping audit -> enforce is one map
 * update and an audit-era "would drop" connection is dropped at once.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "cnpilot.h"
#include "parse.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Map names stay within 15 characters: the kernel truncates longer ones and
 * `bpftool map list` should show exactly these. Every map is pinned by name
 * so a restarted agent (aya's map_pin_path) reuses the live state. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ns_mode_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_ns_mode SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct subject_key);
	__type(value, struct subject_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_subjects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_policy SEC(".maps");

/* Conntrack and counters in one entry per flow (ct_create): a new flow is
 * one insert, any other packet one lookup. Builds before this one had a
 * second LRU map, cnp_conntrack, for the verdicts. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct flow_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_events SEC(".maps");

/* When the reader of cnp_events was last woken (bpf_ktime_get_ns). Not
 * pinned: it holds no state worth keeping across loads. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cnp_ev_wakeup SEC(".maps");

/* The L7 proxy's listening socket (index 0), for cnp_proxy_lookup. The
 * agent puts its listener here; the kernel drops the entry when the
 * socket closes (agent gone: lookups fall through as if unattached). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); /* a socket fd on update */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cnp_proxy_socks SEC(".maps");

static __always_inline struct ipcache_value *ipcache_lookup(__u32 addr)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	return bpf_map_lookup_elem(&cnp_ipcache, &k);
}

/* The client identity of a packet from the proxy's upstream socket, 0 when
 * the packet does not carry the proxy's mark. */
static __always_inline __u32 proxy_mark_identity(__u32 mark)
{
	if ((mark & CNP_MARK_MAGIC_MASK) != CNP_MARK_FROM_PROXY)
		return 0;
	return ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 16);
}

/* Hands a TCP packet to the L7 proxy in this (the node's) namespace: the
 * proxy's accepted socket for this very tuple if there is one, else its
 * listener on proxy_port; the mark routes it locally (ip rule + `local`
 * route, set up by the agent). 0 when handed over.
 *
 * TIME_WAIT (issue 18). The proxy terminates the client's connection in
 * the node namespace with the pod's address as its local address, and for
 * HTTP/1.0 and `Connection: close` it is the side that closes first, so the
 * node namespace keeps a TIME_WAIT socket per proxied connection, for 60 s,
 * under the client's very 4-tuple. A client that reuses a source port
 * within that minute (short connections: after ~3,000 of them) sends a SYN
 * whose tuple is that time-wait socket's. Assigning the *listener* to such
 * a SYN loses it silently: the listener's request socket cannot be hashed
 * next to a time-wait socket with the same tuple (inet_ehash_insert finds
 * the duplicate and the SYN is dropped without a SYN-ACK), so the client
 * retransmits into the same wall until it gives up. Cilium's
 * assign_socket_tcp (bpf/lib/proxy.h) has the same shape and the same hole.
 * The kernel knows how to reuse a time-wait tuple for a new SYN
 * (tcp_timewait_state_process -> TCP_TW_SYN: the time-wait socket is
 * retired and the SYN goes to the listener for the destination): so a
 * segment of a time-wait tuple is not assigned at all, only marked for
 * local delivery, and the stack's own time-wait handling runs. Its listener
 * lookup is for the pod's address and port, which only the proxy serves
 * here: cnp_proxy_lookup (sk_lookup, attached to the node namespace)
 * answers it with the proxy's listener. Late segments of the old
 * connection (a retransmitted FIN) get the time-wait socket's ACK, as they
 * should, instead of a listener's RST. */
static __always_inline int to_proxy(struct __sk_buff *skb, struct packet *p, __u16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->saddr;
	t.ipv4.daddr = p->daddr;
	t.ipv4.sport = bpf_htons(p->sport);
	t.ipv4.dport = bpf_htons(p->dport);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_TIME_WAIT) {
		bpf_sk_release(sk);
		skb->mark = CNP_MARK_TO_PROXY;
		return 0;
	}
	if (sk && sk->state == BPF_TCP_LISTEN) {
		/* A node-namespace listener on the pod's port (or the proxy's,
		 * found through cnp_proxy_lookup): the proxy's port decides. */
		bpf_sk_release(sk);
		sk = NULL;
	}
	if (!sk) {
		/* The listener on proxy_port, looked up at a loopback address:
		 * at the pod's address cnp_proxy_lookup would answer the HTTP
		 * proxy's listener whatever the port, and the DNS proxy has a
		 * TCP listener of its own. */
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.dport = bpf_htons(proxy_port);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return -1;
		}
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = CNP_MARK_TO_PROXY;
	return 0;
}

/* Hands a UDP datagram (a pod's DNS query) to the DNS proxy's socket on
 * proxy_port in this (the node's) namespace; the mark routes it locally.
 * The proxy reads the query's original destination from the datagram
 * (IP_ORIGDSTADDR). 0 when handed over. */
static __always_inline int to_proxy_udp(struct __sk_buff *skb, struct packet *p, __u16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->saddr;
	t.ipv4.daddr = p->daddr;
	t.ipv4.sport = bpf_htons(p->sport);
	t.ipv4.dport = bpf_htons(proxy_port);
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = CNP_MARK_TO_PROXY;
	return 0;
}

/* A first packet's verdict, before it goes into the flow's entry. */
struct ct_value {
	__u8 verdict; /* CNP_VERDICT_* */
	__u8 reason;
	__u16 proxy_port;
	__u32 rule_id;
};

struct decision {
	__u8 denied;
	__u8 reason;
	__u8 redirect;
	__u8 visibility; /* the redirect only records (no L7 rule) */
	__u16 proxy_port;
	__u32 rule_id;
};

/* One lookup of the bounded sequence; returns 1 when a deny matched. */
static __always_inline int probe(struct policy_key *k, struct decision *d, int *allowed)
{
	struct policy_value *v = bpf_map_lookup_elem(&cnp_policy, k);
	if (!v)
		return 0;
	if (v->action == CNP_ACTION_DENY) {
		d->denied = 1;
		d->reason = CNP_REASON_DENY_RULE;
		d->rule_id = v->rule_id;
		return 1;
	}
	int proxied = v->action == CNP_ACTION_REDIRECT || v->action == CNP_ACTION_VISIBILITY;
	if (!*allowed || (proxied && !d->redirect)) {
		*allowed = 1;
		d->rule_id = v->rule_id;
		if (proxied) {
			d->redirect = 1;
			d->visibility = v->action == CNP_ACTION_VISIBILITY;
			d->proxy_port = v->proxy_port;
		}
	}
	return 0;
}

/* The order documented in cnpilot.h: exact, any port, any L4, then the same
 * three for any peer. O(1) in the number of rules: six hash lookups at most. */
static __always_inline void evaluate(__u32 subject, __u8 dir, __u32 peer, struct packet *p,
				     struct decision *d)
{
	struct subject_key sk = { .identity = subject, .direction = dir };
	struct subject_value *sv = bpf_map_lookup_elem(&cnp_subjects, &sk);
	if (!sv)
		return; /* no rule selects this identity in this direction */

	int allowed = 0;
	struct policy_key k = {
		.subject = subject,
		.peer = peer,
		.dport = p->policy_port,
		.proto = p->proto,
		.direction = dir,
	};
#pragma unroll
	for (int i = 0; i < 2; i++) {
		k.peer = i == 0 ? peer : CNP_ID_ANY;
		k.proto = p->proto;
		k.dport = p->policy_port;
		if (probe(&k, d, &allowed))
			return;
		k.dport = 0;
		if (probe(&k, d, &allowed))
			return;
		k.proto = 0;
		if (probe(&k, d, &allowed))
			return;
	}
	if (!allowed && (sv->flags & CNP_SUBJECT_F_DEFAULT_DENY)) {
		d->denied = 1;
		d->reason = CNP_REASON_DEFAULT_DENY;
		d->rule_id = 0;
	}
}

/* Ring-buffer wakeups. Left to the kernel, every event submitted while the
 * reader has caught up wakes it: an irq_work self-IPI here, then a
 * reschedule of the reader, per new connection. On the connect-loop bench
 * (a VM, where an IPI is an exit to the hypervisor) that cost more than
 * everything else the programs do. So the reader is woken when
 * CNP_WAKEUP_NS have passed since the last wakeup, or when
 * CNP_WAKEUP_BYTES wait unread (a burst must not fill a small ring before
 * the reader hears of it); an event that arrives sooner waits for one of
 * them, or for the reader's own follow-up read (EventReader polls again
 * CNP_WAKEUP_NS-ish after every read that found events). At a low rate
 * every event still wakes the reader at once. */
#define CNP_WAKEUP_NS (4ULL * 1000 * 1000)
#define CNP_WAKEUP_BYTES (32 * 1024)

static __always_inline __u64 wakeup_flags(__u64 now)
{
	__u32 key = 0;
	__u64 *woken = bpf_map_lookup_elem(&cnp_ev_wakeup, &key);
	if (!woken)
		return 0; /* the kernel's own rule */
	if (now - *woken >= CNP_WAKEUP_NS ||
	    bpf_ringbuf_query(&cnp_events, BPF_RB_AVAIL_DATA) >= CNP_WAKEUP_BYTES) {
		*woken = now; /* racing CPUs: at worst one wakeup too many */
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(struct flow_key *fk, struct packet *p, __u32 src_id, __u32 dst_id,
				 __u8 verdict, __u8 reason, __u32 rule_id, __u32 ns_id, __u64 now)
{
	struct flow_event *e = bpf_ringbuf_reserve(&cnp_events, sizeof(*e), 0);
	if (!e)
		return; /* overrun: cnp_flows still counts the flow */
	e->ts_ns = now;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->src_identity = src_id;
	e->dst_identity = dst_id;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->direction = fk->direction;
	e->verdict = verdict;
	e->reason = reason;
	e->ifindex = fk->ifindex;
	e->rule_id = rule_id;
	e->ns_id = ns_id;
	e->pad = 0;
	bpf_ringbuf_submit(e, wakeup_flags(now));
}

/* cnp_flows is the conntrack too: a flow's entry holds its counters and
 * the verdict decided at its first packet (verdict, reason, rule_id,
 * proxy_port), so a new flow costs one insert into one LRU map and every
 * other packet one lookup. An entry that does not hold a verdict to keep
 * is counters only: a connection dropped because it bypassed the proxy
 * (its next attempt is judged anew, once the proxy may be up), and a
 * redirected flow without a proxy port (counters an older build made,
 * whose conntrack was a map of its own). */
static __always_inline int ct_entry(struct flow_counters *c)
{
	if ((c->reason & CNP_REASON_CODE_MASK) == CNP_REASON_PROXY_BYPASSED)
		return 0;
	return c->verdict != CNP_VERDICT_REDIRECTED || c->proxy_port;
}

static __always_inline void count(struct flow_counters *c, __u32 len, __u64 now)
{
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, len);
	c->last_seen_ns = now;
}

/* Records a flow's first packet and its verdict. `old` is the counters-only
 * entry the lookup found under this key, if any: it is counted on and
 * takes the new verdict, as the counters of an earlier connection on the
 * same tuple always have been. */
static __always_inline void ct_create(struct flow_key *fk, struct flow_counters *old, __u32 len,
				      __u32 src_id, __u32 dst_id, struct ct_value *ct, __u64 now)
{
	if (!old) {
		struct flow_counters n = {
			.packets = 1,
			.bytes = len,
			.first_seen_ns = now,
			.last_seen_ns = now,
			.src_identity = src_id,
			.dst_identity = dst_id,
			.verdict = ct->verdict,
			.reason = ct->reason,
			.proxy_port = ct->proxy_port,
			.rule_id = ct->rule_id,
		};
		if (bpf_map_update_elem(&cnp_flows, fk, &n, BPF_NOEXIST) == 0)
			return;
		/* Another CPU made it first (the same flow's next packet). */
		old = bpf_map_lookup_elem(&cnp_flows, fk);
		if (!old)
			return;
	}
	old->verdict = ct->verdict;
	old->reason = ct->reason;
	old->proxy_port = ct->proxy_port;
	old->rule_id = ct->rule_id;
	count(old, len, now);
}

/* The verdict a denied connection gets under a mode. */
static __always_inline __u8 denied_verdict(__u32 mode)
{
	return mode == CNP_MODE_ENFORCE ? CNP_VERDICT_DROPPED : CNP_VERDICT_WOULD_DROP;
}

/* What a passing packet of a connection with L7 rules needs. At the
 * client's veth (pod egress) it goes to the proxy; at the server's veth a
 * forward packet that still needs the proxy did not come through it (no
 * proxy listening): in enforce that is a drop, since L7 rules cannot be
 * checked (fail closed). Replies always pass. */
static __always_inline int pass_redirect(struct __sk_buff *skb, struct packet *p, __u8 dir,
					 int forward, __u16 proxy_port, __u32 mode)
{
	if (!forward || !proxy_port)
		return TC_ACT_OK;
	if (dir == CNP_DIR_EGRESS) {
		/* On failure the packet goes on unproxied; the server's veth
		 * then applies the rule above. A DNS query without its proxy
		 * (agent down) goes on unchecked: egress L7 rules fail open
		 * there, as HTTP's do. */
		if (p->proto == IPPROTO_UDP)
			to_proxy_udp(skb, p, proxy_port);
		else
			to_proxy(skb, p, proxy_port);
		return TC_ACT_OK;
	}
	return mode == CNP_MODE_ENFORCE ? TC_ACT_SHOT : TC_ACT_OK;
}

/* The peer is the far end of this packet (the proxy's client when the
 * packet carries its mark); src/dst name the connection's original
 * direction `orig_dir`, which is what the counters are keyed by. Returns the
 * far end's ipcache entry, NULL for the world. */
static __always_inline struct ipcache_value *resolve(struct packet *p, __u8 dir, __u8 orig_dir,
						     __u32 proxied_for, __u32 local_id, __u32 *peer,
						     __u32 *src_id, __u32 *dst_id)
{
	struct ipcache_value *far = ipcache_lookup(dir == CNP_DIR_EGRESS ? p->daddr : p->saddr);
	*peer = proxied_for ? proxied_for : (far ? far->identity : CNP_ID_WORLD);
	*src_id = orig_dir == CNP_DIR_EGRESS ? local_id : *peer;
	*dst_id = orig_dir == CNP_DIR_EGRESS ? *peer : local_id;
	return far;
}

/* host <-> local pod: the host's policy at the pod's veth */
#include "hostpath.h"

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct packet p;
	if (parse(skb, &p) < 0)
		return TC_ACT_OK;

	struct endpoint_key ek = { .ifindex = skb->ifindex };
	struct endpoint_value *ep = bpf_map_lookup_elem(&cnp_endpoints, &ek);
	if (!ep)
		return TC_ACT_OK;
	int host = ep->flags & CNP_ENDPOINT_F_HOST;
	/* On a node device the programs sit the other way round (tc ingress
	 * is the host's ingress), and only the host's own packets are its:
	 * pods' packets crossing the device were judged at their veths. */
	if (host && (dir == CNP_DIR_EGRESS ? p.saddr : p.daddr) != ep->addr)
		return TC_ACT_OK;
	__u32 ns_id = ep->ns_id;
	__u32 mode = CNP_MODE_OFF;
	struct ns_mode_value *mv = bpf_map_lookup_elem(&cnp_ns_mode, &ns_id);
	if (mv)
		mode = mv->mode;
	if (mode == CNP_MODE_OFF && !hostpath_in_off_ns(ep, &p, dir, skb->mark))
		return TC_ACT_OK;

	__u64 now = bpf_ktime_get_ns();
	struct flow_key fk = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
		.direction = dir,
		.ifindex = skb->ifindex,
	};

	/* A reply: the original as this veth saw it the other way. */
	struct flow_key rk = {
		.saddr = p.daddr,
		.daddr = p.saddr,
		.sport = p.dport,
		.dport = p.sport,
		.proto = p.proto,
		.direction = dir == CNP_DIR_EGRESS ? CNP_DIR_INGRESS : CNP_DIR_EGRESS,
		.ifindex = skb->ifindex,
	};
	/* Each lookup that misses walks a cold bucket of a large map, so a
	 * TCP packet whose flags say which key it is under skips the other
	 * (parse.h: a SYN is never a reply, a SYN+ACK always is). `own` is
	 * what this packet's own key holds when it is not a conntrack entry. */
	struct flow_counters *ct = NULL, *own = NULL;
	if (p.ct_hint == CNP_CT_REPLY_FIRST) {
		ct = bpf_map_lookup_elem(&cnp_flows, &rk);
		if (ct && ct_entry(ct))
			fk = rk;
		else
			ct = NULL;
	}
	if (!ct) {
		ct = bpf_map_lookup_elem(&cnp_flows, &fk);
		if (ct && !ct_entry(ct)) {
			own = ct;
			ct = NULL;
		}
	}
	if (!ct && p.ct_hint == CNP_CT_EITHER) {
		ct = bpf_map_lookup_elem(&cnp_flows, &rk);
		if (ct && ct_entry(ct))
			fk = rk;
		else
			ct = NULL;
	}

	/* The proxy's upstream leg leaves the node's namespace with the node's
	 * address; its mark says which client it speaks for. */
	__u32 proxied_for = dir == CNP_DIR_INGRESS ? proxy_mark_identity(skb->mark) : 0;
	__u32 peer, src_id, dst_id;

	/* --- host <-> local pod (hostpath.h): the host's denial, its mode --- */
	if (ct && (ct->reason & (CNP_REASON_F_HOST | CNP_REASON_F_HOST_TOO)))
		hostpath_ct_mode(ep, &p, dir, ct->reason, &mode, &ns_id);
	/* --- */

	if (ct) {
		__u8 v = ct->verdict;
		if (v == CNP_VERDICT_WOULD_DROP || v == CNP_VERDICT_DROPPED) {
			v = denied_verdict(mode);
			if (ct->verdict != v)
				ct->verdict = v; /* the mode flipped since the first packet */
		}
		count(ct, skb->len, now);
		if (v != CNP_VERDICT_DROPPED)
			return pass_redirect(skb, &p, dir, fk.direction == dir, ct->proxy_port, mode);
		/* The identities only go into drop events: the ipcache, a trie
		 * walk, is not looked up for the packets of a connection
		 * otherwise. */
		resolve(&p, dir, fk.direction, proxied_for, ep->identity, &peer, &src_id, &dst_id);
		emit(&fk, &p, src_id, dst_id, v, ct->reason, ct->rule_id, ns_id, now);
		return TC_ACT_SHOT;
	}

	struct ipcache_value *far =
		resolve(&p, dir, fk.direction, proxied_for, ep->identity, &peer, &src_id, &dst_id);

	struct decision d = {};
	evaluate(ep->identity, dir, peer, &p, &d);
	/* --- host <-> local pod (hostpath.h): the host's policy too --- */
	if (peer == CNP_ID_HOST)
		hostpath_judge(ep, dir, &p, &d, &mode, &ns_id);
	/* --- */
	__u16 proxy_port = d.redirect ? d.proxy_port : 0;
	/* Visibility only records: at the server's veth a connection that did
	 * not come through the proxy is let through, not dropped as a bypass. */
	if (d.visibility && dir == CNP_DIR_INGRESS)
		proxy_port = 0;
	__u32 rule_id = d.rule_id;
	if (dir == CNP_DIR_EGRESS && p.proto == IPPROTO_TCP && far &&
	    (far->flags & CNP_IPCACHE_F_LOCAL_ENDPOINT)) {
		/* The destination's ingress rules may want the proxy too (L7
		 * rules on a server): only here, on the client's side, can the
		 * connection still be handed to a local socket. An L3/L4 deny
		 * there stays in the kernel, at the destination's veth. */
		struct decision di = {};
		evaluate(far->identity, CNP_DIR_INGRESS, ep->identity, &p, &di);
		if (di.denied) {
			proxy_port = 0;
		} else if (di.redirect && !proxy_port) {
			proxy_port = di.proxy_port;
			if (!d.redirect)
				rule_id = di.rule_id;
		}
	}
	/* The proxy already applied the L7 rules to its upstream leg. TCP goes
	 * to the HTTP proxy; UDP only from a pod's egress (DNS: rules.dns are
	 * egress rules). */
	if (proxied_for || host ||
	    (p.proto != IPPROTO_TCP && !(p.proto == IPPROTO_UDP && dir == CNP_DIR_EGRESS)))
		proxy_port = 0;

	struct ct_value n = {
		.verdict = d.denied ? denied_verdict(mode)
				    : (proxy_port ? CNP_VERDICT_REDIRECTED : CNP_VERDICT_FORWARDED),
		.reason = d.denied ? d.reason : CNP_REASON_NONE,
		.proxy_port = proxy_port,
		.rule_id = d.denied ? d.rule_id : rule_id,
	};
	int verdict_ok = n.verdict != CNP_VERDICT_DROPPED;
	if (verdict_ok && dir == CNP_DIR_INGRESS && proxy_port && mode == CNP_MODE_ENFORCE) {
		n.verdict = CNP_VERDICT_DROPPED;
		n.reason = CNP_REASON_PROXY_BYPASSED;
		/* Counters only, no conntrack (ct_entry): once the proxy is
		 * up, the next attempt of this connection goes through it. */
		ct_create(&fk, own, skb->len, src_id, dst_id, &n, now);
		emit(&fk, &p, src_id, dst_id, n.verdict, n.reason, n.rule_id, ns_id, now);
		return TC_ACT_SHOT;
	}
	ct_create(&fk, own, skb->len, src_id, dst_id, &n, now);
	emit(&fk, &p, src_id, dst_id, n.verdict, n.reason, n.rule_id, ns_id, now);
	if (!verdict_ok)
		return TC_ACT_SHOT;
	return pass_redirect(skb, &p, dir, 1, proxy_port, mode);
}

SEC("classifier")
int cnp_from_pod(struct __sk_buff *skb)
{
	return handle(skb, CNP_DIR_EGRESS);
}

SEC("classifier")
int cnp_to_pod(struct __sk_buff *skb)
{
	return handle(skb, CNP_DIR_INGRESS);
}

/* sk_lookup in the node namespace: a listener lookup for a local pod's
 * address can only come from a segment the tc program marked for local
 * delivery (pod addresses are not local addresses here), and the only
 * listener for those is the proxy. The lookup this is for is the
 * time-wait reuse above (tcp_v4_rcv, TCP_TW_SYN -> inet_lookup_listener);
 * to_proxy's own bpf_skc_lookup_tcp reaches it too and gets the same
 * listener it would have found on proxy_port. */
SEC("sk_lookup")
int cnp_proxy_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->family != 2 /* AF_INET */ || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct ipcache_value *v = ipcache_lookup(ctx->local_ip4);
	if (!v || !(v->flags & CNP_IPCACHE_F_LOCAL_ENDPOINT))
		return SK_PASS;
	__u32 key = 0;
	struct bpf_sock *sk = bpf_map_lookup_elem(&cnp_proxy_socks, &key);
	if (!sk)
		return SK_PASS;
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}
