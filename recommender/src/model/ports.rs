//! `toPorts`: ports, protocols and the L7 rules attached to them.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::values::HttpRegex;

/// One `toPorts` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    // Not modelled: TLS interception, Envoy listeners, SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_names: Option<Value>,
    #[serde(
        default,
        rename = "originatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub originating_tls: Option<Value>,
    #[serde(
        default,
        rename = "terminatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub terminating_tls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Value>,
}

/// One `ports` entry. `port` may be left out only for the protocols that
/// have no ports (VRRP, IGMP; the loader rejects it elsewhere): it then
/// reads as 0, which is how Cilium keys them, and stays left out on output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawPortProtocol", into = "RawPortProtocol")]
pub struct PortProtocol {
    pub port: PortSpec,
    pub end_port: Option<u16>,
    pub protocol: Protocol,
    /// The document had no `port` key.
    pub port_omitted: bool,
}

/// `PortProtocol` as written: whether `port` is present is only visible
/// here, so (de)serialization goes through it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPortProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<PortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Protocol::is_any")]
    protocol: Protocol,
}

impl From<RawPortProtocol> for PortProtocol {
    fn from(raw: RawPortProtocol) -> PortProtocol {
        PortProtocol {
            port_omitted: raw.port.is_none(),
            port: raw.port.unwrap_or(PortSpec::Number(0)),
            end_port: raw.end_port,
            protocol: raw.protocol,
        }
    }
}

impl From<PortProtocol> for RawPortProtocol {
    fn from(p: PortProtocol) -> RawPortProtocol {
        RawPortProtocol {
            // Only a port-less protocol may be written without a port: any
            // other keeps one, so the output still loads.
            port: (!(p.port_omitted && p.protocol.is_portless())).then_some(p.port),
            end_port: p.end_port,
            protocol: p.protocol,
        }
    }
}

impl PortProtocol {
    /// `port` on `protocol`, as written with an explicit port.
    pub fn new(port: PortSpec, protocol: Protocol) -> PortProtocol {
        PortProtocol {
            port,
            end_port: None,
            protocol,
            port_omitted: false,
        }
    }

    /// The inclusive numeric range, or `None` for a named port. Port 0 means
    /// every port (Cilium's wildcard).
    pub fn range(&self) -> Option<(u16, u16)> {
        match self.port {
            PortSpec::Number(0) => Some((0, 0)),
            PortSpec::Number(p) => Some((p, self.end_port.filter(|e| *e > p).unwrap_or(p))),
            PortSpec::Named(_) => None,
        }
    }
}

/// `port`: a number 0-65535 (0 = any) or a container port name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    Number(u16),
    Named(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Named(n) => f.write_str(n),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl PortSpec {
    fn parse(s: &str) -> Result<PortSpec, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 65535)
                .map(|p| PortSpec::Number(p as u16))
                .ok_or_else(|| {
                    format!(
                        "port `{s}` out of range: expected 0-65535 (0 = any port) or a port name"
                    )
                });
        }
        let valid_name = s.len() <= 15
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && s.bytes().any(|b| b.is_ascii_alphabetic())
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.contains("--");
        if valid_name {
            Ok(PortSpec::Named(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "invalid port `{s}`: expected a number 0-65535 or a port name (letters, digits, '-', at most 15 characters)"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number 0-65535 or a port name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                PortSpec::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                PortSpec::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                PortSpec::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Cilium's "extended IP protocols" (pkg/policy/api/l4.go, checked in
    /// pkg/policy/api/rule_validation.go, PortProtocol.Validate): no ports,
    /// so `port` must be "0" or left out. Cilium accepts them in any rule
    /// (CNP or CCNP); its datapath passes them only with
    /// `enable-extended-ip-protocols`, first on the host firewall.
    Vrrp,
    Igmp,
    #[default]
    Any,
}

impl Protocol {
    fn is_any(&self) -> bool {
        *self == Protocol::Any
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Vrrp => "VRRP",
            Protocol::Igmp => "IGMP",
            Protocol::Any => "ANY",
        }
    }

    /// A protocol without transport ports: matched on protocol alone.
    pub fn is_portless(self) -> bool {
        matches!(self, Protocol::Vrrp | Protocol::Igmp)
    }

    /// IANA protocol numbers; `ANY` expands to TCP, UDP and SCTP (not ICMP,
    /// nor VRRP or IGMP), as Cilium expands it.
    pub fn ip_protos(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[6],
            Protocol::Udp => &[17],
            Protocol::Sctp => &[132],
            Protocol::Vrrp => &[112],
            Protocol::Igmp => &[2],
            Protocol::Any => &[6, 17, 132],
        }
    }
}

/// `rules`: at most one L7 protocol per port rule (the schema's `oneOf`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<DnsRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7proto: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<Value>,
}

/// An HTTP rule: every field present must match (full-match regexes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HttpRegex>,
    /// `"Name"` (present) or `"Name: value"` (exact value), as Cilium reads them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_matches: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}
