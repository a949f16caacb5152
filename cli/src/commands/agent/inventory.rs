//! What the agent attaches to: the lab's pods, identities for them, and the
//! namespace ids the `ns_mode` map is keyed by.
//!
//! Reads `state.json` with a private minimal struct (the fields the agent
//! needs) so the agent does not depend on the lab's internals.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cnpilot_learner::{IdentityAllocator, Labels, ReservedIdentity};
use serde::Deserialize;

pub const DEFAULT_LAB_DIR: &str = "/run/cnpilot/lab";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LabFile {
    node: NodeFile,
    namespaces: Vec<NamespaceFile>,
    pods: Vec<PodFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeFile {
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespaceFile {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodFile {
    namespace: String,
    workload: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    host_veth: Option<String>,
    host_ifindex: Option<u32>,
    #[serde(default)]
    host_network: bool,
    #[serde(default)]
    servers: Vec<ServerFile>,
}

#[derive(Debug, Deserialize)]
struct ServerFile {
    port: u16,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    kind: String,
}

/// One pod the agent enforces on (host-network pods are the node's business).
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub workload: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_veth: String,
    pub host_ifindex: u32,
    pub identity: u32,
    pub ns_id: u32,
    /// TCP ports the pod declares as HTTP (the lab's `kind: http`
    /// servers; containerPorts on a cluster): HTTP visibility's `auto`.
    pub http_ports: Vec<u16>,
    /// The pod's identity labels (per-pod labels removed, namespace
    /// labels added), as the learner records them.
    pub identity_labels: Labels,
}

#[derive(Debug)]
pub struct Inventory {
    pub node_name: String,
    pub node_netns: PathBuf,
    pub node_ip: Ipv4Addr,
    pub pods: Vec<Pod>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
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

impl Inventory {
    pub fn from_lab(dir: &Path) -> anyhow::Result<Inventory> {
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is the lab up? `cnpilot lab up`)",
                path.display()
            )
        })?;
        let lab: LabFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a lab state file this agent understands",
                path.display()
            )
        })?;
        let namespaces: BTreeMap<String, BTreeMap<String, String>> = lab
            .namespaces
            .into_iter()
            .map(|n| (n.name, n.labels))
            .collect();
        let no_labels = BTreeMap::new();
        let mut identities = IdentityAllocator::new();
        let mut pods = Vec::new();
        let label_sets: Vec<Labels> = lab
            .pods
            .iter()
            .map(|p| {
                let ns_labels = namespaces.get(&p.namespace).unwrap_or(&no_labels);
                Labels::identity_of_pod(&p.labels, &p.namespace, None, ns_labels)
            })
            .collect();
        identities.allocate_all(label_sets.iter());
        for (p, labels) in lab.pods.into_iter().zip(label_sets) {
            if p.host_network {
                continue;
            }
            let (Some(host_veth), Some(host_ifindex)) = (p.host_veth, p.host_ifindex) else {
                tracing::warn!(pod = %p.name, "pod without a host-side veth in the lab state: skipped");
                continue;
            };
            let http_ports = p
                .servers
                .iter()
                .filter(|s| s.kind == "http" && (s.protocol.is_empty() || s.protocol == "tcp"))
                .map(|s| s.port)
                .collect();
            pods.push(Pod {
                identity: identities.allocate(&labels),
                http_ports,
                identity_labels: labels,
                ns_id: ns_id(&p.namespace),
                namespace: p.namespace,
                workload: p.workload,
                name: p.name,
                ip: p.ip,
                host_veth,
                host_ifindex,
            });
        }
        Ok(Inventory {
            node_name: lab.node.name,
            node_netns: cnpilot_bpf::netns::named(&lab.node.netns),
            node_ip: lab.node.ip,
            pods,
            namespaces,
        })
    }

    /// `namespace/workload` for a local identity, Cilium's reserved name
    /// otherwise (`world`, `host`, ...).
    pub fn name_of_identity(&self, id: u32) -> String {
        if let Some(p) = self.pods.iter().find(|p| p.identity == id) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reads_the_labs_state_file_and_skips_host_network_pods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("state.json"),
            r#"{"version":1,"node":{"name":"n","netns":"cnp-node","ip":"198.18.255.1","uplink":"u"},
               "namespaces":[{"name":"tenant-a","labels":{}}],
               "pods":[{"namespace":"tenant-a","workload":"web","name":"web-1","labels":{"app":"web"},
                        "ip":"198.18.1.2","netns":"x","hostVeth":"cnpv1","hostIfindex":7,"hostNetwork":false},
                       {"namespace":"tenant-a","workload":"hn","name":"hn-1","labels":{},
                        "ip":"198.18.255.1","netns":"cnp-node","hostVeth":null,"hostIfindex":null,"hostNetwork":true}]}"#,
        )
        .unwrap();
        let inv = Inventory::from_lab(dir.path()).unwrap();
        assert_eq!(inv.pods.len(), 1);
        assert_eq!(inv.pods[0].host_ifindex, 7);
        assert!(inv.pods[0].identity >= 256);
        assert_eq!(inv.name_of_identity(inv.pods[0].identity), "tenant-a/web");
        assert_eq!(inv.name_of_identity(2), "world");
        assert_eq!(inv.namespace_of_ns_id(ns_id("tenant-a")), Some("tenant-a"));
    }

    #[test]
    fn a_missing_lab_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Inventory::from_lab(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("lab up"), "{err:#}");
    }
}
