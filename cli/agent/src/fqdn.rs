//! What the DNS proxy learned, as the compiler's input: each world address
//! an answer gave (to a query a `rules.dns` rule let through, as in Cilium,
//! where only those reach its DNS proxy) for a name some `toFQDNs` selector
//! matches gets an
//! identity of its own (from `FQDN_IDENTITY_BASE`) for as long as one of
//! its names is within its TTL. The policy compiled with these inputs
//! selects the address by its names (and still by any CIDR containing it).
//!
//! Expiry is the TTL (at least `--fqdn-min-ttl`, as Cilium's
//! `--tofqdns-min-ttl`) plus [`EXPIRY_GRACE`], to the refresh tick (0.5 s).
//! Cilium's DNS cache is garbage-collected once a minute, so there a
//! mapping can outlive its TTL by up to that minute; here a connection
//! opened after it is judged as the bare address again. Connections opened before keep their
//! verdict (it is in conntrack), as Cilium keeps IPs of live connections.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use cnpilot_recommender::compile::{FqdnInput, FQDN_IDENTITY_BASE};

/// Past the TTL before an address is forgotten. The pod's resolver starts
/// its TTL when the answer arrives, a little after the agent learned it, so
/// a client that uses a cached answer to its last millisecond would
/// otherwise find the address already gone. (Cilium's once-a-minute DNS
/// garbage collection gives up to sixty seconds.)
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct FqdnCache {
    addrs: BTreeMap<Ipv4Addr, Entry>,
    next_id: u32,
}

#[derive(Debug)]
struct Entry {
    id: u32,
    /// Name -> when its answer expires.
    names: BTreeMap<String, Instant>,
}

impl FqdnCache {
    /// Records an answer. `selected` says whether some `toFQDNs` selector
    /// matches a name (others are not kept: nothing would select them).
    /// Returns whether the compiled policy must change (a new address, or
    /// a new name for one); a refreshed TTL does not change it.
    pub fn learn(
        &mut self,
        names: &[String],
        ips: &[IpAddr],
        ttl: u32,
        now: Instant,
        selected: impl Fn(&str) -> bool,
    ) -> bool {
        let names: Vec<&String> = names.iter().filter(|n| selected(n)).collect();
        if names.is_empty() {
            return false;
        }
        let expires = now + Duration::from_secs(u64::from(ttl)) + EXPIRY_GRACE;
        let mut changed = false;
        for ip in ips {
            let IpAddr::V4(v4) = ip else {
                continue;
            };
            let entry = match self.addrs.get_mut(v4) {
                Some(e) => e,
                None => {
                    changed = true;
                    let id = FQDN_IDENTITY_BASE.saturating_add(self.next_id);
                    self.next_id = self.next_id.wrapping_add(1);
                    self.addrs.entry(*v4).or_insert(Entry {
                        id,
                        names: BTreeMap::new(),
                    })
                }
            };
            for name in &names {
                match entry.names.get_mut(name.as_str()) {
                    Some(at) => *at = (*at).max(expires),
                    None => {
                        changed = true;
                        entry.names.insert((*name).clone(), expires);
                    }
                }
            }
        }
        changed
    }

    /// Forgets names past their TTL, and addresses left with none. Returns
    /// whether anything was forgotten.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.len_names();
        for entry in self.addrs.values_mut() {
            entry.names.retain(|_, at| *at > now);
        }
        self.addrs.retain(|_, e| !e.names.is_empty());
        self.len_names() != before
    }

    fn len_names(&self) -> usize {
        self.addrs.values().map(|e| e.names.len()).sum()
    }

    /// The compiler's input.
    pub fn inputs(&self) -> Vec<FqdnInput> {
        self.addrs
            .iter()
            .map(|(addr, e)| FqdnInput {
                addr: *addr,
                id: e.id,
                names: e.names.keys().cloned().collect(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 19, 50, last))
    }

    #[test]
    fn learns_selected_names_and_expires_them_with_their_ttl() {
        let mut c = FqdnCache::default();
        let t0 = Instant::now();
        let names = vec!["api.processor.example".to_string()];
        assert!(!c.learn(&names, &[ip(10)], 5, t0, |_| false));
        assert_eq!(c.len(), 0);
        assert!(c.learn(&names, &[ip(10)], 5, t0, |_| true));
        // The same answer again only refreshes the TTL.
        assert!(!c.learn(&names, &[ip(10)], 5, t0 + Duration::from_secs(3), |_| true));
        let inputs = c.inputs();
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].id, FQDN_IDENTITY_BASE);
        assert_eq!(inputs[0].names, names);
        // Refreshed at 3 s for 5 s, plus the grace.
        let expiry = t0 + Duration::from_secs(8) + EXPIRY_GRACE;
        assert!(!c.expire(expiry - Duration::from_millis(100)));
        assert!(c.expire(expiry + Duration::from_millis(100)));
        assert_eq!(c.len(), 0);
        // A later answer gets a fresh identity (the old one may still be
        // in events being read).
        assert!(c.learn(&names, &[ip(10)], 5, t0 + Duration::from_secs(10), |_| true));
        assert_eq!(c.inputs()[0].id, FQDN_IDENTITY_BASE + 1);
    }

    #[test]
    fn a_second_name_for_an_address_changes_the_policy() {
        let mut c = FqdnCache::default();
        let t0 = Instant::now();
        assert!(c.learn(&["a.example".into()], &[ip(1)], 30, t0, |_| true));
        assert!(c.learn(&["b.example".into()], &[ip(1)], 30, t0, |_| true));
        assert_eq!(c.inputs()[0].names, vec!["a.example", "b.example"]);
        assert_eq!(c.len(), 1);
    }
}
