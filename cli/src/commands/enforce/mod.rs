//! `cnpilot enforce`: one namespace from audit to enforcing in stages
//! (proposed → audit-soak → enforce → watch → done), rolled back to audit
//! by itself when the watch sees the policy break something.

mod addition;
pub mod judge;
pub mod state;
mod status;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use cnpilot_bpf::{Mode, Tables, DEFAULT_PIN_DIR};
use serde_json::Value;

use crate::commands::agent::{ns_id, parse_duration};
use crate::Outcome;
use judge::{Judge, Observed};
use state::{NamespaceState, Record, Stage};
pub use status::{run_rollback, run_status, RollbackArgs, StatusArgs};

/// Where the stage machine keeps its records (see `state`).
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// bpffs directory of the agent's pinned maps (modes are flipped there).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The agent's socket; by default the one of `--pin-dir`'s agent.
    #[arg(long, env = "CNPILOT_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Durable staged-enforce records, one directory per namespace.
    #[arg(long, env = "CNPILOT_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl StateArgs {
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| cnpilot_agent::api::socket_for(&self.pin_dir))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
Stages (each written to STATE/enforce/NS/ before it takes effect):
  proposed    the policies are checked and frozen (a revision hash)
  audit-soak  the agent loads them, the namespace stays in audit; the stage
              ends after --soak with no would-drop of a flow not seen before
              (each new one starts the window over)
  enforce     one map update flips the namespace to enforcing
  watch       for --watch: a drop of a flow seen passing during learning or
              soak, or more than --max-new-drops drops of never-seen flows
              within --window, sends it back to audit at once (rolled-back)
  done        enforcing, watch passed

Rerunning is safe: a run resumes from the recorded stage (a soak window
starts over, a watch keeps its deadline); a finished revision is not redone.
Exit: 0 done, 1 rolled back or refused (reason on stderr), 2 bad input.

Example:
  cnpilot enforce -n payments --policies proposed/ --store flows/ \\
      --soak 10m --watch 30m --max-new-drops 5 --min-evidence 24h")]
pub struct EnforceArgs {
    /// The namespace to enforce.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// The proposal: a directory of CiliumNetworkPolicy YAML (e.g.
    /// `cnpilot recommend --out`'s); only the namespace's own are staged.
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// Flow stores the proposal was learned from: the flows they hold count
    /// as seen passing, and their time span is the evidence.
    #[arg(long, value_name = "DIR")]
    pub store: Vec<PathBuf>,
    /// Clean audit window required before the flip.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub soak: Duration,
    /// How long to watch after the flip before `done`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub watch: Duration,
    /// Drops of never-seen flows tolerated within --window.
    #[arg(long, default_value_t = 0)]
    pub max_new_drops: usize,
    /// The sliding window of --max-new-drops.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,
    /// Refuse unless the stores observed the namespace for at least this
    /// long (`0` to accept any).
    #[arg(long, default_value = "1h", value_parser = parse_duration_or_zero)]
    pub min_evidence: Duration,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim_end_matches(['s', 'm', 'h']) == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// Prints a transition line with its wall-clock time.
fn say(ns: &str, text: &str) {
    eprintln!("{} {ns}: {text}", state::rfc3339(state::now_unix_ns()));
}

/// The proposal's files that speak for `namespace` (a recommend output
/// holds every namespace's).
fn proposal_files(dir: &Path, namespace: &str) -> anyhow::Result<Vec<PathBuf>> {
    let set = cnpilot_recommender::load_paths(&[dir])
        .with_context(|| format!("loading the proposal {}", dir.display()))?;
    let mut files: Vec<PathBuf> = set
        .policies
        .iter()
        .filter(|p| p.policy.scope_namespace() == Some(namespace))
        .map(|p| PathBuf::from(&p.file))
        .collect();
    files.sort();
    files.dedup();
    anyhow::ensure!(
        !files.is_empty(),
        "{} holds no CiliumNetworkPolicy of namespace {namespace}",
        dir.display()
    );
    Ok(files)
}

/// What the stores say about the namespace: the flows seen, and for how
/// long it was observed.
fn evidence(stores: &[PathBuf], namespace: &str, judge: &mut Judge) -> anyhow::Result<Duration> {
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for dir in stores {
        let records = cnpilot_learner::store::read_all(dir)
            .with_context(|| format!("reading flow store {}", dir.display()))?;
        for r in records
            .iter()
            .filter(|r| r.src.namespace == namespace || r.dst.namespace == namespace)
        {
            first = first.min(r.window_start_ns);
            last = last.max(r.window_end_ns);
            judge.learn(judge::record_key(r));
        }
    }
    Ok(if last > first {
        Duration::from_nanos(u64::try_from(last - first).unwrap_or(0))
    } else {
        Duration::ZERO
    })
}

enum Msg {
    Line(Value),
    Lost(u64),
    Connected,
    Disconnected(String),
}

/// The agent's stream on a thread, reconnecting when the agent restarts.
fn events(socket: PathBuf) -> Receiver<Msg> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || loop {
        use std::io::BufRead;
        match cnpilot_agent::api::subscribe(&socket) {
            Ok(reader) => {
                if tx.send(Msg::Connected).is_err() {
                    return;
                }
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    let Ok(value) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    let msg = if value["type"] == "lost" {
                        Msg::Lost(value["count"].as_u64().unwrap_or(0))
                    } else {
                        Msg::Line(value)
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                if tx
                    .send(Msg::Disconnected("the agent closed its stream".into()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                if tx.send(Msg::Disconnected(format!("{e:#}"))).is_err() {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    rx
}

struct Controller {
    ns: NamespaceState,
    record: Record,
    tables: Tables,
    socket: PathBuf,
    judge: Judge,
    rx: Receiver<Msg>,
    connected: bool,
}

impl Controller {
    fn transition(&mut self, stage: Stage, event: &str) -> anyhow::Result<()> {
        let old = self.record.stage;
        self.record.stage = stage;
        self.record.since_unix_ns = state::now_unix_ns();
        self.record.since = state::rfc3339(self.record.since_unix_ns);
        self.ns.save(&self.record, event)?;
        if old == stage {
            say(&self.ns.namespace, &format!("{stage} ({event})"));
        } else {
            say(&self.ns.namespace, &format!("{old} -> {stage} ({event})"));
        }
        Ok(())
    }

    fn set_mode(&mut self, mode: Mode) -> anyhow::Result<()> {
        self.tables
            .set_mode(ns_id(&self.ns.namespace), mode)
            .with_context(|| format!("setting {} to {mode}", self.ns.namespace))?;
        Ok(())
    }

    fn mode(&self) -> anyhow::Result<Mode> {
        Ok(self.tables.mode(ns_id(&self.ns.namespace))?)
    }

    /// Remembers a flow soak saw, durably: a resumed watch judges with it.
    fn remember(&self, kind: &str, key: &str) -> anyhow::Result<()> {
        self.ns.append(
            &self.ns.dir.join("seen.jsonl"),
            &serde_json::json!({ kind: key, "revision": self.record.revision }),
        )
    }

    fn load_seen(&mut self) -> anyhow::Result<()> {
        let path = self.ns.dir.join("seen.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue; // a torn last line after a crash
            };
            if v["revision"] != self.record.revision.as_str() {
                continue;
            }
            if let Some(k) = v["passed"].as_str() {
                self.judge.soak_passed.insert(k.to_string());
            }
            if let Some(k) = v["denied"].as_str() {
                self.judge.soak_denied.insert(k.to_string());
            }
        }
        Ok(())
    }

    /// The next event of this namespace, or `None` after `wait`.
    fn next(&mut self, wait: Duration) -> anyhow::Result<Option<(Observed, Value)>> {
        match self.rx.recv_timeout(wait) {
            Ok(Msg::Line(line)) => {
                Ok(judge::observe(&line, &self.ns.namespace).map(|ev| (ev, line)))
            }
            Ok(Msg::Lost(n)) => {
                say(
                    &self.ns.namespace,
                    &format!("warning: {n} events lost between the agent and this controller"),
                );
                Ok(None)
            }
            Ok(Msg::Connected) => {
                self.connected = true;
                Ok(None)
            }
            Ok(Msg::Disconnected(why)) => {
                if self.connected {
                    say(
                        &self.ns.namespace,
                        &format!("warning: lost the agent ({why}); reconnecting"),
                    );
                }
                self.connected = false;
                Ok(None)
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the event thread ended"),
        }
    }

    fn wait_connected(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.connected {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no agent at {} (start `cnpilot agent` on this node first)",
                self.socket.display()
            );
            self.next(Duration::from_millis(100))?;
        }
        Ok(())
    }

    fn soak(&mut self, soak: Duration) -> anyhow::Result<()> {
        let summary = cnpilot_agent::api::reload(&self.socket)?;
        say(&self.ns.namespace, &format!("agent reloaded: {summary}"));
        self.set_mode(Mode::Audit)?;
        let mut window = Instant::now();
        let bar = stage_bar(soak, "soak");
        loop {
            let was_connected = self.connected;
            if let Some((ev, _)) = self.next(Duration::from_millis(200))? {
                let passed = ev.outcome == judge::Outcome::Passed;
                if self.judge.soak(&ev) {
                    self.remember(if passed { "passed" } else { "denied" }, &ev.key)?;
                    if !passed {
                        self.record.soak_restarts += 1;
                        self.ns.save(&self.record, "soak window restarted")?;
                        bar.suspend(|| {
                            say(
                                &self.ns.namespace,
                                &format!(
                                    "soak: new would-drop {}; the clean window starts over",
                                    ev.key
                                ),
                            );
                        });
                        window = Instant::now();
                    }
                }
            }
            if !self.connected || !was_connected {
                // Events may have been missed: the window cannot vouch for them.
                window = Instant::now();
            }
            bar.set_position(window.elapsed().as_millis() as u64);
            if window.elapsed() >= soak {
                bar.finish_and_clear();
                return Ok(());
            }
        }
    }
}

fn stage_bar(len: Duration, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{elapsed_precise}}] {{wide_bar}} {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

pub fn run(args: EnforceArgs) -> anyhow::Result<Outcome> {
    let namespace = args.namespace.clone();
    let ns = NamespaceState::new(&args.state.state_dir, &namespace);
    let _lock = state::lock(&ns)?;
    let files = proposal_files(&args.policies, &namespace)?;
    let revision = state::revision_of_files(&files)?;
    let existing = ns.load()?;
    let resume = match &existing {
        Some(r) if r.stage.in_progress() && r.revision != revision => anyhow::bail!(
            "{namespace} is in stage {} with revision {}, and {} is revision {revision}: \
             finish that run (rerun it with its policies) or `cnpilot rollback -n {namespace}` first",
            r.stage,
            r.revision,
            args.policies.display()
        ),
        Some(r) if r.stage == Stage::Done && r.revision == revision => {
            say(
                &namespace,
                &format!("revision {revision} is already done (since {})", r.since),
            );
            return Ok(Outcome::Success);
        }
        Some(r) if r.stage.in_progress() && r.stage != Stage::Proposed => Some(r.clone()),
        _ => None,
    };
    let mut judge = Judge::default();
    let observed = evidence(&args.store, &namespace, &mut judge)?;
    let tables = Tables::open_pinned(&args.state.pin_dir).with_context(|| {
        format!(
            "opening the pinned maps in {} (is `cnpilot agent` running?)",
            args.state.pin_dir.display()
        )
    })?;
    let socket = args.state.socket();
    let mut c = Controller {
        record: resume.clone().unwrap_or(Record {
            namespace: namespace.clone(),
            stage: Stage::Proposed,
            since: String::new(),
            since_unix_ns: 0,
            revision: revision.clone(),
            reason: None,
            soak_restarts: 0,
        }),
        ns,
        tables,
        rx: events(socket.clone()),
        socket,
        judge,
        connected: false,
    };
    c.wait_connected()?;
    match &resume {
        Some(r) => {
            c.load_seen()?;
            say(
                &namespace,
                &format!(
                    "resuming revision {revision} in stage {} (since {}); {} flows seen in soak",
                    r.stage,
                    r.since,
                    c.judge.soak_passed.len() + c.judge.soak_denied.len()
                ),
            );
        }
        None => {
            c.transition(Stage::Proposed, &format!("{} policy files", files.len()))?;
            if observed < args.min_evidence {
                c.record.reason = Some(format!(
                    "thin evidence: the stores observed {namespace} for {}, --min-evidence is {}",
                    human(observed),
                    human(args.min_evidence)
                ));
                c.ns.save(&c.record, "refused")?;
                say(
                    &namespace,
                    &format!("refused: {}", c.record.reason.as_deref().unwrap_or("")),
                );
                return Ok(Outcome::Finding);
            }
            c.ns.freeze_policies(&files)?;
            let _ = std::fs::remove_file(c.ns.dir.join("seen.jsonl"));
            say(
                &namespace,
                &format!(
                    "{} flows learned over {}; proposal revision {revision}",
                    c.judge.learned(),
                    human(observed)
                ),
            );
            c.transition(Stage::AuditSoak, &format!("soak {}", human(args.soak)))?;
        }
    }
    if c.record.stage == Stage::AuditSoak {
        c.soak(args.soak)?;
        c.transition(Stage::Enforce, "clean soak window")?;
    }
    if c.record.stage == Stage::Enforce {
        c.set_mode(Mode::Enforce)?;
        c.transition(Stage::Watch, &format!("watch {}", human(args.watch)))?;
    } else {
        // A resumed watch: the flip may not have happened before the crash.
        cnpilot_agent::api::reload(&c.socket)?;
        c.set_mode(Mode::Enforce)?;
    }
    watch::run(&mut c, &args)
}

mod watch;

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
