//! `cnpilot review`: a thin wrapper over `cnpilot_reports::review`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use cnpilot_learner::aggregate::{learn, LearnOptions};
use cnpilot_recommender::synth::{L7Mode, Options};
use cnpilot_recommender::PolicySet;
use cnpilot_reports::diff::yaml_files;
use cnpilot_reports::review::{self, html, md, term};

use super::diff::ColorChoice;
use crate::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned text for a terminal.
    Term,
    /// GitHub Markdown (a pull-request comment, a job summary).
    Md,
    /// One self-contained HTML file (inline CSS, no script, no external URL).
    Html,
    /// The review's data, for scripts.
    Json,
}

// The variant's doc comment in main.rs is the one-line about; clap
// lets it replace a struct doc comment, so the long help is here.
const REVIEW_LONG_HELP: &str =
    "Per policy and rule: the evidence (cnpilot.io/evidence.* annotations;
with --store, the flows each rule decides, recomputed), the blast radius
(annotation; with --store, every stored workload the selector matches),
and whether it is new against --current. With --store, every observed
flow is replayed through current + proposed: flows newly denied (allowed
today), newly allowed (denied today), denied without a listed reason;
never-seen probe flows must stay denied. Flows kept denied or below
--min-count come from PROPOSED/.cnpilot/report.json (written by
`cnpilot recommend`) when present, else are recomputed from --store.

Risk notes: a selector matching more than its subject, egress to world
(toCIDR, toEntities world), rules from fewer than 3 connections, HTTP
rules shadowed by a plain L3/L4 allow on the same peer and port (the
plain allow wins: the HTTP rules do nothing), rules no stored flow hits.
With --current: one-sided rules (one side allows, the other side's
default deny drops the flow), with the fix.

Exit status: 1 when a pipeline should stop (replay denials without a
listed reason, newly denied flows, shadowed HTTP rules, probes the
proposal allows), 0 otherwise, 2 on bad input.

Examples:

  cnpilot recommend --store /tmp/store --current cli/policies/seed --out /tmp/proposed
  cnpilot review --proposed /tmp/proposed --current cli/policies/seed --store /tmp/store
  cnpilot review --proposed /tmp/proposed --current cli/policies/seed --store /tmp/store \\
      --format html -o review.html";

const REVIEW_SHORT_HELP: &str = "Examples:

  cnpilot recommend --store /tmp/store --current cli/policies/seed --out /tmp/proposed
  cnpilot review --proposed /tmp/proposed --current cli/policies/seed --store /tmp/store
  cnpilot review --proposed /tmp/proposed --current cli/policies/seed --store /tmp/store \\
      --format html -o review.html\n\nMore with --help.";

/// Review proposed policies before applying them: evidence, blast radius,
/// what changes, risks, and what would break.
#[derive(Debug, Args)]
#[command(after_help = REVIEW_SHORT_HELP, after_long_help = REVIEW_LONG_HELP)]
pub struct ReviewArgs {
    /// Proposed policies: files or directories (repeatable).
    #[arg(long, required = true, value_name = "DIR")]
    proposed: Vec<PathBuf>,
    /// Policies applied today (repeatable).
    #[arg(long, value_name = "DIR")]
    current: Vec<PathBuf>,
    /// Flow store(s): replay, probes, recomputed evidence and blast radius.
    #[arg(long, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "term")]
    format: Format,
    /// Write to FILE instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Colour for --format term (auto: only on a terminal, never into a file).
    #[arg(long, value_enum, default_value = "auto")]
    color: ColorChoice,
    /// When kept-denied flows are recomputed (no report.json): the
    /// --min-count the proposal was made with.
    #[arg(long, default_value_t = 1, value_name = "N")]
    min_count: u64,
    /// When recomputed: the --l7 mode the proposal was made with.
    #[arg(long, default_value = "paths", value_name = "MODE")]
    l7: L7Mode,
}

/// Policy files under `paths`, hidden entries (such as `.cnpilot/`) skipped.
fn load(paths: &[PathBuf], flag: &str) -> anyhow::Result<PolicySet> {
    if paths.is_empty() {
        return Ok(PolicySet::default());
    }
    let files = yaml_files(paths).with_context(|| format!("reading {flag}"))?;
    if files.is_empty() {
        anyhow::bail!(
            "{flag}: no policy files (*.yaml, *.yml, *.json) in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    cnpilot_recommender::load_paths(&files).with_context(|| format!("loading {flag}"))
}

/// The first `.cnpilot/report.json` of the proposed directories.
fn saved_report(dirs: &[PathBuf]) -> anyhow::Result<Option<serde_json::Value>> {
    for dir in dirs {
        let path = Path::new(dir).join(".cnpilot").join("report.json");
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a cnpilot report", path.display()))?;
        return Ok(Some(value));
    }
    Ok(None)
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

pub fn run(args: ReviewArgs) -> anyhow::Result<Outcome> {
    let proposed = load(&args.proposed, "--proposed")?;
    let current = load(&args.current, "--current")?;
    let table = if args.store.is_empty() {
        None
    } else {
        for dir in &args.store {
            if !dir.is_dir() {
                anyhow::bail!("{}: no such flow store directory", dir.display());
            }
        }
        Some(learn(&args.store, &LearnOptions::default()).context("reading --store")?)
    };
    let input = review::Input {
        proposed: &proposed,
        proposed_dirs: names(&args.proposed),
        current: &current,
        current_dirs: names(&args.current),
        table: table.as_ref(),
        stores: names(&args.store),
        saved: saved_report(&args.proposed)?,
        options: Options {
            l7: args.l7,
            min_count: args.min_count,
            ..Options::default()
        },
    };
    let r = review::build(&input);
    let color =
        (args.output.is_none() && args.color.enabled()) || args.color == ColorChoice::Always;
    let text = match args.format {
        Format::Term => term::render(&r, color),
        Format::Md => md::render(&r),
        Format::Html => html::render(&r),
        Format::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({})",
                path.display(),
                if r.should_stop() {
                    format!("STOP: {}", r.summary.stop_reasons.join("; "))
                } else {
                    "OK".to_string()
                }
            );
        }
        None => print!("{text}"),
    }
    Ok(if r.should_stop() {
        Outcome::Finding
    } else {
        Outcome::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_report_directories_are_not_loaded_as_policies() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".cnpilot")).expect("mkdir");
        std::fs::write(
            dir.path().join(".cnpilot/report.json"),
            "{\"excluded\": []}",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("p.yaml"),
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n",
        )
        .expect("write");
        let set = load(&[dir.path().to_path_buf()], "--proposed").expect("loads");
        assert_eq!(set.policies.len(), 1);
        let saved = saved_report(&[dir.path().to_path_buf()]).expect("reads");
        assert!(saved.is_some_and(|v| v["excluded"].is_array()));
        assert!(load(&[dir.path().join(".cnpilot")], "--proposed").is_err());
    }
}
