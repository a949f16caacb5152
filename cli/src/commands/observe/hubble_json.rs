//! `-o json`: each flow as one `hubble observe -o json` line (a
//! `GetFlowsResponse`: `{"flow":{…},"node_name":…,"time":…}`), with
//! protojson's proto field names and zero values left out, so that
//! `cnpilot import hubble` (and anything else that reads Hubble) takes it.
//!
//! Verdicts: forwarded and HTTP allowed → `FORWARDED`; redirected →
//! `REDIRECTED`; would-drop and l7-would-deny → `AUDIT` (what Cilium's
//! policy audit mode emits); dropped and l7-denied → `DROPPED`; unparseable
//! HTTP (passed on as bytes) → `FORWARDED`. Drop reasons: default-deny and
//! proxy-bypassed → `POLICY_DENIED` (133), deny-rule → `POLICY_DENY` (181),
//! Cilium's names (from an imported store) unchanged;
//! Cilium leaves them off audit verdicts, this keeps them so the reason
//! survives. An HTTP exchange is one `REQUEST` record carrying the response
//! code, since the agent sees the pair as one event. A DNS record with an
//! answer is the `RESPONSE` Hubble writes for it: from the server to the
//! client (`is_reply`), with `ips` and `ttl`, which is how `import hubble`
//! reads it back (turned round again, counted 0: its query is a record of
//! its own). A store record standing for a query *and* its answer (count 1)
//! therefore comes back as the answer only.

use std::net::IpAddr;

use chrono::SecondsFormat;
use cnpilot_learner::Direction;
use serde::Serialize;

use super::model::{Endpoint, Flow, Kind, Verdict};

#[derive(Serialize)]
struct Response<'a> {
    flow: HubbleFlow<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_name: Option<&'a str>,
    time: String,
}

#[derive(Serialize)]
struct HubbleFlow<'a> {
    time: String,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_reason: Option<u32>,
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    ip: Option<Ip>,
    #[serde(skip_serializing_if = "Option::is_none")]
    l4: Option<L4>,
    source: HubbleEndpoint<'a>,
    destination: HubbleEndpoint<'a>,
    #[serde(rename = "Type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    l7: Option<L7<'a>>,
    event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic_direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_reason_desc: Option<&'a str>,
    is_reply: bool,
}

#[derive(Serialize)]
struct Ip {
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<IpAddr>,
    #[serde(rename = "ipVersion")]
    ip_version: &'static str,
}

#[derive(Serialize)]
enum L4 {
    #[serde(rename = "TCP")]
    Tcp(Ports),
    #[serde(rename = "UDP")]
    Udp(Ports),
    #[serde(rename = "SCTP")]
    Sctp(Ports),
    #[serde(rename = "ICMPv4")]
    Icmp4(Icmp),
    #[serde(rename = "ICMPv6")]
    Icmp6(Icmp),
}

#[derive(Serialize)]
struct Ports {
    #[serde(skip_serializing_if = "is_zero")]
    source_port: u16,
    #[serde(skip_serializing_if = "is_zero")]
    destination_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<Flags>,
}

#[derive(Serialize)]
struct Flags {
    #[serde(rename = "ACK")]
    ack: bool,
}

#[derive(Serialize)]
struct Icmp {
    #[serde(rename = "type", skip_serializing_if = "is_zero")]
    kind: u16,
}

#[derive(Serialize)]
struct HubbleEndpoint<'a> {
    #[serde(skip_serializing_if = "is_zero_u32")]
    identity: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    labels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    workloads: Vec<Workload<'a>>,
}

#[derive(Serialize)]
struct Workload<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct L7<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<Http<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<Dns<'a>>,
}

#[derive(Serialize)]
struct Http<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u32>,
    #[serde(skip_serializing_if = "str::is_empty")]
    method: &'a str,
    url: String,
    protocol: &'static str,
}

#[derive(Serialize)]
struct Dns<'a> {
    query: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ips: Vec<String>,
    /// Present on every answer, 0 included (flow.proto's `ttl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rcode: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    qtypes: &'a [String],
}

#[derive(Serialize)]
struct EventType {
    #[serde(rename = "type")]
    kind: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    sub_type: u32,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Hubble's verdict name.
pub fn hubble_verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded | Verdict::Unparseable => "FORWARDED",
        Verdict::Redirected => "REDIRECTED",
        Verdict::WouldDrop | Verdict::L7WouldDeny => "AUDIT",
        Verdict::Dropped | Verdict::L7Denied => "DROPPED",
    }
}

/// Cilium's drop reason (code, name) for an L3/L4 (would-)drop. Store
/// records imported from Hubble already carry Cilium's name (or `drop
/// reason N` for a code without one), which is kept.
fn drop_reason(flow: &Flow) -> Option<(Option<u32>, Option<&str>)> {
    if flow.kind != Kind::L3L4 || !matches!(flow.verdict, Verdict::WouldDrop | Verdict::Dropped) {
        return None;
    }
    let reason = flow.reason.as_str();
    if reason.is_empty() {
        // Unknown (a Hubble audit record has none): nothing to make up.
        return None;
    }
    let cilium_name = reason
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    Some(match reason {
        "deny-rule" | "host-deny-rule" | "POLICY_DENY" => (Some(181), Some("POLICY_DENY")),
        _ if cilium_name => (None, Some(reason)),
        _ => match reason.strip_prefix("drop reason ").map(str::parse) {
            Some(Ok(code)) => (Some(code), None),
            _ => (Some(133), Some("POLICY_DENIED")),
        },
    })
}

fn endpoint(e: &Endpoint) -> HubbleEndpoint<'_> {
    // Hubble names no workload for reserved peers; their identity and
    // `reserved:` label say what they are.
    let workload = e
        .workload
        .as_deref()
        .filter(|w| e.reserved().is_none_or(|r| r.name() != *w));
    HubbleEndpoint {
        identity: e.identity,
        namespace: e.namespace.as_deref(),
        labels: &e.labels,
        pod_name: e.pod.as_deref(),
        workloads: workload.map(|name| Workload { name }).into_iter().collect(),
    }
}

fn l4(flow: &Flow) -> Option<L4> {
    let ports = || Ports {
        source_port: flow.src.port,
        destination_port: flow.dst.port,
        // A store record with count 0 is a packet of a connection whose
        // start was seen elsewhere; without SYN, importers take it as such.
        flags: (flow.kind == Kind::L3L4 && flow.count == 0).then_some(Flags { ack: true }),
    };
    Some(match flow.proto {
        6 => L4::Tcp(ports()),
        17 => L4::Udp(ports()),
        132 => L4::Sctp(ports()),
        1 => L4::Icmp4(Icmp {
            kind: flow.dst.port,
        }),
        58 => L4::Icmp6(Icmp {
            kind: flow.dst.port,
        }),
        _ => return None,
    })
}

fn url(h: &super::model::Http) -> String {
    let mut url = match &h.host {
        Some(host) => format!("http://{host}{}", h.path),
        None => h.path.clone(),
    };
    if let Some(q) = &h.query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Unix ns as Hubble writes times: RFC 3339 UTC with nanoseconds.
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The Hubble line of a flow; `None` when its time is unknown (Hubble
/// flows need one, and a made-up time would mislead whatever reads it).
pub fn to_line(flow: &Flow) -> Option<String> {
    let time = rfc3339(flow.time_ns?);
    let answer = flow
        .dns
        .as_ref()
        .and_then(|d| d.answer.as_ref())
        .filter(|_| flow.kind == Kind::Dns);
    // An answer goes the other way: server to client.
    let reply = answer.is_some();
    let (from, to) = if reply {
        (&flow.dst, &flow.src)
    } else {
        (&flow.src, &flow.dst)
    };
    // A field-masked Hubble export may have kept one address only.
    let ip = from.ip.or(to.ip).map(|any| Ip {
        source: from.ip,
        destination: to.ip,
        ip_version: if any.is_ipv6() { "IPv6" } else { "IPv4" },
    });
    let l7 = match flow.kind {
        Kind::L3L4 => None,
        Kind::Http => Some(L7 {
            kind: "REQUEST",
            http: flow.http.as_ref().map(|h| Http {
                code: h.status.filter(|&c| c > 0),
                method: &h.method,
                url: url(h),
                protocol: "HTTP/1.1",
            }),
            dns: None,
        }),
        Kind::Dns => Some(L7 {
            kind: if reply { "RESPONSE" } else { "REQUEST" },
            http: None,
            dns: flow.dns.as_ref().map(|d| Dns {
                query: format!("{}.", d.query.trim_end_matches('.')),
                ips: answer
                    .map(|a| a.ips.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                ttl: answer.map(|a| a.ttl),
                rcode: d.rcode,
                qtypes: &d.qtypes,
            }),
        }),
    };
    let reason = drop_reason(flow);
    let event_type = match (flow.kind, reason, flow.verdict) {
        (Kind::Http | Kind::Dns, _, _) => EventType {
            kind: 129,
            sub_type: 0,
        },
        (_, Some((code, _)), Verdict::Dropped) => EventType {
            kind: 1,
            sub_type: code.unwrap_or(0),
        },
        _ => EventType {
            kind: 5,
            sub_type: 0,
        },
    };
    let node = flow.node.as_deref();
    let mut l4 = l4(flow);
    if reply {
        if let Some(L4::Tcp(p) | L4::Udp(p) | L4::Sctp(p)) = &mut l4 {
            std::mem::swap(&mut p.source_port, &mut p.destination_port);
        }
    }
    let response = Response {
        flow: HubbleFlow {
            time: time.clone(),
            verdict: hubble_verdict(flow.verdict),
            drop_reason: reason.and_then(|r| r.0),
            ip,
            l4,
            source: endpoint(from),
            destination: endpoint(to),
            kind: if flow.kind == Kind::L3L4 {
                "L3_L4"
            } else {
                "L7"
            },
            node_name: node,
            l7,
            event_type,
            traffic_direction: match flow.direction {
                Some(Direction::Ingress) => Some("INGRESS"),
                Some(Direction::Egress) => Some("EGRESS"),
                _ => None,
            },
            drop_reason_desc: reason.and_then(|r| r.1),
            is_reply: reply,
        },
        node_name: node,
        time,
    };
    serde_json::to_string(&response).ok()
}
