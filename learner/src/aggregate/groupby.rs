//! The first implementation of the aggregation, kept as the in-run
//! baseline of `learnbench` and as a cross-check in the tests: a polars
//! `group_by` on all 16 raw keys (raw path, verdict and node included),
//! a few segments per query, then a Rust fold that templates paths.
//! It gives the same table as [`super::learn`], ~3.3× slower (learnbench).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use polars::prelude::*;

use super::{cap_evidence, FlowSummary, FlowTable, LearnError, LearnOptions, SummaryKey};
use crate::identity::{is_cidr_identity, Labels, ReservedIdentity};
use crate::pathtemplate;
use crate::record::columns as c;
use crate::store;

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
    let lf = match options.until_ns {
        Some(until) => lf.filter(col(c::WINDOW_START_NS).lt(lit(until))),
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
            col(c::L7_QUERY)
                .str()
                .len_bytes()
                .fill_null(lit(0))
                .gt(lit(0))
                .cast(DataType::UInt64)
                .sum()
                .alias("with_query"),
        ])
}

/// Segments per polars query: the in-memory engine materialises the key
/// columns of every row it groups, so the store is aggregated a few
/// segments (≤ 4 × 500k rows) at a time and the partial groups are folded
/// together; peak memory then depends on the segment size, not the store's.
pub const SEGMENTS_PER_QUERY: usize = 4;

/// The aggregation as a polars group-by (the baseline).
pub fn learn_groupby(dirs: &[PathBuf], options: &LearnOptions) -> Result<FlowTable, LearnError> {
    let (paths, scan) = store::readable_segments(dirs, options.since_ns)?;
    let mut rows = BTreeMap::new();
    for chunk in paths.chunks(SEGMENTS_PER_QUERY) {
        let grouped = stage1(store::lazy_segments(chunk)?, options).collect()?;
        fold_into(&mut rows, &grouped)?;
    }
    // The baseline is the rows' cross-check and benchmark only: DNS
    // answers are folded by the columnar path alone.
    Ok(FlowTable {
        rows: rows.into_values().collect(),
        dns: Vec::new(),
        scan,
    })
}

fn strs(df: &DataFrame, name: &str) -> PolarsResult<StringChunked> {
    Ok(df.column(name)?.str()?.clone())
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
    let with_query = u64s("with_query")?;

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
                with_query: 0,
            });
        row.with_query += with_query.get(i).unwrap_or_default();
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
            row.paths.insert(p);
            cap_evidence(&mut row.paths);
        }
    }
    Ok(())
}
