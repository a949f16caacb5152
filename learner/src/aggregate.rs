//! The aggregated flow table: one row per (source identity, destination
//! identity / entity / CIDR, protocol, port, L7 method + path template).
//!
//! Stage 1 is a lazy polars query over every segment (projection and the
//! `since` filter pushed into the scan) that groups by the raw key (raw path,
//! verdict and node included): this is where millions of records become
//! thousands of rows. Stage 2 folds those rows in Rust, where the path
//! templating lives, into the final table with verdict counts, nodes and the
//! raw paths kept as evidence.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use polars::prelude::*;
use serde::Serialize;
use thiserror::Error;

use crate::identity::{is_cidr_identity, Labels, ReservedIdentity};
use crate::pathtemplate;
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
}

#[derive(Debug, Clone, Default)]
pub struct LearnOptions {
    /// Only records whose window starts at or after this Unix ns.
    pub since_ns: Option<i64>,
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
}

/// Source, destination, then service (proto, port, L7): tuples are `Ord`
/// only up to 12 members.
type SummaryKey = (
    (u32, String, String, String),
    (u32, String, String, String, String),
    (u8, u16, Option<String>, Option<String>, Option<String>),
);

/// The result of [`learn`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlowTable {
    pub rows: Vec<FlowSummary>,
    #[serde(skip)]
    pub scan: ScanReport,
}

fn dst_peer_expr() -> Expr {
    let id = col(c::DST_IDENTITY);
    let world_like = id
        .clone()
        .eq(lit(ReservedIdentity::World.number()))
        .or(id.gt_eq(lit((1u32 << 24) - 1)));
    when(world_like)
        .then(col(c::DST_IP).fill_null(lit("")))
        .otherwise(lit(""))
        .alias("dst_peer")
}

/// Stage 1: the lazy query.
pub fn stage1(lf: LazyFrame, options: &LearnOptions) -> LazyFrame {
    let lf = match options.since_ns {
        Some(since) => lf.filter(col(c::WINDOW_START_NS).gt_eq(lit(since))),
        None => lf,
    };
    let keys = [
        c::SRC_IDENTITY,
        c::SRC_NAMESPACE,
        c::SRC_WORKLOAD,
        c::SRC_LABELS,
        c::DST_IDENTITY,
        c::DST_NAMESPACE,
        c::DST_WORKLOAD,
        c::DST_LABELS,
        "dst_peer",
        c::PROTO,
        c::DST_PORT,
        c::L7_PROTOCOL,
        c::L7_METHOD,
        c::L7_PATH,
        c::VERDICT,
        c::NODE,
    ];
    lf.with_column(dst_peer_expr())
        .group_by(keys.iter().map(|k| col(*k)).collect::<Vec<_>>())
        .agg([
            col(c::COUNT).sum().alias("connections"),
            len().alias("records"),
            col(c::PACKETS).sum().alias("packets"),
            col(c::BYTES).sum().alias("bytes"),
            col(c::WINDOW_START_NS).min().alias("first_seen_ns"),
            col(c::WINDOW_END_NS).max().alias("last_seen_ns"),
        ])
}

/// Segments per polars query: the in-memory engine materialises the key
/// columns of every row it groups, so the store is aggregated a few
/// segments (≤ 4 × 500k rows) at a time and the partial groups are folded
/// together; peak memory then depends on the segment size, not the store's.
pub const SEGMENTS_PER_QUERY: usize = 4;

/// Aggregate every store directory into the flow table.
pub fn learn(dirs: &[PathBuf], options: &LearnOptions) -> Result<FlowTable, LearnError> {
    let (paths, scan) = store::readable_segments(dirs, options.since_ns)?;
    let mut rows = BTreeMap::new();
    for chunk in paths.chunks(SEGMENTS_PER_QUERY) {
        let grouped = stage1(store::lazy_segments(chunk)?, options).collect()?;
        fold_into(&mut rows, &grouped)?;
    }
    Ok(FlowTable {
        rows: rows.into_values().collect(),
        scan,
    })
}

fn strs(df: &DataFrame, name: &str) -> PolarsResult<StringChunked> {
    Ok(df.column(name)?.str()?.clone())
}

/// Stage 2: template paths and fold rows sharing a final key.
pub fn fold(df: &DataFrame) -> PolarsResult<FlowTable> {
    let mut rows = BTreeMap::new();
    fold_into(&mut rows, df)?;
    Ok(FlowTable {
        rows: rows.into_values().collect(),
        scan: ScanReport::default(),
    })
}

fn fold_into(rows: &mut BTreeMap<SummaryKey, FlowSummary>, df: &DataFrame) -> PolarsResult<()> {
    let u32s = |name: &str| -> PolarsResult<UInt32Chunked> { Ok(df.column(name)?.u32()?.clone()) };
    let u64s = |name: &str| -> PolarsResult<UInt64Chunked> {
        Ok(df.column(name)?.cast(&DataType::UInt64)?.u64()?.clone())
    };
    let i64s = |name: &str| -> PolarsResult<Int64Chunked> { Ok(df.column(name)?.i64()?.clone()) };
    let (src_id, dst_id, proto, port) = (
        u32s(c::SRC_IDENTITY)?,
        u32s(c::DST_IDENTITY)?,
        u32s(c::PROTO)?,
        u32s(c::DST_PORT)?,
    );
    let (src_ns, src_wl, src_lb) = (
        strs(df, c::SRC_NAMESPACE)?,
        strs(df, c::SRC_WORKLOAD)?,
        strs(df, c::SRC_LABELS)?,
    );
    let (dst_ns, dst_wl, dst_lb, dst_peer) = (
        strs(df, c::DST_NAMESPACE)?,
        strs(df, c::DST_WORKLOAD)?,
        strs(df, c::DST_LABELS)?,
        strs(df, "dst_peer")?,
    );
    let (l7p, method, path, verdict, node) = (
        strs(df, c::L7_PROTOCOL)?,
        strs(df, c::L7_METHOD)?,
        strs(df, c::L7_PATH)?,
        strs(df, c::VERDICT)?,
        strs(df, c::NODE)?,
    );
    let (conns, records, packets, bytes) = (
        u64s("connections")?,
        u64s("records")?,
        u64s("packets")?,
        u64s("bytes")?,
    );
    let (first, last) = (i64s("first_seen_ns")?, i64s("last_seen_ns")?);

    let s = |ca: &StringChunked, i: usize| ca.get(i).unwrap_or_default().to_string();
    for i in 0..df.height() {
        let dst_identity = dst_id.get(i).unwrap_or_default();
        let mut peer = s(&dst_peer, i);
        if !peer.is_empty() && !peer.contains('/') {
            peer.push_str(if peer.contains(':') { "/128" } else { "/32" });
        }
        if peer.is_empty() && !is_cidr_identity(dst_identity) {
            if let Some(r) = ReservedIdentity::from_number(dst_identity) {
                peer = r.name().to_string();
            }
        }
        let raw_path = path.get(i).map(str::to_string);
        let template = raw_path
            .as_deref()
            .map(|p| pathtemplate::template(p).into_owned());
        let key: SummaryKey = (
            (
                src_id.get(i).unwrap_or_default(),
                s(&src_ns, i),
                s(&src_wl, i),
                s(&src_lb, i),
            ),
            (
                dst_identity,
                s(&dst_ns, i),
                s(&dst_wl, i),
                s(&dst_lb, i),
                peer,
            ),
            (
                proto.get(i).unwrap_or_default() as u8,
                port.get(i).unwrap_or_default() as u16,
                l7p.get(i).map(str::to_string),
                method.get(i).map(str::to_string),
                template,
            ),
        );
        let row = rows
            .entry(key)
            .or_insert_with_key(|(src, dst, svc)| FlowSummary {
                src_identity: src.0,
                src_namespace: src.1.clone(),
                src_workload: src.2.clone(),
                src_labels: Labels::from_canonical(&src.3),
                dst_identity: dst.0,
                dst_namespace: dst.1.clone(),
                dst_workload: dst.2.clone(),
                dst_labels: Labels::from_canonical(&dst.3),
                dst_peer: dst.4.clone(),
                proto: svc.0,
                dst_port: svc.1,
                l7_protocol: svc.2.clone(),
                l7_method: svc.3.clone(),
                path_template: svc.4.clone(),
                connections: 0,
                records: 0,
                packets: 0,
                bytes: 0,
                first_seen_ns: i64::MAX,
                last_seen_ns: i64::MIN,
                verdicts: BTreeMap::new(),
                nodes: BTreeSet::new(),
                paths: BTreeSet::new(),
            });
        let n = conns.get(i).unwrap_or_default();
        row.connections += n;
        row.records += records.get(i).unwrap_or_default();
        row.packets += packets.get(i).unwrap_or_default();
        row.bytes += bytes.get(i).unwrap_or_default();
        row.first_seen_ns = row.first_seen_ns.min(first.get(i).unwrap_or(i64::MAX));
        row.last_seen_ns = row.last_seen_ns.max(last.get(i).unwrap_or(i64::MIN));
        *row.verdicts.entry(s(&verdict, i)).or_default() += records.get(i).unwrap_or_default();
        row.nodes.insert(s(&node, i));
        if let Some(p) = raw_path {
            if row.paths.len() < MAX_EVIDENCE_PATHS {
                row.paths.insert(p);
            }
        }
    }
    Ok(())
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
