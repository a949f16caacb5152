/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Packet parsing for the tc programs of cnpilot.bpf.c: the addresses, ports
 * and policy port of an IPv4 packet, straight from the skb's linear data.
 */
#ifndef CNPILOT_PARSE_H
#define CNPILOT_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

/* linux/icmp.h drags in libc headers that do not exist for -target bpf. */
struct cnp_icmphdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__be16 id;
	__be16 sequence;
};
/* The first four bytes of TCP, UDP and SCTP headers alike. */
struct cnp_ports {
	__be16 source;
	__be16 dest;
};

#define CNP_ICMP_ECHOREPLY 0
#define CNP_ICMP_ECHO 8

struct packet {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	/* What policy matches on: the destination port, or the ICMP type. */
	__u16 policy_port;
	__u8 proto;
	/* Which conntrack keys can hold this packet's connection (CNP_CT_*). */
	__u8 ct_hint;
};

/* A TCP SYN without ACK opens a connection: it is nobody's reply, so only
 * its own tuple can be in conntrack (a retransmitted SYN). A SYN+ACK is a
 * reply: its connection is keyed the other way round. Anything else may be
 * either, and the forward key is tried first. */
#define CNP_CT_EITHER 0
#define CNP_CT_FORWARD_ONLY 1
#define CNP_CT_REPLY_FIRST 2

/* 0 = parsed an IPv4 packet cnpilot evaluates; <0 = not ours, pass. */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -1; /* IPv6, ARP: not evaluated (yet) */
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return -1;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->sport = 0;
	p->dport = 0;
	p->policy_port = 0;
	p->ct_hint = CNP_CT_EITHER;
	/* Non-first fragments carry no L4 header: match them on addresses. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	void *l4 = (void *)ip + ihl;
	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		p->sport = bpf_ntohs(tcp->source);
		p->dport = bpf_ntohs(tcp->dest);
		p->policy_port = p->dport;
		if (tcp->syn)
			p->ct_hint = tcp->ack ? CNP_CT_REPLY_FIRST : CNP_CT_FORWARD_ONLY;
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return -1;
		p->sport = bpf_ntohs(udp->source);
		p->dport = bpf_ntohs(udp->dest);
		p->policy_port = p->dport;
		break;
	}
	case IPPROTO_SCTP: {
		/* The SCTP common header starts with the two ports, as UDP's
		 * does; linux/sctp.h does not build for the BPF target. */
		struct cnp_ports *ports = l4;
		if ((void *)(ports + 1) > data_end)
			return -1;
		p->sport = bpf_ntohs(ports->source);
		p->dport = bpf_ntohs(ports->dest);
		p->policy_port = p->dport;
		break;
	}
	case IPPROTO_ICMP: {
		struct cnp_icmphdr *icmp = l4;
		if ((void *)(icmp + 1) > data_end)
			return -1;
		p->policy_port = icmp->type;
		/* Echo request and reply share the id: using it on both sides
		 * makes the reply the reverse tuple of the request. */
		if (icmp->type == CNP_ICMP_ECHO || icmp->type == CNP_ICMP_ECHOREPLY) {
			p->sport = bpf_ntohs(icmp->id);
			p->dport = p->sport;
		}
		break;
	}
	default:
		break;
	}
	return 0;
}

#endif /* CNPILOT_PARSE_H */
