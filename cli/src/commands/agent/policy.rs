//! Policies -> map entries, through the recommender's compiler (the same
//! index the evaluator uses, so the datapath and `policy test` agree).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cnpilot_bpf::maps::{IpcacheValue, PolicyKey, PolicyValue, SubjectKey, SubjectValue};
use cnpilot_bpf::IpcacheEntry;
use cnpilot_recommender::{CompiledPolicy, IdentityInput};

use super::inventory::Inventory;

pub struct MapEntries {
    pub policy: Vec<(PolicyKey, PolicyValue)>,
    pub subjects: Vec<(SubjectKey, SubjectValue)>,
    /// Beyond the pods' own addresses (CIDR identities from policies).
    pub ipcache: Vec<IpcacheEntry>,
    /// What the L7 proxy asks per request (same compilation as the maps).
    pub compiled: Arc<CompiledPolicy>,
}

/// No policies: nothing is selected, everything is allowed (and counted).
pub fn none() -> MapEntries {
    MapEntries {
        policy: Vec::new(),
        subjects: Vec::new(),
        ipcache: Vec::new(),
        compiled: Arc::new(CompiledPolicy::default()),
    }
}

/// `proxy_port` goes into REDIRECT entries (0: no proxy, L7 ports pass at L4).
pub fn compile(dir: &Path, inv: &Inventory, proxy_port: u16) -> anyhow::Result<MapEntries> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading policy directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let set = cnpilot_recommender::load_paths(&files)
        .with_context(|| format!("loading policies from {}", dir.display()))?;
    let mut inputs: Vec<IdentityInput> = Vec::new();
    for pod in &inv.pods {
        if let Some(existing) = inputs.iter_mut().find(|i| i.id == pod.identity) {
            existing.addrs.push(pod.ip);
            continue;
        }
        let mut labels = pod.labels.clone();
        labels.retain(|k, _| k != "pod-template-hash");
        inputs.push(IdentityInput {
            id: pod.identity,
            namespace: pod.namespace.clone(),
            labels,
            named_ports: Default::default(),
            addrs: vec![pod.ip],
        });
    }
    let mut compiled = CompiledPolicy::compile(&set, &inputs, None);
    compiled.set_proxy_port(proxy_port);
    for w in compiled.warnings() {
        tracing::warn!("{w}");
    }
    let ipcache = compiled
        .ipcache_entries()
        .into_iter()
        .map(|(k, v)| IpcacheEntry {
            addr: Ipv4Addr::from(u32::from_be(k.addr)),
            prefix_len: u8::try_from(k.prefixlen).unwrap_or(32),
            value: IpcacheValue {
                identity: v.identity,
                flags: v.flags,
            },
        })
        .collect();
    Ok(MapEntries {
        policy: compiled.policy_entries(),
        subjects: compiled.subject_entries(),
        ipcache,
        compiled: Arc::new(compiled),
    })
}
