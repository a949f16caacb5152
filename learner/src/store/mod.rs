//! `FlowStore`: append-only Parquet segments, partitioned
//! `node=<n>/hour=<YYYYMMDDHH>/seg-<seq>.parquet`, made crash-safe by a
//! write-ahead file.
//!
//! Durability: `append` interns the records (see [`codec`]), writes them as
//! one CRC-checked frame to `_wal/wal-<seq>.log` and fsyncs before
//! returning, so an acknowledged record survives `kill -9`. Every
//! `rotate_rows` records (and on `flush`), the buffered rows become
//! `seg-<seq>.parquet` files (one per partition, each written to a temporary
//! name, fsynced, renamed), then the WAL is deleted: that deletion is the
//! commit. Segments are written on a background thread so that ingest goes
//! on meanwhile; at most one segment is in flight (the next rotation waits
//! for it), which bounds memory. On open, every WAL still present is
//! replayed: the segment files of its sequence number are removed and
//! rewritten from it, so a crash between two renames never duplicates nor
//! loses a record.

mod codec;
mod frame;
mod segment;
mod wal;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use polars::prelude::*;
use thiserror::Error;
use tracing::{info, warn};

pub use frame::{frame_to_records, records_to_frame};

use crate::record::{columns, store_schema, FlowRecord};
use codec::{Dict, Encoder, Row};
use segment::write_segments;
use wal::{list_wals, read_wal, sync_dir, wal_path, Wal, FRAME_HEADER};

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
    #[error("flow store {0}: an earlier write to the write-ahead file failed; reopen the store (acknowledged records are replayed)")]
    Poisoned(PathBuf),
    #[error("flow store {0}: the segment writer thread panicked")]
    WriterPanicked(PathBuf),
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
    /// The buffered segment: its dictionary and rows (all in the WAL).
    dict: Dict,
    rows: Vec<Row>,
    /// The next WAL frame, reused between appends.
    frame: Vec<u8>,
    rotate_rows: usize,
    /// The segment being written in the background, if any.
    writer: Option<JoinHandle<Result<(), StoreError>>>,
    /// A WAL write failed: the dictionary may name entries the WAL lacks.
    poisoned: bool,
    _lock: File,
}

/// How long `open` waits for a writer that is going away. A lock is held by
/// the open file description, which a child forked by any thread of the
/// process shares until its exec; a writer just closed can therefore look
/// alive for a moment. A live writer holds it for good, and is reported.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn acquire_writer_lock(lock: &File, dir: &Path) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        if lock.try_lock().is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
        acquire_writer_lock(&lock, &dir)?;
        let segments = segment_files(&dir)?;
        let mut max_seq = segments
            .iter()
            .filter_map(|p| seq_of_segment(p))
            .max()
            .unwrap_or(0);
        for seq in list_wals(&wal_dir)? {
            max_seq = max_seq.max(seq);
            let path = wal_path(&wal_dir, seq);
            let (dict, rows) = read_wal(&path)?;
            for old in segments.iter().filter(|p| seq_of_segment(p) == Some(seq)) {
                fs::remove_file(old).map_err(|e| StoreError::io(old, e))?;
            }
            info!(wal = %path.display(), records = rows.len(), "replaying write-ahead file");
            write_segments(&dir, seq, &dict, &rows)?;
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        sync_dir(&wal_dir)?;
        Ok(Self {
            dir,
            wal_dir,
            seq: max_seq + 1,
            wal: None,
            dict: Dict::default(),
            rows: Vec::new(),
            frame: Vec::new(),
            rotate_rows: rotate_rows.max(1),
            writer: None,
            poisoned: false,
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
        if self.poisoned {
            return Err(StoreError::Poisoned(self.dir.clone()));
        }
        let wal = match &mut self.wal {
            Some(wal) => wal,
            none => none.insert(Wal::create(&self.wal_dir, self.seq)?),
        };
        let rows_before = self.rows.len();
        self.frame.clear();
        self.frame.resize(FRAME_HEADER, 0);
        let mut encoder = Encoder {
            dict: &mut self.dict,
            out: &mut self.frame,
        };
        self.rows.extend(records.iter().map(|r| encoder.record(r)));
        if let Err(err) = wal.append_frame(&mut self.frame) {
            self.rows.truncate(rows_before);
            self.poisoned = true;
            return Err(err);
        }
        if self.rows.len() >= self.rotate_rows {
            self.rotate()?;
        }
        Ok(())
    }

    /// Hand the buffered rows to a background segment writer (waiting for
    /// the previous one first: at most one segment in flight).
    fn rotate(&mut self) -> Result<(), StoreError> {
        let Some(wal) = self.wal.take() else {
            return Ok(());
        };
        self.wait_writer()?;
        let dict = std::mem::take(&mut self.dict);
        let rows = std::mem::take(&mut self.rows);
        let (dir, wal_dir, seq) = (self.dir.clone(), self.wal_dir.clone(), self.seq);
        self.seq += 1;
        let handle = std::thread::Builder::new()
            .name("cnpilot-segment".into())
            .spawn(move || {
                write_segments(&dir, seq, &dict, &rows)?;
                wal.remove()?;
                sync_dir(&wal_dir)
            })
            .map_err(|e| StoreError::io(&self.dir, e))?;
        self.writer = Some(handle);
        Ok(())
    }

    fn wait_writer(&mut self) -> Result<(), StoreError> {
        match self.writer.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| StoreError::WriterPanicked(self.dir.clone()))?,
            None => Ok(()),
        }
    }

    /// Turn buffered records into Parquet segments now and wait for them
    /// (they are already durable; this makes them visible to readers).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.rotate()?;
        self.wait_writer()
    }

    /// Flush and release the directory.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.flush()
    }
}

impl Drop for FlowStore {
    /// A store dropped without `close` keeps its buffer in the WAL (the next
    /// open replays it), but a segment already being written must finish
    /// before the lock is released, or that open would replay it twice.
    fn drop(&mut self) {
        if let Err(err) = self.wait_writer() {
            warn!(store = %self.dir.display(), %err, "segment writer failed; its write-ahead file will be replayed on the next open");
        }
    }
}

/// Directory-safe partition value: a node name is a DNS label in practice,
/// but an imported file can carry anything.
pub(crate) fn partition_value(value: &str) -> String {
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
    // A segment written before a column was added (`columns::ADDED`)
    // lacks it: the scan fills it with nulls.
    let args = ScanArgsParquet {
        schema: Some(Arc::new(schema)),
        allow_missing_columns: true,
        ..Default::default()
    };
    LazyFrame::scan_parquet_files(sources.into_iter().collect(), args)
        .map_err(|e| StoreError::polars(first, e))
}

/// Rows of a segment, from its footer.
pub fn segment_rows(path: &Path) -> Option<usize> {
    let file = File::open(path).ok()?;
    ParquetReader::new(file).num_rows().ok()
}

fn check_segment(path: &Path, schema: &Schema) -> Result<usize, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut reader = ParquetReader::new(file);
    let arrow = reader.schema().map_err(|e| e.to_string())?;
    let found: Vec<&str> = arrow.iter_names().map(|n| n.as_str()).collect();
    let expected: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
    // A segment from before the added columns is the schema without them.
    let before_added = &expected[..expected.len().saturating_sub(columns::ADDED.len())];
    if found != expected && found != before_added {
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
