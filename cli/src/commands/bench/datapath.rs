//! `cnpilot bench datapath`: what the eBPF datapath costs, against no
//! program, iptables and an nftables set, on the same netns pair, in one
//! run. Every row is measured `samples` times, round-robin (each round
//! measures every row once, in order), so the machine's drift over the run
//! lands on every row alike; the report takes medians.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use cnpilot_bpf::maps::Direction;
use cnpilot_bpf::testbed::{NS_A, NS_B};
use cnpilot_bpf::{Datapath, EventReader, Mode};

use super::measure::{self, CONN_PORT};
use super::report::{self, Flood, Report, Sample};
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
                        if e.proto == 6 && e.dport == CONN_PORT {
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
    attached: bool,
    policy_entries: usize,
    ipcache_prefixes: usize,
    mode: Option<Mode>,
    iptables: Option<usize>,
    nft: bool,
}

impl<'a> Rig<'a> {
    fn new(topo: &'a Topo, ring_bytes: u32) -> anyhow::Result<Rig<'a>> {
        let mut dp = Datapath::load_or_open_with(&topo.pin_dir, Some(ring_bytes))?;
        let t = dp.tables_mut();
        topo.register(t)?;
        t.replace_subjects(scenarios::subjects())?;
        Ok(Rig {
            topo,
            dp,
            attached: false,
            policy_entries: 0,
            ipcache_prefixes: 0,
            mode: None,
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
        if !matches!(s, Scenario::Cnpilot { .. }) && self.attached {
            cnpilot_bpf::detach(&self.topo.pin_dir, &self.topo.veth_a)?;
            cnpilot_bpf::detach(&self.topo.pin_dir, &self.topo.veth_b)?;
            self.attached = false;
        }
        match s {
            Scenario::NoProgram => {}
            Scenario::Cnpilot {
                mode,
                policy_entries,
                ipcache_prefixes,
            } => {
                let t = self.dp.tables_mut();
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
                if !self.attached {
                    let node = self.topo.netns(&self.topo.node);
                    self.dp.attach(Some(&node), &self.topo.veth_a)?;
                    self.dp.attach(Some(&node), &self.topo.veth_b)?;
                    self.attached = true;
                }
                // Every sample starts from empty tables: a tuple the connect
                // loop reuses must be a new flow, as its first use was.
                let t = self.dp.tables_mut();
                t.flush_conntrack()?;
                t.flush_counters()?;
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

    /// Flows counted in `cnp_flows` for the connect loop's port, at either veth.
    fn conn_flows(&self) -> anyhow::Result<usize> {
        Ok(self
            .dp
            .tables()
            .read_counters()?
            .iter()
            .filter(|(k, _)| k.proto == 6 && k.dport == CONN_PORT)
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
    let specs = scenarios::select(&opts.rows)?;
    let mut rig = Rig::new(topo, opts.ring_bytes)?;
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
    let flood = if opts.flood_flows > 0 && specs.iter().any(|s| s.id == "audit") {
        Some(flood(&mut rig, &consumer, opts)?)
    } else {
        None
    };
    rig.clear()?;
    consumer.finish()?;
    Ok(Report {
        samples_per_row: opts.samples,
        iperf_seconds: opts.iperf_seconds,
        conn_seconds: opts.conn_window.as_secs() as u32,
        rows: report::rows(&specs, samples),
        flood,
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
    let gbit_per_s = if opts.iperf_seconds > 0 {
        Some(measure::throughput(rig.topo, opts.iperf_seconds)?)
    } else {
        None
    };
    let mut sample = Sample {
        round,
        gbit_per_s,
        conn: None,
        conn_events: None,
        conn_flows_counted: None,
    };
    if opts.conn_window.is_zero() {
        return Ok(sample);
    }
    consumer.conn_events.store(0, Ordering::Relaxed);
    sample.conn = Some(measure::connection_rate(rig.topo, opts.conn_window)?);
    if cnpilot {
        Consumer::settle();
        sample.conn_events = Some(consumer.conn_events.load(Ordering::Relaxed));
        sample.conn_flows_counted = Some(rig.conn_flows()?);
    }
    Ok(sample)
}

/// A burst of new UDP flows in audit mode: every one must be counted in
/// `cnp_flows`, whatever the ring buffer delivers.
fn flood(rig: &mut Rig, consumer: &Consumer, opts: &Options) -> anyhow::Result<Flood> {
    let audit = scenarios::ROWS
        .iter()
        .find(|r| r.id == "audit")
        .map(|r| r.scenario)
        .context("the audit row")?;
    rig.apply(audit)?;
    let flows = opts.flood_flows.min(u16::MAX - FLOOD_FIRST_PORT);
    eprintln!("cnpilot bench: flood of {flows} new UDP flows ...");
    consumer.flood_events.store(0, Ordering::Relaxed);
    let sent = measure::udp_flood(rig.topo, FLOOD_FIRST_PORT, flows)?;
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
    })
}
