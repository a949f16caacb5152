//! Scalar values the schema constrains: CIDRs, entities, HTTP regexes.
//! Each checks itself while it is deserialized, so a bad value is reported
//! at its own line by serde_yaml.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 or IPv6 prefix. A bare address means a host prefix; host bits
/// beyond the prefix are cleared, as Go's `net.ParseCIDR` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn v4(addr: Ipv4Addr, len: u8) -> Cidr {
        let masked = u32::from(addr) & mask(len);
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::from(masked)),
            len,
        }
    }

    /// The IPv4 prefix as (network, length), or `None` for IPv6.
    pub fn as_v4(&self) -> Option<(u32, u8)> {
        match self.addr {
            IpAddr::V4(a) => Some((u32::from(a), self.len)),
            IpAddr::V6(_) => None,
        }
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains_prefix(&self, other: &Cidr) -> bool {
        match (self.as_v4(), other.as_v4()) {
            (Some((a, al)), Some((b, bl))) => bl >= al && (b & mask(al)) == a,
            _ => false,
        }
    }

    pub fn contains_v4(&self, ip: Ipv4Addr) -> bool {
        self.as_v4()
            .is_some_and(|(a, l)| u32::from(ip) & mask(l) == a)
    }
}

pub(crate) fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid CIDR `{s}`: expected an address and prefix length such as 192.0.2.0/24"
            )
        };
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len =
            match len {
                Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                    format!("invalid CIDR `{s}`: prefix length must be 0..={max}")
                })?,
                None => max,
            };
        Ok(match addr {
            IpAddr::V4(a) => Cidr::v4(a, len),
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                Cidr {
                    addr: IpAddr::V6((bits & m).into()),
                    len,
                }
            }
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The `fromEntities` / `toEntities` names of the CRD schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    All,
    World,
    Cluster,
    Host,
    Init,
    Ingress,
    Unmanaged,
    RemoteNode,
    Health,
    None,
    KubeApiserver,
}

/// An HTTP rule field: an RE2-style regular expression that Envoy matches
/// against the whole value (`safe_regex` is a full match), so `/api` does
/// not match `/api/v1` and a path rule does not match a path with a query.
#[derive(Debug, Clone)]
pub struct HttpRegex {
    pub source: String,
    anchored: Regex,
}

impl HttpRegex {
    pub fn new(source: &str) -> Result<HttpRegex, String> {
        let anchored = Regex::new(&format!("^(?:{source})$")).map_err(|e| {
            format!(
                "invalid regular expression `{source}`: {}",
                first_line(&e.to_string())
            )
        })?;
        Ok(HttpRegex {
            source: source.to_string(),
            anchored,
        })
    }

    pub fn is_full_match(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .filter(|l| l.starts_with("error"))
        .map(str::to_string)
        .next()
        .unwrap_or_else(|| s.replace('\n', " "))
}

impl PartialEq for HttpRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for HttpRegex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for HttpRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HttpRegex::new(&s).map_err(serde::de::Error::custom)
    }
}
