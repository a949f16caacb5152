//! `FlowStore`: append-only Parquet segments, partitioned
//! `node=<n>/hour=<YYYYMMDDHH>/seg-<seq>.parquet`, made crash-safe by a
//! write-ahead file.
//!
//! Durability: `append` writes the records to `_wal/wal-<seq>.log` and
//! fsyncs before returning, so an acknowledged record survives `kill -9`.
//! Every `rotate_rows` records (and on `flush`), the buffered records become
//! `seg-<seq>.parquet` files (one per partition, each written to a temporary
//! name, fsynced, renamed), then the WAL is deleted: that deletion is the
//! commit. On open, a WAL still present is replayed: the segment files of its
//! sequence number are removed and rewritten from it, so a crash between two
//! renames never duplicates nor loses a record.

mod frame;
mod wal;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use thiserror::Error;
use tracing::{info, warn};

pub use frame::{frame_to_records, records_to_frame};

use crate::record::{store_schema, FlowRecord};
use wal::{list_wals, read_wal, sync_dir, wal_path, Wal};

const WAL_DIR: &str = "_wal";
const LOCK_FILE: &str = "LOCK";
/// Default records per segment: big enough for good Parquet compression,
/// small enough that the in-memory buffer stays a few hundred MiB at most.
pub const DEFAULT_ROTATE_ROWS: usize = 500_000;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("flow store {0} is in use by another writer (its _wal/LOCK is held)")]
    Locked(PathBuf),
    #[error("encoding a record for the write-ahead file: {0}")]
    Encode(String),
    #[error("{path}: {source}")]
    Polars { path: PathBuf, source: PolarsError },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    fn polars(path: &Path, source: PolarsError) -> Self {
        Self::Polars {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The writer side of a store directory. One writer per directory (a lock
/// file enforces it); readers use [`scan`] and need no lock.
pub struct FlowStore {
    dir: PathBuf,
    wal_dir: PathBuf,
    seq: u64,
    wal: Option<Wal>,
    buffer: Vec<FlowRecord>,
    rotate_rows: usize,
    _lock: File,
}

impl FlowStore {
    /// Open (creating it if needed) and replay any write-ahead file left by
    /// a crash into segments.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_ROTATE_ROWS)
    }

    pub fn open_with(dir: impl AsRef<Path>, rotate_rows: usize) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let wal_dir = dir.join(WAL_DIR);
        fs::create_dir_all(&wal_dir).map_err(|e| StoreError::io(&wal_dir, e))?;
        let lock_path = wal_dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(|e| StoreError::io(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir));
        }
        let segments = segment_files(&dir)?;
        let mut max_seq = segments
            .iter()
            .filter_map(|p| seq_of_segment(p))
            .max()
            .unwrap_or(0);
        for seq in list_wals(&wal_dir)? {
            max_seq = max_seq.max(seq);
            let path = wal_path(&wal_dir, seq);
            let records = read_wal(&path)?;
            for old in segments.iter().filter(|p| seq_of_segment(p) == Some(seq)) {
                fs::remove_file(old).map_err(|e| StoreError::io(old, e))?;
            }
            info!(wal = %path.display(), records = records.len(), "replaying write-ahead file");
            write_segments(&dir, seq, &records)?;
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        sync_dir(&wal_dir)?;
        Ok(Self {
            dir,
            wal_dir,
            seq: max_seq + 1,
            wal: None,
            buffer: Vec::new(),
            rotate_rows: rotate_rows.max(1),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append and make durable: when this returns Ok, the records are on
    /// disk (fsynced) and will be in the store after any crash.
    pub fn append(&mut self, records: &[FlowRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let wal = match &mut self.wal {
            Some(wal) => wal,
            none => none.insert(Wal::create(&self.wal_dir, self.seq)?),
        };
        wal.append(records)?;
        self.buffer.extend_from_slice(records);
        if self.buffer.len() >= self.rotate_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Turn buffered records into Parquet segments now (they are already
    /// durable; this makes them visible to readers).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let Some(wal) = self.wal.take() else {
            return Ok(());
        };
        write_segments(&self.dir, self.seq, &self.buffer)?;
        wal.remove()?;
        sync_dir(&self.wal_dir)?;
        self.buffer.clear();
        self.seq += 1;
        Ok(())
    }

    /// Flush and release the directory.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.flush()
    }
}

/// Directory-safe partition value: a node name is a DNS label in practice,
/// but an imported file can carry anything.
fn partition_value(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.starts_with('.') {
        format!("_{cleaned}")
    } else {
        cleaned
    }
}

/// `YYYYMMDDHH` (UTC) of a Unix-nanosecond timestamp.
pub fn hour_of(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y%m%d%H")
        .to_string()
}

fn write_segments(dir: &Path, seq: u64, records: &[FlowRecord]) -> Result<(), StoreError> {
    let mut partitions: BTreeMap<(String, String), Vec<&FlowRecord>> = BTreeMap::new();
    // Consecutive records mostly share node and hour: reuse the last key.
    let mut last: Option<(&str, i64, (String, String))> = None;
    for record in records {
        let hour_start = record.window_start_ns.div_euclid(3_600_000_000_000);
        let key = match &last {
            Some((node, hour, key)) if *node == record.node && *hour == hour_start => key.clone(),
            _ => {
                let key = (
                    partition_value(&record.node),
                    hour_of(record.window_start_ns),
                );
                last = Some((&record.node, hour_start, key.clone()));
                key
            }
        };
        partitions.entry(key).or_default().push(record);
    }
    for ((node, hour), part) in partitions {
        let part_dir = dir
            .join(format!("node={node}"))
            .join(format!("hour={hour}"));
        fs::create_dir_all(&part_dir).map_err(|e| StoreError::io(&part_dir, e))?;
        let final_path = part_dir.join(format!("seg-{seq:010}.parquet"));
        let tmp_path = part_dir.join(format!(".seg-{seq:010}.parquet.tmp"));
        let mut df = frame::refs_to_frame(&part).map_err(|e| StoreError::polars(&final_path, e))?;
        let file = File::create(&tmp_path).map_err(|e| StoreError::io(&tmp_path, e))?;
        let mut out = BufWriter::new(file);
        ParquetWriter::new(&mut out)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut df)
            .map_err(|e| StoreError::polars(&tmp_path, e))?;
        let file = out
            .into_inner()
            .map_err(|e| StoreError::io(&tmp_path, e.into_error()))?;
        file.sync_all().map_err(|e| StoreError::io(&tmp_path, e))?;
        fs::rename(&tmp_path, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
        sync_dir(&part_dir)?;
    }
    Ok(())
}

fn seq_of_segment(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("seg-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// Every `node=*/hour=*/seg-*.parquet` under `dir`, sorted.
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let read = |d: &Path| -> Result<Vec<PathBuf>, StoreError> {
        let mut v = Vec::new();
        for entry in fs::read_dir(d).map_err(|e| StoreError::io(d, e))? {
            v.push(entry.map_err(|e| StoreError::io(d, e))?.path());
        }
        Ok(v)
    };
    if !dir.exists() {
        return Ok(out);
    }
    for node_dir in read(dir)? {
        if !is_partition(&node_dir, "node=") {
            continue;
        }
        for hour_dir in read(&node_dir)? {
            if !is_partition(&hour_dir, "hour=") {
                continue;
            }
            out.extend(
                read(&hour_dir)?
                    .into_iter()
                    .filter(|p| seq_of_segment(p).is_some()),
            );
        }
    }
    out.sort();
    Ok(out)
}

fn is_partition(path: &Path, prefix: &str) -> bool {
    path.is_dir()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
}

fn hour_partition(path: &Path) -> Option<&str> {
    path.parent()?.file_name()?.to_str()?.strip_prefix("hour=")
}

/// What a scan found and what it skipped.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    pub segments: usize,
    pub rows: usize,
    /// Segments skipped (unreadable or with another schema), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A lazy frame over every readable segment of one or more store
/// directories (several nodes' stores can be read together).
/// `since_ns` prunes whole hour partitions before they are opened.
/// A segment whose footer does not read or whose schema differs is skipped
/// with a warning.
pub fn scan(
    dirs: &[PathBuf],
    since_ns: Option<i64>,
) -> Result<(LazyFrame, ScanReport), StoreError> {
    let (paths, report) = readable_segments(dirs, since_ns)?;
    Ok((lazy_segments(&paths)?, report))
}

/// The segments [`scan`] would read, after partition pruning and footer
/// checks (callers that bound memory query them a few at a time).
pub fn readable_segments(
    dirs: &[PathBuf],
    since_ns: Option<i64>,
) -> Result<(Vec<PathBuf>, ScanReport), StoreError> {
    let schema = store_schema();
    let since_hour = since_ns.map(hour_of);
    let mut report = ScanReport::default();
    let mut paths = Vec::new();
    for dir in dirs {
        for path in segment_files(dir)? {
            if let (Some(since), Some(hour)) = (&since_hour, hour_partition(&path)) {
                if hour < since.as_str() {
                    continue;
                }
            }
            match check_segment(&path, &schema) {
                Ok(rows) => {
                    report.segments += 1;
                    report.rows += rows;
                    paths.push(path);
                }
                Err(reason) => {
                    warn!(segment = %path.display(), %reason, "skipping unreadable segment");
                    report.skipped.push((path, reason));
                }
            }
        }
    }
    Ok((paths, report))
}

/// A lazy frame over the given segments, in the store schema.
pub fn lazy_segments(paths: &[PathBuf]) -> Result<LazyFrame, StoreError> {
    let schema = store_schema();
    let Some(first) = paths.first() else {
        return Ok(DataFrame::empty_with_schema(&schema).lazy());
    };
    let sources: Vec<PlRefPath> = paths
        .iter()
        .map(|p| PlRefPath::try_from_path(p))
        .collect::<PolarsResult<_>>()
        .map_err(|e| StoreError::polars(first, e))?;
    let args = ScanArgsParquet {
        schema: Some(Arc::new(schema)),
        ..Default::default()
    };
    LazyFrame::scan_parquet_files(sources.into_iter().collect(), args)
        .map_err(|e| StoreError::polars(first, e))
}

fn check_segment(path: &Path, schema: &Schema) -> Result<usize, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut reader = ParquetReader::new(file);
    let arrow = reader.schema().map_err(|e| e.to_string())?;
    let found: Vec<&str> = arrow.iter_names().map(|n| n.as_str()).collect();
    let expected: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
    if found != expected {
        return Err(format!(
            "columns {found:?} are not the store schema {expected:?}"
        ));
    }
    reader.num_rows().map_err(|e| e.to_string())
}

/// Every record of a store, eagerly (tests, small stores, the replay).
pub fn read_all(dir: &Path) -> Result<Vec<FlowRecord>, StoreError> {
    let (lf, _) = scan(&[dir.to_path_buf()], None)?;
    let df = lf.collect().map_err(|e| StoreError::polars(dir, e))?;
    frame_to_records(&df).map_err(|e| StoreError::polars(dir, e))
}
