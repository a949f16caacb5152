//! Flow events as JSON lines, identities resolved to namespace/workload.

use std::net::{IpAddr, Ipv4Addr};
use std::time::UNIX_EPOCH;

use cnpilot_bpf::maps::{reason, verdict, FlowEvent};
use serde::Serialize;

use crate::inventory::Inventory;
use cnpilot_learner::ReservedIdentity;
use cnpilot_proxy::dns::{qtype_name, DnsEvent};
use cnpilot_proxy::event::{L7Event, L7Verdict};

/// What turns datapath time into wall time and names the node, once per
/// agent run (the kernel stamps events with the monotonic clock).
#[derive(Debug, Clone)]
pub struct LineContext {
    pub node: String,
    pub wall_offset_ns: i64,
}

impl LineContext {
    pub fn new(node: String) -> Self {
        let (wall_offset_ns, _) = crate::store::clock_offset();
        Self {
            node,
            wall_offset_ns,
        }
    }
}

/// RFC 3339 in UTC with nanoseconds, as Hubble writes `time`.
pub fn rfc3339(unix_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(unix_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[derive(Debug, Serialize)]
pub struct EventLine {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Wall clock, RFC 3339.
    pub time: String,
    /// The kernel's monotonic clock (comparable with `CLOCK_MONOTONIC`).
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
    pub node: String,
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub identity: u32,
    pub name: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// Identity labels in Hubble's form (`k8s:app=x`, `reserved:world`).
    pub labels: Vec<String>,
}

fn peer(inv: &Inventory, ip: Ipv4Addr, port: u16, identity: u32) -> Peer {
    let pod = inv.all_pods().find(|p| p.ip == ip);
    let labels = match inv.all_pods().find(|p| p.identity == identity) {
        Some(p) => p
            .identity_labels
            .iter()
            .map(|(k, v)| format!("k8s:{k}={v}"))
            .collect(),
        None => ReservedIdentity::from_number(identity)
            .map(|r| vec![format!("reserved:{}", r.name())])
            .unwrap_or_default(),
    };
    Peer {
        ip,
        port,
        identity,
        name: inv.name_of_identity(identity),
        namespace: pod.map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name.clone()),
        labels,
    }
}

pub fn reason_name(r: u8) -> &'static str {
    reason::name(r)
}

pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        other => other.to_string(),
    }
}

pub fn line(ev: &FlowEvent, inv: &Inventory, cx: &LineContext) -> EventLine {
    let peer = |addr: u32, port: u16, identity: u32| {
        peer(inv, Ipv4Addr::from(u32::from_be(addr)), port, identity)
    };
    EventLine {
        kind: "l3-l4",
        time: rfc3339((ev.ts_ns as i64).saturating_add(cx.wall_offset_ns)),
        time_ns: ev.ts_ns,
        verdict: verdict::name(ev.verdict),
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
        node: cx.node.clone(),
    }
}

/// One request the L7 proxy saw, in the same stream as the flow events.
#[derive(Debug, Serialize)]
pub struct HttpLine {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    /// Unix ns (the proxy reads the wall clock).
    pub time_ns: u64,
    /// `allowed`, `l7-would-deny`, `l7-denied` or `unparseable`.
    pub verdict: &'static str,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
    pub status: Option<u16>,
    pub src: Peer,
    pub dst: Peer,
    /// The rule that allowed it, or why it was (or would be) denied.
    pub reason: String,
    pub node: String,
}

pub fn http_line(ev: &L7Event, inv: &Inventory, cx: &LineContext) -> HttpLine {
    let peer = |ip: IpAddr, port: u16, identity: u32| {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        peer(inv, v4, port, identity)
    };
    let time_ns = ev
        .ts
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    HttpLine {
        kind: "http",
        time: rfc3339(i64::try_from(time_ns).unwrap_or(i64::MAX)),
        time_ns,
        verdict: ev.verdict.as_str(),
        method: ev.method.clone(),
        path: ev.path.clone(),
        query: ev.query.clone(),
        host: ev.host.clone(),
        status: ev.status,
        src: peer(ev.src_ip, 0, ev.src_identity),
        dst: peer(ev.dst_ip, ev.dport, ev.dst_identity),
        reason: ev.reason.clone(),
        node: cx.node.clone(),
    }
}

/// Whether `--drops-only` keeps an HTTP record.
pub fn http_is_drop(ev: &L7Event) -> bool {
    ev.verdict != L7Verdict::Allowed
}

/// One query the DNS proxy saw, in the same stream as the flow events.
#[derive(Debug, Serialize)]
pub struct DnsLine {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub time_ns: u64,
    /// `allowed`, `l7-would-deny`, `l7-denied` or `unparseable`.
    pub verdict: &'static str,
    /// `udp` or `tcp`: how the query came.
    pub proto: &'static str,
    pub query: String,
    pub qtype: String,
    /// The answer's rcode (`NOERROR`, `NXDOMAIN`, `REFUSED`…), `None`
    /// when no answer came.
    pub rcode: Option<String>,
    pub answers: Vec<IpAddr>,
    pub ttl: u32,
    pub src: Peer,
    pub dst: Peer,
    pub reason: String,
    pub node: String,
}

pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => other.to_string(),
    }
}

pub fn dns_line(ev: &DnsEvent, inv: &Inventory, cx: &LineContext) -> DnsLine {
    let time_ns = ev
        .ts
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    DnsLine {
        kind: "dns",
        time: rfc3339(i64::try_from(time_ns).unwrap_or(i64::MAX)),
        time_ns,
        verdict: ev.verdict.as_str(),
        proto: if ev.proto == 6 { "tcp" } else { "udp" },
        query: ev.qname.clone(),
        qtype: qtype_name(ev.qtype),
        rcode: ev.rcode.map(rcode_name),
        answers: ev.ips.clone(),
        ttl: ev.ttl,
        src: peer(inv, *ev.src.ip(), ev.src.port(), ev.src_identity),
        dst: peer(inv, *ev.server.ip(), ev.server.port(), ev.dst_identity),
        reason: ev.reason.clone(),
        node: cx.node.clone(),
    }
}
