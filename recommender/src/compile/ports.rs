//! `toPorts` and `icmps` of a rule: the (protocol, port) pairs it keys and
//! the L7 rules that decide on a redirected port.

use crate::model::{DnsRule, HttpRule, IcmpFamily, IcmpRule, PeerRule, PortSpec};

pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;

pub(super) enum L7<'a> {
    None,
    Http(&'a [HttpRule]),
    /// Redirected to the DNS proxy over UDP and TCP; over SCTP (which the
    /// proxy does not answer) allowed at L4, named as unmodelled.
    Dns(&'a [DnsRule]),
    /// Kafka / generic L7: allowed at L4, named as unmodelled.
    Unenforced,
}

pub(super) fn ports_of<'a>(
    pr: &PeerRule<'a>,
    unmodelled: &mut Vec<&'static str>,
) -> Vec<(Vec<(u8, PortSpec)>, L7<'a>)> {
    let Some(port_rules) = pr.to_ports.filter(|p| !p.is_empty()) else {
        if let Some(icmps) = pr.icmps.filter(|i| !i.is_empty()) {
            return vec![(icmp_l4(icmps, unmodelled), L7::None)];
        }
        return vec![(vec![(0, PortSpec::Number(0))], L7::None)];
    };
    let mut out = Vec::new();
    for rule in port_rules {
        let l7 = match &rule.rules {
            Some(r) if r.http.is_some() => L7::Http(r.http.as_deref().unwrap_or_default()),
            Some(r) if r.dns.is_some() => L7::Dns(r.dns.as_deref().unwrap_or_default()),
            Some(r) => {
                unmodelled.push(if r.kafka.is_some() {
                    "rules.kafka"
                } else {
                    "rules.l7proto"
                });
                L7::Unenforced
            }
            None => L7::None,
        };
        for (field, present) in [
            ("serverNames", rule.server_names.is_some()),
            ("terminatingTLS", rule.terminating_tls.is_some()),
            ("originatingTLS", rule.originating_tls.is_some()),
            ("listener", rule.listener.is_some()),
        ] {
            if present {
                unmodelled.push(field);
            }
        }
        let mut l4: Vec<(u8, PortSpec)> = Vec::new();
        if rule.ports.is_empty() {
            l4.extend(
                crate::model::Protocol::Any
                    .ip_protos()
                    .iter()
                    .map(|p| (*p, PortSpec::Number(0))),
            );
        }
        for pp in &rule.ports {
            if pp.protocol.is_portless() {
                // The datapath keys a packet of any protocol but TCP, UDP,
                // SCTP and ICMP with port 0 (bpf/c/cnpilot.bpf.c, parse():
                // policy_port stays 0), as Cilium keys VRRP and IGMP
                // ("0/vrrp"). Port 0 is the only port they can match; the
                // loader rejects any other number and warns about a name.
                if pp.range() == Some((0, 0)) {
                    l4.extend(
                        pp.protocol
                            .ip_protos()
                            .iter()
                            .map(|p| (*p, PortSpec::Number(0))),
                    );
                }
                continue;
            }
            for proto in pp.protocol.ip_protos() {
                match pp.range() {
                    Some((lo, hi)) => l4.extend((lo..=hi).map(|p| (*proto, PortSpec::Number(p)))),
                    None => l4.push((*proto, pp.port.clone())),
                }
            }
        }
        if matches!(l7, L7::Dns(_))
            && l4
                .iter()
                .any(|(p, _)| *p != IPPROTO_UDP && *p != IPPROTO_TCP)
            && !unmodelled.contains(&"rules.dns")
        {
            // The DNS proxy answers UDP and TCP: over SCTP the port is
            // allowed and the names go unchecked (`compile_rule` warns).
            unmodelled.push("rules.dns");
        }
        out.push((l4, l7));
    }
    out
}

/// `icmps` as Cilium reads them: each field an L4 filter on ICMP whose
/// port is the type (what the datapath keys ICMP on too). ICMPv6 fields
/// allow nothing here: IPv6 is not evaluated. A type name that does not
/// belong to its family was reported by the loader and allows nothing.
fn icmp_l4(icmps: &[IcmpRule], unmodelled: &mut Vec<&'static str>) -> Vec<(u8, PortSpec)> {
    const IPPROTO_ICMP: u8 = 1;
    let mut l4 = Vec::new();
    for field in icmps.iter().flat_map(|r| &r.fields) {
        match (field.family(), field.type_number()) {
            (IcmpFamily::IPv4, Ok(0)) => {
                // Type 0 would be port 0, the L4 wildcard: every ICMP type.
                // Say so rather than widen a rule silently.
                if !unmodelled.contains(&"icmps type 0 (EchoReply: read as every ICMP type)") {
                    unmodelled.push("icmps type 0 (EchoReply: read as every ICMP type)");
                }
                l4.push((IPPROTO_ICMP, PortSpec::Number(0)));
            }
            (IcmpFamily::IPv4, Ok(t)) => l4.push((IPPROTO_ICMP, PortSpec::Number(u16::from(t)))),
            (IcmpFamily::IPv6, _) => {
                if !unmodelled.contains(&"icmps family IPv6") {
                    unmodelled.push("icmps family IPv6");
                }
            }
            (IcmpFamily::IPv4, Err(_)) => {}
        }
    }
    l4.sort_by_key(|(proto, port)| (*proto, port.to_string()));
    l4.dedup();
    l4
}
