//! Where flows come from: the agent's socket (live), an events file (read
//! once, or tailed), or flow stores (read sorted by time, or polled for
//! new segments).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cnpilot_learner::{store, FlowRecord};

use super::event_line::{self, Line};
use super::model::{self, Flow};

/// How often a followed file is checked for appended lines.
const TAIL_POLL: Duration = Duration::from_millis(200);

/// One thing a source produced.
#[derive(Debug)]
pub enum Item {
    Flow(Box<Flow>),
    /// The agent dropped this many events for this client.
    Lost(u64),
    /// A line that is not a usable event: its number and why.
    Skipped(u64, String),
    /// The agent refused the request (`{"error":"…"}`).
    AgentError(String),
}

/// Receives items; an error stops the source.
pub type Sink<'a> = dyn FnMut(Item) -> anyhow::Result<()> + 'a;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn item_of(number: u64, bytes: &[u8]) -> Option<Item> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim(),
        Err(_) => return Some(Item::Skipped(number, "invalid utf-8".into())),
    };
    if text.is_empty() {
        return None;
    }
    Some(match event_line::parse(text) {
        Ok(Line::Flow(f)) => Item::Flow(f),
        Ok(Line::Lost(n)) => Item::Lost(n),
        Ok(Line::Other(kind)) => Item::Skipped(number, format!("unknown event type `{kind}`")),
        Ok(Line::AgentError(error)) => Item::AgentError(error),
        Err(reason) => Item::Skipped(number, reason),
    })
}

/// Feed every complete line of `reader` to `sink`; returns the bytes
/// consumed and the number of lines. A last line without its newline is
/// taken too when `partial_last` (the file is complete), else left unread.
fn feed_lines(
    reader: &mut dyn BufRead,
    first_line: u64,
    partial_last: bool,
    sink: &mut Sink<'_>,
) -> anyhow::Result<(u64, u64)> {
    let mut buf = Vec::new();
    let (mut consumed, mut number) = (0u64, first_line);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 || (!partial_last && buf.last() != Some(&b'\n')) {
            return Ok((consumed, number - first_line));
        }
        consumed += n as u64;
        number += 1;
        match item_of(number, &buf) {
            Some(Item::AgentError(error)) => {
                sink(Item::Skipped(number, format!("an agent's error: {error}")))?
            }
            Some(item) => sink(item)?,
            None => {}
        }
    }
}

/// Every line of an events file, once.
pub fn read_events(path: &Path, sink: &mut Sink<'_>) -> anyhow::Result<()> {
    feed_lines(&mut BufReader::new(open(path)?), 0, true, sink)
        .with_context(|| format!("reading events file {}", path.display()))?;
    Ok(())
}

/// An events file being followed (like `tail -f`).
pub struct Tail {
    path: PathBuf,
    offset: u64,
    lines: u64,
}

impl Tail {
    /// Feed the file's complete lines to `history` and remember where they
    /// end.
    pub fn start(path: &Path, history: &mut Sink<'_>) -> anyhow::Result<Self> {
        let file = open(path)?;
        let (offset, lines) = feed_lines(&mut BufReader::new(file), 0, false, history)
            .with_context(|| format!("reading events file {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            offset,
            lines,
        })
    }

    /// The lines appended from now on, forever. A file that shrinks was
    /// rotated or truncated: it is read again from its start.
    pub fn follow(mut self, sink: &mut Sink<'_>) -> anyhow::Result<()> {
        let path = self.path.as_path();
        let mut file = open(path)?;
        loop {
            let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if len < self.offset {
                eprintln!(
                    "cnpilot observe: {} shrank; reading it again from the start",
                    path.display()
                );
                file = open(path)?;
                (self.offset, self.lines) = (0, 0);
            }
            if len > self.offset {
                file.seek(SeekFrom::Start(self.offset))
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut chunk = BufReader::new((&mut file).take(len - self.offset));
                let (n, l) = feed_lines(&mut chunk, self.lines, false, sink)
                    .with_context(|| format!("reading events file {}", path.display()))?;
                self.offset += n;
                self.lines += l;
            }
            std::thread::sleep(TAIL_POLL);
        }
    }
}

fn open(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("opening events file {}", path.display()))
}

/// The agent's event stream: the request line, then event lines until the
/// agent goes away. Flows without a wall-clock time get the time they
/// arrived, which on a live stream is off by the agent's latency only.
pub fn live(socket: &Path, sink: &mut Sink<'_>) -> anyhow::Result<()> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                "; is `cnpilot agent` running? Start it, or read recorded flows with --events FILE or --store DIR"
            }
            io::ErrorKind::PermissionDenied => "; the agent's socket needs the agent's user (root)",
            _ => "",
        };
        anyhow::anyhow!("cannot connect to the agent at {}: {e}{hint}", socket.display())
    })?;
    stream
        .write_all(b"{\"op\":\"events\"}\n")
        .with_context(|| format!("asking the agent at {} for events", socket.display()))?;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading events from {}", socket.display()))?;
        if n == 0 {
            eprintln!(
                "cnpilot observe: the agent at {} closed the stream",
                socket.display()
            );
            return Ok(());
        }
        number += 1;
        match item_of(number, &buf) {
            Some(Item::Flow(mut f)) => {
                f.time_ns.get_or_insert_with(now_ns);
                sink(Item::Flow(f))?;
            }
            Some(Item::AgentError(error)) => {
                bail!(
                    "the agent at {} refused the event stream: {error}",
                    socket.display()
                )
            }
            Some(item) => sink(item)?,
            None => {}
        }
    }
}

/// Flow stores, read once, then polled for new segments with --follow.
pub struct Stores {
    dirs: Vec<PathBuf>,
    /// Segments already read (or skipped as unreadable).
    seen: HashSet<PathBuf>,
}

/// How often followed stores are checked for new segments (the agent
/// writes one every 10 s).
const STORE_POLL: Duration = Duration::from_secs(1);

fn read_segment(segment: &PathBuf) -> anyhow::Result<Vec<FlowRecord>> {
    let frame = store::lazy_segments(std::slice::from_ref(segment))?
        .collect()
        .with_context(|| format!("reading {}", segment.display()))?;
    store::frame_to_records(&frame).with_context(|| format!("reading {}", segment.display()))
}

impl Stores {
    /// Every record of the stores since `since_ns` that `keep` accepts, as
    /// flows sorted by time. Reads a segment at a time so that only the
    /// kept flows stay in memory.
    pub fn read(
        dirs: &[PathBuf],
        since_ns: Option<i64>,
        keep: &dyn Fn(&Flow) -> bool,
    ) -> anyhow::Result<(Vec<Flow>, Self)> {
        let mut seen = HashSet::new();
        for dir in dirs {
            if !dir.is_dir() {
                bail!("{}: no such flow store directory", dir.display());
            }
            // Listed before reading: a segment written meanwhile is new.
            seen.extend(store::segment_files(dir)?);
        }
        let (segments, report) = store::readable_segments(dirs, since_ns)?;
        for (path, reason) in &report.skipped {
            eprintln!(
                "cnpilot observe: warning: skipped unreadable segment {}: {reason}",
                path.display()
            );
        }
        let mut flows = Vec::new();
        for segment in segments.iter().filter(|s| seen.contains(*s)) {
            let records = read_segment(segment)?;
            flows.extend(records.iter().map(model::from_record).filter(|f| keep(f)));
        }
        flows.sort_by_key(|f| f.time_ns);
        let stores = Self {
            dirs: dirs.to_vec(),
            seen,
        };
        Ok((flows, stores))
    }

    /// The records of segments written from now on, forever, sorted by
    /// time within each poll. Records the writer has not turned into a
    /// segment yet (its write-ahead file) are not visible to readers.
    pub fn follow(
        mut self,
        keep: &dyn Fn(&Flow) -> bool,
        sink: &mut dyn FnMut(&Flow) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        loop {
            std::thread::sleep(STORE_POLL);
            let mut flows = Vec::new();
            for dir in &self.dirs {
                for segment in store::segment_files(dir)? {
                    if !self.seen.insert(segment.clone()) {
                        continue;
                    }
                    match read_segment(&segment) {
                        Ok(records) => {
                            flows.extend(records.iter().map(model::from_record).filter(|f| keep(f)))
                        }
                        Err(e) => eprintln!("cnpilot observe: warning: skipped segment: {e:#}"),
                    }
                }
            }
            flows.sort_by_key(|f| f.time_ns);
            flows.iter().try_for_each(&mut *sink)?;
        }
    }
}
