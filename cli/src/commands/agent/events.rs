//! Flow events as JSON lines, identities resolved to namespace/workload.

use std::net::Ipv4Addr;

use cnpilot_bpf::maps::{reason, verdict, FlowEvent};
use serde::Serialize;

use super::inventory::Inventory;

#[derive(Debug, Serialize)]
pub struct EventLine {
    pub time_ns: u64,
    pub verdict: &'static str,
    pub reason: &'static str,
    /// Direction from the point of view of `endpoint` (the pod whose veth saw it).
    pub direction: &'static str,
    pub endpoint_namespace: Option<String>,
    pub proto: String,
    pub src: Peer,
    pub dst: Peer,
    pub rule_id: u32,
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub identity: u32,
    pub name: String,
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::FORWARDED => "forwarded",
        verdict::WOULD_DROP => "would-drop",
        verdict::DROPPED => "dropped",
        verdict::REDIRECTED => "redirected",
        _ => "unknown",
    }
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        reason::NONE => "",
        reason::DEFAULT_DENY => "default-deny",
        reason::DENY_RULE => "deny-rule",
        _ => "unknown",
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        other => other.to_string(),
    }
}

pub fn line(ev: &FlowEvent, inv: &Inventory) -> EventLine {
    let peer = |addr: u32, port: u16, identity: u32| Peer {
        ip: Ipv4Addr::from(u32::from_be(addr)),
        port,
        identity,
        name: inv.name_of_identity(identity),
    };
    EventLine {
        time_ns: ev.ts_ns,
        verdict: verdict_name(ev.verdict),
        reason: reason_name(ev.reason),
        direction: if ev.direction == 0 {
            "ingress"
        } else {
            "egress"
        },
        endpoint_namespace: inv.namespace_of_ns_id(ev.ns_id).map(str::to_string),
        proto: proto_name(ev.proto),
        src: peer(ev.saddr, ev.sport, ev.src_identity),
        dst: peer(ev.daddr, ev.dport, ev.dst_identity),
        rule_id: ev.rule_id,
    }
}
