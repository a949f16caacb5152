//! `cnpilot bench datapath`: what the eBPF datapath costs, against no
//! program, iptables and an nftables set, all measured in one run on the same
//! netns pair, reported as ratios to the no-program baseline.

mod ingest;
mod measure;
mod topo;

use std::time::Duration;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use cnpilot_bpf::maps::*;
use cnpilot_bpf::testbed::{ID_A, ID_B, NS_A, NS_B};
use cnpilot_bpf::{Datapath, Mode};
use serde::Serialize;

use crate::Outcome;
use measure::{CONN_PORT, IPERF_PORT};
use topo::{sh, sh_in_with_input, Topo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Datapath throughput and connection rate.
    Datapath {
        /// Seconds of iperf3 per scenario.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Seconds of the TCP connect loop per scenario.
        #[arg(long, default_value_t = 2)]
        conn_seconds: u32,
        /// New UDP flows in the flood test.
        #[arg(long, default_value_t = 50_000)]
        flood_flows: u16,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// HTTP requests/s and p50/p99 latency through the L7 proxy vs direct,
    /// between the same two namespaces (keep-alive connections, built-in
    /// load generator).
    L7 {
        /// Seconds per run (direct, then proxied).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Flow events through a real BPF ring buffer into the flow store: a
    /// BPF producer emits datapath-layout events at --rate, the same load is
    /// read once by a read-only consumer (baseline) and once resolved and
    /// stored as the agent does. Exits 1 if the store lost events (ring
    /// full, or fewer rows stored than read) at that rate.
    Ingest {
        /// Seconds per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Events per second the producer aims for; 0 = as fast as it can
        /// (then the ring fills and the result is the consumer's maximum).
        #[arg(long, default_value_t = 1_000_000)]
        rate: u64,
        /// Ring buffer size in MiB (a power of two); the agent's default.
        #[arg(long, default_value_t = cnpilot_agent::DEFAULT_RING_MIB, value_parser = cnpilot_agent::parse_ring_mib)]
        ring_buffer_mib: u32,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: String,
    gbit_per_s: f64,
    throughput_ratio: f64,
    conn_per_s: f64,
    conn_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Flood {
    flows_sent: u32,
    flows_counted: usize,
    events_delivered: usize,
    ring_buffer_bytes: u32,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: Vec<Row>,
    flood: Flood,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<Outcome> {
    let (seconds, conn_seconds, flood_flows, output) = match cmd {
        BenchCommand::Datapath {
            seconds,
            conn_seconds,
            flood_flows,
            output,
        } => (seconds, conn_seconds, flood_flows, output),
        BenchCommand::L7 {
            seconds,
            connections,
            output,
        } => return run_l7(seconds, connections, output),
        BenchCommand::Ingest {
            seconds,
            rate,
            ring_buffer_mib,
            output,
        } => return ingest::run_ingest(seconds, rate, ring_buffer_mib, output),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _in_runtime = rt.enter();
    let topo = topo::build().context("building the benchmark namespaces")?;
    let report = bench(
        &topo,
        seconds,
        Duration::from_secs(u64::from(conn_seconds)),
        flood_flows,
    )?;
    match output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print_table(&report),
    }
    Ok(Outcome::Success)
}

fn bench(
    topo: &Topo,
    secs: u32,
    conn_window: Duration,
    flood_flows: u16,
) -> anyhow::Result<Report> {
    let mut raw: Vec<(String, f64, f64)> = Vec::new();
    let mut measure = |name: &str| -> anyhow::Result<()> {
        eprintln!("cnpilot bench: {name} ...");
        let gbit = measure::throughput(topo, secs)?;
        let conn = measure::connection_rate(topo, conn_window)?;
        raw.push((name.to_string(), gbit, conn));
        Ok(())
    };

    measure("no program")?;

    let mut dp = Datapath::load_or_open(&topo.pin_dir)?;
    let mut events = dp.events()?;
    program(&mut dp, topo)?;
    let node = topo.netns(&topo.node);
    let attach = |dp: &mut Datapath| -> anyhow::Result<()> {
        dp.attach(Some(&node), &topo.veth_a)?;
        dp.attach(Some(&node), &topo.veth_b)?;
        Ok(())
    };
    let detach = || -> anyhow::Result<()> {
        cnpilot_bpf::detach(&topo.pin_dir, &topo.veth_a)?;
        cnpilot_bpf::detach(&topo.pin_dir, &topo.veth_b)?;
        Ok(())
    };

    attach(&mut dp)?;
    dp.tables_mut().replace_policy(policy_entries(10))?;
    set_modes(&mut dp, Mode::Audit)?;
    measure("cnpilot audit (10 entries)")?;
    set_modes(&mut dp, Mode::Enforce)?;
    measure("cnpilot enforce (10 entries)")?;
    dp.tables_mut().replace_policy(policy_entries(10_000))?;
    measure("cnpilot enforce (10,000 entries)")?;
    let flood = flood(topo, &mut dp, &mut events, flood_flows)?;
    detach()?;

    for rules in [10, 10_000] {
        iptables_rules(topo, rules)?;
        measure(&format!("iptables ({rules} INPUT rules)"))?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &topo.pod_b,
            "iptables",
            "-F",
            "INPUT",
        ])?;
    }
    nft_set(topo, 10_000)?;
    measure("nft set (10,000 elements)")?;
    sh(&[
        "ip",
        "netns",
        "exec",
        &topo.pod_b,
        "nft",
        "delete",
        "table",
        "ip",
        "cnpbench",
    ])?;

    let (base_gbit, base_conn) = (raw[0].1, raw[0].2);
    let rows = raw
        .into_iter()
        .map(|(scenario, gbit, conn)| Row {
            scenario,
            gbit_per_s: gbit,
            throughput_ratio: gbit / base_gbit,
            conn_per_s: conn,
            conn_ratio: conn / base_conn,
        })
        .collect();
    Ok(Report { rows, flood })
}

fn program(dp: &mut Datapath, topo: &Topo) -> anyhow::Result<()> {
    let t = dp.tables_mut();
    topo.register(t)?;
    // Both pods default-deny in both directions: every flow is evaluated twice.
    t.replace_subjects(
        [
            (ID_A, Direction::Egress),
            (ID_A, Direction::Ingress),
            (ID_B, Direction::Egress),
            (ID_B, Direction::Ingress),
        ]
        .map(|(identity, d)| {
            (
                SubjectKey {
                    identity,
                    direction: d as u32,
                },
                SubjectValue {
                    flags: SUBJECT_F_DEFAULT_DENY,
                },
            )
        }),
    )?;
    Ok(())
}

/// `n` entries: the ones the benchmark's flows need (A -> B on both ports,
/// both directions, UDP for the flood) plus filler for other peers.
fn policy_entries(n: usize) -> Vec<(PolicyKey, PolicyValue)> {
    let allow = |rule_id| PolicyValue {
        action: action::ALLOW,
        pad: 0,
        proxy_port: 0,
        rule_id,
    };
    let key = |subject, peer, proto, dport, d: Direction| PolicyKey {
        subject,
        peer,
        dport,
        proto,
        direction: d as u8,
    };
    let mut v = vec![
        (key(ID_A, ID_B, 6, IPERF_PORT, Direction::Egress), allow(1)),
        (key(ID_A, ID_B, 6, CONN_PORT, Direction::Egress), allow(1)),
        (key(ID_A, ID_B, 17, 0, Direction::Egress), allow(1)),
        (key(ID_B, ID_A, 6, IPERF_PORT, Direction::Ingress), allow(2)),
        (key(ID_B, ID_A, 6, CONN_PORT, Direction::Ingress), allow(2)),
        (key(ID_B, ID_A, 17, 0, Direction::Ingress), allow(2)),
    ];
    let mut i = 0u32;
    while v.len() < n {
        v.push((
            key(ID_B, 100_000 + i, 6, IPERF_PORT, Direction::Ingress),
            allow(3 + i),
        ));
        i += 1;
    }
    v
}

fn set_modes(dp: &mut Datapath, mode: Mode) -> anyhow::Result<()> {
    dp.tables_mut().set_mode(NS_A, mode)?;
    dp.tables_mut().set_mode(NS_B, mode)?;
    Ok(())
}

fn flood(
    topo: &Topo,
    dp: &mut Datapath,
    events: &mut cnpilot_bpf::EventReader,
    flows: u16,
) -> anyhow::Result<Flood> {
    eprintln!("cnpilot bench: flood of {flows} new UDP flows ...");
    let first = 10_000u16;
    let flows = flows.min(u16::MAX - first);
    events.drain();
    let sent = measure::udp_flood(topo, first, flows)?;
    let delivered = events.drain().len();
    let counted = dp
        .tables()
        .read_counters()?
        .iter()
        .filter(|(k, _)| {
            k.ifindex == topo.ifindex_b
                && k.direction == Direction::Ingress as u8
                && k.proto == 17
                && (first..first + flows).contains(&k.dport)
        })
        .count();
    Ok(Flood {
        flows_sent: sent,
        flows_counted: counted,
        events_delivered: delivered,
        ring_buffer_bytes: 256 * 1024, // the object's default: this bench loads without --ring-buffer-mib
    })
}

/// `n` rules in B's own INPUT chain (never the host's): n-1 that the
/// benchmark's traffic walks past, then an ACCEPT.
fn iptables_rules(topo: &Topo, n: usize) -> anyhow::Result<()> {
    let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
    for i in 0..n.saturating_sub(1) {
        rules.push_str(&format!(
            "-A INPUT -s 198.19.{}.{}/32 -p tcp --dport {IPERF_PORT} -j DROP\n",
            i / 250,
            i % 250 + 1
        ));
    }
    rules.push_str("-A INPUT -s 198.18.0.1/32 -j ACCEPT\nCOMMIT\n");
    sh_in_with_input(&topo.pod_b, &["iptables-restore"], &rules)
}

/// The O(1) alternative a careful iptables user would pick: one rule, one set.
fn nft_set(topo: &Topo, n: usize) -> anyhow::Result<()> {
    let mut elements = Vec::with_capacity(n);
    for i in 0..n {
        elements.push(format!("198.19.{}.{} . {IPERF_PORT}", i / 250, i % 250 + 1));
    }
    let script = format!(
        "table ip cnpbench {{\n set blocked {{ type ipv4_addr . inet_service; elements = {{ {} }} }}\n \
         chain input {{ type filter hook input priority 0; policy accept; ip saddr . tcp dport @blocked drop; }}\n}}\n",
        elements.join(", ")
    );
    sh_in_with_input(&topo.pod_b, &["nft", "-f", "-"], &script)
}

fn print_table(r: &Report) {
    println!(
        "{:<34} {:>10} {:>8} {:>10} {:>8}",
        "scenario", "Gbit/s", "ratio", "conn/s", "ratio"
    );
    for row in &r.rows {
        println!(
            "{:<34} {:>10.2} {:>7.2}x {:>10.0} {:>7.2}x",
            row.scenario, row.gbit_per_s, row.throughput_ratio, row.conn_per_s, row.conn_ratio
        );
    }
    println!(
        "flood: {} new UDP flows sent, {} counted in cnp_flows, {} events delivered (ring buffer {} KiB)",
        r.flood.flows_sent,
        r.flood.flows_counted,
        r.flood.events_delivered,
        r.flood.ring_buffer_bytes / 1024
    );
}

#[derive(Debug, Serialize)]
struct L7Row {
    requests_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    requests: u64,
    errors: u64,
    non_200: u64,
}

impl From<&cnpilot_proxy::bench::LoadResult> for L7Row {
    fn from(r: &cnpilot_proxy::bench::LoadResult) -> Self {
        L7Row {
            requests_per_s: r.rps,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            requests: r.requests,
            errors: r.errors,
            non_200: r.non_200,
        }
    }
}

fn run_l7(seconds: u64, connections: usize, output: Format) -> anyhow::Result<Outcome> {
    anyhow::ensure!(seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(connections > 0, "--connections must be at least 1");
    let report = cnpilot_proxy::bench::run_l7_bench(cnpilot_proxy::bench::L7BenchOptions {
        connections,
        duration: Duration::from_secs(seconds),
    })
    .context("running the L7 proxy benchmark")?;
    match output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "connections": connections,
                "seconds": seconds,
                "direct": L7Row::from(&report.direct),
                "proxied": L7Row::from(&report.proxied),
                "proxied_over_direct": report.ratio(),
            }))?
        ),
        Format::Table => print!("{}", report.render()),
    }
    Ok(Outcome::Success)
}
