//! The write-ahead file: one JSON line per record, fsynced before `append`
//! returns. `wal-<seq>.log` holds exactly the records of segment `<seq>`;
//! deleting it is the commit point of that segment.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::StoreError;
use crate::record::FlowRecord;

pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    scratch: Vec<u8>,
}

pub(crate) fn wal_path(wal_dir: &Path, seq: u64) -> PathBuf {
    wal_dir.join(format!("wal-{seq:010}.log"))
}

/// Sequence numbers of the WAL files in `wal_dir`, ascending.
pub(crate) fn list_wals(wal_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(wal_dir).map_err(|e| StoreError::io(wal_dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(wal_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

impl Wal {
    pub(crate) fn create(wal_dir: &Path, seq: u64) -> Result<Self, StoreError> {
        let path = wal_path(wal_dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        sync_dir(wal_dir)?;
        Ok(Self {
            file,
            path,
            scratch: Vec::with_capacity(1 << 16),
        })
    }

    /// Write and fsync: when this returns Ok the records survive a crash.
    pub(crate) fn append(&mut self, records: &[FlowRecord]) -> Result<(), StoreError> {
        self.scratch.clear();
        for record in records {
            serde_json::to_writer(&mut self.scratch, record)
                .map_err(|e| StoreError::Encode(e.to_string()))?;
            self.scratch.push(b'\n');
        }
        self.file
            .write_all(&self.scratch)
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io(&self.path, e))
    }

    pub(crate) fn remove(self) -> Result<(), StoreError> {
        drop(self.file);
        fs::remove_file(&self.path).map_err(|e| StoreError::io(&self.path, e))
    }
}

/// Records of a WAL file. A line that does not parse (the torn tail of a
/// write the crash interrupted: never acknowledged) is skipped with a warning.
pub(crate) fn read_wal(path: &Path) -> Result<Vec<FlowRecord>, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut line_no = 0usize;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::io(path, e))?;
        if read == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            warn!(wal = %path.display(), line = line_no, "skipping truncated last line of the write-ahead file");
            break;
        }
        match serde_json::from_slice::<FlowRecord>(&line) {
            Ok(record) => records.push(record),
            Err(err) => {
                warn!(wal = %path.display(), line = line_no, %err, "skipping unreadable line of the write-ahead file");
            }
        }
    }
    Ok(records)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
