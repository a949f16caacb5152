//! The aggregated flow table: one row per (source identity, destination
//! identity / entity / CIDR, protocol, port, L7 method + path template).
//!
//! polars reads the store lazily (one segment per query, projected to the
//! columns used, the `since` filter pushed into the Parquet reader, one
//! worker per core) and a hash fold over the decoded columns
//! ([`columnar`]) builds the table: path templating, verdict counts, nodes
//! and the raw paths kept as evidence. [`groupby`] is the first version (a
//! polars `group_by` on every raw key), kept as the benchmark baseline and
//! a cross-check.

mod columnar;
pub mod groupby;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use polars::prelude::*;
use serde::Serialize;
use thiserror::Error;

use crate::identity::Labels;
use crate::record::columns as c;
use crate::store::{self, ScanReport, StoreError};

/// At most this many raw paths are kept per row as evidence.
pub const MAX_EVIDENCE_PATHS: usize = 20;

#[derive(Debug, Error)]
pub enum LearnError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("aggregating flows: {0}")]
    Polars(#[from] PolarsError),
    #[error("aggregating flows: a worker thread panicked")]
    WorkerPanicked,
}

#[derive(Debug, Clone, Default)]
pub struct LearnOptions {
    /// Only records whose window starts at or after this Unix ns.
    pub since_ns: Option<i64>,
    /// Only records whose window starts before this Unix ns.
    pub until_ns: Option<i64>,
}

/// One aggregated row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowSummary {
    pub src_identity: u32,
    pub src_namespace: String,
    pub src_workload: String,
    pub src_labels: Labels,
    pub dst_identity: u32,
    pub dst_namespace: String,
    pub dst_workload: String,
    pub dst_labels: Labels,
    /// For world / CIDR destinations, the address as a /32 or /128 CIDR;
    /// for other reserved destinations, the entity name; else empty.
    pub dst_peer: String,
    pub proto: u8,
    pub dst_port: u16,
    pub l7_protocol: Option<String>,
    pub l7_method: Option<String>,
    pub path_template: Option<String>,
    /// Connections / requests (sum of record counts).
    pub connections: u64,
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    /// Records (observations) per verdict.
    pub verdicts: BTreeMap<String, u64>,
    pub nodes: BTreeSet<String>,
    /// Raw distinct paths behind the template (evidence), capped.
    pub paths: BTreeSet<String>,
    /// HTTP records (requests) whose target carried a query string: a
    /// rule must then match `path?query`, as Envoy matches `:path`.
    pub with_query: u64,
}

/// Source, destination, then service (proto, port, L7): tuples are `Ord`
/// only up to 12 members.
pub(crate) type SummaryKey = (
    (u32, String, String, String),
    (u32, String, String, String, String),
    (u8, u16, Option<String>, Option<String>, Option<String>),
);

/// What DNS told one workload about one name: an address it was given,
/// over every answer seen (the recommender's evidence for `toFQDNs`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DnsAnswerSummary {
    /// The workload that asked (the source of the query).
    pub src_identity: u32,
    pub src_namespace: String,
    pub src_workload: String,
    /// The query name, without the trailing dot.
    pub name: String,
    pub ip: IpAddr,
    /// When an answer holding `ip` was first and last seen (Unix ns).
    pub first_answered_ns: i64,
    pub last_answered_ns: i64,
    /// The largest TTL among those answers, in seconds.
    pub ttl: u32,
    /// Answers holding `ip`.
    pub answers: u64,
}

/// The result of [`learn`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlowTable {
    pub rows: Vec<FlowSummary>,
    /// Every DNS answer address, per asking workload and name, sorted.
    /// The DNS records themselves are rows too (the lookups).
    pub dns: Vec<DnsAnswerSummary>,
    #[serde(skip)]
    pub scan: ScanReport,
}

/// Aggregate every store directory into the flow table.
pub fn learn(dirs: &[PathBuf], options: &LearnOptions) -> Result<FlowTable, LearnError> {
    learn_with_progress(dirs, options, &|_, _| {})
}

/// [`learn`], calling `progress(rows_done, rows_total)` after each segment
/// is folded (totals come from the segments' footers).
///
/// Segments are read by one worker per core: each runs a lazy polars scan
/// of one segment at a time (projection, and the `since` filter pushed into
/// the Parquet reader) and folds the decoded columns into its own partial
/// table; the partial tables are merged at the end. Memory is bounded by
/// one segment per worker plus the partial tables (one entry per distinct
/// row of the result).
pub fn learn_with_progress(
    dirs: &[PathBuf],
    options: &LearnOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<FlowTable, LearnError> {
    let (paths, scan) = store::readable_segments(dirs, options.since_ns)?;
    let done = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, paths.len().max(1));
    let next = AtomicUsize::new(0);
    type Partial = (Vec<FlowSummary>, Vec<DnsAnswerSummary>);
    let partials: Vec<Result<Partial, LearnError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<Partial, LearnError> {
                    let mut folder = columnar::Folder::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(i) else { break };
                        let lf = store::lazy_segments(std::slice::from_ref(path))?;
                        let lf = match options.since_ns {
                            Some(since) => lf.filter(col(c::WINDOW_START_NS).gt_eq(lit(since))),
                            None => lf,
                        };
                        let lf = match options.until_ns {
                            Some(until) => lf.filter(col(c::WINDOW_START_NS).lt(lit(until))),
                            None => lf,
                        };
                        let df = lf
                            .select(
                                columnar::COLUMNS
                                    .iter()
                                    .map(|n| col(*n))
                                    .collect::<Vec<_>>(),
                            )
                            .collect()?;
                        folder.fold(&df)?;
                        let rows = store::segment_rows(path).unwrap_or(df.height());
                        let so_far = done.fetch_add(rows, Ordering::Relaxed) + rows;
                        progress(so_far, scan.rows);
                    }
                    Ok(folder.into_summaries())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(LearnError::WorkerPanicked)))
            .collect()
    });
    let mut rows: BTreeMap<SummaryKey, FlowSummary> = BTreeMap::new();
    let mut dns: BTreeMap<(u32, String, IpAddr), DnsAnswerSummary> = BTreeMap::new();
    for partial in partials {
        let (summaries, answers) = partial?;
        for summary in summaries {
            merge_into(&mut rows, summary);
        }
        for answer in answers {
            merge_answer(&mut dns, answer);
        }
    }
    Ok(FlowTable {
        rows: rows.into_values().collect(),
        dns: dns.into_values().collect(),
        scan,
    })
}

fn key_of(s: &FlowSummary) -> SummaryKey {
    (
        (
            s.src_identity,
            s.src_namespace.clone(),
            s.src_workload.clone(),
            s.src_labels.to_canonical(),
        ),
        (
            s.dst_identity,
            s.dst_namespace.clone(),
            s.dst_workload.clone(),
            s.dst_labels.to_canonical(),
            s.dst_peer.clone(),
        ),
        (
            s.proto,
            s.dst_port,
            s.l7_protocol.clone(),
            s.l7_method.clone(),
            s.path_template.clone(),
        ),
    )
}

/// Add a partial row to the table (sums, min/max times, verdict counts,
/// node union, the smallest evidence paths).
pub(crate) fn merge_into(rows: &mut BTreeMap<SummaryKey, FlowSummary>, part: FlowSummary) {
    use std::collections::btree_map::Entry;
    match rows.entry(key_of(&part)) {
        Entry::Vacant(slot) => {
            slot.insert(part);
        }
        Entry::Occupied(mut slot) => {
            let row = slot.get_mut();
            row.connections += part.connections;
            row.records += part.records;
            row.packets += part.packets;
            row.bytes += part.bytes;
            row.first_seen_ns = row.first_seen_ns.min(part.first_seen_ns);
            row.last_seen_ns = row.last_seen_ns.max(part.last_seen_ns);
            for (verdict, n) in part.verdicts {
                *row.verdicts.entry(verdict).or_default() += n;
            }
            row.nodes.extend(part.nodes);
            row.paths.extend(part.paths);
            cap_evidence(&mut row.paths);
            row.with_query += part.with_query;
        }
    }
}

/// Add a partial answer summary (one worker's) to the table's.
pub(crate) fn merge_answer(
    answers: &mut BTreeMap<(u32, String, IpAddr), DnsAnswerSummary>,
    part: DnsAnswerSummary,
) {
    use std::collections::btree_map::Entry;
    match answers.entry((part.src_identity, part.name.clone(), part.ip)) {
        Entry::Vacant(slot) => {
            slot.insert(part);
        }
        Entry::Occupied(mut slot) => {
            let a = slot.get_mut();
            a.first_answered_ns = a.first_answered_ns.min(part.first_answered_ns);
            a.last_answered_ns = a.last_answered_ns.max(part.last_answered_ns);
            a.ttl = a.ttl.max(part.ttl);
            a.answers += part.answers;
        }
    }
}

/// Keep the `MAX_EVIDENCE_PATHS` smallest paths.
pub(crate) fn cap_evidence(paths: &mut BTreeSet<String>) {
    while paths.len() > MAX_EVIDENCE_PATHS {
        paths.pop_last();
    }
}

impl FlowTable {
    /// Rows whose connections include a would-drop or a drop.
    pub fn would_drops(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.verdicts.keys().any(|v| v != "forwarded"))
            .count()
    }

    /// The table as a frame (for `-o parquet`); sets are comma-joined,
    /// verdicts as `verdict=count`.
    pub fn to_frame(&self) -> PolarsResult<DataFrame> {
        let r = &self.rows;
        let col_u32 = |n: &str, f: &dyn Fn(&FlowSummary) -> u32| {
            Column::new(n.into(), r.iter().map(f).collect::<Vec<_>>())
        };
        let col_u64 = |n: &str, f: &dyn Fn(&FlowSummary) -> u64| {
            Column::new(n.into(), r.iter().map(f).collect::<Vec<_>>())
        };
        let col_i64 = |n: &str, f: &dyn Fn(&FlowSummary) -> i64| {
            Column::new(n.into(), r.iter().map(f).collect::<Vec<_>>())
        };
        let col_s = |n: &str, f: &dyn Fn(&FlowSummary) -> String| {
            Column::new(n.into(), r.iter().map(f).collect::<Vec<_>>())
        };
        let col_os = |n: &str, f: &dyn Fn(&FlowSummary) -> Option<String>| {
            Column::new(n.into(), r.iter().map(f).collect::<Vec<_>>())
        };
        let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(",");
        DataFrame::new(
            r.len(),
            vec![
                col_u32("src_identity", &|x| x.src_identity),
                col_s("src_namespace", &|x| x.src_namespace.clone()),
                col_s("src_workload", &|x| x.src_workload.clone()),
                col_s("src_labels", &|x| x.src_labels.to_canonical()),
                col_u32("dst_identity", &|x| x.dst_identity),
                col_s("dst_namespace", &|x| x.dst_namespace.clone()),
                col_s("dst_workload", &|x| x.dst_workload.clone()),
                col_s("dst_labels", &|x| x.dst_labels.to_canonical()),
                col_s("dst_peer", &|x| x.dst_peer.clone()),
                col_u32("proto", &|x| u32::from(x.proto)),
                col_u32("dst_port", &|x| u32::from(x.dst_port)),
                col_os("l7_protocol", &|x| x.l7_protocol.clone()),
                col_os("l7_method", &|x| x.l7_method.clone()),
                col_os("path_template", &|x| x.path_template.clone()),
                col_u64("connections", &|x| x.connections),
                col_u64("records", &|x| x.records),
                col_u64("packets", &|x| x.packets),
                col_u64("bytes", &|x| x.bytes),
                col_i64("first_seen_ns", &|x| x.first_seen_ns),
                col_i64("last_seen_ns", &|x| x.last_seen_ns),
                col_s("verdicts", &|x| {
                    x.verdicts
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
                col_s("nodes", &|x| join(&x.nodes)),
                col_s("paths", &|x| join(&x.paths)),
                col_u64("with_query", &|x| x.with_query),
            ],
        )
    }
}

/// `--since`: RFC 3339, or a duration back from `now_ns` (`30s`, `15m`,
/// `2h`, `7d`).
pub fn parse_since(text: &str, now_ns: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| format!("`{text}` is out of range"));
    }
    let expected = || {
        format!("`{text}`: expected an RFC 3339 time (2026-01-01T00:00:00Z) or a duration like 30s, 15m, 2h, 7d")
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(expected()),
    };
    Ok(now_ns - number.saturating_mul(seconds).saturating_mul(1_000_000_000))
}

/// Unix ns as RFC 3339 UTC with seconds (`2026-01-02T10:00:00Z`).
pub fn format_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl FlowTable {
    /// Write the table as one Parquet file.
    pub fn write_parquet(&self, path: &std::path::Path) -> Result<(), LearnError> {
        let mut df = self.to_frame()?;
        let file = std::fs::File::create(path).map_err(|e| StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        ParquetWriter::new(file).finish(&mut df)?;
        Ok(())
    }
}
