//! `cnpilot bench`: the datapath (`datapath`: eBPF against no program,
//! iptables and an nftables set), the L7 proxy and ring-buffer ingest
//! benchmarks, each reported as ratios to a baseline measured in the same run.

mod datapath;
mod ingest;
mod measure;
mod report;
mod scenarios;
mod topo;

use std::time::Duration;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde::Serialize;

use crate::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Datapath throughput and connection rate: every row measured
    /// --samples times, round-robin over the rows; medians, spreads and
    /// ratios of medians to the no-program row.
    Datapath {
        /// Seconds of iperf3 per sample (0: no throughput).
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Seconds of the TCP connect loop per sample (0: no connection rate).
        #[arg(long, default_value_t = 2)]
        conn_seconds: u32,
        /// Samples per row (rounds over all rows).
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Only these rows (comma-separated ids: none, audit, enforce,
        /// enforce-hostfw, enforce-10k-policy, enforce-10k-ipcache,
        /// iptables-10, iptables-10k, nft-10k); the baseline and the rows they are
        /// compared to come along.
        #[arg(long, value_delimiter = ',')]
        rows: Vec<String>,
        /// Leave the event ring buffer unread (it fills, and later events
        /// are dropped in the kernel): what the datapath costs without the
        /// agent's reader waking up for every event.
        #[arg(long)]
        no_event_reader: bool,
        /// Another build of bpf/c/cnpilot.bpf.c (an object of the same map
        /// layouts, e.g. an earlier commit's: scripts/bench-compare-object.sh):
        /// its programs run the audit and enforce rows too, in the same
        /// rounds, and those rows are compared to them.
        #[arg(long)]
        compare_object: Option<std::path::PathBuf>,
        /// New UDP flows in the flood test, in audit (0: none).
        #[arg(long, default_value_t = 50_000)]
        flood_flows: u16,
        /// The event ring buffer's size in MiB, as the agent's flag.
        #[arg(long, default_value_t = super::agent::DEFAULT_RING_MIB, value_parser = super::agent::parse_ring_mib)]
        ring_buffer_mib: u32,
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

pub fn run(cmd: BenchCommand) -> anyhow::Result<Outcome> {
    let (opts, output) = match cmd {
        BenchCommand::Datapath {
            seconds,
            conn_seconds,
            samples,
            rows,
            no_event_reader,
            compare_object,
            flood_flows,
            ring_buffer_mib,
            output,
        } => (
            datapath::Options {
                iperf_seconds: seconds,
                conn_window: Duration::from_secs(u64::from(conn_seconds)),
                samples,
                flood_flows,
                rows,
                ring_bytes: ring_buffer_mib << 20,
                read_events: !no_event_reader,
                compare_object,
            },
            output,
        ),
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
    let report = datapath::run(&topo, &opts)?;
    match output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => report::print_table(&report),
    }
    Ok(Outcome::Success)
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
