//! The agent's event lines (`cnpilot agent --events`, and the socket's
//! stream): one JSON object per line, `l3-l4` flows, `http` requests, and
//! `lost` notices from the socket. Read leniently: unknown fields are
//! ignored and every field the agent added later is optional, so lines of
//! an older agent still read.

use std::net::IpAddr;

use cnpilot_bpf::maps::verdict;
use cnpilot_learner::{Direction, ReservedIdentity};
use serde::Deserialize;

use super::model::{Dns, Endpoint, Flow, Http, Kind, Verdict};

#[derive(Debug, Deserialize)]
struct RawLine {
    #[serde(rename = "type")]
    kind: Option<String>,
    time: Option<String>,
    time_ns: Option<u64>,
    verdict: Option<String>,
    reason: Option<String>,
    direction: Option<String>,
    proto: Option<String>,
    src: Option<RawPeer>,
    dst: Option<RawPeer>,
    node: Option<String>,
    method: Option<String>,
    path: Option<String>,
    query: Option<String>,
    host: Option<String>,
    status: Option<u32>,
    /// DNS lines: the query type and the answer's rcode by name.
    qtype: Option<String>,
    rcode: Option<String>,
    answers: Option<Vec<IpAddr>>,
    ttl: Option<u32>,
    /// Only on `lost` lines.
    count: Option<u64>,
    /// An agent that cannot serve the request says why (not part of the
    /// event stream proper; read so the user sees the agent's words).
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawPeer {
    ip: Option<IpAddr>,
    port: Option<u16>,
    identity: Option<u32>,
    name: Option<String>,
    namespace: Option<String>,
    pod: Option<String>,
    labels: Option<Vec<String>>,
}

/// What one line is.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Flow(Box<Flow>),
    /// The agent dropped this many events for this client.
    Lost(u64),
    /// A line type this version does not know (a newer agent): skipped.
    Other(String),
    /// `{"error":"…"}` from the agent.
    AgentError(String),
}

/// The number of an rcode the agent writes by name (`NOERROR`, …).
fn rcode_number(name: &str) -> Option<u32> {
    [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
    ]
    .iter()
    .position(|n| *n == name)
    .and_then(|i| u32::try_from(i).ok())
    .or_else(|| name.parse().ok())
}

/// Parse one line. The error is a short reason for the skipped-lines count.
pub fn parse(text: &str) -> Result<Line, String> {
    let raw: RawLine = serde_json::from_str(text).map_err(|e| format!("not an event line: {e}"))?;
    if let (None, Some(error)) = (&raw.kind, raw.error) {
        return Ok(Line::AgentError(error));
    }
    let kind = match raw.kind.as_deref() {
        // The agent wrote flow lines without `type` before it had others.
        None | Some("l3-l4") => Kind::L3L4,
        Some("http") => Kind::Http,
        Some("dns") => Kind::Dns,
        Some("lost") => return Ok(Line::Lost(raw.count.unwrap_or(0))),
        Some(other) => return Ok(Line::Other(other.to_string())),
    };
    let verdict_text = raw.verdict.as_deref().ok_or("no verdict")?;
    let verdict = match (kind, verdict_text) {
        (Kind::Http, verdict::L7_ALLOWED_NAME) => Verdict::Forwarded,
        (Kind::Http, verdict::L7_WOULD_DENY_NAME) => Verdict::L7WouldDeny,
        (Kind::Http, verdict::L7_DENIED_NAME) => Verdict::L7Denied,
        (Kind::Http, verdict::L7_UNPARSEABLE_NAME) => Verdict::Unparseable,
        (Kind::Dns, verdict::L7_ALLOWED_NAME) => Verdict::Forwarded,
        (Kind::Dns, verdict::L7_WOULD_DENY_NAME) => Verdict::L7WouldDeny,
        (Kind::Dns, verdict::L7_DENIED_NAME) => Verdict::L7Denied,
        (Kind::Dns, verdict::L7_UNPARSEABLE_NAME) => Verdict::Unparseable,
        (_, verdict::FORWARDED_NAME) => Verdict::Forwarded,
        (_, verdict::WOULD_DROP_NAME) => Verdict::WouldDrop,
        (_, verdict::DROPPED_NAME) => Verdict::Dropped,
        (_, verdict::REDIRECTED_NAME) => Verdict::Redirected,
        (_, other) => return Err(format!("unknown verdict `{other}`")),
    };
    let time_ns = match raw.time.as_deref() {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .ok_or_else(|| format!("unparsable time `{t}`"))?,
        ),
        // The proxy stamps HTTP lines with the wall clock; flow lines'
        // time_ns is the kernel's monotonic clock and says nothing about
        // when it happened.
        None if kind != Kind::L3L4 => raw.time_ns.and_then(|ns| i64::try_from(ns).ok()),
        None => None,
    };
    let proto = match raw.proto.as_deref() {
        Some("tcp") => 6,
        Some("udp") => 17,
        Some("icmp") => 1,
        Some(n) => n
            .parse::<u8>()
            .map_err(|_| format!("unknown proto `{n}`"))?,
        // The proxy speaks HTTP over TCP only.
        None if kind == Kind::Http => 6,
        // Lines of agents that proxied DNS over UDP only had no proto.
        None if kind == Kind::Dns => 17,
        None => return Err("no proto".into()),
    };
    let direction = match raw.direction.as_deref() {
        Some("ingress") => Some(Direction::Ingress),
        Some("egress") => Some(Direction::Egress),
        _ => None,
    };
    let src = endpoint(raw.src.ok_or("no src")?);
    let dst = endpoint(raw.dst.ok_or("no dst")?);
    let direction = direction.or((kind == Kind::Dns).then_some(Direction::Egress));
    let dns = (kind == Kind::Dns).then(|| Dns {
        query: raw.query.clone().unwrap_or_default(),
        qtypes: raw.qtype.clone().into_iter().collect(),
        rcode: raw.rcode.as_deref().and_then(rcode_number),
        answer: raw
            .answers
            .clone()
            .filter(|ips| !ips.is_empty())
            .map(|ips| cnpilot_learner::DnsAnswer {
                ips,
                ttl: raw.ttl.unwrap_or(0),
            }),
    });
    let http = (kind == Kind::Http).then(|| Http {
        method: raw.method.unwrap_or_default(),
        path: raw.path.unwrap_or_default(),
        query: raw.query.filter(|q| !q.is_empty()),
        host: raw.host.filter(|h| !h.is_empty()),
        status: raw.status,
    });
    Ok(Line::Flow(Box::new(Flow {
        time_ns,
        kind,
        verdict,
        reason: raw.reason.unwrap_or_default(),
        direction,
        proto,
        src,
        dst,
        node: raw.node.filter(|n| !n.is_empty()),
        http,
        dns,
        count: 1,
    })))
}

/// `name` is `ns/workload` for pods, an entity name (`world`, or
/// `reserved:world`) for reserved identities, `identity-N` otherwise.
fn endpoint(raw: RawPeer) -> Endpoint {
    let identity = raw.identity.unwrap_or(0);
    let name = raw.name.unwrap_or_default();
    let (name_ns, workload) = match name.split_once('/') {
        Some((ns, w)) if !ns.is_empty() && !w.is_empty() => {
            (Some(ns.to_string()), Some(w.to_string()))
        }
        _ => (None, None),
    };
    let mut labels = raw.labels.unwrap_or_default();
    if labels.is_empty() {
        // A reserved peer is known by its label alone; give it the one
        // Hubble shows, so `import hubble` names it the same way.
        if let Some(r) = ReservedIdentity::from_number(identity) {
            labels.push(format!("reserved:{}", r.name()));
        }
    }
    Endpoint {
        ip: raw.ip,
        port: raw.port.unwrap_or(0),
        identity,
        namespace: raw.namespace.filter(|n| !n.is_empty()).or(name_ns),
        workload,
        pod: raw.pod.filter(|p| !p.is_empty()),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(line: &str) -> Flow {
        match parse(line) {
            Ok(Line::Flow(f)) => *f,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn todays_flow_line_reads_without_type_time_or_peer_details() {
        let f = flow(
            r#"{"time_ns":123,"verdict":"would-drop","reason":"default-deny","direction":"egress","endpoint_namespace":"tenant-a","proto":"udp","src":{"ip":"198.18.1.2","port":40000,"identity":300,"name":"tenant-a/worker"},"dst":{"ip":"198.18.9.9","port":53,"identity":2,"name":"world"},"rule_id":0}"#,
        );
        assert_eq!(f.kind, Kind::L3L4);
        assert_eq!(f.time_ns, None);
        assert_eq!(f.verdict, Verdict::WouldDrop);
        assert_eq!(f.proto, 17);
        assert_eq!(f.src.namespace.as_deref(), Some("tenant-a"));
        assert_eq!(f.src.workload.as_deref(), Some("worker"));
        assert_eq!(f.dst.namespace, None);
        assert_eq!(f.dst.labels, vec!["reserved:world".to_string()]);
    }

    #[test]
    fn http_line_falls_back_to_its_wall_clock_time_ns() {
        let f = flow(
            r#"{"type":"http","time_ns":1796418000123456789,"verdict":"l7-denied","method":"POST","path":"/api/v1/refunds","query":null,"host":null,"status":403,"src":{"ip":"198.18.1.2","port":0,"identity":300,"name":"web/frontend-app"},"dst":{"ip":"198.18.2.2","port":8080,"identity":301,"name":"payments/payments-api"},"reason":"no rule"}"#,
        );
        assert_eq!(f.time_ns, Some(1_796_418_000_123_456_789));
        assert_eq!(f.verdict, Verdict::L7Denied);
        assert_eq!(f.http.as_ref().map(|h| h.status), Some(Some(403)));
    }

    #[test]
    fn the_agents_dns_line_reads_as_a_dns_flow() {
        let f = flow(
            r#"{"type":"dns","time":"2026-12-07T06:00:00Z","time_ns":1,"verdict":"l7-denied","query":"intake.datadoghq.example","qtype":"A","rcode":"REFUSED","answers":[],"ttl":0,"src":{"ip":"198.18.8.10","port":40000,"identity":301,"name":"payments/payments-api"},"dst":{"ip":"198.18.1.10","port":53,"identity":310,"name":"kube-system/kube-dns"},"reason":"no dns rule matches","node":"cnp-node"}"#,
        );
        assert_eq!(f.kind, Kind::Dns);
        assert_eq!(f.verdict, Verdict::L7Denied);
        assert_eq!(f.proto, 17);
        assert_eq!(f.direction, Some(Direction::Egress));
        let dns = f.dns.unwrap();
        assert_eq!(dns.query, "intake.datadoghq.example");
        assert_eq!(dns.qtypes, vec!["A".to_string()]);
        assert_eq!(dns.rcode, Some(5));
    }

    #[test]
    fn lost_unknown_and_bad_lines() {
        assert_eq!(parse(r#"{"type":"lost","count":7}"#), Ok(Line::Lost(7)));
        assert_eq!(
            parse(r#"{"type":"kafka"}"#),
            Ok(Line::Other("kafka".into()))
        );
        assert!(parse("{").is_err());
        // Nulls where values were expected read as absent.
        let nulls = r#"{"verdict":"forwarded","proto":"tcp","src":{"ip":null,"port":null,"identity":null,"name":null,"labels":null},"dst":{}}"#;
        assert!(matches!(parse(nulls), Ok(Line::Flow(_))));
        assert!(
            parse(r#"{"verdict":"maybe","proto":"tcp","src":{},"dst":{}}"#)
                .unwrap_err()
                .contains("maybe")
        );
    }
}
