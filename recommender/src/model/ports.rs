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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    pub port: PortSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Protocol::is_any")]
    pub protocol: Protocol,
}

impl PortProtocol {
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
    #[default]
    Any,
}

impl Protocol {
    fn is_any(&self) -> bool {
        *self == Protocol::Any
    }

    /// IANA protocol numbers; `ANY` expands to TCP, UDP and SCTP (not ICMP),
    /// as Cilium expands it.
    pub fn ip_protos(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[6],
            Protocol::Udp => &[17],
            Protocol::Sctp => &[132],
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
