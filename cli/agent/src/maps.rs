//! Programming the datapath's maps for an inventory: at start, on a reload
//! and on pod churn.

use crate::error::Context;
use cnpilot_bpf::maps::{
    identity, EndpointValue, IpcacheValue, ENDPOINT_F_HOST, IPCACHE_F_LOCAL_ENDPOINT,
};
use cnpilot_bpf::{Datapath, HostPath, IpcacheEntry, Mode};

use crate::{inventory, ns_id, policy, Notice};

/// Applies an inventory change: gone interfaces are detached first (their
/// endpoint entries go with them), then every map is rewritten for the new
/// inventory (a reused IP's ipcache entry now names its new pod), and only
/// then are new interfaces attached, so a new pod's first packet is judged
/// with its own identity.
pub(crate) fn churn(
    dp: &mut Datapath,
    pin_dir: &std::path::Path,
    changes: &inventory::Changes,
    inv: &inventory::Inventory,
    entries: &policy::MapEntries,
    keep_mode: &[String],
) -> crate::Result<()> {
    for pod in &changes.detach {
        cnpilot_bpf::detach(pin_dir, &pod.host_veth)
            .with_context(|| format!("detaching from {}", pod.host_veth))?;
        if !inv.pods.iter().any(|p| p.host_ifindex == pod.host_ifindex) {
            dp.tables_mut().remove_endpoint(pod.host_ifindex)?;
        }
    }
    for dev in &changes.host_detach {
        cnpilot_bpf::detach(pin_dir, &dev.name)
            .with_context(|| format!("detaching from node device {}", dev.name))?;
        if !inv.host_devices.iter().any(|d| d.ifindex == dev.ifindex) {
            dp.tables_mut().remove_endpoint(dev.ifindex)?;
        }
    }
    program_maps(dp, inv, entries, None, keep_mode)?;
    for pod in &changes.attach {
        attach_pod(dp, &inv.node_netns, pod)?;
    }
    for dev in &changes.host_attach {
        attach_host(dp, &inv.node_netns, dev)?;
    }
    Ok(())
}

/// The host firewall's programs on one node device.
pub(crate) fn attach_host(
    dp: &mut Datapath,
    node_netns: &std::path::Path,
    dev: &crate::host::HostDevice,
) -> crate::Result<()> {
    dp.attach_host(Some(node_netns), &dev.name)
        .with_context(|| format!("attaching the host firewall to {}", dev.name))?;
    Ok(())
}

pub(crate) fn attach_pod(
    dp: &mut Datapath,
    node_netns: &std::path::Path,
    pod: &inventory::Pod,
) -> crate::Result<()> {
    dp.attach(Some(node_netns), &pod.host_veth)
        .with_context(|| {
            format!(
                "attaching to {} ({}/{})",
                pod.host_veth, pod.namespace, pod.name
            )
        })?;
    Ok(())
}

/// Endpoints, ipcache, policy, subjects, modes. Policy is written before
/// subjects so a newly selected identity has its allows before it becomes
/// default-deny. Returns a notice per namespace whose mode a staged enforce
/// kept from `mode`.
pub(crate) fn program_maps(
    dp: &mut Datapath,
    inv: &inventory::Inventory,
    entries: &policy::MapEntries,
    mode: Option<Mode>,
    keep_mode: &[String],
) -> crate::Result<Vec<Notice>> {
    reprogram_policy(dp, inv, entries)?;
    let mut notices = Vec::new();
    let t = dp.tables_mut();
    // The host starts in audit and only `cnpilot mode --node` moves it:
    // `--mode` is for namespaces, and enforcing a node's own traffic by a
    // blanket flag is how operators lock themselves out.
    if !inv.host_devices.is_empty() {
        let id = crate::host::host_mode_id(&inv.node_name);
        if !t.modes()?.iter().any(|(k, _)| *k == id) {
            t.set_mode(id, Mode::Audit)?;
        }
    }
    for ns in inv.namespaces.keys() {
        let id = ns_id(ns);
        let current = t
            .modes()?
            .into_iter()
            .find(|(k, _)| *k == id)
            .map(|(_, m)| m);
        match (mode, current) {
            (Some(m), _) if keep_mode.contains(ns) => {
                notices.push(Notice::KeepsMode {
                    namespace: ns.clone(),
                    mode: current.map_or_else(|| "audit".to_string(), |c| c.to_string()),
                    asked: m,
                });
                if current.is_none() {
                    t.set_mode(id, Mode::Audit)?;
                }
            }
            (Some(m), _) => {
                t.set_mode(id, m)?;
            }
            (None, None) => {
                t.set_mode(id, Mode::Audit)?;
            }
            (None, Some(_)) => {}
        }
    }
    Ok(notices)
}

/// Endpoints, ipcache, policy and subjects, without touching any mode: the
/// start of the agent and a reload alike.
pub(crate) fn reprogram_policy(
    dp: &mut Datapath,
    inv: &inventory::Inventory,
    entries: &policy::MapEntries,
) -> crate::Result<()> {
    let t = dp.tables_mut();
    let mut ipcache = vec![IpcacheEntry {
        addr: inv.node_ip,
        prefix_len: 32,
        value: IpcacheValue {
            identity: identity::HOST,
            flags: 0,
        },
    }];
    for pod in &inv.pods {
        t.upsert_endpoint(
            pod.host_ifindex,
            EndpointValue {
                identity: pod.identity,
                ns_id: pod.ns_id,
                addr: u32::from(pod.ip).to_be(),
                flags: 0,
            },
        )?;
        ipcache.push(IpcacheEntry {
            addr: pod.ip,
            prefix_len: 32,
            value: IpcacheValue {
                identity: pod.identity,
                flags: IPCACHE_F_LOCAL_ENDPOINT,
            },
        });
    }
    for dev in &inv.host_devices {
        t.upsert_endpoint(
            dev.ifindex,
            EndpointValue {
                identity: identity::HOST,
                ns_id: crate::host::host_mode_id(&inv.node_name),
                addr: u32::from(inv.node_ip).to_be(),
                flags: ENDPOINT_F_HOST,
            },
        )?;
    }
    for pod in &inv.remote_pods {
        ipcache.push(IpcacheEntry {
            addr: pod.ip,
            prefix_len: 32,
            value: IpcacheValue {
                identity: pod.identity,
                flags: 0,
            },
        });
    }
    for addr in &inv.remote_nodes {
        ipcache.push(IpcacheEntry {
            addr: *addr,
            prefix_len: 32,
            value: IpcacheValue {
                identity: identity::REMOTE_NODE,
                flags: 0,
            },
        });
    }
    // Policy CIDRs first, pods' /32s override them (same key = later wins).
    let mut all: Vec<IpcacheEntry> = entries.ipcache.clone();
    for e in ipcache {
        all.retain(|x| !(x.addr == e.addr && x.prefix_len == e.prefix_len));
        all.push(e);
    }
    // Policy before the ipcache: an address that gets a new identity (a
    // name just learned from DNS) finds that identity's entries in place.
    t.replace_policy(entries.policy.iter().copied())?;
    t.set_ipcache(&all)?;
    t.replace_subjects(entries.subjects.iter().copied())?;
    // Last, so the host's rules are in place before the pods' veths judge
    // host <-> pod connections by them; removed when the host firewall is
    // off (only the pods' policies judge those then).
    let host_path = (!inv.host_devices.is_empty()).then(|| HostPath {
        identity: identity::HOST,
        ns_id: crate::host::host_mode_id(&inv.node_name),
        addr: inv.node_ip,
    });
    t.set_host_path(host_path)?;
    Ok(())
}
