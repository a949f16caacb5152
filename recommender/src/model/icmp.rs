//! `icmps`: ICMP rules by type, as Cilium (`pkg/policy/api/icmp.go`) reads
//! them. Each field becomes an L4 filter on protocol ICMP (or ICMPv6) whose
//! "port" is the ICMP type, which is also what the datapath keys ICMP on.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One `icmps` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcmpRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<IcmpField>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcmpField {
    /// `IPv4` when absent (the CRD's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IcmpFamily>,
    #[serde(rename = "type")]
    pub icmp_type: IcmpType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IcmpFamily {
    IPv4,
    IPv6,
}

/// `type`: a number 0-255 or Cilium's CamelCase name for the family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcmpType {
    Number(u8),
    Name(String),
}

/// Cilium's names (`icmpIpv4TypeNameToCode`).
const IPV4_NAMES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// Cilium's names (`icmpIpv6TypeNameToCode`).
const IPV6_NAMES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

impl IcmpFamily {
    fn names(self) -> &'static [(&'static str, u8)] {
        match self {
            IcmpFamily::IPv4 => IPV4_NAMES,
            IcmpFamily::IPv6 => IPV6_NAMES,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IcmpFamily::IPv4 => "IPv4",
            IcmpFamily::IPv6 => "IPv6",
        }
    }
}

impl IcmpField {
    pub fn family(&self) -> IcmpFamily {
        self.family.unwrap_or(IcmpFamily::IPv4)
    }

    /// The type number, or an error naming the family's valid names (a
    /// name is checked against the field's own family, as Cilium does).
    pub fn type_number(&self) -> Result<u8, String> {
        match &self.icmp_type {
            IcmpType::Number(n) => Ok(*n),
            IcmpType::Name(name) => {
                let family = self.family();
                family
                    .names()
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, code)| *code)
                    .ok_or_else(|| {
                        format!(
                            "ICMP type `{name}` is not an {} type name; expected 0-255 or one of {}",
                            family.as_str(),
                            family
                                .names()
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            }
        }
    }
}

impl fmt::Display for IcmpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IcmpType::Number(n) => write!(f, "{n}"),
            IcmpType::Name(n) => f.write_str(n),
        }
    }
}

impl Serialize for IcmpType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IcmpType::Number(n) => s.serialize_u8(*n),
            IcmpType::Name(n) => s.serialize_str(n),
        }
    }
}

fn parse_type(text: &str) -> Result<IcmpType, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u8>().map(IcmpType::Number).map_err(|_| {
            format!("ICMP type `{text}` out of range: expected 0-255 or a type name")
        });
    }
    let known = IPV4_NAMES
        .iter()
        .chain(IPV6_NAMES)
        .any(|(name, _)| *name == text);
    if known {
        Ok(IcmpType::Name(text.to_string()))
    } else {
        Err(format!(
            "unknown ICMP type `{text}`: expected 0-255 or a CamelCase name such as EchoRequest"
        ))
    }
}

impl<'de> Deserialize<'de> for IcmpType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl Visitor<'_> for TypeVisitor {
            type Value = IcmpType;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an ICMP type 0-255 or a type name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IcmpType, E> {
                parse_type(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IcmpType, E> {
                parse_type(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IcmpType, E> {
                parse_type(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(TypeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(yaml: &str) -> Result<IcmpField, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_and_names_per_family() {
        assert_eq!(field("type: 8").unwrap().type_number(), Ok(8));
        assert_eq!(field("type: EchoRequest").unwrap().type_number(), Ok(8));
        let v6 = field("{type: EchoRequest, family: IPv6}").unwrap();
        assert_eq!(v6.type_number(), Ok(128));
        assert_eq!(v6.family(), IcmpFamily::IPv6);
        // A v6-only name under the default family is an error that lists
        // the IPv4 names.
        let err = field("type: PacketTooBig")
            .unwrap()
            .type_number()
            .unwrap_err();
        assert!(err.contains("not an IPv4 type name"), "{err}");
        assert!(field("type: 256").unwrap_err().contains("0-255"));
        assert!(field("type: Ping")
            .unwrap_err()
            .contains("unknown ICMP type"));
        assert!(field("{type: 8, family: IPv5}").is_err());
        assert!(
            field("{type: 8, code: 0}").is_err(),
            "unknown fields are errors"
        );
    }
}
