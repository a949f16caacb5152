//! `cnpilot recommend`: least-privilege CNPs for what a flow store saw,
//! written as YAML, then proved on the evaluator (replay + probes) from
//! the files as written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use cnpilot_learner::aggregate::{self, FlowTable, LearnOptions};
use cnpilot_recommender::model::PolicySet;
use cnpilot_recommender::proof::{probes, replay, Evaluators};
use cnpilot_recommender::synth::{self, emit, L7Mode, Options, Recommendation, Universe};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::Outcome;

/// Where the machine-readable report goes, inside `--out` (hidden, so
/// `kubectl apply -f DIR` and the policy loader skip it).
pub const REPORT_DIR: &str = ".cnpilot";
pub const REPORT_FILE: &str = "report.json";

/// Least-privilege CiliumNetworkPolicies for everything a flow store
/// observed, and nothing else, with the evidence of every rule.
///
/// One CNP per workload (namespace + the smallest selector that matches
/// exactly it), holding both directions, in default deny both ways. HTTP
/// ports get method + path rules. With `--current`, sides that current
/// policy already allows get no new rule, and what it denies on purpose
/// stays denied (listed). After writing, the files are proved: replay
/// (every observed flow through current + proposed: allowed, or listed
/// as an exception) and probes (never-seen flows: all denied).
///
/// Exit 0: written and proved; 1: written, but a proof failed (an
/// observed flow denied without a listed reason, or a probe allowed by the
/// proposal); 2: bad input.
///
/// Examples:
///
///   cnpilot recommend --store /var/lib/cnpilot/store --out proposed/
///
///   cnpilot recommend --store s1 --store s2 --current policies/ --out proposed/ --l7 methods --min-count 3
#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// Flow store directory; repeat to learn from several nodes' stores.
    #[arg(long, required = true, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Policies applied today (files or directories of CNP/CCNP YAML).
    #[arg(long, value_name = "DIR")]
    current: Vec<PathBuf>,
    /// Output directory for the proposed YAML (created; earlier cnpilot
    /// output in it is replaced, other files are refused).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// HTTP rules: `paths` (method + path, the default), `methods` (any
    /// path), `off` (L4 only).
    #[arg(long, default_value = "paths", value_name = "MODE")]
    l7: L7Mode,
    /// Flows seen fewer times become listed exceptions, not rules.
    #[arg(long, default_value_t = 1, value_name = "N")]
    min_count: u64,
    /// Aggregate world addresses to /N prefixes (default: /32s, merged
    /// only where every address of a prefix was seen).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(8..=32))]
    cidr_prefix: Option<u8>,
    /// Only flows since: RFC 3339 or a duration back from now (`2h`, `7d`).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Only flows before: RFC 3339 or a duration back from now.
    #[arg(long, value_name = "T")]
    until: Option<String>,
    /// Only propose policies for subjects in these namespaces (repeat).
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    namespaces: Vec<String>,
    /// Also allow flows that current policy denies on both sides (they
    /// are kept denied and listed otherwise).
    #[arg(long)]
    allow_denied: bool,
    /// Summary format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// What `--out DIR/.cnpilot/report.json` and `-o json` hold.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub stores: Vec<String>,
    pub flows: usize,
    pub connections: u64,
    pub policies: &'a [emit::Proposed],
    pub excluded: &'a [synth::Exclusion],
    pub already_allowed: usize,
    pub warnings: &'a [String],
    pub replay: &'a replay::ReplayReport,
    pub probes: &'a probes::ProbeReport,
    pub ok: bool,
}

fn parse_time(flag: &str, text: &Option<String>) -> anyhow::Result<Option<i64>> {
    let Some(text) = text else { return Ok(None) };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    aggregate::parse_since(text, now)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{flag} {e}"))
}

/// Learn the table with a progress bar on big stores.
pub fn learn_table(stores: &[PathBuf], options: &LearnOptions) -> anyhow::Result<FlowTable> {
    for dir in stores {
        if !dir.is_dir() {
            bail!("{}: no such flow store directory", dir.display());
        }
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} learning [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |done: usize, total: usize| {
        if total >= 1_000_000 {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    };
    let table = aggregate::learn_with_progress(stores, options, &progress)?;
    bar.finish_and_clear();
    for (path, reason) in &table.scan.skipped {
        eprintln!(
            "cnpilot: warning: skipped unreadable segment {}: {reason}",
            path.display()
        );
    }
    Ok(table)
}

const GENERATED_HEADER: &str = "# Generated by `cnpilot recommend`";

/// Make `out` ready: create it, remove earlier cnpilot output, refuse to
/// mix with files cnpilot did not write.
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out.join(REPORT_DIR))
        .with_context(|| format!("creating {}", out.display()))?;
    let mut foreign = Vec::new();
    let mut ours = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let path = entry?.path();
        let is_yaml = path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if !is_yaml {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.starts_with(GENERATED_HEADER) {
            ours.push(path);
        } else {
            foreign.push(path);
        }
    }
    if !foreign.is_empty() {
        bail!(
            "{} holds policy files cnpilot did not write ({}); choose an empty --out directory",
            out.display(),
            foreign
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for path in ours {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Run the synthesis and write the files; returns the recommendation and
/// the proposed policies as loaded back from disk.
pub fn recommend_to_dir(
    table: &FlowTable,
    current: &PolicySet,
    options: &Options,
    out: &Path,
) -> anyhow::Result<(Recommendation, PolicySet)> {
    let rec = synth::recommend(table, current, options);
    prepare_out(out)?;
    for p in &rec.policies {
        let text = emit::render(p).context("rendering a proposed policy")?;
        let path = out.join(&p.file_name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    // The proofs run on the files as written, not on the in-memory copy.
    let proposed = if rec.policies.is_empty() {
        PolicySet::default()
    } else {
        cnpilot_recommender::load_paths(&[out])
            .with_context(|| format!("loading the proposal back from {}", out.display()))?
    };
    Ok((rec, proposed))
}

pub fn run(args: RecommendArgs) -> anyhow::Result<Outcome> {
    let options = LearnOptions {
        since_ns: parse_time("--since", &args.since)?,
        until_ns: parse_time("--until", &args.until)?,
    };
    let current = if args.current.is_empty() {
        PolicySet::default()
    } else {
        cnpilot_recommender::load_paths(&args.current).context("loading --current policies")?
    };
    for w in &current.warnings {
        eprintln!("cnpilot: warning: {w}");
    }
    let table = learn_table(&args.store, &options)?;
    if table.rows.is_empty() {
        bail!(
            "no flows in {} (record some first: `cnpilot record --duration 1m --store DIR`)",
            args.store
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let synth_options = Options {
        l7: args.l7,
        min_count: args.min_count,
        cidr_prefix: args.cidr_prefix,
        namespaces: args.namespaces.clone(),
        allow_denied: args.allow_denied,
    };
    let (rec, proposed) = recommend_to_dir(&table, &current, &synth_options, &args.out)?;
    let universe = Universe::from_table(&table);
    let ev = Evaluators::new(&universe, &current, &proposed);
    let replayed = replay::replay(&table, &universe, &ev, &rec.excluded);
    let probed = probes::probes(&table, &universe, &ev);
    let ok = replayed.unexpected == 0 && probed.allowed_by_proposal.is_empty();
    let report = Report {
        stores: args.store.iter().map(|p| p.display().to_string()).collect(),
        flows: table.rows.len(),
        connections: table.rows.iter().map(|r| r.connections).sum(),
        policies: &rec.policies,
        excluded: &rec.excluded,
        already_allowed: rec.already_allowed,
        warnings: &rec.warnings,
        replay: &replayed,
        probes: &probed,
        ok,
    };
    let json = serde_json::to_string_pretty(&report)?;
    let report_path = args.out.join(REPORT_DIR).join(REPORT_FILE);
    std::fs::write(&report_path, &json)
        .with_context(|| format!("writing {}", report_path.display()))?;
    match args.output {
        Format::Json => println!("{json}"),
        Format::Text => print_summary(&report, &args.out),
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}

fn print_summary(r: &Report<'_>, out: &Path) {
    let rules: usize = r
        .policies
        .iter()
        .map(|p| p.rules.iter().filter(|e| !e.default_deny_only).count())
        .sum();
    let wide: Vec<&emit::Proposed> = r.policies.iter().filter(|p| !p.exact).collect();
    println!(
        "learned {} flows ({} connections/requests) from {}",
        r.flows,
        r.connections,
        r.stores.join(", ")
    );
    println!(
        "proposed {} policies with {} rules in {} ({} selectors exact{})",
        r.policies.len(),
        rules,
        out.display(),
        r.policies.len() - wide.len(),
        if wide.is_empty() {
            String::new()
        } else {
            format!(
                ", {} wider: {}",
                wide.len(),
                wide.iter()
                    .map(|p| format!("{} selects {}", p.subject, p.blast_radius.join("+")))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    for p in r.policies {
        println!("  {:<40} {}", p.file_name, p.subject);
    }
    if r.already_allowed > 0 {
        println!(
            "{} flows already allowed by current policy on every side they need",
            r.already_allowed
        );
    }
    let mut by_reason: BTreeMap<&'static str, Vec<&synth::Exclusion>> = BTreeMap::new();
    for e in r.excluded {
        let key = match &e.disposition {
            synth::Disposition::KeptDenied { .. } => {
                "kept denied (current policy denies both sides)"
            }
            synth::Disposition::DeniedByRule { .. } => "denied by a current deny rule",
            synth::Disposition::L7DeniedByCurrent { .. } => "denied by current HTTP rules",
            synth::Disposition::BelowMinCount { .. } => "below --min-count (exceptions)",
            synth::Disposition::OutOfScope => "outside --namespace",
            synth::Disposition::Unsupported { .. } => "not expressible yet",
        };
        by_reason.entry(key).or_default().push(e);
    }
    for (reason, list) in &by_reason {
        println!("{reason}: {}", list.len());
        for e in list {
            println!(
                "  {:<70} x{:<6} {}",
                e.flow.to_string(),
                e.flow.connections,
                e.disposition.describe()
            );
        }
    }
    for w in r.warnings {
        println!("warning: {w}");
    }
    let rp = r.replay;
    println!(
        "replay: {}/{} observed flows allowed ({:.1}% of connections); {} denied as listed above, {} denied unexpectedly",
        rp.allowed_flows,
        rp.flows,
        rp.allowed_percent(),
        rp.denied.len() - rp.unexpected,
        rp.unexpected
    );
    for d in rp.denied.iter().filter(|d| d.expected.is_none()) {
        println!("  UNEXPECTED {}: {}", d.flow, d.reason);
    }
    let pr = r.probes;
    println!(
        "probes: {} never-seen flows, {} denied ({:.1}%); {} allowed by the proposal, {} allowed by current policy or no policy",
        pr.total,
        pr.denied,
        pr.denied_percent(),
        pr.allowed_by_proposal.len(),
        pr.allowed_otherwise.len()
    );
    for p in &pr.allowed_by_proposal {
        println!("  ALLOWED {}: {}", p.flow, p.allowed_by);
    }
    println!(
        "{}",
        if r.ok {
            "proof: OK (review with `cnpilot review --proposed DIR --store …`)"
        } else {
            "proof: FAILED (see above)"
        }
    );
}
