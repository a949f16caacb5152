/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The host <-> local pod path of the host firewall (issue 15).
 *
 * A connection between the node's own address and a pod on the same node
 * never crosses a node device, so the host firewall's programs there never
 * see it: only the pod's veth does. Cilium judges it by both sides: host ->
 * local pod by the host's egress policy (bpf_host.c cil_host_policy ->
 * from_host_to_lxc -> ipv4_host_policy_egress) and then the pod's ingress
 * (tail call back to bpf_lxc); local pod -> host by the pod's egress
 * (bpf_lxc.c handle_ipv4_from_lxc) and then, when the destination identity
 * is HOST_ID, the host's ingress (tail_call_policy(HOST_EP_ID) ->
 * to_host_from_lxc -> ipv4_host_policy_ingress, lib/host_firewall.h). Here
 * both sides are judged at the pod's veth, at the connection's first packet
 * (deny wins), and the verdict is kept in the veth's conntrack entry as for
 * any connection.
 *
 * Whose denial it is goes into the reason's high bits (cnpilot.h), because
 * each side's denial means "drop" under its own mode: the pod's under its
 * namespace's, the host's under the node's (host_mode_id, flipped only by
 * `cnpilot mode --node`). The mode is read per packet as everywhere, so a
 * flip applies to live connections at once.
 *
 * The host's entry is the reserved endpoint key CNP_ENDPOINT_HOST_KEY,
 * written by the agent only with --host-firewall. Other packets pay one
 * compare of the peer identity at a connection's first packet and one of
 * the conntrack entry's reason after; only in a namespace whose mode is off
 * (no evaluation at all otherwise) does every packet look the entry up.
 *
 * Included by cnpilot.bpf.c after evaluate(): it uses its maps and types.
 */
#ifndef CNPILOT_HOSTPATH_H
#define CNPILOT_HOSTPATH_H

/* The host's side of a packet at pod endpoint `ep` in direction `dir` (the
 * pod's): 1 and `*host`, `*host_mode` when the host firewall is on and the
 * packet's far end is the node's own address. */
static __always_inline int hostpath_side(struct endpoint_value *ep, struct packet *p, __u8 dir,
					 struct endpoint_value *host, __u32 *host_mode)
{
	if (ep->flags & CNP_ENDPOINT_F_HOST)
		return 0; /* a node device: its own rule, in handle() */
	struct endpoint_key hk = { .ifindex = CNP_ENDPOINT_HOST_KEY };
	struct endpoint_value *h = bpf_map_lookup_elem(&cnp_endpoints, &hk);
	if (!h)
		return 0; /* the host firewall is off */
	if ((dir == CNP_DIR_EGRESS ? p->daddr : p->saddr) != h->addr)
		return 0;
	*host = *h;
	__u32 ns = h->ns_id;
	struct ns_mode_value *mv = bpf_map_lookup_elem(&cnp_ns_mode, &ns);
	*host_mode = mv ? mv->mode : CNP_MODE_OFF;
	return 1;
}

/* Whether a packet in a namespace whose mode is off still needs judging:
 * only for the host's side, when it is on. */
static __always_inline int hostpath_in_off_ns(struct endpoint_value *ep, struct packet *p,
					      __u8 dir, __u32 mark)
{
	struct endpoint_value host;
	__u32 host_mode;
	/* The proxy's upstream leg has the node's address but speaks for its
	 * client (the mark), which is not the host. */
	if (dir == CNP_DIR_INGRESS && proxy_mark_identity(mark))
		return 0;
	return hostpath_side(ep, p, dir, &host, &host_mode) && host_mode != CNP_MODE_OFF;
}

/* A new connection whose far end is the host (`peer` from the ipcache, so
 * never the proxy's upstream leg): `d` holds the pod's side, judged under
 * `*mode`. Adds the host's side; on its denial `*mode` becomes the mode
 * under which the combined denial is judged (enforce when a denying side
 * enforces) and, when the denial is the host's alone, `*ns_id` the host's
 * ns_mode key, so events and counts name the node rather than the pod's
 * namespace. */
static __always_inline void hostpath_judge(struct endpoint_value *ep, __u8 dir, struct packet *p,
					   struct decision *d, __u32 *mode, __u32 *ns_id)
{
	struct endpoint_value host;
	__u32 host_mode;
	if (!hostpath_side(ep, p, dir, &host, &host_mode))
		return;
	if (*mode == CNP_MODE_OFF) {
		/* Judged only for the host's sake: the pod's side is off. */
		struct decision none = {};
		*d = none;
	}
	if (host_mode == CNP_MODE_OFF)
		return;
	struct decision dh = {};
	evaluate(host.identity, dir == CNP_DIR_EGRESS ? CNP_DIR_INGRESS : CNP_DIR_EGRESS,
		 ep->identity, p, &dh);
	if (!dh.denied)
		return;
	if (d->denied) {
		d->reason |= CNP_REASON_F_HOST_TOO;
		if (host_mode == CNP_MODE_ENFORCE)
			*mode = CNP_MODE_ENFORCE;
		return;
	}
	*d = dh;
	d->reason |= CNP_REASON_F_HOST;
	*mode = host_mode;
	*ns_id = host.ns_id;
}

/* A packet of a connection whose conntrack reason has a host bit: the mode
 * its denial is judged under now, and the ns_mode key its events name. The
 * host's side no longer applying (host firewall off, node mode off) lets
 * the host's denial pass, as would-drop. */
static __always_inline void hostpath_ct_mode(struct endpoint_value *ep, struct packet *p,
					     __u8 dir, __u8 reason, __u32 *mode, __u32 *ns_id)
{
	struct endpoint_value host;
	__u32 host_mode = CNP_MODE_OFF;
	/* The conntrack entry is keyed by the connection's original
	 * direction; the host is the far end of either direction. */
	if (!hostpath_side(ep, p, dir, &host, &host_mode))
		host_mode = CNP_MODE_OFF;
	int host_drops = host_mode == CNP_MODE_ENFORCE;
	if (reason & CNP_REASON_F_HOST) {
		*mode = host_drops ? CNP_MODE_ENFORCE : CNP_MODE_AUDIT;
		if (host_mode != CNP_MODE_OFF)
			*ns_id = host.ns_id;
	} else if (host_drops) {
		*mode = CNP_MODE_ENFORCE; /* F_HOST_TOO: either side's enforce drops */
	}
}

#endif /* CNPILOT_HOSTPATH_H */
