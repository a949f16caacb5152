//! `cnpilot observe`: the flows the agent sees, as Hubble shows them, live
//! from the agent's socket or from what was recorded (an events file, flow
//! stores); a table for people or Hubble's JSON for tools.

mod event_line;
mod filter;
mod hubble_json;
mod model;
mod printer;
mod source;
mod table;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use self::filter::{Filter, PodRef};
use self::model::{Flow, Kind, Verdict};
use self::printer::{Format, Printer};
use self::source::Item;
use crate::commands::learn::parse_time;
use crate::Outcome;

const SOCKET_ENV: &str = "CNPILOT_AGENT_SOCKET";

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
  cnpilot observe --store store/ --follow --verdict would-drop

  # Hubble's JSON, for jq or for `import hubble` elsewhere
  cnpilot observe --events events.jsonl -o json | jq -c '.flow.verdict'
  cnpilot observe --events events.jsonl -o json > flows.json
  cnpilot import hubble flows.json --store other-store/

Verdicts: the table shows cnpilot's (FORWARDED, WOULD-DROP, DROPPED,
REDIRECTED, L7-WOULD-DENY, L7-DENIED, UNPARSEABLE); -o json writes Hubble's:
would-drop and l7-would-deny are AUDIT (Cilium's audit mode), dropped and
l7-denied DROPPED, the rest FORWARDED or REDIRECTED. Times are UTC.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ObserveArgs {
    /// The agent's socket: live events (the default source; implies
    /// --follow). Default: $CNPILOT_AGENT_SOCKET, else the socket of the
    /// agent on --pin-dir (/run/cnpilot/agent.sock for the default pins).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["events", "store"])]
    socket: Option<PathBuf>,
    /// The live agent's pin directory (its socket is named after it).
    #[arg(long, default_value = cnpilot_bpf::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// An events file written by `cnpilot agent --events` / `record --events`.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    events: Option<PathBuf>,
    /// A flow store directory; repeat to read several nodes' stores together.
    #[arg(long, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Keep printing what is appended to --events FILE (like `tail -f`), or
    /// the segments a writer adds to --store DIR (every 10 s for the agent).
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

fn source_of(args: &ObserveArgs) -> anyhow::Result<Source> {
    if let Some(events) = &args.events {
        return Ok(Source::Events(events.clone()));
    }
    if !args.store.is_empty() {
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
        .unwrap_or_else(|| cnpilot_agent::api::socket_for(&args.pin_dir));
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

/// Recorded flows that match, or the last N of them.
struct History {
    flows: VecDeque<Flow>,
    last: Option<usize>,
}

impl History {
    fn new(last: Option<usize>) -> Self {
        Self {
            flows: VecDeque::new(),
            last,
        }
    }

    /// Keep what matches, report the rest.
    fn add(&mut self, printer: &mut Printer, filter: &Filter, item: Item) {
        match item {
            Item::Flow(f) if filter.matches(&f) => {
                if self.last == Some(self.flows.len()) {
                    self.flows.pop_front();
                }
                if self.last != Some(0) {
                    self.flows.push_back(*f);
                }
            }
            other => report(printer, other),
        }
    }

    fn print(self, printer: &mut Printer) -> std::io::Result<()> {
        self.flows.iter().try_for_each(|f| printer.flow(f))
    }
}

pub fn run(args: ObserveArgs) -> anyhow::Result<Outcome> {
    let source = source_of(&args)?;
    let filter = filter_of(&args)?;
    let follow = args.follow || matches!(source, Source::Live(_));
    let mut printer = Printer::new(args.output, follow);
    if follow {
        printer.start_following()?;
    }
    match source {
        Source::Stores(dirs) => {
            let keep = |f: &Flow| filter.matches(f);
            let (flows, stores) = source::Stores::read(&dirs, filter.since_ns, &keep)?;
            let skip = args.last.map_or(0, |n| flows.len().saturating_sub(n));
            for f in &flows[skip..] {
                printer.flow(f)?;
            }
            if args.follow {
                stores.follow(&keep, &mut |f| Ok(printer.flow(f)?))?;
            }
        }
        // Without --last, nothing needs keeping: print as it is read.
        Source::Events(path) if !args.follow && args.last.is_none() => {
            source::read_events(&path, &mut |item| stream(&mut printer, &filter, item))?;
        }
        Source::Events(path) if !args.follow => {
            let mut history = History::new(args.last);
            source::read_events(&path, &mut |item| {
                history.add(&mut printer, &filter, item);
                Ok(())
            })?;
            history.print(&mut printer)?;
        }
        Source::Events(path) => {
            let mut history = History::new(args.last);
            let tail = source::Tail::start(&path, &mut |item| {
                history.add(&mut printer, &filter, item);
                Ok(())
            })?;
            history.print(&mut printer)?;
            tail.follow(&mut |item| stream(&mut printer, &filter, item))?;
        }
        Source::Live(socket) => {
            source::live(&socket, &mut |item| stream(&mut printer, &filter, item))?;
        }
    }
    printer.finish()?;
    Ok(Outcome::Success)
}

/// What is not a flow: counted and shown on stderr.
fn report(printer: &mut Printer, item: Item) {
    match item {
        Item::Flow(_) => {}
        Item::Lost(n) => printer.lost(n),
        Item::Skipped(line, reason) => printer.skipped(line, &reason),
        // Sources turn it into an error or a skipped line before this.
        Item::AgentError(error) => printer.skipped(0, &error),
    }
}

/// Print what matches as it comes.
fn stream(printer: &mut Printer, filter: &Filter, item: Item) -> anyhow::Result<()> {
    match item {
        Item::Flow(f) if filter.matches(&f) => printer.flow(&f)?,
        other => report(printer, other),
    }
    Ok(())
}

/// One of the agent's event lines as a flow record, through the Hubble
/// flow that `observe -o json` writes and `import hubble` reads (the round
/// trip the tests hold to): one conversion, not a second one to drift.
/// `None` for lines that are not flows or carry no time.
pub fn event_to_record(line: &serde_json::Value) -> Option<cnpilot_learner::FlowRecord> {
    let event_line::Line::Flow(flow) = event_line::parse(&line.to_string()).ok()? else {
        return None;
    };
    match cnpilot_learner::hubble::parse_line(&hubble_json::to_line(&flow)?) {
        cnpilot_learner::hubble::LineOutcome::Record(record) => Some(*record),
        _ => None,
    }
}
