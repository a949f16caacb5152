//! `cnpilot status` and `cnpilot rollback`.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Args;
use cnpilot_bpf::{Mode, Tables};
use serde::Serialize;

use super::state::{self, NamespaceState, Stage};
use super::{say, StateArgs};
use crate::commands::agent::ns_id;
use crate::Outcome;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The namespace to send back to audit.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// Recorded with the rollback.
    #[arg(long, default_value = "manual rollback")]
    pub reason: String,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// `table` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// The lab's state directory: names the namespaces whose modes are
    /// pinned when the agent is not running.
    #[arg(long, env = "CNPILOT_LAB_DIR", default_value = "/run/cnpilot/lab")]
    pub lab_dir: std::path::PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Audit now, with one map update; the record says who and why. A running
/// `enforce` of the namespace sees it within half a second and stops.
pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<Outcome> {
    let ns = NamespaceState::new(&args.state.state_dir, &args.namespace);
    if let Some(mut record) = ns.load()? {
        if record.stage != Stage::RolledBack {
            record.stage = Stage::RolledBack;
            record.since_unix_ns = state::now_unix_ns();
            record.since = state::rfc3339(record.since_unix_ns);
            record.reason = Some(args.reason.clone());
            ns.save(&record, "manual rollback")?;
        }
    }
    let mut tables = Tables::open_pinned(&args.state.pin_dir).with_context(|| {
        format!(
            "opening the pinned maps in {}",
            args.state.pin_dir.display()
        )
    })?;
    let old = tables.set_mode(ns_id(&args.namespace), Mode::Audit)?;
    say(
        &args.namespace,
        &format!("{old} -> audit ({})", args.reason),
    );
    Ok(Outcome::Success)
}

#[derive(Debug, Serialize)]
struct Row {
    namespace: String,
    mode: String,
    stage: Option<Stage>,
    since: Option<String>,
    revision: Option<String>,
    /// In the last minute, from the agent (`None`: the agent is not running).
    would_drops: Option<u64>,
    drops: Option<u64>,
    l7_denied: Option<u64>,
    l7_would_deny: Option<u64>,
    reason: Option<String>,
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<Outcome> {
    let records = state::all(&args.state.state_dir)?;
    let agent = cnpilot_agent::api::request(&args.state.socket(), "status");
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let tables = Tables::open_pinned(&args.state.pin_dir).ok();
    let mode_of = |ns: &str| {
        tables
            .as_ref()
            .and_then(|t| t.mode(ns_id(ns)).ok())
            .map_or_else(|| "-".to_string(), |m| m.to_string())
    };
    let empty = |namespace: &str| Row {
        namespace: namespace.to_string(),
        mode: mode_of(namespace),
        stage: None,
        since: None,
        revision: None,
        would_drops: None,
        drops: None,
        l7_denied: None,
        l7_would_deny: None,
        reason: None,
    };
    // The pinned map is keyed by hashes of names: the inventory names them.
    if let Ok(text) = std::fs::read_to_string(args.lab_dir.join("state.json")) {
        if let Ok(lab) = serde_json::from_str::<serde_json::Value>(&text) {
            for ns in lab["namespaces"].as_array().into_iter().flatten() {
                if let Some(name) = ns["name"].as_str() {
                    rows.entry(name.to_string()).or_insert_with(|| empty(name));
                }
            }
        }
    }
    if let Ok(answer) = &agent {
        if let Some(namespaces) = answer["namespaces"].as_object() {
            for (name, counts) in namespaces {
                let row = rows.entry(name.clone()).or_insert_with(|| empty(name));
                row.would_drops = counts["would_drops"].as_u64();
                row.drops = counts["drops"].as_u64();
                row.l7_denied = counts["l7_denied"].as_u64();
                row.l7_would_deny = counts["l7_would_deny"].as_u64();
            }
        }
    }
    for (ns, record) in records {
        let row = rows
            .entry(ns.namespace.clone())
            .or_insert_with(|| empty(&ns.namespace));
        row.stage = Some(record.stage);
        row.since = Some(record.since);
        row.revision = Some(record.revision);
        row.reason = record.reason;
    }
    if args.output == "json" {
        let body = serde_json::json!({
            "agent": agent.as_ref().map(|_| "running").unwrap_or("not reachable"),
            "namespaces": rows.values().collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(Outcome::Success);
    }
    if let Err(e) = &agent {
        eprintln!("cnpilot status: no live counts: {e:#}");
    }
    let n = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    println!(
        "{:<18} {:<8} {:<12} {:<25} {:>11} {:>6} {:>5}  REASON",
        "NAMESPACE", "MODE", "STAGE", "SINCE", "WOULD-DROP", "DROPS", "403S"
    );
    for row in rows.values() {
        println!(
            "{:<18} {:<8} {:<12} {:<25} {:>11} {:>6} {:>5}  {}",
            row.namespace,
            row.mode,
            row.stage.map_or("-", Stage::as_str),
            row.since.as_deref().unwrap_or("-"),
            n(row.would_drops),
            n(row.drops),
            n(row.l7_denied),
            row.reason.as_deref().unwrap_or("")
        );
    }
    println!("(drops and 403s: the last minute, from the agent)");
    Ok(Outcome::Success)
}
