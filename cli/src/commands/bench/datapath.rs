//! `cnpilot bench datapath`: what the eBPF datapath costs, against no
//! program, iptables and an nftables set, on the same netns pair, in one
//! run. Every row is measured `samples` times, round-robin (each round
//! measures every row once, in order), so the machine's drift over the run
//! lands on every row alike; the report takes medians.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use cnpilot_bpf::maps::Direction;
use cnpilot_bpf::testbed::{NS_A, NS_B};
use cnpilot_bpf::{Datapath, EventReader, Mode};

use super::measure::{self, CONN_PORTS};
use super::report::{self, Flood, ProgramRuns, Report, Sample};
use super::scenarios::{self, RowSpec, Scenario};
use super::topo::Topo;

pub struct Options {
    pub iperf_seconds: u32,
    pub conn_window: Duration,
    pub samples: usize,
    pub flood_flows: u16,
    pub rows: Vec<String>,
    pub ring_bytes: u32,
    pub read_events: bool,
    /// Another build of the datapath's object, run beside this build's.
    pub compare_object: Option<PathBuf>,
}

/// First UDP port of the flood.
const FLOOD_FIRST_PORT: u16 = 10_000;

/// Reads the pinned ring buffer on its own thread while the benchmark runs,
/// as the agent does, and counts the events of the benchmark's flows.
struct Consumer {
    stop: Arc<AtomicBool>,
    conn_events: Arc<AtomicU64>,
    flood_events: Arc<AtomicU64>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Consumer {
    /// With `read` false nothing reads the ring (the counts stay 0).
    fn start(pin_dir: PathBuf, read: bool) -> Consumer {
        let stop = Arc::new(AtomicBool::new(false));
        let conn_events = Arc::new(AtomicU64::new(0));
        let flood_events = Arc::new(AtomicU64::new(0));
        if !read {
            return Consumer {
                stop,
                conn_events,
                flood_events,
                handle: None,
            };
        }
        let (s, c, f) = (stop.clone(), conn_events.clone(), flood_events.clone());
        let handle = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut reader = EventReader::open_pinned(&pin_dir)?;
                while !s.load(Ordering::Relaxed) {
                    let batch =
                        match tokio::time::timeout(Duration::from_millis(100), reader.next_batch())
                            .await
                        {
                            Ok(batch) => batch?,
                            Err(_) => continue,
                        };
                    for e in batch {
                        if e.proto == 6 && CONN_PORTS.contains(&e.dport) {
                            c.fetch_add(1, Ordering::Relaxed);
                        } else if e.proto == 17 && e.dport >= FLOOD_FIRST_PORT {
                            f.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(())
            })
        });
        Consumer {
            stop,
            conn_events,
            flood_events,
            handle: Some(handle),
        }
    }

    /// Gives the reader a moment to drain what the last packets produced.
    fn settle() {
        std::thread::sleep(Duration::from_millis(200));
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r.context("reading the event ring buffer"),
            Some(Err(_)) => anyhow::bail!("the event reader thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What is configured now, so that switching rows changes only what differs.
struct Rig<'a> {
    topo: &'a Topo,
    dp: Datapath,
    /// `--compare-object`'s programs, on the same pinned maps.
    other: Option<Datapath>,
    /// Whose programs are attached: `Some(true)` the other object's.
    attached: Option<bool>,
    policy_entries: usize,
    ipcache_prefixes: usize,
    mode: Option<Mode>,
    host_firewall: bool,
    iptables: Option<usize>,
    nft: bool,
}

impl<'a> Rig<'a> {
    fn new(topo: &'a Topo, ring_bytes: u32, other: Option<&Path>) -> anyhow::Result<Rig<'a>> {
        let mut dp = Datapath::load_or_open_with(&topo.pin_dir, Some(ring_bytes))?;
        let t = dp.tables_mut();
        topo.register(t)?;
        t.replace_subjects(scenarios::subjects())?;
        let other = match other {
            Some(path) => Some(
                Datapath::load_object_file(&topo.pin_dir, Some(ring_bytes), path)
                    .with_context(|| format!("loading {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Rig {
            topo,
            dp,
            other,
            attached: None,
            policy_entries: 0,
            ipcache_prefixes: 0,
            mode: None,
            host_firewall: false,
            iptables: None,
            nft: false,
        })
    }

    fn apply(&mut self, s: Scenario) -> anyhow::Result<()> {
        if !matches!(s, Scenario::Iptables { .. }) && self.iptables.is_some() {
            scenarios::iptables_flush(self.topo)?;
            self.iptables = None;
        }
        if !matches!(s, Scenario::NftSet { .. }) && self.nft {
            scenarios::nft_delete(self.topo)?;
            self.nft = false;
        }
        if !matches!(s, Scenario::Cnpilot { .. }) && self.attached.is_some() {
            cnpilot_bpf::detach(&self.topo.pin_dir, &self.topo.veth_a)?;
            cnpilot_bpf::detach(&self.topo.pin_dir, &self.topo.veth_b)?;
            self.attached = None;
        }
        match s {
            Scenario::NoProgram => {}
            Scenario::Cnpilot {
                mode,
                policy_entries,
                ipcache_prefixes,
                other_object,
                host_firewall,
            } => {
                let t = self.dp.tables_mut();
                if self.host_firewall != host_firewall {
                    let (host, subjects) = scenarios::host_firewall();
                    let mut all: Vec<_> = scenarios::subjects().collect();
                    if host_firewall {
                        all.extend(subjects);
                        t.replace_subjects(all)?;
                        t.set_mode(scenarios::HOST_NS, Mode::Enforce)?;
                        t.set_host_path(Some(host))?;
                    } else {
                        t.set_host_path(None)?;
                        t.set_mode(scenarios::HOST_NS, Mode::Off)?;
                        t.replace_subjects(all)?;
                    }
                    self.host_firewall = host_firewall;
                }
                if self.policy_entries != policy_entries {
                    t.replace_policy(scenarios::policy_entries(policy_entries))?;
                    self.policy_entries = policy_entries;
                }
                if self.ipcache_prefixes != ipcache_prefixes {
                    t.set_ipcache(&scenarios::ipcache_entries(ipcache_prefixes))?;
                    self.ipcache_prefixes = ipcache_prefixes;
                }
                if self.mode != Some(mode) {
                    t.set_mode(NS_A, mode)?;
                    t.set_mode(NS_B, mode)?;
                    self.mode = Some(mode);
                }
                if self.attached != Some(other_object) {
                    // Over a pinned link, attach swaps the program in place.
                    let dp = match (&mut self.other, other_object) {
                        (Some(other), true) => other,
                        (None, true) => anyhow::bail!("no --compare-object loaded"),
                        (_, false) => &mut self.dp,
                    };
                    let node = self.topo.netns(&self.topo.node);
                    dp.attach(Some(&node), &self.topo.veth_a)?;
                    dp.attach(Some(&node), &self.topo.veth_b)?;
                    self.attached = Some(other_object);
                }
                // Every sample starts from empty tables: a tuple the connect
                // loop reuses must be a new flow, as its first use was.
                // (One entry holds a flow's verdict and counters; an older
                // --compare-object build keeps its verdicts in a map of its
                // own, emptied too.)
                self.dp.tables_mut().flush_counters()?;
                Datapath::flush_legacy_conntrack(&self.topo.pin_dir)?;
            }
            Scenario::Iptables { rules } => {
                if self.iptables != Some(rules) {
                    scenarios::iptables_rules(self.topo, rules)?;
                    self.iptables = Some(rules);
                }
            }
            Scenario::NftSet { elements } => {
                if !self.nft {
                    scenarios::nft_set(self.topo, elements)?;
                    self.nft = true;
                }
            }
        }
        Ok(())
    }

    /// Run count and run time of the attached programs (kernel counters,
    /// 0 unless `kernel.bpf_stats_enabled=1`).
    fn run_stats(&mut self) -> anyhow::Result<Vec<(&'static str, u64, Duration)>> {
        let dp = match (&mut self.other, self.attached) {
            (Some(other), Some(true)) => other,
            _ => &mut self.dp,
        };
        Ok(dp.run_stats()?)
    }

    /// Flows counted in `cnp_flows` for the connect loop's ports, at either veth.
    fn conn_flows(&self) -> anyhow::Result<usize> {
        Ok(self
            .dp
            .tables()
            .read_counters()?
            .iter()
            .filter(|(k, _)| k.proto == 6 && CONN_PORTS.contains(&k.dport))
            .count())
    }

    /// Leaves the namespaces without rules or programs (the testbed's drop
    /// removes the rest).
    fn clear(&mut self) -> anyhow::Result<()> {
        self.apply(Scenario::NoProgram)
    }
}

pub fn run(topo: &Topo, opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.samples > 0, "--samples must be at least 1");
    let specs = scenarios::select(&opts.rows, opts.compare_object.is_some())?;
    let mut rig = Rig::new(topo, opts.ring_bytes, opts.compare_object.as_deref())?;
    let mut consumer = Consumer::start(topo.pin_dir.clone(), opts.read_events);
    let mut samples: Vec<Vec<Sample>> = specs.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.samples {
        for (spec, out) in specs.iter().zip(samples.iter_mut()) {
            eprintln!(
                "cnpilot bench: round {}/{}: {} ...",
                round + 1,
                opts.samples,
                spec.name
            );
            let sample = measure_row(&mut rig, &consumer, spec, round, opts)
                .with_context(|| format!("measuring `{}`", spec.name))?;
            out.push(sample);
        }
    }
    let mut floods = Vec::new();
    if opts.flood_flows > 0 && specs.iter().any(|s| s.id == "audit") {
        floods.push(flood(&mut rig, &consumer, opts, false)?);
        if opts.compare_object.is_some() {
            floods.push(flood(&mut rig, &consumer, opts, true)?);
        }
    }
    let mut floods = floods.into_iter();
    let (flood, flood_compare_object) = (floods.next(), floods.next());
    rig.clear()?;
    consumer.finish()?;
    Ok(Report {
        samples_per_row: opts.samples,
        iperf_seconds: opts.iperf_seconds,
        conn_seconds: opts.conn_window.as_secs() as u32,
        rows: report::rows(&specs, samples),
        flood,
        flood_compare_object,
    })
}

fn measure_row(
    rig: &mut Rig,
    consumer: &Consumer,
    spec: &RowSpec,
    round: usize,
    opts: &Options,
) -> anyhow::Result<Sample> {
    rig.apply(spec.scenario)?;
    let cnpilot = matches!(spec.scenario, Scenario::Cnpilot { .. });
    let mut gbit_bpf = Vec::new();
    let gbit_per_s = if opts.iperf_seconds > 0 {
        let before = if cnpilot {
            rig.run_stats()?
        } else {
            Vec::new()
        };
        let gbit = measure::throughput(rig.topo, opts.iperf_seconds)?;
        if cnpilot {
            gbit_bpf = program_runs(&before, &rig.run_stats()?);
        }
        Some(gbit)
    } else {
        None
    };
    let mut sample = Sample {
        round,
        gbit_per_s,
        gbit_bpf,
        conn: None,
        conn_events: None,
        conn_flows_counted: None,
        conn_bpf: Vec::new(),
    };
    if opts.conn_window.is_zero() {
        return Ok(sample);
    }
    consumer.conn_events.store(0, Ordering::Relaxed);
    let before = if cnpilot {
        rig.run_stats()?
    } else {
        Vec::new()
    };
    sample.conn = Some(measure::connection_rate(rig.topo, opts.conn_window)?);
    if cnpilot {
        sample.conn_bpf = program_runs(&before, &rig.run_stats()?);
        Consumer::settle();
        sample.conn_events = Some(consumer.conn_events.load(Ordering::Relaxed));
        sample.conn_flows_counted = Some(rig.conn_flows()?);
    }
    Ok(sample)
}

/// A burst of new UDP flows in audit mode: every one must be counted in
/// `cnp_flows`, whatever the ring buffer delivers. Every packet is a new
/// flow at both veths, so the programs' cost per run here (with
/// `kernel.bpf_stats_enabled=1`) is the cost of the first-packet path.
fn flood(
    rig: &mut Rig,
    consumer: &Consumer,
    opts: &Options,
    other_object: bool,
) -> anyhow::Result<Flood> {
    let Some(Scenario::Cnpilot {
        mode,
        policy_entries,
        ipcache_prefixes,
        ..
    }) = scenarios::ROWS
        .iter()
        .find(|r| r.id == "audit")
        .map(|r| r.scenario)
    else {
        anyhow::bail!("no audit row");
    };
    rig.apply(Scenario::Cnpilot {
        mode,
        policy_entries,
        ipcache_prefixes,
        other_object,
        host_firewall: false,
    })?;
    let flows = opts.flood_flows.min(u16::MAX - FLOOD_FIRST_PORT);
    eprintln!("cnpilot bench: flood of {flows} new UDP flows ...");
    consumer.flood_events.store(0, Ordering::Relaxed);
    let before = rig.run_stats()?;
    let sent = measure::udp_flood(rig.topo, FLOOD_FIRST_PORT, flows)?;
    let bpf = program_runs(&before, &rig.run_stats()?);
    Consumer::settle();
    let delivered = consumer.flood_events.load(Ordering::Relaxed);
    let topo = rig.topo;
    let counted = rig
        .dp
        .tables()
        .read_counters()?
        .iter()
        .filter(|(k, _)| {
            k.ifindex == topo.ifindex_b
                && k.direction == Direction::Ingress as u8
                && k.proto == 17
                && (FLOOD_FIRST_PORT..FLOOD_FIRST_PORT + flows).contains(&k.dport)
        })
        .count();
    Ok(Flood {
        flows_sent: sent,
        flows_counted: counted,
        events_delivered: delivered,
        ring_buffer_bytes: opts.ring_bytes,
        bpf,
    })
}

/// What the programs ran between two readings of their counters.
fn program_runs(
    before: &[(&'static str, u64, Duration)],
    after: &[(&'static str, u64, Duration)],
) -> Vec<ProgramRuns> {
    before
        .iter()
        .zip(after)
        .filter(|((_, n0, _), (_, n1, _))| n1 > n0)
        .map(|((name, n0, t0), (_, n1, t1))| ProgramRuns {
            program: name,
            runs: n1 - n0,
            ns_per_run: t1.saturating_sub(*t0).as_nanos() as f64 / (n1 - n0) as f64,
        })
        .collect()
}
