//! `cnpilot import hubble` and `cnpilot learn`: thin wrappers over
//! `cnpilot_learner::{hubble, aggregate}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use cnpilot_learner::aggregate::{self, format_time, FlowSummary, FlowTable, LearnOptions};
use cnpilot_learner::hubble::{self, ImportSummary, Input};
use cnpilot_learner::record::proto_name;
use cnpilot_learner::FlowStore;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Outcome;

/// Inputs at least this large (in total) get a progress bar.
const PROGRESS_MIN_BYTES: u64 = 16 << 20;
/// Stores with at least this many records get a progress bar in `learn`.
const PROGRESS_MIN_RECORDS: usize = 1_000_000;

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Hubble flows: `hubble observe -o json` / `-o jsonpb` output (also the
    /// legacy bare-flow json) and Hubble exporter files, plain or gzip.
    /// Lines that are not usable flows (replies, node_status, malformed JSON
    /// …) are counted per reason and skipped. Exits 0 when anything was
    /// imported, 2 when nothing was.
    Hubble(ImportHubbleArgs),
}

#[derive(Debug, Args)]
pub struct ImportHubbleArgs {
    /// Files to read; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<String>,
    /// Flow store directory (created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Summary format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: SummaryFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SummaryFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LearnFormat {
    Table,
    Json,
    Parquet,
}

#[derive(Debug, Args)]
pub struct LearnArgs {
    /// Flow store directory; repeat to read several nodes' stores together.
    #[arg(long, required = true, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Only flows seen since this time: RFC 3339 (`2026-01-02T10:00:00Z`)
    /// or a duration back from now (`30m`, `2h`, `7d`).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Output: a table for people, JSON rows, or a Parquet file (`--out`).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: LearnFormat,
    /// File to write with `-o parquet`.
    #[arg(long, value_name = "FILE", required_if_eq("output", "parquet"))]
    out: Option<PathBuf>,
}

pub fn run_import(cmd: ImportCommand) -> anyhow::Result<Outcome> {
    let ImportCommand::Hubble(args) = cmd;
    let inputs: Vec<Input> = args.files.iter().map(|f| Input::parse(f)).collect();
    for input in &inputs {
        if let Input::File(path) = input {
            if !path.is_file() {
                bail!("{}: no such file", path.display());
            }
        }
    }
    let total: u64 = inputs.iter().filter_map(Input::size).sum();
    let bar = if total >= PROGRESS_MIN_BYTES {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut store = FlowStore::open(&args.store)
        .with_context(|| format!("opening flow store {}", args.store.display()))?;
    let progress = bar.clone();
    let summary = hubble::import(&inputs, &mut store, Arc::new(move |n| progress.inc(n)))?;
    store.close()?;
    bar.finish_and_clear();
    match args.output {
        SummaryFormat::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        SummaryFormat::Text => print_import_summary(&summary, &args.store),
    }
    if summary.records == 0 {
        bail!(
            "no usable flow in {} line(s) of {} input(s) ({} skipped)",
            summary.lines,
            summary.inputs,
            summary.skipped_total()
        );
    }
    Ok(Outcome::Success)
}

fn print_import_summary(summary: &ImportSummary, store: &std::path::Path) {
    println!(
        "imported {} flow record(s) ({} new connection(s)/request(s)) from {} line(s) of {} input(s) into {}",
        summary.records,
        summary.connections,
        summary.lines,
        summary.inputs,
        store.display()
    );
    if !summary.skipped.is_empty() {
        println!("skipped {} line(s):", summary.skipped_total());
        let mut reasons: Vec<_> = summary.skipped.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in reasons {
            println!("  {n:>8}  {reason}");
        }
    }
}

/// `--since` / `--until`: RFC 3339, or a duration back from now.
pub fn parse_time(flag: &str, text: Option<&str>) -> anyhow::Result<Option<i64>> {
    let Some(text) = text else { return Ok(None) };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    aggregate::parse_since(text, now)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{flag} {e}"))
}

/// The flow table of some stores, with a progress bar when stderr is a
/// terminal and the stores are big enough for the wait to be noticed.
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
        if total >= PROGRESS_MIN_RECORDS {
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

pub fn run_learn(args: LearnArgs) -> anyhow::Result<Outcome> {
    let options = LearnOptions {
        since_ns: parse_time("--since", args.since.as_deref())?,
        until_ns: None,
    };
    let table = learn_table(&args.store, &options)?;
    match args.output {
        LearnFormat::Json => println!("{}", serde_json::to_string_pretty(&table.rows)?),
        LearnFormat::Parquet => {
            let out = args.out.context("-o parquet needs --out FILE")?;
            table
                .write_parquet(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} row(s) to {}", table.rows.len(), out.display());
        }
        LearnFormat::Table => print_table(&table),
    }
    Ok(Outcome::Success)
}

fn peer_name(namespace: &str, workload: &str, identity: u32) -> String {
    match (namespace.is_empty(), workload.is_empty()) {
        (false, _) => format!("{namespace}/{workload}"),
        (true, false) => workload.to_string(),
        // Identity 0 is no identity: the source recorded nothing about this
        // peer (a field-masked Hubble export, say).
        (true, true) if identity == 0 => "(unknown)".to_string(),
        (true, true) => format!("identity:{identity}"),
    }
}

fn row_cells(r: &FlowSummary) -> [String; 8] {
    let dst = if r.dst_peer.contains('/') {
        format!("{} {}", r.dst_workload, r.dst_peer)
    } else {
        peer_name(&r.dst_namespace, &r.dst_workload, r.dst_identity)
    };
    let l7 = match (&r.l7_protocol, &r.l7_method, &r.path_template) {
        (Some(_), Some(m), Some(p)) => format!("{m} {p}"),
        (Some(proto), Some(m), None) => format!("{proto} {m}"),
        (Some(proto), None, _) => proto.clone(),
        _ => "-".into(),
    };
    let verdicts = r
        .verdicts
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    [
        format!(
            "{} ({})",
            peer_name(&r.src_namespace, &r.src_workload, r.src_identity),
            r.src_identity
        ),
        format!("{} ({})", dst, r.dst_identity),
        format!("{}/{}", proto_name(r.proto), r.dst_port),
        l7,
        r.connections.to_string(),
        verdicts,
        r.nodes.len().to_string(),
        format_time(r.last_seen_ns),
    ]
}

fn print_table(table: &FlowTable) {
    let header = [
        "SOURCE",
        "DESTINATION",
        "PORT",
        "L7",
        "CONNS",
        "VERDICTS",
        "NODES",
        "LAST SEEN",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = table.rows.iter().map(row_cells).collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    println!(
        "{} row(s) from {} record(s) in {} segment(s); {} row(s) with drops or would-drops",
        table.rows.len(),
        table.scan.rows,
        table.scan.segments,
        table.would_drops()
    );
}

#[cfg(test)]
mod tests {
    use super::peer_name;

    #[test]
    fn peers_are_named_by_workload_then_identity_and_never_as_identity_zero() {
        assert_eq!(peer_name("web", "frontend-app", 3855), "web/frontend-app");
        assert_eq!(peer_name("", "cnp-node", 1), "cnp-node");
        assert_eq!(peer_name("", "", 12345), "identity:12345");
        assert_eq!(peer_name("", "", 0), "(unknown)");
    }
}
