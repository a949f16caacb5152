//! What the agent attaches to: this node's pods, identities for them, and
//! the namespace ids the `ns_mode` map is keyed by.
//!
//! Built from any [`InventorySource`] snapshot (a kubectl JSON file, the
//! lab's `inventory.json`, a live cluster) plus the node's own routing
//! table: as Cilium routes, each local pod has a /32 route to its host-side
//! interface, which is where the programs attach. Nothing here knows about
//! the lab.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::error::{bail, Context};
use cnpilot_learner::inventory::InventorySnapshot;
use cnpilot_learner::{IdentityAllocator, Labels, ReservedIdentity};

/// The agent's own network namespace: on a real node, the node's.
pub const OWN_NETNS: &str = "/proc/self/ns/net";

/// One pod the agent enforces on (host-network pods are the node's business).
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub namespace: String,
    pub workload: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_veth: String,
    pub host_ifindex: u32,
    pub identity: u32,
    pub ns_id: u32,
    /// TCP ports the pod declares as HTTP (containerPorts named `http` or
    /// `http-…`): HTTP visibility's `auto`.
    pub http_ports: Vec<u16>,
    /// The pod's identity labels (per-pod labels removed, namespace
    /// labels added), as the learner records them.
    pub identity_labels: Labels,
}

#[derive(Debug, Clone)]
pub struct Inventory {
    pub node_name: String,
    pub node_netns: PathBuf,
    pub node_ip: Ipv4Addr,
    /// This node's labels (what a CCNP's `nodeSelector` matches).
    pub node_labels: BTreeMap<String, String>,
    pub pods: Vec<Pod>,
    /// Other nodes' pods: in the ipcache with their identities (as Cilium's
    /// is cluster-wide), never attached to (no interface here).
    pub remote_pods: Vec<Pod>,
    /// Other nodes' addresses: `remote-node` in the ipcache.
    pub remote_nodes: Vec<Ipv4Addr>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// This node's pods that have no route to an interface yet (a pod being
    /// wired up): picked up by a later refresh.
    pub unrouted: Vec<String>,
    /// The node's own devices the host firewall is attached to (none when
    /// it is off); filled in by the agent after the build.
    pub host_devices: Vec<crate::host::HostDevice>,
}

/// The `ns_mode` key of a namespace: a hash of its name, so `cnpilot mode`
/// finds it without any state besides the pinned map.
pub fn ns_id(namespace: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // 0 stays free (no namespace).
    (h & 0x7fff_ffff).max(1)
}

/// Every IPv4 route of `/proc/net/route` text: (interface, destination,
/// mask), the two numbers as the kernel prints them (network-order
/// addresses as native u32s: their native bytes are the address bytes).
pub fn proc_routes(text: &str) -> impl Iterator<Item = (&str, Ipv4Addr, u32)> {
    text.lines().skip(1).filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        let (iface, dest, mask) = (cols.first()?, cols.get(1)?, cols.get(7)?);
        let dest = u32::from_str_radix(dest, 16).ok()?;
        let mask = u32::from_str_radix(mask, 16).ok()?;
        Some((*iface, Ipv4Addr::from(dest.to_ne_bytes()), mask))
    })
}

/// `/32` routes of the node: destination → interface name. Read from the
/// routing table of the namespace the calling thread is in.
pub fn parse_proc_route(text: &str) -> BTreeMap<Ipv4Addr, String> {
    proc_routes(text)
        .filter(|(_, _, mask)| *mask == u32::MAX)
        .map(|(iface, ip, _)| (ip, iface.to_string()))
        .collect()
}

/// The node's /32 routes and the interface index of each routed interface,
/// read inside `node_netns`.
fn host_routes(node_netns: &Path) -> crate::Result<BTreeMap<Ipv4Addr, (String, u32)>> {
    let read = || -> std::io::Result<BTreeMap<Ipv4Addr, (String, u32)>> {
        // thread-self: this thread's namespace (run_in switches only it).
        let text = std::fs::read_to_string("/proc/thread-self/net/route")?;
        let mut out = BTreeMap::new();
        for (ip, iface) in parse_proc_route(&text) {
            let Ok(name) = std::ffi::CString::new(iface.clone()) else {
                continue;
            };
            // SAFETY: a valid NUL-terminated name; the call only reads it.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index != 0 {
                out.insert(ip, (iface, index));
            }
        }
        Ok(out)
    };
    let routes = if node_netns == Path::new(OWN_NETNS) {
        read()
    } else {
        cnpilot_bpf::netns::run_in(node_netns, read)
            .with_context(|| format!("entering {}", node_netns.display()))?
    };
    routes.with_context(|| format!("reading the routes of {}", node_netns.display()))
}

impl Inventory {
    /// This node's view of a cluster snapshot. `identities` is the agent's
    /// for its whole life, so a label set keeps its number across refreshes.
    pub fn build(
        snapshot: &InventorySnapshot,
        node: &str,
        node_netns: &Path,
        identities: &mut IdentityAllocator,
    ) -> crate::Result<Inventory> {
        let routes = host_routes(node_netns)?;
        Self::build_with_routes(snapshot, node, node_netns, identities, &routes)
    }

    fn build_with_routes(
        snapshot: &InventorySnapshot,
        node: &str,
        node_netns: &Path,
        identities: &mut IdentityAllocator,
        routes: &BTreeMap<Ipv4Addr, (String, u32)>,
    ) -> crate::Result<Inventory> {
        let Some(node_info) = snapshot.nodes.iter().find(|n| n.name == node) else {
            bail!(
                "node `{node}` is not in the inventory (its nodes: {}); give this node's name with --node",
                snapshot
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let node_ip = node_info
            .addresses
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .with_context(|| format!("node `{node}` has no IPv4 address in the inventory"))?;
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = snapshot
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.labels.clone()))
            .collect();
        let no_labels = BTreeMap::new();
        let mut pods = Vec::new();
        let mut remote_pods = Vec::new();
        let mut unrouted = Vec::new();
        for p in &snapshot.pods {
            if p.host_network || p.is_terminated() {
                continue;
            }
            let Some(ip) = p.ips.iter().find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            }) else {
                continue; // no address yet: not wired up
            };
            // No service account: the datapath's identities and the flow
            // store's labels are the same label sets (one identity model).
            let ns_labels = namespaces.get(&p.namespace).unwrap_or(&no_labels);
            let labels = Labels::identity_of_pod(&p.labels, &p.namespace, None, ns_labels);
            if p.node != node {
                remote_pods.push(Pod {
                    identity: identities.allocate(&labels),
                    http_ports: Vec::new(),
                    identity_labels: labels,
                    ns_id: ns_id(&p.namespace),
                    namespace: p.namespace.clone(),
                    workload: p.workload.clone(),
                    name: p.name.clone(),
                    ip,
                    host_veth: String::new(),
                    host_ifindex: 0,
                });
                continue;
            }
            let Some((host_veth, host_ifindex)) = routes.get(&ip) else {
                unrouted.push(format!("{}/{} ({ip})", p.namespace, p.name));
                continue;
            };
            let mut http_ports: Vec<u16> = p
                .ports
                .iter()
                .filter(|port| port.is_http())
                .map(|port| port.port)
                .collect();
            http_ports.sort_unstable();
            http_ports.dedup();
            pods.push(Pod {
                identity: identities.allocate(&labels),
                http_ports,
                identity_labels: labels,
                ns_id: ns_id(&p.namespace),
                namespace: p.namespace.clone(),
                workload: p.workload.clone(),
                name: p.name.clone(),
                ip,
                host_veth: host_veth.clone(),
                host_ifindex: *host_ifindex,
            });
        }
        // A pod's namespace is a namespace even before its object is seen.
        for p in &pods {
            namespaces.entry(p.namespace.clone()).or_default();
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        remote_pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let remote_nodes = snapshot
            .nodes
            .iter()
            .filter(|n| n.name != node)
            .filter_map(|n| {
                n.addresses.iter().find_map(|a| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
            })
            .collect();
        Ok(Inventory {
            node_name: node.to_string(),
            node_netns: node_netns.to_path_buf(),
            node_ip,
            node_labels: node_info.labels.clone(),
            pods,
            remote_pods,
            remote_nodes,
            namespaces,
            unrouted,
            host_devices: Vec::new(),
        })
    }

    /// This node's pods, then other nodes': for naming peers.
    pub fn all_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().chain(&self.remote_pods)
    }

    /// `namespace/workload` for a local identity, Cilium's reserved name
    /// otherwise (`world`, `host`, ...).
    pub fn name_of_identity(&self, id: u32) -> String {
        if let Some(p) = self.all_pods().find(|p| p.identity == id) {
            return format!("{}/{}", p.namespace, p.workload);
        }
        ReservedIdentity::from_number(id)
            .map(|r| r.name().to_string())
            .unwrap_or_else(|| format!("identity-{id}"))
    }

    pub fn namespace_of_ns_id(&self, id: u32) -> Option<&str> {
        self.namespaces
            .keys()
            .find(|n| ns_id(n) == id)
            .map(String::as_str)
    }
}

/// What changed between two inventories, in the order the datapath needs:
/// a pod's interface is attached only once its maps say who it is, and
/// detached before they forget it.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Interfaces to attach (new pods, or a pod on a new interface).
    pub attach: Vec<Pod>,
    /// Interfaces to detach (pods gone, or moved off the interface).
    pub detach: Vec<Pod>,
    /// Node devices new to the host firewall.
    pub host_attach: Vec<crate::host::HostDevice>,
    /// Node devices gone (or renumbered).
    pub host_detach: Vec<crate::host::HostDevice>,
}

impl Changes {
    pub fn between(old: &Inventory, new: &Inventory) -> Changes {
        let key = |p: &Pod| (p.host_veth.clone(), p.host_ifindex);
        let old_keys: std::collections::BTreeSet<_> = old.pods.iter().map(key).collect();
        let new_keys: std::collections::BTreeSet<_> = new.pods.iter().map(key).collect();
        Changes {
            attach: new
                .pods
                .iter()
                .filter(|p| !old_keys.contains(&key(p)))
                .cloned()
                .collect(),
            detach: old
                .pods
                .iter()
                .filter(|p| !new_keys.contains(&key(p)))
                .cloned()
                .collect(),
            host_attach: new
                .host_devices
                .iter()
                .filter(|d| !old.host_devices.contains(d))
                .cloned()
                .collect(),
            host_detach: old
                .host_devices
                .iter()
                .filter(|d| !new.host_devices.contains(d))
                .cloned()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.attach.is_empty()
            && self.detach.is_empty()
            && self.host_attach.is_empty()
            && self.host_detach.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnpilot_learner::inventory::{ContainerPort, NamespaceInfo, NodeInfo, PodInfo};

    #[test]
    fn ns_ids_are_stable_and_distinct_for_the_seed_namespaces() {
        let names = [
            "tenant-a",
            "tenant-b",
            "kube-system",
            "monitoring",
            "default",
        ];
        let ids: std::collections::BTreeSet<u32> = names.iter().map(|n| ns_id(n)).collect();
        assert_eq!(ids.len(), names.len());
        assert_eq!(ns_id("tenant-a"), ns_id("tenant-a"));
        assert!(ids.iter().all(|id| *id != 0));
    }

    #[test]
    fn proc_route_host_routes_are_the_32s() {
        // Real /proc/net/route lines of a lab node (little-endian host).
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    cnpv1\t020112C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    uplink\t000012C6\t00000000\t0001\t0\t0\t0\t0000FEFF\t0\t0\t0\n\
                    bad line\n";
        let routes = parse_proc_route(text);
        if cfg!(target_endian = "little") {
            assert_eq!(
                routes.into_iter().collect::<Vec<_>>(),
                vec![("198.18.1.2".parse().unwrap(), "cnpv1".to_string())]
            );
        } else {
            panic!("these lines are a little-endian machine's");
        }
    }

    fn pod(name: &str, ns: &str, node: &str, ip: &str, app: &str) -> PodInfo {
        PodInfo {
            name: name.into(),
            namespace: ns.into(),
            node: node.into(),
            ips: vec![ip.parse().unwrap()],
            labels: [("app".to_string(), app.to_string())].into(),
            workload: app.into(),
            phase: "Running".into(),
            ports: vec![
                ContainerPort {
                    port: 8080,
                    protocol: "TCP".into(),
                    name: Some("http".into()),
                },
                ContainerPort {
                    port: 9000,
                    protocol: "TCP".into(),
                    name: Some("grpc".into()),
                },
            ],
            ..PodInfo::default()
        }
    }

    fn snapshot(pods: Vec<PodInfo>) -> InventorySnapshot {
        InventorySnapshot {
            pods,
            namespaces: vec![NamespaceInfo {
                name: "tenant-a".into(),
                labels: BTreeMap::new(),
            }],
            nodes: vec![
                NodeInfo {
                    name: "n1".into(),
                    addresses: vec!["198.18.255.1".parse().unwrap()],
                    labels: BTreeMap::new(),
                },
                NodeInfo {
                    name: "n2".into(),
                    addresses: vec!["198.18.255.2".parse().unwrap()],
                    labels: BTreeMap::new(),
                },
            ],
        }
    }

    fn routes(list: &[(&str, &str, u32)]) -> BTreeMap<Ipv4Addr, (String, u32)> {
        list.iter()
            .map(|(ip, dev, idx)| (ip.parse().unwrap(), (dev.to_string(), *idx)))
            .collect()
    }

    #[test]
    fn only_this_nodes_routed_pods_with_stable_identities() {
        let mut ids = IdentityAllocator::new();
        let snap = snapshot(vec![
            pod("web-1", "tenant-a", "n1", "198.18.1.2", "web"),
            pod("web-2", "tenant-a", "n1", "198.18.1.3", "web"),
            pod("far-1", "tenant-a", "n2", "198.18.2.2", "far"),
            pod("new-1", "tenant-b", "n1", "198.18.1.9", "new"),
        ]);
        let r = routes(&[("198.18.1.2", "cnpv1", 7), ("198.18.1.3", "cnpv2", 8)]);
        let inv =
            Inventory::build_with_routes(&snap, "n1", Path::new(OWN_NETNS), &mut ids, &r).unwrap();
        assert_eq!(inv.node_ip, "198.18.255.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            inv.pods.len(),
            2,
            "the other node's and the unrouted pod are not ours"
        );
        assert_eq!(inv.remote_pods.len(), 1);
        assert_eq!(inv.remote_pods[0].name, "far-1");
        assert_eq!(
            inv.name_of_identity(inv.remote_pods[0].identity),
            "tenant-a/far"
        );
        assert_eq!(
            inv.remote_nodes,
            vec!["198.18.255.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            inv.unrouted,
            vec!["tenant-b/new-1 (198.18.1.9)".to_string()]
        );
        assert_eq!(
            inv.pods[0].identity, inv.pods[1].identity,
            "replicas share one"
        );
        assert_eq!(inv.pods[0].http_ports, vec![8080]);
        assert_eq!(inv.pods[0].host_ifindex, 7);
        assert_eq!(inv.name_of_identity(inv.pods[0].identity), "tenant-a/web");

        // The pod gets its route: attached; web-2 goes: detached. The web
        // identity keeps its number.
        let web_id = inv.pods[0].identity;
        let snap2 = snapshot(vec![
            pod("web-1", "tenant-a", "n1", "198.18.1.2", "web"),
            pod("new-1", "tenant-b", "n1", "198.18.1.9", "new"),
        ]);
        let r2 = routes(&[("198.18.1.2", "cnpv1", 7), ("198.18.1.9", "cnpv9", 12)]);
        let inv2 = Inventory::build_with_routes(&snap2, "n1", Path::new(OWN_NETNS), &mut ids, &r2)
            .unwrap();
        assert_eq!(inv2.pods[0].identity, web_id);
        assert!(inv2.namespaces.contains_key("tenant-b"));
        let changes = Changes::between(&inv, &inv2);
        assert_eq!(
            changes
                .attach
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            vec!["new-1"]
        );
        assert_eq!(
            changes
                .detach
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            vec!["web-2"]
        );
    }

    #[test]
    fn an_unknown_node_is_a_clear_error() {
        let mut ids = IdentityAllocator::new();
        let err = Inventory::build_with_routes(
            &snapshot(vec![]),
            "n9",
            Path::new(OWN_NETNS),
            &mut ids,
            &BTreeMap::new(),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("node `n9`") && text.contains("n1, n2"),
            "{text}"
        );
    }
}
