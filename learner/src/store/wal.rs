//! The write-ahead file: CRC-checked frames of interned records (see
//! [`super::codec`]), fsynced before `append` returns. `wal-<seq>.log` holds
//! exactly the records of segment `<seq>`; deleting it is the commit point
//! of that segment.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::codec::{decode_payload, frame_header, Dict, Encoder, Row, MAX_FRAME, WAL_MAGIC};
use super::StoreError;
use crate::record::FlowRecord;

/// Bytes a frame's header takes; the payload buffer reserves them up front.
pub(crate) const FRAME_HEADER: usize = 8;

pub(crate) struct Wal {
    file: File,
    path: PathBuf,
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
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        file.write_all(WAL_MAGIC)
            .map_err(|e| StoreError::io(&path, e))?;
        sync_dir(wal_dir)?;
        Ok(Self { file, path })
    }

    /// `frame` is `FRAME_HEADER` reserved bytes followed by the payload; the
    /// header is filled in, the frame written and fsynced: when this returns
    /// Ok the records survive a crash.
    pub(crate) fn append_frame(&mut self, frame: &mut [u8]) -> Result<(), StoreError> {
        let header = frame_header(&frame[FRAME_HEADER..]);
        frame[..FRAME_HEADER].copy_from_slice(&header);
        self.file
            .write_all(frame)
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

/// The dictionary and rows of a WAL file. The torn tail of a write the crash
/// interrupted (never acknowledged: the fsync had not returned) is dropped
/// with a warning; so is everything after a frame that fails its CRC.
pub(crate) fn read_wal(path: &Path) -> Result<(Dict, Vec<Row>), StoreError> {
    let data = fs::read(path).map_err(|e| StoreError::io(path, e))?;
    let mut dict = Dict::default();
    let mut rows = Vec::new();
    if data.first() == Some(&b'{') {
        read_json_lines(path, &data, &mut dict, &mut rows);
        return Ok((dict, rows));
    }
    if !data.starts_with(WAL_MAGIC) {
        if data.len() >= WAL_MAGIC.len() {
            warn!(wal = %path.display(), "not a cnpilot write-ahead file (bad magic); ignoring it");
        }
        return Ok((dict, rows));
    }
    let mut pos = WAL_MAGIC.len();
    let mut frame_no = 0usize;
    while pos < data.len() {
        frame_no += 1;
        let rest = &data[pos..];
        let torn = |what: &str| {
            warn!(wal = %path.display(), frame = frame_no, offset = pos, "dropping the unacknowledged tail of the write-ahead file: {what}");
        };
        if rest.len() < FRAME_HEADER {
            torn("truncated frame header");
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_FRAME || len as usize > rest.len() - FRAME_HEADER {
            torn("frame runs past the end of the file");
            break;
        }
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len as usize];
        if crc32fast::hash(payload) != crc {
            torn("frame checksum mismatch");
            break;
        }
        if let Err(err) = decode_payload(payload, &mut dict, &mut rows) {
            // A frame that passed its CRC but does not decode was written by
            // another version; later frames may depend on its definitions.
            warn!(wal = %path.display(), frame = frame_no, error = %err.0, "undecodable frame in the write-ahead file; records from here on are skipped");
            break;
        }
        pos += FRAME_HEADER + len as usize;
    }
    Ok((dict, rows))
}

/// The first store version's WAL: one JSON record per line. Still read so
/// that a store written by it and left with a WAL loses nothing on upgrade.
fn read_json_lines(path: &Path, data: &[u8], dict: &mut Dict, rows: &mut Vec<Row>) {
    let mut scratch = Vec::new();
    let mut encoder = Encoder {
        dict,
        out: &mut scratch,
    };
    for (i, line) in data.split_inclusive(|&b| b == b'\n').enumerate() {
        if line.last() != Some(&b'\n') {
            warn!(wal = %path.display(), line = i + 1, "skipping truncated last line of the write-ahead file");
            break;
        }
        match serde_json::from_slice::<FlowRecord>(line) {
            Ok(record) => rows.push(encoder.record(&record)),
            Err(err) => {
                warn!(wal = %path.display(), line = i + 1, %err, "skipping unreadable line of the write-ahead file");
            }
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
