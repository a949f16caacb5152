//! The one shape every source is turned into before it is filtered and
//! printed: an observed flow or HTTP request, with whatever the source knew
//! about both peers.

use std::net::IpAddr;

use clap::ValueEnum;
use cnpilot_learner::identity::NAMESPACE_LABEL;
use cnpilot_learner::{
    Direction, DnsAnswer, FlowRecord, L7Protocol, Peer, ReservedIdentity, Verdict as StoreVerdict,
};

/// What kind of observation a flow is (`--type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(name = "l3-l4")]
    L3L4,
    Http,
    Dns,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::L3L4 => "l3-l4",
            Kind::Http => "http",
            Kind::Dns => "dns",
        }
    }
}

/// cnpilot's verdicts (`--verdict`). Finer than Hubble's: the table shows
/// these, `-o json` maps them to Hubble's (see `hubble_json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Verdict {
    /// Allowed (HTTP: `allowed`).
    Forwarded,
    /// Audit mode: enforcement would have dropped it.
    WouldDrop,
    /// Dropped by the datapath (enforce mode).
    Dropped,
    /// Allowed at L3/L4 and handed to the L7 proxy.
    Redirected,
    /// Audit mode: the proxy would have answered 403.
    L7WouldDeny,
    /// The proxy answered 403 (enforce mode).
    L7Denied,
    /// The proxy could not parse the request and passed the bytes on.
    Unparseable,
}

use cnpilot_bpf::maps::verdict;

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => verdict::FORWARDED_NAME,
            Verdict::WouldDrop => verdict::WOULD_DROP_NAME,
            Verdict::Dropped => verdict::DROPPED_NAME,
            Verdict::Redirected => verdict::REDIRECTED_NAME,
            Verdict::L7WouldDeny => verdict::L7_WOULD_DENY_NAME,
            Verdict::L7Denied => verdict::L7_DENIED_NAME,
            Verdict::Unparseable => verdict::L7_UNPARSEABLE_NAME,
        }
    }
}

/// One side of a flow. Everything but the port is optional: today's agent
/// lines carry only the address, identity and a display name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub identity: u32,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub pod: Option<String>,
    /// Hubble's form: `k8s:app=x`, `reserved:world`.
    pub labels: Vec<String>,
}

impl Endpoint {
    pub fn reserved(&self) -> Option<ReservedIdentity> {
        ReservedIdentity::from_number(self.identity)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Http {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
    pub status: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub query: String,
    pub qtypes: Vec<String>,
    pub rcode: Option<u32>,
    /// The answer's addresses and TTL, for a record of a response.
    pub answer: Option<DnsAnswer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Unix ns (wall clock); `None` when the source had only a monotonic
    /// clock and nothing better was known.
    pub time_ns: Option<i64>,
    pub kind: Kind,
    pub verdict: Verdict,
    /// `default-deny`, `deny-rule`, `proxy-bypassed`, or the proxy's words.
    pub reason: String,
    pub direction: Option<Direction>,
    /// IP protocol number.
    pub proto: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub node: Option<String>,
    pub http: Option<Http>,
    pub dns: Option<Dns>,
    /// Connections this stands for: 0 for a store record that is evidence
    /// of a connection whose start was seen elsewhere.
    pub count: u64,
}

/// Labels of a store peer in Hubble's `source:key=value` form; keys that
/// already carry a source (`reserved:world`, `cidr:…`) keep it.
pub fn hubble_labels(peer: &Peer) -> Vec<String> {
    peer.labels
        .iter()
        .map(|(k, v)| match k.split_once(':') {
            Some(_) if v.is_empty() => k.to_string(),
            _ => format!("k8s:{k}={v}"),
        })
        .collect()
}

fn endpoint_of(peer: &Peer, port: u16) -> Endpoint {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut namespace = non_empty(&peer.namespace);
    if namespace.is_none() {
        namespace = peer.labels.get(NAMESPACE_LABEL).map(str::to_string);
    }
    Endpoint {
        ip: peer.ip,
        port,
        identity: peer.identity,
        namespace,
        workload: non_empty(&peer.workload),
        pod: None,
        labels: hubble_labels(peer),
    }
}

/// A store record as a flow. The store keeps no source port, no pod name
/// and no reason for HTTP beyond the proxy's text.
pub fn from_record(r: &FlowRecord) -> Flow {
    let (kind, http, dns) = match &r.l7 {
        Some(l7) if l7.protocol == L7Protocol::Http => (
            Kind::Http,
            Some(Http {
                method: l7.method.clone().unwrap_or_default(),
                path: l7.path.clone().unwrap_or_default(),
                query: l7.query.clone(),
                host: l7.host.clone(),
                status: l7.status,
            }),
            None,
        ),
        Some(l7) => (
            Kind::Dns,
            None,
            Some(Dns {
                query: l7.host.clone().unwrap_or_default(),
                qtypes: l7
                    .method
                    .as_deref()
                    .map(|m| m.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
                rcode: l7.status,
                answer: l7.dns.clone(),
            }),
        ),
        None => (Kind::L3L4, None, None),
    };
    let verdict = match r.verdict {
        StoreVerdict::Forwarded if r.reason.starts_with("unparseable") => Verdict::Unparseable,
        StoreVerdict::Forwarded => Verdict::Forwarded,
        StoreVerdict::WouldDrop => Verdict::WouldDrop,
        StoreVerdict::Dropped => Verdict::Dropped,
        StoreVerdict::L7WouldDeny => Verdict::L7WouldDeny,
        StoreVerdict::L7Denied => Verdict::L7Denied,
    };
    Flow {
        time_ns: Some(r.window_start_ns),
        kind,
        verdict,
        reason: r.reason.clone(),
        direction: (r.direction != Direction::Unknown).then_some(r.direction),
        proto: r.proto,
        src: endpoint_of(&r.src, 0),
        dst: endpoint_of(&r.dst, r.dst_port),
        node: (!r.node.is_empty()).then(|| r.node.clone()),
        http,
        dns,
        count: r.count,
    }
}
