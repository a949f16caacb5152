//! After an automatic rollback: the offending flows become a proposed
//! addition to the namespace's policy, with evidence, ready for the next
//! review. The flows go through the same path as any recorded traffic
//! (event line → Hubble flow → flow record → store → learn → recommend), so
//! the addition is what `cnpilot recommend` would have proposed had the
//! recording seen them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cnpilot_learner::aggregate::LearnOptions;
use cnpilot_learner::FlowStore;
use cnpilot_recommender::synth::{L7Mode, Options};
use serde_json::Value;

use super::state::NamespaceState;
use crate::commands::learn::learn_table;
use crate::commands::observe::event_to_record;
use crate::commands::recommend::recommend_to_dir;

/// Offending event lines kept for the addition: a flood of drops says no
/// more than its first thousand lines about which rules are missing.
pub const MAX_LINES: usize = 1000;

/// What was written.
#[derive(Debug)]
pub struct Addition {
    /// The proposed policies (`cnpilot recommend`'s layout).
    pub dir: PathBuf,
    /// The offending flows as a flow store (evidence; `recommend --store`).
    pub store: PathBuf,
    pub policies: usize,
    pub records: usize,
    /// Flows the addition does not allow, each with why.
    pub left_out: Vec<String>,
}

/// Proposes rules that would have let `lines` pass, on top of the frozen
/// proposal of the namespace (the policy that denied them). Only the
/// namespace's own side is proposed: only its policy was enforcing.
pub fn propose(ns: &NamespaceState, lines: &[Value]) -> anyhow::Result<Option<Addition>> {
    let records: Vec<_> = lines.iter().filter_map(event_to_record).collect();
    if records.is_empty() {
        return Ok(None);
    }
    let store = ns.dir.join("surprises-store");
    let dir = ns.dir.join("addition");
    for old in [&store, &dir] {
        remove_dir_if_present(old)?;
    }
    let mut writer = FlowStore::open(&store)
        .with_context(|| format!("opening flow store {}", store.display()))?;
    writer
        .append(&records)
        .with_context(|| format!("writing {}", store.display()))?;
    writer.close()?;
    let table = learn_table(std::slice::from_ref(&store), &LearnOptions::default())?;
    let current = cnpilot_recommender::load_paths(&[ns.policies_dir()]).with_context(|| {
        format!(
            "loading the frozen proposal {}",
            ns.policies_dir().display()
        )
    })?;
    let options = Options {
        l7: L7Mode::Paths,
        min_count: 1,
        cidr_prefix: None,
        namespaces: vec![ns.namespace.clone()],
        allow_denied: true,
    };
    let (rec, _) = recommend_to_dir(&table, &current, &options, &dir)?;
    let left_out = rec
        .excluded
        .iter()
        .map(|e| format!("{}: {}", e.flow, e.disposition.describe()))
        .collect();
    Ok(Some(Addition {
        dir,
        store,
        policies: rec.policies.len(),
        records: records.len(),
        left_out,
    }))
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}
