//! Interned rows to Parquet segments, one file per (node, hour) partition.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use polars::prelude::*;

use super::codec::{Dict, PeerEntry, Row};
use super::{hour_of, partition_value, StoreError};
use crate::record::columns as c;

const NS_PER_HOUR: i64 = 3_600_000_000_000;

/// Write `rows` as `node=*/hour=*/seg-<seq>.parquet` files, each to a
/// temporary name, fsynced, then renamed: a segment file is either whole or
/// absent.
pub(crate) fn write_segments(
    dir: &Path,
    seq: u64,
    dict: &Dict,
    rows: &[Row],
) -> Result<(), StoreError> {
    let mut partitions: BTreeMap<(u32, i64), Vec<u32>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let hour = row.start_ns.div_euclid(NS_PER_HOUR);
        partitions
            .entry((row.node, hour))
            .or_default()
            .push(i as u32);
    }
    let canonical: Vec<String> = dict.labels.iter().map(|l| l.to_canonical()).collect();
    for ((node, hour), part) in partitions {
        let part_dir = dir
            .join(format!("node={}", partition_value(dict.string(node))))
            .join(format!("hour={}", hour_of(hour * NS_PER_HOUR)));
        fs::create_dir_all(&part_dir).map_err(|e| StoreError::io(&part_dir, e))?;
        let final_path = part_dir.join(format!("seg-{seq:010}.parquet"));
        let tmp_path = part_dir.join(format!(".seg-{seq:010}.parquet.tmp"));
        let selected: Vec<&Row> = part.iter().map(|&i| &rows[i as usize]).collect();
        let mut df = rows_to_frame(dict, &canonical, &selected)
            .map_err(|e| StoreError::polars(&final_path, e))?;
        let file = File::create(&tmp_path).map_err(|e| StoreError::io(&tmp_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        ParquetWriter::new(&mut out)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut df)
            .map_err(|e| StoreError::polars(&tmp_path, e))?;
        let file = out
            .into_inner()
            .map_err(|e| StoreError::io(&tmp_path, e.into_error()))?;
        file.sync_all().map_err(|e| StoreError::io(&tmp_path, e))?;
        fs::rename(&tmp_path, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
        super::wal::sync_dir(&part_dir)?;
    }
    Ok(())
}

/// The store schema's columns, straight from the dictionary (no per-record
/// string is built: every value is a borrowed dictionary entry).
fn rows_to_frame<'d>(
    dict: &'d Dict,
    canonical: &'d [String],
    rows: &[&Row],
) -> PolarsResult<DataFrame> {
    let n = rows.len();
    let peer = |id: u32| -> &'d PeerEntry { &dict.peers[id as usize] };
    let ints_i64 = |name: &str, f: fn(&Row) -> i64| {
        Int64Chunked::from_vec(name.into(), rows.iter().map(|r| f(r)).collect()).into_column()
    };
    let ints_u32 = |name: &str, f: &dyn Fn(&Row) -> u32| {
        UInt32Chunked::from_vec(name.into(), rows.iter().map(|r| f(r)).collect()).into_column()
    };
    let ints_u64 = |name: &str, f: fn(&Row) -> u64| {
        UInt64Chunked::from_vec(name.into(), rows.iter().map(|r| f(r)).collect()).into_column()
    };
    let text = |name: &str, f: &dyn Fn(&Row) -> &'d str| {
        StringChunked::from_iter_values(name.into(), rows.iter().map(|r| f(r))).into_column()
    };
    let opt_text = |name: &str, f: &dyn Fn(&Row) -> u32| {
        StringChunked::from_iter_options(name.into(), rows.iter().map(|r| dict.opt_string(f(r))))
            .into_column()
    };
    let labels = |id: u32| -> &'d str { canonical.get(id as usize).map_or("", String::as_str) };
    let columns = vec![
        ints_i64(c::WINDOW_START_NS, |r| r.start_ns),
        ints_i64(c::WINDOW_END_NS, |r| r.end_ns),
        text(c::NODE, &|r| dict.string(r.node)),
        ints_u32(c::SRC_IDENTITY, &|r| peer(r.src).identity),
        text(c::SRC_NAMESPACE, &|r| dict.string(peer(r.src).namespace)),
        text(c::SRC_WORKLOAD, &|r| dict.string(peer(r.src).workload)),
        text(c::SRC_LABELS, &|r| labels(peer(r.src).labels)),
        opt_text(c::SRC_IP, &|r| r.src_ip),
        ints_u32(c::DST_IDENTITY, &|r| peer(r.dst).identity),
        text(c::DST_NAMESPACE, &|r| dict.string(peer(r.dst).namespace)),
        text(c::DST_WORKLOAD, &|r| dict.string(peer(r.dst).workload)),
        text(c::DST_LABELS, &|r| labels(peer(r.dst).labels)),
        opt_text(c::DST_IP, &|r| r.dst_ip),
        ints_u32(c::PROTO, &|r| u32::from(r.proto)),
        ints_u32(c::DST_PORT, &|r| u32::from(r.dst_port)),
        text(c::DIRECTION, &|r| r.direction.as_str()),
        text(c::VERDICT, &|r| r.verdict.as_str()),
        text(c::REASON, &|r| dict.string(r.reason)),
        StringChunked::from_iter_options(
            c::L7_PROTOCOL.into(),
            rows.iter().map(|r| r.l7.map(|p| p.as_str())),
        )
        .into_column(),
        opt_text(c::L7_METHOD, &|r| r.method),
        opt_text(c::L7_PATH, &|r| r.path),
        opt_text(c::L7_QUERY, &|r| r.query),
        opt_text(c::L7_HOST, &|r| r.host),
        UInt32Chunked::from_iter_options(c::L7_STATUS.into(), rows.iter().map(|r| r.status))
            .into_column(),
        ints_u64(c::PACKETS, |r| r.packets),
        ints_u64(c::BYTES, |r| r.bytes),
        ints_u64(c::COUNT, |r| r.count),
    ];
    DataFrame::new(n, columns)
}
