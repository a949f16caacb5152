//! The lab as `kubectl get pods,namespaces,nodes -A -o json` would print it,
//! so anything that reads a cluster snapshot reads the lab the same way.

use serde_json::{json, Value};

use super::scenario::ServerKind;
use super::state::LabState;

pub fn inventory(lab: &LabState) -> Value {
    let created = rfc3339(lab.created_unix);
    let mut items = Vec::new();
    for pod in &lab.pods {
        let ports: Vec<Value> = pod
            .servers
            .iter()
            .map(|s| {
                let mut port = json!({"containerPort": s.port, "protocol": s.protocol.as_str()});
                let name = match s.kind {
                    ServerKind::Http => Some("http"),
                    ServerKind::Dns => Some(if s.protocol.as_str() == "UDP" {
                        "dns"
                    } else {
                        "dns-tcp"
                    }),
                    ServerKind::Echo => None,
                };
                if let Some(name) = name {
                    port["name"] = json!(name);
                }
                if pod.host_network {
                    port["hostPort"] = json!(s.port);
                }
                port
            })
            .collect();
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": pod.labels,
                "uid": uid(&format!("pod/{}/{}", pod.namespace, pod.name)),
                "creationTimestamp": created,
            },
            "spec": {
                "nodeName": pod.node,
                "hostNetwork": pod.host_network,
                "serviceAccountName": "default",
                "containers": [{"name": pod.workload, "image": "cnpilot-lab", "ports": ports}],
            },
            "status": {
                "phase": "Running",
                "podIP": pod.ip.to_string(),
                "podIPs": [{"ip": pod.ip.to_string()}],
                "hostIP": node_ip(lab, &pod.node).to_string(),
            },
        }));
    }
    for ns in &lab.namespaces {
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns.name,
                "labels": ns.labels,
                "uid": uid(&format!("namespace/{}", ns.name)),
                "creationTimestamp": created,
            },
            "status": {"phase": "Active"},
        }));
    }
    let nodes = std::iter::once((&lab.node.name, lab.node.ip, true))
        .chain(lab.remote_nodes.iter().map(|n| (&n.name, n.ip, false)));
    for (name, ip, control_plane) in nodes {
        let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
        if control_plane {
            labels["node-role.kubernetes.io/control-plane"] = json!("");
        }
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "uid": uid(&format!("node/{name}")),
                "creationTimestamp": created,
            },
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": ip.to_string()},
                    {"type": "Hostname", "address": name},
                ],
            },
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

fn node_ip(lab: &LabState, node: &str) -> std::net::Ipv4Addr {
    lab.remote_nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.ip)
        .unwrap_or(lab.node.ip)
}

/// A stable UUID-shaped id: the same lab gives the same uids.
fn uid(seed: &str) -> String {
    let a = fnv(seed.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let b = fnv(seed.as_bytes(), 0x8422_2325_cbf2_9ce4);
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn fnv(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Unix seconds as `2024-05-01T12:00:00Z` (civil-from-days, proleptic Gregorian).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{plan::plan, scenario::Scenario};

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn seed_inventory_is_a_kubectl_list() {
        let lab = plan(&Scenario::load("seed").unwrap(), "cnp").unwrap();
        let inv = inventory(&lab);
        assert_eq!(inv["kind"], "List");
        let items = inv["items"].as_array().unwrap();
        let api = items
            .iter()
            .find(|i| i["kind"] == "Pod" && i["metadata"]["labels"]["app"] == "payments-api")
            .unwrap();
        assert_eq!(api["metadata"]["namespace"], "payments");
        assert_eq!(api["spec"]["nodeName"], "cnp-node");
        assert_eq!(api["status"]["phase"], "Running");
        assert!(api["status"]["podIP"]
            .as_str()
            .unwrap()
            .starts_with("198.18."));
        assert!(items
            .iter()
            .any(|i| i["kind"] == "Pod" && i["spec"]["hostNetwork"] == true));
        assert!(items
            .iter()
            .any(|i| i["kind"] == "Namespace" && i["metadata"]["name"] == "tenant-a"));
        assert_eq!(items.iter().filter(|i| i["kind"] == "Node").count(), 1);
    }
}
