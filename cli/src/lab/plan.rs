//! Names and addresses: a scenario and a prefix in, the lab's state (before
//! anything exists) out. Pure, so it is the same every time for the same input.
//!
//! - node netns `<p>-node`, node IP 198.18.255.1 (on its `lo`; pods reach it
//!   through an on-link default route), uplink veth `<p>up0` to `<p>-world`
//! - pod netns `<p>-<ns>-<workload>-<i>`, `eth0` inside with 198.18.<n>.<10+k>/32,
//!   where n is the namespace's 1-based position in the scenario
//! - host-side veth `<p>v<hex>` (<= 15 chars) in the node netns, a /32 route each
//! - world addresses (198.19.0.0/16) on the world netns' `eth0`

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::scenario::{Scenario, WorkloadKind};
use super::state::{
    LabState, NamespaceState, NodeState, PodState, RemoteNodeState, ServerState, WorldState,
    STATE_VERSION,
};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
/// Linux interface names hold 15 bytes.
const IFNAME_MAX: usize = 15;
const PREFIX_MAX: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("lab prefix `{0}`: expected 1-8 lowercase letters or digits, starting with a letter")]
    Prefix(String),
    #[error("two pods hash to the same veth name {0}; rename a workload")]
    VethCollision(String),
}

pub fn check_prefix(prefix: &str) -> Result<(), PlanError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= PREFIX_MAX
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PlanError::Prefix(prefix.to_string()))
    }
}

pub fn node_netns(prefix: &str) -> String {
    format!("{prefix}-node")
}

/// Node n (1-based) of a lab: `<p>-node`, `<p>-node2`, …
pub fn node_netns_n(prefix: &str, n: u8) -> String {
    if n <= 1 {
        node_netns(prefix)
    } else {
        format!("{prefix}-node{n}")
    }
}

pub fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 255, n.max(1))
}

pub fn world_netns(prefix: &str) -> String {
    format!("{prefix}-world")
}

/// Every netns name of a lab with this prefix starts with this.
pub fn netns_prefix(prefix: &str) -> String {
    format!("{prefix}-")
}

pub fn plan(scenario: &Scenario, prefix: &str) -> Result<LabState, PlanError> {
    check_prefix(prefix)?;
    let node = NodeState {
        name: node_netns(prefix),
        netns: node_netns(prefix),
        ip: NODE_IP,
        uplink: format!("{prefix}up0"),
        uplink_ifindex: None,
    };
    let remote_nodes: Vec<RemoteNodeState> = (2..=scenario.nodes)
        .map(|n| RemoteNodeState {
            name: node_netns_n(prefix, n),
            netns: node_netns_n(prefix, n),
            ip: node_ip(n),
            link: format!("{prefix}n1"),
            link_ifindex: None,
            node_link: format!("{prefix}n{n}"),
            node_link_ifindex: None,
        })
        .collect();
    let mut pods = Vec::new();
    let mut veths = BTreeSet::new();
    for (ns_index, ns) in scenario.namespaces.iter().enumerate() {
        let mut next_host = 10u8;
        for w in scenario.workloads.iter().filter(|w| w.namespace == ns.name) {
            let template = format!("{}/{}", w.namespace, w.name);
            let template_hash = k8s_hash(&template, 10);
            let mut template_labels = w.labels.clone();
            if template_labels.is_empty() {
                template_labels.insert("app".into(), w.name.clone());
            }
            for replica in 0..w.replicas {
                let instance = format!("{template}/{replica}");
                let suffix = k8s_hash(&instance, 5);
                let mut labels = template_labels.clone();
                let name = match w.kind {
                    WorkloadKind::Deployment => {
                        labels.insert("pod-template-hash".into(), template_hash.clone());
                        format!("{}-{template_hash}-{suffix}", w.name)
                    }
                    WorkloadKind::StatefulSet => {
                        let name = format!("{}-{replica}", w.name);
                        labels.insert(
                            "controller-revision-hash".into(),
                            format!("{}-{template_hash}", w.name),
                        );
                        labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
                        labels.insert("apps.kubernetes.io/pod-index".into(), replica.to_string());
                        name
                    }
                    WorkloadKind::DaemonSet => {
                        labels.insert("controller-revision-hash".into(), template_hash.clone());
                        labels.insert("pod-template-generation".into(), "1".into());
                        format!("{}-{suffix}", w.name)
                    }
                };
                let servers = w
                    .servers
                    .iter()
                    .map(|s| ServerState {
                        port: s.port,
                        protocol: s.protocol,
                        kind: s.kind,
                    })
                    .collect();
                let node_name = node_netns_n(prefix, w.node);
                let (ip, netns, host_veth) = if w.host_network {
                    (node_ip(w.node), node_name.clone(), None)
                } else {
                    // Validation keeps namespaces <= 250 and pods per namespace <= 240.
                    let ip = Ipv4Addr::new(198, 18, (ns_index + 1) as u8, next_host);
                    next_host += 1;
                    let veth = veth_name(prefix, &instance);
                    if !veths.insert(veth.clone()) {
                        return Err(PlanError::VethCollision(veth));
                    }
                    (
                        ip,
                        format!("{prefix}-{}-{}-{replica}", w.namespace, w.name),
                        Some(veth),
                    )
                };
                pods.push(PodState {
                    namespace: w.namespace.clone(),
                    workload: w.name.clone(),
                    name,
                    replica,
                    node: node_name,
                    labels,
                    ip,
                    netns,
                    host_veth,
                    host_ifindex: None,
                    pod_ifindex: None,
                    host_network: w.host_network,
                    server_pid: None,
                    servers,
                });
            }
        }
    }
    let dns_ip = scenario
        .workloads
        .iter()
        .find(|w| {
            w.servers
                .iter()
                .any(|s| s.kind == super::scenario::ServerKind::Dns)
        })
        .and_then(|w| {
            pods.iter()
                .find(|p| p.namespace == w.namespace && p.workload == w.name)
        })
        .map(|p| p.ip);
    let namespaces = scenario
        .namespaces
        .iter()
        .map(|ns| {
            let mut labels: BTreeMap<String, String> = ns.labels.clone();
            // Set by the API server on every namespace since Kubernetes 1.21.
            labels.insert("kubernetes.io/metadata.name".into(), ns.name.clone());
            NamespaceState {
                name: ns.name.clone(),
                labels,
            }
        })
        .collect();
    Ok(LabState {
        version: STATE_VERSION,
        prefix: prefix.to_string(),
        created_unix: 0,
        scenario: scenario.clone(),
        node,
        remote_nodes,
        world: WorldState {
            netns: world_netns(prefix),
            addresses: scenario.world.iter().map(|h| h.address).collect(),
            server_pid: None,
        },
        dns_ip,
        namespaces,
        pods,
    })
}

fn veth_name(prefix: &str, instance: &str) -> String {
    let hex_len = (IFNAME_MAX - prefix.len() - 1).min(8);
    let hex = format!("{:016x}", fnv1a(instance.as_bytes()));
    format!("{prefix}v{}", &hex[..hex_len])
}

/// Kubernetes' alphabet for generated name parts (no vowels, no 0/1/3).
fn k8s_hash(input: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = fnv1a(input.as_bytes());
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            if h == 0 {
                h = fnv1a(&[c as u8; 8]);
            }
            c
        })
        .collect()
}

/// Stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_plan_names_and_addresses() {
        let s = Scenario::load("seed").unwrap();
        let lab = plan(&s, "cnp").unwrap();
        assert_eq!(lab.node.netns, "cnp-node");
        let api = lab.pod("payments", "payments-api", 1).unwrap();
        assert_eq!(api.netns, "cnp-payments-payments-api-1");
        assert!(api.name.starts_with("payments-api-"));
        assert!(api.labels.contains_key("pod-template-hash"));
        assert_eq!(api.labels["app"], "payments-api");
        let veth = api.host_veth.as_deref().unwrap();
        assert!(veth.starts_with("cnpv") && veth.len() <= 15);
        assert_eq!(api.ip.octets()[..2], [198, 18]);
        let dns = lab.pod("kube-system", "kube-dns", 0).unwrap();
        assert_eq!(lab.dns_ip, Some(dns.ip));
        assert_eq!(dns.labels["k8s-app"], "kube-dns");
        let agent = lab.pods.iter().find(|p| p.host_network).unwrap();
        assert_eq!(
            (agent.ip, agent.netns.as_str(), agent.host_veth.as_ref()),
            (NODE_IP, "cnp-node", None)
        );
        let ips: BTreeSet<_> = lab
            .pods
            .iter()
            .filter(|p| !p.host_network)
            .map(|p| p.ip)
            .collect();
        assert_eq!(
            ips.len(),
            lab.pods.iter().filter(|p| !p.host_network).count()
        );
        // Same input, same names: a crashed lab is found again by name.
        assert_eq!(
            format!("{:?}", plan(&s, "cnp").unwrap().pods),
            format!("{:?}", lab.pods)
        );
    }

    #[test]
    fn long_prefix_still_fits_ifnames() {
        let s = Scenario::load("seed").unwrap();
        let lab = plan(&s, "abcdefgh").unwrap();
        assert!(lab
            .pods
            .iter()
            .filter_map(|p| p.host_veth.as_ref())
            .all(|v| v.len() <= 15));
        assert!(lab.node.uplink.len() <= 15);
        assert!(format!("abcdefghn{}", crate::lab::scenario::MAX_NODES).len() <= 15);
        assert!(plan(&s, "abcdefghi").is_err());
        assert!(plan(&s, "Cnp").is_err());
        assert!(plan(&s, "cn-p").is_err());
    }
}
