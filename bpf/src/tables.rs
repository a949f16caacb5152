//! Typed access to the pinned maps. Works the same whether the maps came from
//! a fresh load ([`crate::Datapath`]) or were opened from their pins by a
//! short-lived command (`cnpilot mode`).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData};

use crate::error::DatapathError;
use crate::maps::*;

/// Map names as in `c/cnpilot.bpf.c` (and as pinned and shown by bpftool).
pub mod names {
    pub const IPCACHE: &str = "cnp_ipcache";
    pub const ENDPOINTS: &str = "cnp_endpoints";
    pub const NS_MODE: &str = "cnp_ns_mode";
    pub const SUBJECTS: &str = "cnp_subjects";
    pub const POLICY: &str = "cnp_policy";
    /// Earlier builds' conntrack, a map of its own; the verdicts are in
    /// [`FLOWS`] now. Only unpinned (and flushed for `--compare-object`).
    pub const CONNTRACK: &str = "cnp_conntrack";
    /// Conntrack and flow counters, one entry per flow.
    pub const FLOWS: &str = "cnp_flows";
    pub const EVENTS: &str = "cnp_events";
    /// The L7 proxy's listener, for the `sk_lookup` program.
    pub const PROXY_SOCKS: &str = "cnp_proxy_socks";
    pub const ALL: [&str; 9] = [
        IPCACHE,
        ENDPOINTS,
        NS_MODE,
        SUBJECTS,
        POLICY,
        CONNTRACK,
        FLOWS,
        EVENTS,
        PROXY_SOCKS,
    ];
}

/// One ipcache entry: every address in `addr/prefix_len` has `value.identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcacheEntry {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub value: IpcacheValue,
}

/// The host's side of the host <-> local pod path ([`Tables::set_host_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPath {
    /// The host's identity (`identity::HOST`).
    pub identity: u32,
    /// The node's `ns_mode` key: its mode decides whether the host's
    /// denials drop.
    pub ns_id: u32,
    /// The node's address: a pod's peer with it is the host.
    pub addr: Ipv4Addr,
}

pub struct Tables {
    ipcache: LpmTrie<MapData, u32, IpcacheValue>,
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    ns_mode: HashMap<MapData, u32, NsModeValue>,
    subjects: HashMap<MapData, SubjectKey, SubjectValue>,
    policy: HashMap<MapData, PolicyKey, PolicyValue>,
    flows: HashMap<MapData, FlowKey, FlowCounters>,
}

impl Tables {
    /// Opens every map from its pin under `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Tables, DatapathError> {
        let open = |name: &'static str| -> Result<MapData, DatapathError> {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Err(DatapathError::NotPinned { path });
            }
            MapData::from_pin(&path).map_err(DatapathError::map(name))
        };
        Tables::from_maps(|name, wrap| Ok(wrap(open(name)?)))
    }

    /// Takes the maps out of a loaded object.
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Tables, DatapathError> {
        Tables::from_maps(|name, _| {
            ebpf.take_map(name)
                .ok_or(DatapathError::Missing { kind: "map", name })
        })
    }

    fn from_maps(
        mut get: impl FnMut(&'static str, fn(MapData) -> Map) -> Result<Map, DatapathError>,
    ) -> Result<Tables, DatapathError> {
        use names::*;
        macro_rules! typed {
            ($name:expr, $variant:path) => {
                get($name, $variant)?
                    .try_into()
                    .map_err(DatapathError::map($name))?
            };
        }
        Ok(Tables {
            ipcache: typed!(IPCACHE, Map::LpmTrie),
            endpoints: typed!(ENDPOINTS, Map::HashMap),
            ns_mode: typed!(NS_MODE, Map::HashMap),
            subjects: typed!(SUBJECTS, Map::HashMap),
            policy: typed!(POLICY, Map::HashMap),
            flows: typed!(FLOWS, Map::LruHashMap),
        })
    }

    /// The namespace's mode; a namespace without an entry is `off`.
    pub fn mode(&self, ns_id: u32) -> Result<Mode, DatapathError> {
        match self.ns_mode.get(&ns_id, 0) {
            Ok(v) => Mode::from_u32(v.mode).ok_or(DatapathError::BadMode {
                ns_id,
                value: v.mode,
            }),
            Err(aya::maps::MapError::KeyNotFound) => Ok(Mode::Off),
            Err(e) => Err(DatapathError::map(names::NS_MODE)(e)),
        }
    }

    /// Flips one namespace: a single map update, effective at the next packet.
    /// Returns the previous mode.
    pub fn set_mode(&mut self, ns_id: u32, mode: Mode) -> Result<Mode, DatapathError> {
        let old = self.mode(ns_id).unwrap_or(Mode::Off);
        self.ns_mode
            .insert(ns_id, NsModeValue { mode: mode as u32 }, 0)
            .map_err(DatapathError::map(names::NS_MODE))?;
        Ok(old)
    }

    pub fn modes(&self) -> Result<Vec<(u32, Mode)>, DatapathError> {
        let mut out = Vec::new();
        for kv in self.ns_mode.iter() {
            let (k, v) = kv.map_err(DatapathError::map(names::NS_MODE))?;
            out.push((
                k,
                Mode::from_u32(v.mode).ok_or(DatapathError::BadMode {
                    ns_id: k,
                    value: v.mode,
                })?,
            ));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// The pod behind host-side veth `ifindex` (in the node namespace).
    pub fn upsert_endpoint(
        &mut self,
        ifindex: u32,
        value: EndpointValue,
    ) -> Result<(), DatapathError> {
        self.endpoints
            .insert(EndpointKey { ifindex }, value, 0)
            .map_err(DatapathError::map(names::ENDPOINTS))
    }

    /// The host firewall's entry for the host <-> local pod path (the
    /// reserved key [`ENDPOINT_HOST_KEY`]): the node's identity, `ns_mode`
    /// key and address, so the pods' veths judge connections with the node's
    /// address by the host's policy too. `None` removes it (host firewall
    /// off: only the pods' policies judge them).
    pub fn set_host_path(&mut self, host: Option<HostPath>) -> Result<(), DatapathError> {
        match host {
            Some(h) => self.upsert_endpoint(
                ENDPOINT_HOST_KEY,
                EndpointValue {
                    identity: h.identity,
                    ns_id: h.ns_id,
                    addr: u32::from(h.addr).to_be(),
                    flags: ENDPOINT_F_HOST,
                },
            ),
            None => self.remove_endpoint(ENDPOINT_HOST_KEY),
        }
    }

    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        match self.endpoints.remove(&EndpointKey { ifindex }) {
            Ok(()) => Ok(()),
            Err(e) if no_such_key(&e) => Ok(()),
            Err(e) => Err(DatapathError::map(names::ENDPOINTS)(e)),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<(u32, EndpointValue)>, DatapathError> {
        self.endpoints
            .iter()
            .map(|kv| {
                kv.map(|(k, v)| (k.ifindex, v))
                    .map_err(DatapathError::map(names::ENDPOINTS))
            })
            .collect()
    }

    pub fn upsert_ipcache(&mut self, entry: IpcacheEntry) -> Result<(), DatapathError> {
        let key = Key::new(u32::from(entry.prefix_len), u32::from(entry.addr).to_be());
        self.ipcache
            .insert(&key, entry.value, 0)
            .map_err(DatapathError::map(names::IPCACHE))
    }

    /// Makes the ipcache exactly `entries`: new ones are written before stale
    /// ones are removed, so a lookup never sees an emptied map.
    pub fn set_ipcache(&mut self, entries: &[IpcacheEntry]) -> Result<(), DatapathError> {
        let wanted: HashSet<(u32, u32)> = entries
            .iter()
            .map(|e| (u32::from(e.prefix_len), u32::from(e.addr).to_be()))
            .collect();
        for e in entries {
            self.upsert_ipcache(*e)?;
        }
        let stale: Vec<Key<u32>> = self
            .ipcache
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            self.ipcache
                .remove(&k)
                .map_err(DatapathError::map(names::IPCACHE))?;
        }
        Ok(())
    }

    /// Makes the policy map exactly `entries` (add/overwrite first, then
    /// delete stale keys: no window where a selected subject has no rules).
    pub fn replace_policy(
        &mut self,
        entries: impl IntoIterator<Item = (PolicyKey, PolicyValue)>,
    ) -> Result<(), DatapathError> {
        replace(&mut self.policy, names::POLICY, entries)
    }

    /// Makes the subjects map exactly `entries`. Call after
    /// [`Tables::replace_policy`] when adding subjects (their allows must be in
    /// place before they become default-deny).
    pub fn replace_subjects(
        &mut self,
        entries: impl IntoIterator<Item = (SubjectKey, SubjectValue)>,
    ) -> Result<(), DatapathError> {
        replace(&mut self.subjects, names::SUBJECTS, entries)
    }

    pub fn policy_len(&self) -> usize {
        self.policy.keys().count()
    }

    /// Every flow the datapath has counted (LRU: the oldest may be evicted).
    pub fn read_counters(&self) -> Result<Vec<(FlowKey, FlowCounters)>, DatapathError> {
        self.flows
            .iter()
            .map(|kv| kv.map_err(DatapathError::map(names::FLOWS)))
            .collect()
    }

    /// Forgets every connection's verdict (next packets are evaluated anew),
    /// and with it its counters: one entry holds both.
    pub fn flush_conntrack(&mut self) -> Result<(), DatapathError> {
        flush(&mut self.flows, names::FLOWS)
    }

    /// Forgets every flow's counters (a flow seen again starts from zero,
    /// and is evaluated anew: its verdict is in the same entry).
    pub fn flush_counters(&mut self) -> Result<(), DatapathError> {
        flush(&mut self.flows, names::FLOWS)
    }
}

/// Whether a removal failed only because the key was not there: aya
/// reports a hash map's delete of a missing key as the syscall's ENOENT,
/// not as `KeyNotFound` (which only its lookups return).
fn no_such_key(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn flush<V: aya::Pod>(
    map: &mut HashMap<MapData, FlowKey, V>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let keys: Vec<FlowKey> = map.keys().filter_map(Result::ok).collect();
    for k in keys {
        match map.remove(&k) {
            Ok(()) => {}
            Err(e) if no_such_key(&e) => {}
            Err(e) => return Err(DatapathError::map(name)(e)),
        }
    }
    Ok(())
}

fn replace<K, V>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<(), DatapathError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let mut wanted = HashSet::new();
    for (k, v) in entries {
        map.insert(k, v, 0).map_err(DatapathError::map(name))?;
        wanted.insert(k);
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for k in stale {
        match map.remove(&k) {
            Ok(()) => {}
            Err(e) if no_such_key(&e) => {}
            Err(e) => return Err(DatapathError::map(name)(e)),
        }
    }
    Ok(())
}
