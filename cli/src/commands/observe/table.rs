//! The default output: Hubble's compact table, with cnpilot's verdicts.

use cnpilot_learner::record::proto_name;
use cnpilot_learner::{Direction, ReservedIdentity};

use super::model::{Endpoint, Flow, Verdict};

pub const HEADER: [&str; 5] = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT"];
const SUMMARY: &str = "SUMMARY";
/// Widths while following, when the rows to come are unknown: Hubble's
/// timestamp, room for `namespace/pod-with-hash:port`, the longest type and
/// verdict.
pub const FOLLOW_WIDTHS: [usize; 5] = [19, 44, 44, 6, 13];

/// Hubble's `Jan _2 15:04:05.000`, in UTC.
pub fn timestamp(ns: Option<i64>) -> String {
    match ns {
        Some(ns) => chrono::DateTime::from_timestamp_nanos(ns)
            .format("%b %e %H:%M:%S%.3f")
            .to_string(),
        None => "-".into(),
    }
}

/// `ns/pod:port`, else `ns/workload:port`; peers outside the cluster by
/// address with their entity (`198.51.100.7:443 (world)`).
pub fn peer(e: &Endpoint, with_port: bool) -> String {
    let port = if with_port && e.port != 0 {
        format!(":{}", e.port)
    } else {
        String::new()
    };
    let name = match (&e.namespace, &e.pod, &e.workload) {
        (Some(ns), Some(pod), _) => Some(format!("{ns}/{pod}")),
        (Some(ns), None, Some(w)) => Some(format!("{ns}/{w}")),
        (None, _, Some(w)) if ReservedIdentity::from_name(w).is_none() => Some(w.clone()),
        _ => None,
    };
    if let Some(name) = name {
        return format!("{name}{port}");
    }
    let entity = e
        .reserved()
        .map(|r| r.name().to_string())
        .or_else(|| e.workload.clone());
    match (e.ip, entity) {
        (Some(ip), Some(entity)) => format!("{ip}{port} ({entity})"),
        (Some(ip), None) => format!("{ip}{port}"),
        (None, Some(entity)) => format!("{entity}{port}"),
        (None, None) if e.identity != 0 => format!("identity:{}{port}", e.identity),
        (None, None) => format!("(unknown){port}"),
    }
}

pub fn verdict(v: Verdict) -> String {
    v.as_str().to_ascii_uppercase()
}

fn at(direction: Option<Direction>) -> &'static str {
    match direction {
        Some(Direction::Ingress) => " at ingress",
        Some(Direction::Egress) => " at egress",
        _ => "",
    }
}

pub fn summary(f: &Flow) -> String {
    let reason = if f.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", f.reason)
    };
    if let Some(h) = &f.http {
        let status = h.status.map(|s| format!(" {s}")).unwrap_or_default();
        let query = h
            .query
            .as_ref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let line = format!("HTTP/1.1{status} {} {}{query}", h.method, h.path);
        return match f.verdict {
            Verdict::L7WouldDeny => format!("{line}, would be denied{reason}"),
            Verdict::L7Denied => format!("{line}, denied{reason}"),
            Verdict::Unparseable => format!("unparseable HTTP{reason}"),
            _ => line,
        };
    }
    if let Some(d) = &f.dns {
        let query = format!("{}. {}", d.query, d.qtypes.join(","));
        // Hubble's wording for a proxied answer: addresses, TTL, the query.
        let line = match (&d.answer, d.rcode) {
            (Some(a), _) => {
                let ips: Vec<String> = a.ips.iter().map(ToString::to_string).collect();
                format!(
                    "DNS Answer \"{}\" TTL: {} (Proxy {query})",
                    ips.join(","),
                    a.ttl
                )
            }
            (None, Some(rcode)) if rcode != 0 => {
                format!("DNS Answer RCode: {} (Proxy {query})", rcode_text(rcode))
            }
            _ => format!("DNS Query {query}"),
        };
        return match f.verdict {
            Verdict::L7WouldDeny => format!("{line}, would be refused"),
            Verdict::L7Denied => format!("{line}, refused"),
            _ => line,
        };
    }
    let proto = proto_name(f.proto);
    let what = if matches!(f.proto, 1 | 58) {
        format!("{proto} type {}", f.dst.port)
    } else {
        format!("{proto} to {}", f.dst.port)
    };
    match f.verdict {
        Verdict::Dropped => format!("Policy denied{}{reason}: {what}", at(f.direction)),
        Verdict::WouldDrop => format!("Policy would deny{}{reason}: {what}", at(f.direction)),
        Verdict::Redirected => format!("{what}, redirected to the L7 proxy"),
        _ => what,
    }
}

pub fn cells(f: &Flow) -> [String; 6] {
    let icmp = matches!(f.proto, 1 | 58);
    [
        timestamp(f.time_ns),
        peer(&f.src, !icmp),
        peer(&f.dst, !icmp),
        f.kind.as_str().to_string(),
        verdict(f.verdict),
        summary(f),
    ]
}

pub fn render(row: &[String; 6], widths: &[usize; 5]) -> String {
    let mut line = String::new();
    for (cell, w) in row.iter().zip(widths) {
        line.push_str(&format!("{cell:<w$}  "));
    }
    line.push_str(&row[5]);
    line.trim_end().to_string()
}

pub fn header() -> [String; 6] {
    let [a, b, c, d, e] = HEADER;
    [a, b, c, d, e, SUMMARY].map(String::from)
}

/// Widths that fit every row of a batch.
pub fn widths(rows: &[[String; 6]]) -> [usize; 5] {
    let mut widths = HEADER.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

/// An rcode as DNS tools name it.
fn rcode_text(rcode: u32) -> String {
    match rcode {
        1 => "Format Error".into(),
        2 => "Server Failure".into(),
        3 => "Non-Existent Domain".into(),
        4 => "Not Implemented".into(),
        5 => "Refused".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::observe::model::{Http, Kind};

    #[test]
    fn timestamps_look_like_hubbles() {
        // 2026-12-04T21:00:00.123Z
        assert_eq!(
            timestamp(Some(1_796_418_000_123_000_000)),
            "Dec  4 21:00:00.123"
        );
        assert_eq!(timestamp(None), "-");
    }

    #[test]
    fn peers_by_pod_then_workload_then_address() {
        let mut e = Endpoint {
            ip: "198.51.100.7".parse().ok(),
            port: 443,
            identity: 2,
            ..Default::default()
        };
        assert_eq!(peer(&e, true), "198.51.100.7:443 (world)");
        e.namespace = Some("web".into());
        e.workload = Some("frontend-app".into());
        e.identity = 300;
        assert_eq!(peer(&e, true), "web/frontend-app:443");
        e.pod = Some("frontend-app-0".into());
        assert_eq!(peer(&e, false), "web/frontend-app-0");
    }

    #[test]
    fn summaries() {
        let mut f = Flow {
            time_ns: None,
            kind: Kind::L3L4,
            verdict: Verdict::WouldDrop,
            reason: "default-deny".into(),
            direction: Some(Direction::Egress),
            proto: 6,
            src: Endpoint::default(),
            dst: Endpoint {
                port: 8080,
                ..Default::default()
            },
            node: None,
            http: None,
            dns: None,
            count: 1,
        };
        assert_eq!(
            summary(&f),
            "Policy would deny at egress (default-deny): TCP to 8080"
        );
        f.verdict = Verdict::Forwarded;
        f.reason.clear();
        assert_eq!(summary(&f), "TCP to 8080");
        f.kind = Kind::Http;
        f.verdict = Verdict::L7Denied;
        f.http = Some(Http {
            method: "POST".into(),
            path: "/api/v1/refunds".into(),
            status: Some(403),
            ..Default::default()
        });
        assert_eq!(summary(&f), "HTTP/1.1 403 POST /api/v1/refunds, denied");
    }
}
