//! `FlowRecord`: one observed connection (or a batch of them over a time
//! window) with both peers resolved to identities at observation time.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use cnpilot_bpf::maps::{verdict as bpf_verdict, FlowEvent};
use polars::prelude::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::identity::Labels;
use crate::inventory::Inventory;

/// Direction from the observing endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Ingress,
    Egress,
    Unknown,
}

/// What happened to the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Forwarded,
    /// Audit mode: enforcement would have dropped it.
    WouldDrop,
    Dropped,
    /// Audit mode: the L7 proxy would have answered 403.
    L7WouldDeny,
    L7Denied,
}

/// L7 protocol of a record's L7 fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum L7Protocol {
    Http,
    Dns,
}

use cnpilot_bpf::maps::verdict as verdict_names;

macro_rules! text_enum {
    ($ty:ty { $($variant:ident => $text:expr),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                // Not a `match`: the texts may be constants of another crate.
                [$((Self::$variant, $text)),+]
                    .into_iter()
                    .find(|(_, text)| *text == s)
                    .map(|(variant, _)| variant)
                    .ok_or_else(|| format!(
                        "unknown {} `{s}`, expected one of: {}",
                        stringify!($ty),
                        [$($text),+].join(", ")
                    ))
            }
        }
    };
}

text_enum!(Direction { Ingress => "ingress", Egress => "egress", Unknown => "unknown" });
text_enum!(Verdict {
    Forwarded => verdict_names::FORWARDED_NAME,
    WouldDrop => verdict_names::WOULD_DROP_NAME,
    Dropped => verdict_names::DROPPED_NAME,
    L7WouldDeny => verdict_names::L7_WOULD_DENY_NAME,
    L7Denied => verdict_names::L7_DENIED_NAME,
});
text_enum!(L7Protocol { Http => "http", Dns => "dns" });

/// One side of a flow, resolved when the packet was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Peer {
    pub identity: u32,
    /// Empty for peers outside the cluster.
    pub namespace: String,
    /// Deployment / StatefulSet / DaemonSet / Job name, or an entity name
    /// (`world`, `host`, …) for reserved identities.
    pub workload: String,
    pub labels: Labels,
    pub ip: Option<IpAddr>,
}

/// L7 details of a request (HTTP) or query (DNS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7 {
    pub protocol: L7Protocol,
    /// HTTP method; DNS query types (`A,AAAA`).
    pub method: Option<String>,
    /// HTTP path without the query string.
    pub path: Option<String>,
    pub query: Option<String>,
    /// HTTP host (authority); DNS query name without the trailing dot.
    pub host: Option<String>,
    /// HTTP status; DNS rcode.
    pub status: Option<u32>,
    /// A DNS answer's addresses and TTL (`None` for HTTP and for a query
    /// without an answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsAnswer>,
}

/// What a DNS answer said: the addresses it gave for the query name
/// (CNAME chains followed) and the smallest TTL among them, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    pub ips: Vec<IpAddr>,
    pub ttl: u32,
}

impl DnsAnswer {
    /// The addresses as the store keeps them (`dns_ips`): comma-joined, in
    /// answer order.
    pub fn ips_text(&self) -> String {
        self.ips
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An answer from the store's `dns_ips` / `dns_ttl` values. The TTL says
    /// whether there is an answer (an answer without addresses, NXDOMAIN,
    /// has an empty `dns_ips`). A text that is not an address is left out:
    /// the store only writes addresses, so it is damage, not data.
    pub fn from_columns(ips: Option<&str>, ttl: Option<u32>) -> Option<DnsAnswer> {
        let ttl = ttl?;
        let ips = ips
            .unwrap_or_default()
            .split(',')
            .filter_map(|ip| ip.trim().parse().ok())
            .collect();
        Some(DnsAnswer { ips, ttl })
    }
}

/// One observed flow: a connection (count 1), or counters of a connection
/// over a window (a flow-counter snapshot), with both peers resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Unix epoch nanoseconds, inclusive.
    pub window_start_ns: i64,
    /// Unix epoch nanoseconds; equal to the start for a single event.
    pub window_end_ns: i64,
    /// The node that observed it.
    pub node: String,
    pub src: Peer,
    pub dst: Peer,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP).
    pub proto: u8,
    /// Destination port; the ICMP type for ICMP.
    pub dst_port: u16,
    pub direction: Direction,
    pub verdict: Verdict,
    /// Drop / deny reason, empty when forwarded.
    pub reason: String,
    pub l7: Option<L7>,
    pub packets: u64,
    pub bytes: u64,
    /// New connections (or L7 requests) this record stands for. Zero for a
    /// packet of a connection whose start was not seen.
    pub count: u64,
}

/// Column names of the store, in schema order.
pub mod columns {
    pub const WINDOW_START_NS: &str = "window_start_ns";
    pub const WINDOW_END_NS: &str = "window_end_ns";
    pub const NODE: &str = "node";
    pub const SRC_IDENTITY: &str = "src_identity";
    pub const SRC_NAMESPACE: &str = "src_namespace";
    pub const SRC_WORKLOAD: &str = "src_workload";
    pub const SRC_LABELS: &str = "src_labels";
    pub const SRC_IP: &str = "src_ip";
    pub const DST_IDENTITY: &str = "dst_identity";
    pub const DST_NAMESPACE: &str = "dst_namespace";
    pub const DST_WORKLOAD: &str = "dst_workload";
    pub const DST_LABELS: &str = "dst_labels";
    pub const DST_IP: &str = "dst_ip";
    pub const PROTO: &str = "proto";
    pub const DST_PORT: &str = "dst_port";
    pub const DIRECTION: &str = "direction";
    pub const VERDICT: &str = "verdict";
    pub const REASON: &str = "reason";
    pub const L7_PROTOCOL: &str = "l7_protocol";
    pub const L7_METHOD: &str = "l7_method";
    pub const L7_PATH: &str = "l7_path";
    pub const L7_QUERY: &str = "l7_query";
    pub const L7_HOST: &str = "l7_host";
    pub const L7_STATUS: &str = "l7_status";
    pub const PACKETS: &str = "packets";
    pub const BYTES: &str = "bytes";
    pub const COUNT: &str = "count";
    /// A DNS answer's addresses, comma-joined (empty: an answer without
    /// addresses, such as NXDOMAIN); null when the record has no answer.
    pub const DNS_IPS: &str = "dns_ips";
    /// A DNS answer's TTL in seconds; null when the record has no answer
    /// (the column that says whether there is one).
    pub const DNS_TTL: &str = "dns_ttl";

    /// Columns added after the first segment format, in schema order at its
    /// end. A segment written before them lacks them and still reads: they
    /// decode as null (no DNS answer).
    pub const ADDED: [&str; 2] = [DNS_IPS, DNS_TTL];
}

/// The one schema of every store segment; checked on read. Labels are the
/// canonical `k=v;k2=v2` string; enums are their kebab-case names; proto and
/// port are UInt32 because the workspace polars has no 8/16-bit dtypes.
pub fn store_schema() -> Schema {
    use columns::*;
    let s = DataType::String;
    let u32_ = DataType::UInt32;
    let u64_ = DataType::UInt64;
    Schema::from_iter([
        Field::new(WINDOW_START_NS.into(), DataType::Int64),
        Field::new(WINDOW_END_NS.into(), DataType::Int64),
        Field::new(NODE.into(), s.clone()),
        Field::new(SRC_IDENTITY.into(), u32_.clone()),
        Field::new(SRC_NAMESPACE.into(), s.clone()),
        Field::new(SRC_WORKLOAD.into(), s.clone()),
        Field::new(SRC_LABELS.into(), s.clone()),
        Field::new(SRC_IP.into(), s.clone()),
        Field::new(DST_IDENTITY.into(), u32_.clone()),
        Field::new(DST_NAMESPACE.into(), s.clone()),
        Field::new(DST_WORKLOAD.into(), s.clone()),
        Field::new(DST_LABELS.into(), s.clone()),
        Field::new(DST_IP.into(), s.clone()),
        Field::new(PROTO.into(), u32_.clone()),
        Field::new(DST_PORT.into(), u32_.clone()),
        Field::new(DIRECTION.into(), s.clone()),
        Field::new(VERDICT.into(), s.clone()),
        Field::new(REASON.into(), s.clone()),
        Field::new(L7_PROTOCOL.into(), s.clone()),
        Field::new(L7_METHOD.into(), s.clone()),
        Field::new(L7_PATH.into(), s.clone()),
        Field::new(L7_QUERY.into(), s.clone()),
        Field::new(L7_HOST.into(), s.clone()),
        Field::new(L7_STATUS.into(), u32_.clone()),
        Field::new(PACKETS.into(), u64_.clone()),
        Field::new(BYTES.into(), u64_.clone()),
        Field::new(COUNT.into(), u64_),
        Field::new(DNS_IPS.into(), s),
        Field::new(DNS_TTL.into(), u32_),
    ])
}

/// Protocol name for display (`TCP`), or the number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        other => other.to_string(),
    }
}

impl FlowRecord {
    /// A datapath ring-buffer event, with peers' namespace, workload and
    /// labels taken from the inventory *now* (call it as the event arrives:
    /// pod IPs are reused). The identity numbers are the datapath's, which the
    /// agent programmed into the ipcache from the same inventory.
    ///
    /// `wall_offset_ns` converts the event's `bpf_ktime_get_ns` clock to Unix
    /// time (wall clock minus monotonic clock at agent start).
    pub fn from_event(
        event: &FlowEvent,
        inventory: &Inventory,
        node: &str,
        wall_offset_ns: i64,
    ) -> FlowRecord {
        let ts = (event.ts_ns as i64).saturating_add(wall_offset_ns);
        // Addresses are in network byte order in the event.
        let src_ip = IpAddr::V4(Ipv4Addr::from(u32::from_be(event.saddr)));
        let dst_ip = IpAddr::V4(Ipv4Addr::from(u32::from_be(event.daddr)));
        let peer = |ip: IpAddr, identity: u32| {
            let by_ip = inventory.resolve(ip, ts, Some(node));
            // The datapath's identity wins: it was decided on the packet, and
            // for the L7 proxy's upstream leg it names the client while the
            // address is the node's.
            let resolved = match inventory.workload_of_identity(identity) {
                Some(workload) if identity != by_ip.identity => workload.clone(),
                _ => by_ip,
            };
            Peer {
                identity: if identity != 0 {
                    identity
                } else {
                    resolved.identity
                },
                namespace: resolved.namespace,
                workload: resolved.workload,
                labels: resolved.labels,
                ip: Some(ip),
            }
        };
        let verdict = match event.verdict {
            bpf_verdict::WOULD_DROP => Verdict::WouldDrop,
            bpf_verdict::DROPPED => Verdict::Dropped,
            // Redirected to the L7 proxy: allowed at L3/L4; the proxy reports
            // its own L7 verdicts.
            _ => Verdict::Forwarded,
        };
        // Only denials have a reason here (proxy-bypassed is the proxy's).
        let reason = match cnpilot_bpf::maps::reason::code(event.reason) {
            cnpilot_bpf::maps::reason::DEFAULT_DENY | cnpilot_bpf::maps::reason::DENY_RULE => {
                cnpilot_bpf::maps::reason::name(event.reason)
            }
            _ => "",
        };
        FlowRecord {
            window_start_ns: ts,
            window_end_ns: ts,
            node: node.to_string(),
            src: peer(src_ip, event.src_identity),
            dst: peer(dst_ip, event.dst_identity),
            proto: event.proto,
            dst_port: event.dport,
            direction: if event.direction == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            verdict,
            reason: reason.to_string(),
            l7: None,
            packets: 1,
            bytes: 0,
            count: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_text_roundtrip() {
        for v in [
            Verdict::Forwarded,
            Verdict::WouldDrop,
            Verdict::Dropped,
            Verdict::L7WouldDeny,
            Verdict::L7Denied,
        ] {
            assert_eq!(v.as_str().parse::<Verdict>(), Ok(v));
        }
        assert!("nope"
            .parse::<Verdict>()
            .unwrap_err()
            .contains("would-drop"));
    }

    #[test]
    fn schema_has_every_column_once() {
        let schema = store_schema();
        assert_eq!(schema.len(), 29);
        assert!(schema.get(columns::L7_PATH).is_some());
        // The added columns are the schema's tail, in order: an old segment
        // is the schema without them.
        let names: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
        assert_eq!(names[names.len() - columns::ADDED.len()..], columns::ADDED);
    }
}
