//! The wizard's progress file and the facts its choices rest on: the
//! inventory, how connected each namespace is, the proposal's files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Accept,
    Edit,
    Skip,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Accept => "accepted",
            Decision::Edit => "edited and accepted",
            Decision::Skip => "skipped",
        })
    }
}

/// `WORK/wizard.json`: what is done, replaced atomically after each step.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    pub store: Option<PathBuf>,
    pub order: Vec<String>,
    pub recommended: bool,
    pub decisions: BTreeMap<String, Decision>,
    /// Per namespace: done, rolled-back or skipped.
    pub enforced: BTreeMap<String, String>,
}

impl Progress {
    pub fn load(work: &Path) -> anyhow::Result<Progress> {
        let path = work.join("wizard.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a wizard progress file (remove it to start over)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Progress::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, work: &Path) -> anyhow::Result<()> {
        let path = work.join("wizard.json");
        let tmp = work.join(".wizard.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    pub fn steps_done(&self) -> usize {
        usize::from(self.store.is_some())
            + usize::from(!self.order.is_empty())
            + usize::from(self.recommended)
            + usize::from(!self.decisions.is_empty())
            + usize::from(!self.enforced.is_empty())
    }
}

/// Namespaces and their pod counts, from the lab's state file.
#[derive(Debug)]
pub struct Inventory {
    pub namespaces: BTreeMap<String, usize>,
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
        let state: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state file", path.display()))?;
        let mut namespaces = BTreeMap::new();
        for ns in state["namespaces"].as_array().into_iter().flatten() {
            if let Some(name) = ns["name"].as_str() {
                namespaces.insert(name.to_string(), 0);
            }
        }
        for pod in state["pods"].as_array().into_iter().flatten() {
            if let Some(ns) = pod["namespace"].as_str() {
                *namespaces.entry(ns.to_string()).or_default() += 1;
            }
        }
        anyhow::ensure!(!namespaces.is_empty(), "{}: no namespaces", path.display());
        Ok(Inventory { namespaces })
    }
}

/// Distinct peers (workloads or addresses) each namespace talked with.
pub fn connectedness(
    store: &Path,
    inventory: &Inventory,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let records = cnpilot_learner::store::read_all(store)
        .with_context(|| format!("reading flow store {}", store.display()))?;
    let mut peers: BTreeMap<String, std::collections::BTreeSet<String>> = inventory
        .namespaces
        .keys()
        .map(|ns| (ns.clone(), Default::default()))
        .collect();
    let name = |p: &cnpilot_learner::record::Peer| {
        if p.namespace.is_empty() {
            p.ip.map_or_else(|| p.workload.clone(), |ip| ip.to_string())
        } else {
            format!("{}/{}", p.namespace, p.workload)
        }
    };
    for r in &records {
        if r.src.namespace == r.dst.namespace {
            continue;
        }
        if let Some(set) = peers.get_mut(&r.src.namespace) {
            set.insert(name(&r.dst));
        }
        if let Some(set) = peers.get_mut(&r.dst.namespace) {
            set.insert(name(&r.src));
        }
    }
    Ok(peers.into_iter().map(|(ns, p)| (ns, p.len())).collect())
}

/// Least-connected first; ties by name.
pub fn suggest(degrees: &BTreeMap<String, usize>) -> Vec<String> {
    let mut order: Vec<(&String, &usize)> = degrees.iter().collect();
    order.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
    order.into_iter().map(|(ns, _)| ns.clone()).collect()
}

/// (file stem, path, namespace) of every CiliumNetworkPolicy file.
pub fn policy_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf, String)>> {
    let set = cnpilot_recommender::load_paths(&[dir])
        .with_context(|| format!("loading {}", dir.display()))?;
    let mut out: Vec<(String, PathBuf, String)> = Vec::new();
    for p in &set.policies {
        let Some(ns) = p.policy.scope_namespace() else {
            continue;
        };
        let path = PathBuf::from(&p.file);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !out.iter().any(|(s, _, _)| *s == stem) {
            out.push((stem, path, ns.to_string()));
        }
    }
    out.sort();
    Ok(out)
}

pub fn has_policy_of(dir: &Path, namespace: &str) -> anyhow::Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    Ok(policy_files(dir)?.iter().any(|(_, _, ns)| ns == namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_connected_first_then_by_name() {
        let degrees: BTreeMap<String, usize> =
            [("web", 3), ("ops", 1), ("data", 1), ("payments", 5)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(suggest(&degrees), ["data", "ops", "web", "payments"]);
    }

    #[test]
    fn progress_survives_a_restart_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Progress::load(dir.path()).unwrap();
        assert_eq!(p.steps_done(), 0);
        p.order = vec!["payments".into()];
        p.decisions.insert("x".into(), Decision::Skip);
        p.save(dir.path()).unwrap();
        let again = Progress::load(dir.path()).unwrap();
        assert_eq!(again.order, ["payments"]);
        assert_eq!(again.steps_done(), 2);
        std::fs::write(dir.path().join("wizard.json"), "{").unwrap();
        let err = Progress::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("wizard.json"), "{err}");
    }
}
