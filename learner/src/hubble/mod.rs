//! Import Hubble flows: `hubble observe -o json` / `-o jsonpb` output (the
//! `{"flow":…,"node_name":…,"time":…}` wrapper), the legacy bare-Flow `-o
//! json` of hubble < 0.11, and Hubble exporter files; plain or gzip (detected
//! by magic bytes), from files or stdin. Lines it cannot use are counted per
//! reason, never fatal.
//!
//! Connection semantics: a connection counts once. Replies (`is_reply`,
//! deprecated `reply`, TCP SYN+ACK, L7 RESPONSEs) are skipped; a TCP SYN is
//! a connection (count 1); a later TCP packet of the initiator is kept as
//! evidence with count 0 (when `is_reply` is absent, the side with the
//! higher port is taken as the client); UDP/ICMP/SCTP non-replies and L7
//! requests count 1 each.
//!
//! Fields read: `time` (flow, else wrapper), `node_name` (wrapper, else
//! flow), `verdict`, `drop_reason_desc` / `drop_reason` /
//! `event_type{type:1,sub_type}`, `IP.source|destination`, `l4` (TCP/UDP/SCTP
//! ports and TCP flags, ICMP type), `source`/`destination` (`identity`,
//! `namespace`, `labels`, `pod_name`, `workloads`), `Type`,
//! `traffic_direction`, `is_reply`/`reply`, `l7.type`, `l7.http` (method,
//! url → path/query/host, `Host` header, code), `l7.dns` (query, qtypes,
//! rcode). Ignored: `ethernet`, `IP.ipVersion`/`encrypted`, `ID`,
//! `cluster_name`, `source_names`/`destination_names`,
//! `source_service`/`destination_service`, `trace_observation_point`,
//! `trace_reason`, `event_type` (other than drops), `policy_match_type`,
//! `*_allowed_by`/`*_denied_by`, `policy_log`, `auth_type`, `uuid`,
//! `emitter`, `node_labels`, `interface`, `ip_trace_id`, `aggregate`,
//! `Summary`, `l7.latency_ns`, HTTP `protocol` and other headers, DNS
//! `ips`/`ttl`/`cnames`/`rrtypes`/`observation_source`, and Kafka L7 records
//! (skipped with a reason). Packet and byte counts are not in Hubble flows:
//! each record is 1 packet, 0 bytes.

mod flow;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use serde_json::Value;
use thiserror::Error;

pub use flow::{flow_to_record, workload_from_pod_name};

use crate::record::FlowRecord;
use crate::store::{FlowStore, StoreError};

#[derive(Debug, Error)]
pub enum HubbleError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one line turned into.
#[derive(Debug)]
pub enum LineOutcome {
    Record(Box<FlowRecord>),
    /// Not a usable flow; the reason is the summary's key.
    Skipped(&'static str),
    Blank,
}

/// `GetFlowsResponse` / `ExportEvent` members that are not flows.
const NON_FLOW_EVENTS: &[(&str, &str)] = &[
    ("node_status", "non-flow event: node_status"),
    ("nodeStatus", "non-flow event: node_status"),
    ("lost_events", "non-flow event: lost_events"),
    ("lostEvents", "non-flow event: lost_events"),
    ("agent_event", "non-flow event: agent_event"),
    ("agentEvent", "non-flow event: agent_event"),
    ("debug_event", "non-flow event: debug_event"),
    ("debugEvent", "non-flow event: debug_event"),
    ("rate_limit_info", "non-flow event: rate_limit_info"),
];

/// Fields only a bare Flow object has at its top level.
const FLOW_KEYS: &[&str] = &[
    "verdict",
    "IP",
    "l4",
    "source",
    "destination",
    "event_type",
    "eventType",
    "Type",
    "l7",
];

/// Classify and convert one line of any supported format.
pub fn parse_line(line: &str) -> LineOutcome {
    let line = line.trim();
    if line.is_empty() {
        return LineOutcome::Blank;
    }
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) if e.is_eof() => return LineOutcome::Skipped("truncated json"),
        Err(_) => return LineOutcome::Skipped("malformed json"),
    };
    let Some(top) = value.as_object() else {
        return LineOutcome::Skipped("not a json object");
    };
    if let Some(inner) = top.get("flow") {
        let Some(inner) = inner.as_object() else {
            return LineOutcome::Skipped("`flow` is not an object");
        };
        let time = flow::field(top, "time").and_then(Value::as_str);
        let node = flow::field(top, "node_name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        return to_outcome(flow_to_record(inner, time, node));
    }
    if let Some((_, reason)) = NON_FLOW_EVENTS
        .iter()
        .find(|(key, _)| top.contains_key(*key))
    {
        return LineOutcome::Skipped(reason);
    }
    if FLOW_KEYS.iter().any(|k| top.contains_key(*k)) {
        return to_outcome(flow_to_record(top, None, None));
    }
    LineOutcome::Skipped("json object that is not a flow")
}

fn to_outcome(result: Result<FlowRecord, &'static str>) -> LineOutcome {
    match result {
        Ok(record) => LineOutcome::Record(Box::new(record)),
        Err(reason) => LineOutcome::Skipped(reason),
    }
}

/// Counts of an import.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    pub inputs: usize,
    pub lines: u64,
    pub records: u64,
    /// Records standing for new connections / requests (count > 0).
    pub connections: u64,
    pub skipped: BTreeMap<String, u64>,
}

impl ImportSummary {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    fn merge(&mut self, other: &ImportSummary) {
        self.inputs += other.inputs;
        self.lines += other.lines;
        self.records += other.records;
        self.connections += other.connections;
        for (k, v) in &other.skipped {
            *self.skipped.entry(k.clone()).or_default() += v;
        }
    }
}

/// An input: a path, or `-` for stdin.
#[derive(Debug, Clone)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn parse(arg: &str) -> Self {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(arg))
        }
    }

    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "<stdin>".into(),
            Input::File(p) => p.display().to_string(),
        }
    }

    /// Size in bytes on disk, when known (for progress).
    pub fn size(&self) -> Option<u64> {
        match self {
            Input::Stdin => None,
            Input::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
        }
    }
}

/// Counts bytes read from the underlying (possibly compressed) input.
struct Counting<R> {
    inner: R,
    on_read: Box<dyn FnMut(u64)>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_read)(n as u64);
        Ok(n)
    }
}

/// Open an input, unwrapping gzip when it starts with the gzip magic.
/// `on_read` sees raw bytes consumed (compressed bytes for gzip).
pub fn open(input: &Input, on_read: Box<dyn FnMut(u64)>) -> Result<Box<dyn BufRead>, HubbleError> {
    let raw: Box<dyn Read> = match input {
        Input::Stdin => Box::new(io::stdin()),
        Input::File(path) => Box::new(File::open(path).map_err(|source| HubbleError::Io {
            path: input.name(),
            source,
        })?),
    };
    let mut buffered = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: raw,
            on_read,
        },
    );
    let head = buffered.fill_buf().map_err(|source| HubbleError::Io {
        path: input.name(),
        source,
    })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            MultiGzDecoder::new(buffered),
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

/// Read every line of `reader`, sending records to `sink` in batches.
pub fn read_records(
    reader: &mut dyn BufRead,
    name: &str,
    sink: &mut dyn FnMut(&[FlowRecord]) -> Result<(), HubbleError>,
) -> Result<ImportSummary, HubbleError> {
    const BATCH: usize = 8192;
    let mut summary = ImportSummary {
        inputs: 1,
        ..Default::default()
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| HubbleError::Io {
                path: name.to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        summary.lines += 1;
        let outcome = match std::str::from_utf8(&line) {
            Ok(text) => parse_line(text),
            Err(_) => LineOutcome::Skipped("invalid utf-8"),
        };
        match outcome {
            LineOutcome::Record(record) => {
                summary.records += 1;
                if record.count > 0 {
                    summary.connections += 1;
                }
                batch.push(*record);
                if batch.len() >= BATCH {
                    sink(&batch)?;
                    batch.clear();
                }
            }
            LineOutcome::Skipped(reason) => {
                *summary.skipped.entry(reason.to_string()).or_default() += 1
            }
            LineOutcome::Blank => summary.lines -= 1,
        }
    }
    if !batch.is_empty() {
        sink(&batch)?;
    }
    Ok(summary)
}

/// Import every input into the store and flush it. `on_read` reports raw
/// bytes consumed (for a progress bar).
pub fn import(
    inputs: &[Input],
    store: &mut FlowStore,
    on_read: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<ImportSummary, HubbleError> {
    let mut total = ImportSummary::default();
    for input in inputs {
        let progress = Arc::clone(&on_read);
        let mut reader = open(input, Box::new(move |n| progress(n)))?;
        let summary = read_records(&mut *reader, &input.name(), &mut |batch| {
            store.append(batch).map_err(HubbleError::from)
        })?;
        total.merge(&summary);
    }
    store.flush()?;
    Ok(total)
}

/// Import one file into memory (tests, small files).
pub fn read_file(path: &Path) -> Result<(Vec<FlowRecord>, ImportSummary), HubbleError> {
    let mut reader = open(&Input::File(path.to_path_buf()), Box::new(|_| {}))?;
    let mut records = Vec::new();
    let summary = read_records(&mut *reader, &path.display().to_string(), &mut |batch| {
        records.extend_from_slice(batch);
        Ok(())
    })?;
    Ok((records, summary))
}
