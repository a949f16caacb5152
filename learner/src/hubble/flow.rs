//! One Hubble `Flow` (proto JSON: proto field names, or lowerCamelCase) to a
//! `FlowRecord`, with Hubble's connection semantics.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::identity::{ReservedIdentity, NAMESPACE_LABEL};
use crate::record::{Direction, DnsAnswer, FlowRecord, L7Protocol, Peer, Verdict, L7};

/// Why a flow was not turned into a record. The text is the key of the
/// per-reason counts in the import summary.
pub type SkipReason = &'static str;

/// Field by proto name, or by its lowerCamelCase JSON name (protojson's
/// unmarshal accepts both, so a producer may write either).
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, proto_name: &str) -> Option<&'a Value> {
    if let Some(v) = obj.get(proto_name) {
        return Some(v);
    }
    if !proto_name.contains('_') {
        return None;
    }
    let mut camel = String::with_capacity(proto_name.len());
    let mut upper = false;
    for ch in proto_name.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            camel.push(ch.to_ascii_uppercase());
            upper = false;
        } else {
            camel.push(ch);
        }
    }
    obj.get(&camel)
}

fn obj<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Map<String, Value>> {
    field(o, name)?.as_object()
}

fn text<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    field(o, name)?.as_str().filter(|s| !s.is_empty())
}

/// uint32 in proto JSON: a number, or (tolerated) a string.
fn number(o: &Map<String, Value>, name: &str) -> Option<u64> {
    match field(o, name)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `google.protobuf.BoolValue`: a bare bool in JSON (or `{"value":b}` from
/// some encoders).
fn bool_value(o: &Map<String, Value>, name: &str) -> Option<bool> {
    match field(o, name)? {
        Value::Bool(b) => Some(*b),
        Value::Object(inner) => inner.get("value").and_then(Value::as_bool).or(Some(false)),
        _ => None,
    }
}

/// RFC 3339 to Unix ns.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .timestamp_nanos_opt()
}

/// `k8s:app=foo` → (`app`, `foo`); reserved and CIDR labels keep their
/// source prefix (`reserved:world`), as policies select them that way.
fn parse_label(label: &str) -> (String, String) {
    let (source, rest) = label.split_once(':').unwrap_or(("k8s", label));
    let rest_owned;
    let rest = match source {
        "k8s" | "any" | "container" | "unspec" => rest,
        _ => {
            rest_owned = format!("{source}:{rest}");
            &rest_owned
        }
    };
    match rest.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (rest.to_string(), String::new()),
    }
}

/// The workload behind a pod name: `api-7d77448bf5-g59cc` → `api`
/// (Deployment), `agent-x7k2p` → `agent` (DaemonSet), `web-0` → `web`.
pub fn workload_from_pod_name(pod: &str) -> String {
    // Kubernetes' random suffixes use this alphabet (no vowels, no 0/1/3).
    let is_rand = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len())
            && s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
    };
    let parts: Vec<&str> = pod.split('-').collect();
    let n = parts.len();
    if n >= 3 && is_rand(parts[n - 1], 5, 5) && is_rand(parts[n - 2], 6, 10) {
        return parts[..n - 2].join("-");
    }
    if n >= 2 && (is_rand(parts[n - 1], 5, 5) || parts[n - 1].chars().all(|c| c.is_ascii_digit())) {
        return parts[..n - 1].join("-");
    }
    pod.to_string()
}

fn peer(endpoint: Option<&Map<String, Value>>, ip: Option<IpAddr>) -> Peer {
    let mut peer = Peer {
        ip,
        ..Default::default()
    };
    let Some(ep) = endpoint else {
        return peer;
    };
    peer.identity = number(ep, "identity")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    if let Some(labels) = field(ep, "labels").and_then(Value::as_array) {
        peer.labels = labels
            .iter()
            .filter_map(Value::as_str)
            .map(parse_label)
            .collect();
    }
    let reserved: Vec<ReservedIdentity> = peer
        .labels
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("reserved:"))
        .filter_map(ReservedIdentity::from_name)
        .collect();
    if peer.identity == 0 {
        if let Some(r) = reserved.first() {
            peer.identity = r.number();
        }
    }
    peer.namespace = text(ep, "namespace")
        .or_else(|| peer.labels.get(NAMESPACE_LABEL))
        .unwrap_or_default()
        .to_string();
    let workload = field(ep, "workloads")
        .and_then(Value::as_array)
        .and_then(|w| w.first())
        .and_then(Value::as_object)
        .and_then(|w| text(w, "name"))
        .map(str::to_string);
    peer.workload = workload
        .or_else(|| text(ep, "pod_name").map(workload_from_pod_name))
        .or_else(|| {
            peer.labels
                .get("app.kubernetes.io/name")
                .or(peer.labels.get("app"))
                .map(str::to_string)
        })
        .or_else(|| ReservedIdentity::from_number(peer.identity).map(|r| r.name().to_string()))
        .or_else(|| reserved.first().map(|r| r.name().to_string()))
        .unwrap_or_default();
    peer
}

/// Path, query and host of an HTTP URL that may be absolute.
fn split_url(url: &str) -> (Option<String>, Option<String>, Option<String>) {
    let (host, rest) = match url.split_once("://") {
        Some((_, after)) => match after.find('/') {
            Some(i) => (Some(after[..i].to_string()), &after[i..]),
            None => (Some(after.to_string()), "/"),
        },
        None => (None, url),
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (rest, None),
    };
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    (
        Some(path),
        query.filter(|q| !q.is_empty()),
        host.filter(|h| !h.is_empty()),
    )
}

/// The `dns` of an L7 DNS response: the one L7 response imported, because
/// only it carries the answer (addresses and TTL) that `toFQDNs` rules are
/// learned from.
fn dns_response(flow: &Map<String, Value>) -> Option<&Map<String, Value>> {
    let l7 = obj(flow, "l7")?;
    (text(l7, "type") == Some("RESPONSE"))
        .then(|| obj(l7, "dns"))
        .flatten()
}

/// `DNS.ips` and `DNS.ttl` (flow.proto) of a response. Cilium reports an
/// answer without addresses (NXDOMAIN, an empty AAAA) with TTL 2^32-1; an
/// address that does not parse is left out.
fn dns_answer_of(dns: &Map<String, Value>) -> DnsAnswer {
    let ips = field(dns, "ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(Value::as_str)
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    let ttl = number(dns, "ttl")
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(0);
    DnsAnswer { ips, ttl }
}

fn l7_of(l7: &Map<String, Value>) -> Result<Option<L7>, SkipReason> {
    match text(l7, "type") {
        Some("RESPONSE") if obj(l7, "dns").is_none() => {
            return Err("l7 response (the request is counted)")
        }
        Some("SAMPLE") => return Err("l7 sample"),
        _ => {}
    }
    if let Some(http) = obj(l7, "http") {
        let (path, query, mut host) = split_url(text(http, "url").unwrap_or("/"));
        if host.is_none() {
            host = field(http, "headers")
                .and_then(Value::as_array)
                .and_then(|headers| {
                    headers.iter().filter_map(Value::as_object).find_map(|h| {
                        let key = text(h, "key")?;
                        (key.eq_ignore_ascii_case("host") || key == ":authority")
                            .then(|| text(h, "value").map(str::to_string))?
                    })
                });
        }
        return Ok(Some(L7 {
            protocol: L7Protocol::Http,
            method: text(http, "method").map(str::to_string),
            path,
            query,
            host,
            status: number(http, "code")
                .and_then(|c| u32::try_from(c).ok())
                .filter(|&c| c > 0),
            dns: None,
        }));
    }
    if let Some(dns) = obj(l7, "dns") {
        let qtypes = field(dns, "qtypes")
            .and_then(Value::as_array)
            .map(|q| {
                q.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|q| !q.is_empty());
        return Ok(Some(L7 {
            protocol: L7Protocol::Dns,
            method: qtypes,
            path: None,
            query: None,
            host: text(dns, "query").map(|q| q.trim_end_matches('.').to_string()),
            status: number(dns, "rcode").and_then(|c| u32::try_from(c).ok()),
            dns: (text(l7, "type") == Some("RESPONSE")).then(|| dns_answer_of(dns)),
        }));
    }
    if obj(l7, "kafka").is_some() {
        return Err("l7 kafka (not modelled)");
    }
    Ok(None)
}

/// Cilium drop reasons a policy learner cares to name.
fn drop_reason_name(code: u64) -> String {
    match code {
        133 => "POLICY_DENIED".into(),
        181 => "POLICY_DENY".into(),
        other => format!("drop reason {other}"),
    }
}

/// Convert one flow. `wrapper_time` / `wrapper_node` come from the
/// `GetFlowsResponse` / `ExportEvent` around it.
pub fn flow_to_record(
    flow: &Map<String, Value>,
    wrapper_time: Option<&str>,
    wrapper_node: Option<&str>,
) -> Result<FlowRecord, SkipReason> {
    // A DNS response is a reply too, but it is the answer: it becomes a
    // record turned round to the query's way (client to server, the server's
    // port), with count 0 as its query was counted.
    let answer = dns_response(flow).is_some();
    if !answer
        && (bool_value(flow, "is_reply") == Some(true)
            || field(flow, "reply").and_then(Value::as_bool) == Some(true))
    {
        return Err("reply packet");
    }
    let is_l7 = text(flow, "Type") == Some("L7") || obj(flow, "l7").is_some();
    let verdict = match text(flow, "verdict") {
        Some("FORWARDED") | Some("REDIRECTED") | Some("TRACED") | Some("TRANSLATED") => {
            Verdict::Forwarded
        }
        Some("DROPPED") if is_l7 => Verdict::L7Denied,
        Some("DROPPED") => Verdict::Dropped,
        Some("AUDIT") if is_l7 => Verdict::L7WouldDeny,
        Some("AUDIT") => Verdict::WouldDrop,
        Some("ERROR") => return Err("verdict ERROR"),
        None | Some("VERDICT_UNKNOWN") => return Err("no verdict"),
        Some(_) => return Err("unknown verdict"),
    };
    let time = text(flow, "time").or(wrapper_time).ok_or("no timestamp")?;
    let ts = parse_time(time).ok_or("unparsable timestamp")?;
    let ip = obj(flow, "IP");
    let addr = |name: &str| {
        ip.and_then(|ip| text(ip, name))
            .and_then(|s| s.parse::<IpAddr>().ok())
    };
    let (mut src_ip, mut dst_ip) = (addr("source"), addr("destination"));
    let (mut source, mut destination) = (obj(flow, "source"), obj(flow, "destination"));
    let server_port = if answer {
        std::mem::swap(&mut src_ip, &mut dst_ip);
        std::mem::swap(&mut source, &mut destination);
        "source_port"
    } else {
        "destination_port"
    };

    let l7 = match obj(flow, "l7") {
        Some(l7) => l7_of(l7)?,
        None => None,
    };
    let l4 = obj(flow, "l4");
    let l4_kind = l4.and_then(|l4| l4.iter().next());
    let mut count = u64::from(!answer);
    let (proto, dst_port) = match l4_kind {
        Some((kind, body)) => {
            let body = body.as_object();
            let port = |name| body.and_then(|b| number(b, name)).unwrap_or(0) as u16;
            match kind.as_str() {
                "TCP" => {
                    let flags = body.and_then(|b| obj(b, "flags"));
                    let flag = |f: &str| {
                        flags.and_then(|fl| fl.get(f)).and_then(Value::as_bool) == Some(true)
                    };
                    if flags.is_some() && l7.is_none() {
                        if flag("SYN") && flag("ACK") {
                            return Err("reply packet");
                        }
                        if !flag("SYN") {
                            // A packet of a connection whose start this
                            // stream did not show: traffic evidence, not a
                            // new connection. With is_reply=false it is the
                            // initiator's. Without is_reply (old traces) it
                            // may be the server's reply: guess by ports, a
                            // client's ephemeral port being the higher one.
                            let initiator = match bool_value(flow, "is_reply") {
                                Some(reply) => !reply,
                                None => port("source_port") > port("destination_port"),
                            };
                            if !initiator {
                                return Err("mid-connection tcp packet, likely a reply");
                            }
                            count = 0;
                        }
                    }
                    (6, port(server_port))
                }
                "UDP" => (17, port(server_port)),
                "SCTP" => (132, port(server_port)),
                "ICMPv4" => (1, port("type")),
                "ICMPv6" => (58, port("type")),
                _ => return Err("unsupported l4 protocol"),
            }
        }
        None if l7.as_ref().is_some_and(|l| l.protocol == L7Protocol::Dns) => (17, 53),
        None => return Err("no l4"),
    };
    let reason = text(flow, "drop_reason_desc")
        .map(str::to_string)
        .or_else(|| {
            number(flow, "drop_reason")
                .filter(|&c| c != 0)
                .map(drop_reason_name)
        })
        .or_else(|| {
            let et = obj(flow, "event_type")?;
            (number(et, "type") == Some(1))
                .then(|| drop_reason_name(number(et, "sub_type").unwrap_or(0)))
        })
        .filter(|_| verdict != Verdict::Forwarded)
        .unwrap_or_default();
    let direction = match text(flow, "traffic_direction") {
        Some("INGRESS") => Direction::Ingress,
        Some("EGRESS") => Direction::Egress,
        _ => Direction::Unknown,
    };
    let node = wrapper_node
        .or_else(|| text(flow, "node_name"))
        .unwrap_or("unknown");
    Ok(FlowRecord {
        window_start_ns: ts,
        window_end_ns: ts,
        node: node.to_string(),
        src: peer(source, src_ip),
        dst: peer(destination, dst_ip),
        proto,
        dst_port,
        direction,
        verdict,
        reason,
        l7,
        packets: 1,
        bytes: 0,
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_to_workloads() {
        assert_eq!(
            workload_from_pod_name("api-gateway-7d77448bf5-g59cc"),
            "api-gateway"
        );
        assert_eq!(
            workload_from_pod_name("node-local-dns-88zrp"),
            "node-local-dns"
        );
        assert_eq!(workload_from_pod_name("web-0"), "web");
        assert_eq!(workload_from_pod_name("xwing"), "xwing");
        assert_eq!(
            workload_from_pod_name("kube-dns-b4f5c58c7-vnx5s"),
            "kube-dns"
        );
    }

    #[test]
    fn urls_split_into_path_query_host() {
        assert_eq!(
            split_url("http://10.128.0.4:9990/metrics?x=1"),
            (
                Some("/metrics".into()),
                Some("x=1".into()),
                Some("10.128.0.4:9990".into())
            )
        );
        assert_eq!(split_url("/a/b"), (Some("/a/b".into()), None, None));
        assert_eq!(
            split_url("http://h"),
            (Some("/".into()), None, Some("h".into()))
        );
    }

    #[test]
    fn labels_keep_reserved_prefix() {
        assert_eq!(parse_label("k8s:app=x"), ("app".into(), "x".into()));
        assert_eq!(
            parse_label("reserved:world"),
            ("reserved:world".into(), String::new())
        );
        assert_eq!(
            parse_label("cidr:1.2.3.0/24"),
            ("cidr:1.2.3.0/24".into(), String::new())
        );
    }

    #[test]
    fn camel_case_keys_are_accepted() {
        let v: Value = serde_json::json!({"trafficDirection": "EGRESS"});
        assert_eq!(
            text(v.as_object().unwrap(), "traffic_direction"),
            Some("EGRESS")
        );
    }
}
