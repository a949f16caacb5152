//! Interned rows to Parquet segments, one file per (node, hour) partition.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use polars::prelude::*;
use polars_arrow::array::{Utf8ViewArray, View};
use polars_arrow::bitmap::{Bitmap, MutableBitmap};
use polars_arrow::datatypes::ArrowDataType;
use polars_buffer::Buffer;

use super::codec::{Dict, Row, NONE};
use super::{hour_of, partition_value, StoreError};
use crate::record::{columns as c, Direction, L7Protocol, Verdict};

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
    for ((node, hour), part) in partitions {
        let part_dir = dir
            .join(format!("node={}", partition_value(dict.string(node))))
            .join(format!("hour={}", hour_of(hour * NS_PER_HOUR)));
        fs::create_dir_all(&part_dir).map_err(|e| StoreError::io(&part_dir, e))?;
        let final_path = part_dir.join(format!("seg-{seq:010}.parquet"));
        let tmp_path = part_dir.join(format!(".seg-{seq:010}.parquet.tmp"));
        let selected: Vec<&Row> = part.iter().map(|&i| &rows[i as usize]).collect();
        let mut df =
            rows_to_frame(dict, &selected).map_err(|e| StoreError::polars(&final_path, e))?;
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

/// Every text a segment's string columns can hold, stored once in one
/// buffer, with a ready-made view per text. A column is then an array of
/// 16-byte views into that shared buffer: no string is copied per row
/// (copying the label sets row by row was most of the writer's time).
struct SharedTexts {
    buffers: Vec<Buffer<u8>>,
    buffer_len: usize,
    views: Vec<View>,
}

/// Bytes per shared buffer: view offsets are u32, so a segment whose
/// distinct strings exceed this (huge request paths) gets several buffers.
const MAX_SHARED_BUFFER: usize = 1 << 30;

impl SharedTexts {
    fn new<'a>(texts: impl Iterator<Item = &'a str>) -> Self {
        Self::with_limit(texts, MAX_SHARED_BUFFER)
    }

    fn with_limit<'a>(texts: impl Iterator<Item = &'a str>, limit: usize) -> Self {
        let mut done: Vec<Buffer<u8>> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut views = Vec::new();
        for text in texts {
            if !bytes.is_empty() && bytes.len() + text.len() > limit {
                done.push(Buffer::from(std::mem::take(&mut bytes)));
            }
            // Fits in u32: the buffer is below MAX_SHARED_BUFFER (a single
            // text longer than that is a buffer of its own, offset 0).
            let offset = bytes.len() as u32;
            views.push(View::new_from_bytes(
                text.as_bytes(),
                done.len() as u32,
                offset,
            ));
            bytes.extend_from_slice(text.as_bytes());
        }
        done.push(Buffer::from(bytes));
        Self {
            buffer_len: done.iter().map(|b| b.len()).sum(),
            buffers: done,
            views,
        }
    }

    /// A string column of text ids (`NONE` is null).
    fn column(&self, name: &str, ids: impl Iterator<Item = u32>) -> Column {
        let (lower, _) = ids.size_hint();
        let mut views = Vec::with_capacity(lower);
        let mut validity: Option<MutableBitmap> = None;
        let mut total_bytes = 0usize;
        for (i, id) in ids.enumerate() {
            match self.views.get(id as usize) {
                Some(view) => {
                    views.push(*view);
                    total_bytes += view.length as usize;
                    if let Some(v) = &mut validity {
                        v.push(true);
                    }
                }
                None => {
                    views.push(View::default());
                    validity
                        .get_or_insert_with(|| MutableBitmap::from_len_set(i))
                        .push(false);
                }
            }
        }
        // SAFETY: every view was made by `View::new_from_bytes` from a whole
        // `&str` copied at that offset into that buffer: in bounds and UTF-8.
        // Null slots hold the zero view (an empty inline string). The
        // validity bitmap, when present, has one bit per view. The byte
        // totals are exact.
        let array = unsafe {
            Utf8ViewArray::new_unchecked(
                ArrowDataType::Utf8View,
                views.into(),
                Buffer::from(self.buffers.clone()),
                validity.map(Bitmap::from),
                Some(total_bytes),
                self.buffer_len,
            )
        };
        StringChunked::with_chunk(name.into(), array).into_column()
    }
}

const ENUM_TEXTS: [&str; 10] = [
    "ingress",
    "egress",
    "unknown",
    "forwarded",
    "would-drop",
    "dropped",
    "l7-would-deny",
    "l7-denied",
    "http",
    "dns",
];

/// The store schema's columns, straight from the dictionary. Enum columns
/// use these texts (in this order) as their values.
fn rows_to_frame(dict: &Dict, rows: &[&Row]) -> PolarsResult<DataFrame> {
    let n = rows.len();
    let canonical: Vec<String> = dict.labels.iter().map(|l| l.to_canonical()).collect();
    let texts = SharedTexts::new(
        dict.strings
            .iter()
            .map(String::as_str)
            .chain(canonical.iter().map(String::as_str))
            .chain(ENUM_TEXTS),
    );
    let labels_base = dict.strings.len() as u32;
    let enum_base = labels_base + canonical.len() as u32;
    // Offsets into ENUM_TEXTS.
    let direction = |d: Direction| {
        enum_base
            + match d {
                Direction::Ingress => 0,
                Direction::Egress => 1,
                Direction::Unknown => 2,
            }
    };
    let verdict = |v: Verdict| {
        enum_base
            + match v {
                Verdict::Forwarded => 3,
                Verdict::WouldDrop => 4,
                Verdict::Dropped => 5,
                Verdict::L7WouldDeny => 6,
                Verdict::L7Denied => 7,
            }
    };
    let l7_protocol = |p: Option<L7Protocol>| match p {
        None => NONE,
        Some(L7Protocol::Http) => enum_base + 8,
        Some(L7Protocol::Dns) => enum_base + 9,
    };
    let peer = |id: u32| &dict.peers[id as usize];
    let ints_i64 = |name: &str, f: fn(&Row) -> i64| {
        Int64Chunked::from_vec(name.into(), rows.iter().map(|r| f(r)).collect()).into_column()
    };
    fn ints_u32(rows: &[&Row], name: &str, f: impl Fn(&Row) -> u32) -> Column {
        UInt32Chunked::from_vec(name.into(), rows.iter().map(|r| f(r)).collect()).into_column()
    }
    // Generic, not `dyn`: one call per value per column, so it must inline.
    fn text(texts: &SharedTexts, rows: &[&Row], name: &str, f: impl Fn(&Row) -> u32) -> Column {
        texts.column(name, rows.iter().map(|r| f(r)))
    }
    let ints_u64 = |name: &str, f: fn(&Row) -> u64| {
        UInt64Chunked::from_vec(name.into(), rows.iter().map(|r| f(r)).collect()).into_column()
    };
    let columns = vec![
        ints_i64(c::WINDOW_START_NS, |r| r.start_ns),
        ints_i64(c::WINDOW_END_NS, |r| r.end_ns),
        text(&texts, rows, c::NODE, |r| r.node),
        ints_u32(rows, c::SRC_IDENTITY, |r| peer(r.src).identity),
        text(&texts, rows, c::SRC_NAMESPACE, |r| peer(r.src).namespace),
        text(&texts, rows, c::SRC_WORKLOAD, |r| peer(r.src).workload),
        text(&texts, rows, c::SRC_LABELS, |r| {
            labels_base + peer(r.src).labels
        }),
        text(&texts, rows, c::SRC_IP, |r| r.src_ip),
        ints_u32(rows, c::DST_IDENTITY, |r| peer(r.dst).identity),
        text(&texts, rows, c::DST_NAMESPACE, |r| peer(r.dst).namespace),
        text(&texts, rows, c::DST_WORKLOAD, |r| peer(r.dst).workload),
        text(&texts, rows, c::DST_LABELS, |r| {
            labels_base + peer(r.dst).labels
        }),
        text(&texts, rows, c::DST_IP, |r| r.dst_ip),
        ints_u32(rows, c::PROTO, |r| u32::from(r.proto)),
        ints_u32(rows, c::DST_PORT, |r| u32::from(r.dst_port)),
        text(&texts, rows, c::DIRECTION, |r| direction(r.direction)),
        text(&texts, rows, c::VERDICT, |r| verdict(r.verdict)),
        text(&texts, rows, c::REASON, |r| r.reason),
        text(&texts, rows, c::L7_PROTOCOL, |r| l7_protocol(r.l7)),
        text(&texts, rows, c::L7_METHOD, |r| r.method),
        text(&texts, rows, c::L7_PATH, |r| r.path),
        text(&texts, rows, c::L7_QUERY, |r| r.query),
        text(&texts, rows, c::L7_HOST, |r| r.host),
        UInt32Chunked::from_iter_options(c::L7_STATUS.into(), rows.iter().map(|r| r.status))
            .into_column(),
        ints_u64(c::PACKETS, |r| r.packets),
        ints_u64(c::BYTES, |r| r.bytes),
        ints_u64(c::COUNT, |r| r.count),
        text(&texts, rows, c::DNS_IPS, |r| r.dns_ips),
        UInt32Chunked::from_iter_options(c::DNS_TTL.into(), rows.iter().map(|r| r.dns_ttl))
            .into_column(),
    ];
    DataFrame::new(n, columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_of_shared_views_read_back_across_buffers() {
        let texts = [
            "a",
            "a string longer than twelve bytes",
            "",
            "another long one, in a second buffer",
            "üñíçødé and more than twelve",
        ];
        // A 40-byte limit forces several buffers.
        let shared = SharedTexts::with_limit(texts.iter().copied(), 40);
        assert!(shared.buffers.len() >= 3);
        let ids = [4, 0, NONE, 1, 3, 2, 4, NONE];
        let column = shared.column("c", ids.iter().copied());
        let got: Vec<Option<&str>> = column.str().unwrap().iter().collect();
        let expected: Vec<Option<&str>> = ids
            .iter()
            .map(|&i| (i != NONE).then(|| texts[i as usize]))
            .collect();
        assert_eq!(got, expected);
    }
}
