//! `cnpilot observe`: the flows the agent sees, as Hubble shows them, live
//! from the agent's socket or from what was recorded (an events file, flow
//! stores); a table for people or Hubble's JSON for tools.

mod event_line;
mod filter;
mod hubble_json;
mod model;
mod source;
mod table;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};

use self::filter::{Filter, PodRef};
use self::model::{Flow, Kind, Verdict};
use self::source::Item;
use crate::commands::learn::parse_time;
use crate::Outcome;

const DEFAULT_SOCKET: &str = "/run/cnpilot/agent.sock";
const SOCKET_ENV: &str = "CNPILOT_AGENT_SOCKET";
/// Unreadable lines reported one by one before only counting them.
const SKIPS_SHOWN: u64 = 3;

const EXAMPLES: &str = "\
Examples:
  # Live, from the running agent (needs the agent's socket; Ctrl-C stops)
  cnpilot observe
  cnpilot observe -n payments --verdict would-drop,dropped,l7-denied

  # What a `record` / `agent --events` run wrote, then what it appends
  cnpilot observe --events events.jsonl
  cnpilot observe --events events.jsonl --follow --type http

  # A flow store (`record --store`, `import hubble`), last 20 flows of the last hour
  cnpilot observe --store store/ --since 1h --last 20
  cnpilot observe --store store/ --from-pod web/frontend-app --to-namespace payments

  # Hubble's JSON, for jq or for `import hubble` elsewhere
  cnpilot observe --events events.jsonl -o json | jq -c '.flow.verdict'
  cnpilot observe --events events.jsonl -o json > flows.json
  cnpilot import hubble flows.json --store other-store/

Verdicts: the table shows cnpilot's (FORWARDED, WOULD-DROP, DROPPED,
REDIRECTED, L7-WOULD-DENY, L7-DENIED, UNPARSEABLE); -o json writes Hubble's:
would-drop and l7-would-deny are AUDIT (Cilium's audit mode), dropped and
l7-denied DROPPED, the rest FORWARDED or REDIRECTED. Times are UTC.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ObserveArgs {
    /// The agent's socket: live events (the default source; implies
    /// --follow). Default: $CNPILOT_AGENT_SOCKET, else /run/cnpilot/agent.sock.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["events", "store"])]
    socket: Option<PathBuf>,
    /// An events file written by `cnpilot agent --events` / `record --events`.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    events: Option<PathBuf>,
    /// A flow store directory; repeat to read several nodes' stores together.
    #[arg(long, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Keep printing what is appended to --events FILE (like `tail -f`).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only flows since this time: a duration back from now (30s, 5m, 1h,
    /// 7d) or RFC 3339 (2026-12-04T21:00:00Z).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Only flows from this pod: NAMESPACE/POD (the workload name where the
    /// source knows no pods: flow stores, older agents).
    #[arg(long, value_name = "NS/POD")]
    from_pod: Option<String>,
    /// Only flows to this pod: NAMESPACE/POD (as --from-pod).
    #[arg(long, value_name = "NS/POD")]
    to_pod: Option<String>,
    /// Only flows from this namespace.
    #[arg(long, value_name = "NS")]
    from_namespace: Option<String>,
    /// Only flows to this namespace.
    #[arg(long, value_name = "NS")]
    to_namespace: Option<String>,
    /// Only flows with this namespace on either side.
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// Only these verdicts (repeat, or a comma list).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "V")]
    verdict: Vec<Verdict>,
    /// Only these types (repeat, or a comma list).
    #[arg(long = "type", value_enum, value_delimiter = ',', value_name = "TYPE")]
    kind: Vec<Kind>,
    /// Only the last N matching flows of what was recorded (with --follow:
    /// of what was there before following).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// A table for people, or one Hubble flow JSON object per line.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

enum Source {
    Live(PathBuf),
    Events(PathBuf),
    Stores(Vec<PathBuf>),
}

/// Writes flows as they come and counts what it could not show.
struct Printer {
    out: BufWriter<io::StdoutLock<'static>>,
    format: Format,
    /// Fixed column widths and a flush per line while following.
    follow: bool,
    header_done: bool,
    printed: u64,
    untimed: u64,
    skipped: u64,
    lost: u64,
}

impl Printer {
    fn new(format: Format, follow: bool) -> Self {
        Self {
            out: BufWriter::new(io::stdout().lock()),
            format,
            follow,
            header_done: false,
            printed: 0,
            untimed: 0,
            skipped: 0,
            lost: 0,
        }
    }

    fn skipped(&mut self, line: u64, reason: &str) {
        self.skipped += 1;
        if self.skipped <= SKIPS_SHOWN {
            eprintln!("cnpilot observe: skipping line {line}: {reason}");
        }
    }

    fn lost(&mut self, n: u64) {
        self.lost += n;
        eprintln!("cnpilot observe: {n} events lost (this client was too slow)");
    }

    /// Prints a batch aligned to its widest cells (table), or line by line.
    fn batch(&mut self, flows: &[Flow]) -> io::Result<()> {
        if self.format == Format::Json || self.follow {
            if self.format == Format::Table {
                // The header tells a follower the stream is up even when
                // nothing recorded so far matches.
                self.header()?;
            }
            for f in flows {
                self.flow(f)?;
            }
            return self.out.flush();
        }
        let rows: Vec<[String; 6]> = flows.iter().map(table::cells).collect();
        let header = table::header();
        let widths = table::widths(&rows);
        for row in std::iter::once(&header).chain(&rows) {
            writeln!(self.out, "{}", table::render(row, &widths))?;
        }
        self.printed += rows.len() as u64;
        self.header_done = true;
        self.out.flush()
    }

    fn flow(&mut self, f: &Flow) -> io::Result<()> {
        match self.format {
            Format::Json => match hubble_json::to_line(f) {
                Some(line) => writeln!(self.out, "{line}")?,
                None => {
                    self.untimed += 1;
                    return Ok(());
                }
            },
            Format::Table => {
                self.header()?;
                writeln!(
                    self.out,
                    "{}",
                    table::render(&table::cells(f), &table::FOLLOW_WIDTHS)
                )?;
            }
        }
        self.printed += 1;
        if self.follow {
            self.out.flush()?;
        }
        Ok(())
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            let header = table::render(&table::header(), &table::FOLLOW_WIDTHS);
            writeln!(self.out, "{header}")?;
            self.header_done = true;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
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

fn source_of(args: &ObserveArgs) -> anyhow::Result<Source> {
    if let Some(events) = &args.events {
        return Ok(Source::Events(events.clone()));
    }
    if !args.store.is_empty() {
        if args.follow {
            bail!("--follow reads what is appended to an events file or the agent's socket; a flow store is read once (use --events FILE --follow, or no source for live events)");
        }
        return Ok(Source::Stores(args.store.clone()));
    }
    if args.last.is_some() {
        bail!("--last N picks from recorded flows: use it with --events FILE or --store DIR");
    }
    let socket = args
        .socket
        .clone()
        .or_else(|| {
            std::env::var_os(SOCKET_ENV)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    Ok(Source::Live(socket))
}

fn filter_of(args: &ObserveArgs) -> anyhow::Result<Filter> {
    Ok(Filter {
        since_ns: parse_time("--since", args.since.as_deref())?,
        from_pod: args
            .from_pod
            .as_deref()
            .map(|p| PodRef::parse("--from-pod", p))
            .transpose()?,
        to_pod: args
            .to_pod
            .as_deref()
            .map(|p| PodRef::parse("--to-pod", p))
            .transpose()?,
        from_namespace: args.from_namespace.clone(),
        to_namespace: args.to_namespace.clone(),
        namespace: args.namespace.clone(),
        verdicts: args.verdict.clone(),
        kinds: args.kind.clone(),
    })
}

/// The last `n` flows (all of them with `None`).
fn last_n(flows: impl IntoIterator<Item = Flow>, n: Option<usize>) -> Vec<Flow> {
    let Some(n) = n else {
        return flows.into_iter().collect();
    };
    let mut window = VecDeque::with_capacity(n.min(1 << 16));
    for f in flows {
        if window.len() == n {
            window.pop_front();
        }
        if n > 0 {
            window.push_back(f);
        }
    }
    window.into()
}

pub fn run(args: ObserveArgs) -> anyhow::Result<Outcome> {
    let source = source_of(&args)?;
    let filter = filter_of(&args)?;
    let follow = args.follow || matches!(source, Source::Live(_));
    let mut printer = Printer::new(args.output, follow);
    match source {
        Source::Stores(dirs) => {
            let flows = source::read_stores(&dirs, filter.since_ns, &|f| filter.matches(f))?;
            printer.batch(&last_n(flows, args.last))?;
        }
        Source::Events(path) if !args.follow => {
            let mut flows = Vec::new();
            source::read_events(&path, &mut |item| {
                collect(&mut printer, &filter, &mut flows, item);
                Ok(())
            })?;
            printer.batch(&last_n(flows, args.last))?;
        }
        Source::Events(path) => {
            let mut history = Vec::new();
            let tail = source::Tail::start(&path, &mut |item| {
                collect(&mut printer, &filter, &mut history, item);
                Ok(())
            })?;
            printer.batch(&last_n(history, args.last))?;
            tail.follow(&mut |item| stream(&mut printer, &filter, item))?;
        }
        Source::Live(socket) => {
            source::live(&socket, &mut |item| stream(&mut printer, &filter, item))?;
        }
    }
    printer.finish()?;
    Ok(Outcome::Success)
}

/// History: keep what matches for the batch, report the rest.
fn collect(printer: &mut Printer, filter: &Filter, flows: &mut Vec<Flow>, item: Item) {
    match item {
        Item::Flow(f) if filter.matches(&f) => flows.push(*f),
        Item::Flow(_) => {}
        Item::Lost(n) => printer.lost(n),
        Item::Skipped(line, reason) => printer.skipped(line, &reason),
        // Sources turn it into an error or a skipped line before this.
        Item::AgentError(error) => printer.skipped(0, &error),
    }
}

/// Following: print what matches as it comes.
fn stream(printer: &mut Printer, filter: &Filter, item: Item) -> anyhow::Result<()> {
    match item {
        Item::Flow(f) if filter.matches(&f) => printer.flow(&f)?,
        Item::Flow(_) => {}
        Item::Lost(n) => printer.lost(n),
        Item::Skipped(line, reason) => printer.skipped(line, &reason),
        // Sources turn it into an error or a skipped line before this.
        Item::AgentError(error) => printer.skipped(0, &error),
    }
    Ok(())
}
