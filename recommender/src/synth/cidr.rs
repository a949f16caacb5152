//! World destinations as CIDR peers: exact addresses, merged only where
//! the evidence covers the whole prefix, or cut to `--cidr-prefix`.

use std::collections::BTreeMap;

use super::universe::PeerRef;
use super::{PortEvidence, Sides};
use crate::model::Cidr;

/// World destinations: `/32`s, merged into a shorter prefix only when both
/// halves of it were seen on the same ports (so a merged prefix holds only
/// addresses that were all seen), or all cut to `--cidr-prefix`.
pub(crate) fn aggregate_cidrs(sides: &mut Sides, prefix: Option<u8>) {
    for peers in sides.values_mut() {
        let cidrs: Vec<PeerRef> = peers
            .keys()
            .filter(|p| matches!(p, PeerRef::Cidr(c) if c.as_v4().is_some()))
            .cloned()
            .collect();
        if cidrs.is_empty() {
            continue;
        }
        let mut by_prefix: BTreeMap<Cidr, BTreeMap<(u8, u16), PortEvidence>> = BTreeMap::new();
        for peer in cidrs {
            let Some(ports) = peers.remove(&peer) else {
                continue;
            };
            let PeerRef::Cidr(c) = peer else { continue };
            let target = match (prefix, c.as_v4()) {
                (Some(len), Some((net, l))) if len < l => Cidr::v4(net.into(), len),
                _ => c,
            };
            let slot = by_prefix.entry(target).or_default();
            for (port, ev) in ports {
                slot.entry(port).or_default().merge(ev);
            }
        }
        if prefix.is_none() {
            loop {
                let pair = by_prefix.iter().find_map(|(c, ports)| {
                    let (net, len) = c.as_v4()?;
                    if len == 0 {
                        return None;
                    }
                    let bit = 1u32 << (32 - u32::from(len));
                    let sibling = Cidr::v4((net ^ bit).into(), len);
                    let same_ports = by_prefix
                        .get(&sibling)
                        .is_some_and(|s| s.keys().eq(ports.keys()));
                    same_ports.then(|| (*c, sibling, Cidr::v4(net.into(), len - 1)))
                });
                let Some((a, b, parent)) = pair else { break };
                let mut merged = by_prefix.remove(&a).unwrap_or_default();
                for (port, ev) in by_prefix.remove(&b).unwrap_or_default() {
                    merged.entry(port).or_default().merge(ev);
                }
                by_prefix.insert(parent, merged);
            }
        }
        for (c, ports) in by_prefix {
            peers.insert(PeerRef::Cidr(c), ports);
        }
    }
}
