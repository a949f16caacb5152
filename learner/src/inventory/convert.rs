//! Kubernetes objects (k8s-openapi types) to inventory records; shared by
//! the snapshot file and the live cluster sources.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{ContainerPort, NamespaceInfo, NodeInfo, PodInfo};

fn ns_of(time: &Time) -> Option<i64> {
    i64::try_from(time.0.as_nanosecond()).ok()
}

/// The owning workload's name: a ReplicaSet's pod belongs to the Deployment
/// whose name is the ReplicaSet's minus the `-<pod-template-hash>` suffix.
fn workload_of(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref();
    if let Some(owner) = meta
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|o| o.controller == Some(true)).or(o.first()))
    {
        if owner.kind == "ReplicaSet" {
            let hash = labels.and_then(|l| l.get("pod-template-hash"));
            if let Some(stripped) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                return stripped.to_string();
            }
            if let Some((base, _)) = owner.name.rsplit_once('-') {
                return base.to_string();
            }
        }
        return owner.name.clone();
    }
    if let Some(name) =
        labels.and_then(|l| l.get("app.kubernetes.io/name").or_else(|| l.get("app")))
    {
        return name.clone();
    }
    meta.name.clone().unwrap_or_default()
}

pub fn pod_info(pod: &Pod) -> PodInfo {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|p| p.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        if let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
    }
    let finished_ns = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                .filter_map(ns_of)
                .max()
        });
    let ports = spec
        .map(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| {
                    Some(ContainerPort {
                        port: u16::try_from(p.container_port).ok()?,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        name: p.name.clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    PodInfo {
        ports,
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        labels: meta.labels.clone().unwrap_or_default(),
        service_account: spec.and_then(|s| s.service_account_name.clone()),
        workload: workload_of(pod),
        phase: status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into()),
        started_ns: status
            .and_then(|s| s.start_time.as_ref())
            .or(meta.creation_timestamp.as_ref())
            .and_then(ns_of),
        finished_ns,
    }
}

pub fn namespace_info(ns: &Namespace) -> NamespaceInfo {
    NamespaceInfo {
        name: ns.metadata.name.clone().unwrap_or_default(),
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    }
}

pub fn node_info(node: &Node) -> NodeInfo {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        addresses,
        labels: node.metadata.labels.clone().unwrap_or_default(),
    }
}
