//! Writes flows as they come, in the chosen format, and counts what it
//! could not show.

use std::io::{self, BufWriter, Write};

use super::hubble_json;
use super::model::Flow;
use super::table;

/// A table is aligned over this many rows; longer output goes on with the
/// widths found so far, so that a huge file is not held in memory just to
/// align it.
const ALIGN_ROWS: usize = 10_000;
/// Unreadable lines reported one by one before only counting them.
const SKIPS_SHOWN: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Hubble's table, with cnpilot's verdicts.
    Table,
    /// Hubble's `observe -o json` lines (alias `jsonpb`: the same output
    /// since hubble 0.11).
    #[value(alias = "jsonpb")]
    Json,
}

pub struct Printer {
    out: BufWriter<io::StdoutLock<'static>>,
    format: Format,
    /// Flush every line (someone is watching) and use fixed widths.
    follow: bool,
    /// Column widths once decided.
    widths: Option<[usize; 5]>,
    /// Table rows waiting for their widths.
    pending: Vec<[String; 6]>,
    printed: u64,
    untimed: u64,
    skipped: u64,
    lost: u64,
}

impl Printer {
    pub fn new(format: Format, follow: bool) -> Self {
        Self {
            out: BufWriter::new(io::stdout().lock()),
            format,
            follow,
            widths: None,
            pending: Vec::new(),
            printed: 0,
            untimed: 0,
            skipped: 0,
            lost: 0,
        }
    }

    pub fn skipped(&mut self, line: u64, reason: &str) {
        self.skipped += 1;
        if self.skipped <= SKIPS_SHOWN {
            eprintln!("cnpilot observe: skipping line {line}: {reason}");
        }
    }

    pub fn lost(&mut self, n: u64) {
        self.lost += n;
        eprintln!("cnpilot observe: {n} events lost (this client was too slow)");
    }

    /// Follow mode: the header at once (it tells a watcher the stream is
    /// up even when nothing recorded so far matches), fixed widths.
    pub fn start_following(&mut self) -> io::Result<()> {
        if self.format == Format::Table && self.widths.is_none() {
            self.set_widths(table::FOLLOW_WIDTHS)?;
        }
        self.out.flush()
    }

    fn set_widths(&mut self, widths: [usize; 5]) -> io::Result<()> {
        self.widths = Some(widths);
        writeln!(self.out, "{}", table::render(&table::header(), &widths))?;
        for row in std::mem::take(&mut self.pending) {
            writeln!(self.out, "{}", table::render(&row, &widths))?;
        }
        Ok(())
    }

    pub fn flow(&mut self, f: &Flow) -> io::Result<()> {
        match self.format {
            Format::Json => match hubble_json::to_line(f) {
                Some(line) => writeln!(self.out, "{line}")?,
                None => {
                    // Hubble flows need a time, and a made-up one would
                    // mislead whatever reads them.
                    self.untimed += 1;
                    return Ok(());
                }
            },
            Format::Table => {
                let row = table::cells(f);
                match self.widths {
                    Some(widths) => writeln!(self.out, "{}", table::render(&row, &widths))?,
                    None => {
                        self.pending.push(row);
                        if self.pending.len() >= ALIGN_ROWS {
                            self.set_widths(table::widths(&self.pending))?;
                        }
                    }
                }
            }
        }
        self.printed += 1;
        if self.follow {
            self.out.flush()?;
        }
        Ok(())
    }

    /// Prints what waits for alignment, then the counts on stderr.
    pub fn finish(mut self) -> io::Result<()> {
        if self.format == Format::Table && self.widths.is_none() {
            self.set_widths(table::widths(&self.pending))?;
        }
        self.out.flush()?;
        if self.printed == 0 && self.untimed == 0 && !self.follow {
            eprintln!("cnpilot observe: no flow matched");
        }
        if self.skipped > SKIPS_SHOWN {
            eprintln!(
                "cnpilot observe: skipped {} unreadable line(s) in all",
                self.skipped
            );
        }
        if self.untimed > 0 {
            eprintln!(
                "cnpilot observe: left {} flow(s) without a wall-clock time out of -o json \
                 (lines of an agent that wrote only the monotonic time_ns)",
                self.untimed
            );
        }
        if self.lost > 0 {
            eprintln!("cnpilot observe: {} events lost in all", self.lost);
        }
        Ok(())
    }
}
