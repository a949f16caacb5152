//! The datapath benchmark's report: per row the samples, their median and
//! spread, and ratios of medians; printed as a table or JSON.

use serde::Serialize;

use super::measure::ConnSample;
use super::scenarios::RowSpec;

/// One measurement of one row in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub round: usize,
    pub gbit_per_s: Option<f64>,
    /// The programs' runs during iperf3 (see `conn_bpf`): nearly all of a
    /// long connection's packets, the established path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gbit_bpf: Vec<ProgramRuns>,
    pub conn: Option<ConnSample>,
    /// cnpilot rows: ring-buffer events of the connect loop's flows that the
    /// consumer read, and the flows counted in `cnp_flows` for them (both
    /// veths: two per connection when every connection is a new flow).
    pub conn_events: Option<u64>,
    pub conn_flows_counted: Option<usize>,
    /// The programs' runs during the connect loop and their mean cost, from
    /// the kernel's counters (empty unless `kernel.bpf_stats_enabled=1`,
    /// which itself adds two clock reads to every run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conn_bpf: Vec<ProgramRuns>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramRuns {
    pub program: &'static str,
    pub runs: u64,
    pub ns_per_run: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub id: &'static str,
    pub scenario: &'static str,
    /// Medians, and ratios of medians to the no-program row's.
    pub gbit_per_s: Option<f64>,
    pub throughput_ratio: Option<f64>,
    pub gbit: Option<Spread>,
    pub conn_per_s: Option<f64>,
    pub conn_ratio: Option<f64>,
    pub conn: Option<Spread>,
    /// The row this one is also compared to (the same scenario with less
    /// state), and the ratios of medians to it.
    pub compared_to: Option<&'static str>,
    pub throughput_vs: Option<f64>,
    pub conn_vs: Option<f64>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Serialize)]
pub struct Flood {
    pub flows_sent: u32,
    pub flows_counted: usize,
    pub events_delivered: u64,
    pub ring_buffer_bytes: u32,
    /// The programs' runs during the flood (see [`Sample::conn_bpf`]): each
    /// one a flow's first packet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bpf: Vec<ProgramRuns>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub samples_per_row: usize,
    pub iperf_seconds: u32,
    pub conn_seconds: u32,
    pub rows: Vec<Row>,
    pub flood: Option<Flood>,
    /// The same flood through `--compare-object`'s programs.
    pub flood_compare_object: Option<Flood>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Rows with medians and ratios from each row's samples (`rows[0]` is the
/// baseline).
pub fn rows(specs: &[RowSpec], samples: Vec<Vec<Sample>>) -> Vec<Row> {
    let mut out: Vec<Row> = specs
        .iter()
        .zip(samples)
        .map(|(spec, samples)| {
            let gbit = Spread::of(samples.iter().filter_map(|s| s.gbit_per_s));
            let conn = Spread::of(samples.iter().filter_map(|s| s.conn.map(|c| c.conn_per_s)));
            Row {
                id: spec.id,
                scenario: spec.name,
                gbit_per_s: gbit.map(|s| s.median),
                throughput_ratio: None,
                gbit,
                conn_per_s: conn.map(|s| s.median),
                conn_ratio: None,
                conn,
                compared_to: spec.compare_to,
                throughput_vs: None,
                conn_vs: None,
                samples,
            }
        })
        .collect();
    let medians: Vec<(&str, Option<f64>, Option<f64>)> = out
        .iter()
        .map(|r| (r.id, r.gbit_per_s, r.conn_per_s))
        .collect();
    let (base_gbit, base_conn) = medians.first().map(|m| (m.1, m.2)).unwrap_or((None, None));
    for row in &mut out {
        row.throughput_ratio = ratio(row.gbit_per_s, base_gbit);
        row.conn_ratio = ratio(row.conn_per_s, base_conn);
        if let Some((_, g, c)) = row
            .compared_to
            .and_then(|id| medians.iter().find(|m| m.0 == id))
        {
            row.throughput_vs = ratio(row.gbit_per_s, *g);
            row.conn_vs = ratio(row.conn_per_s, *c);
        }
    }
    out
}

fn spread(s: Option<Spread>, decimals: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} ({:.d$}-{:.d$})",
            s.median,
            s.min,
            s.max,
            d = decimals
        ),
        None => "-".to_string(),
    }
}

fn times(r: Option<f64>) -> String {
    r.map_or("-".to_string(), |r| format!("{r:.2}x"))
}

pub fn print_table(r: &Report) {
    println!(
        "{} samples per row, round-robin over the rows; median (min-max); ratios of medians",
        r.samples_per_row
    );
    println!(
        "{:<34} {:>22} {:>7} {:>22} {:>7}",
        "scenario", "Gbit/s", "ratio", "conn/s", "ratio"
    );
    for row in &r.rows {
        println!(
            "{:<34} {:>22} {:>7} {:>22} {:>7}",
            row.scenario,
            spread(row.gbit, 2),
            times(row.throughput_ratio),
            spread(row.conn, 0),
            times(row.conn_ratio),
        );
    }
    for row in r.rows.iter().filter(|r| r.compared_to.is_some()) {
        let base = r
            .rows
            .iter()
            .find(|b| Some(b.id) == row.compared_to)
            .map_or("?", |b| b.scenario);
        println!(
            "{} / {}: throughput {}, conn/s {}",
            row.scenario,
            base,
            times(row.throughput_vs),
            times(row.conn_vs)
        );
    }
    // How much of the connect loop's wall time its own thread spent in user
    // space: the loop measures the datapath only if that share is small.
    let (mut user, mut sys, mut wall) = (0.0, 0.0, 0.0);
    for c in r
        .rows
        .iter()
        .flat_map(|row| &row.samples)
        .filter_map(|s| s.conn)
    {
        user += c.client_user_s;
        sys += c.client_sys_s;
        wall += c.wall_s;
    }
    if wall > 0.0 {
        println!(
            "connect loop (client thread, all samples): {:.0}% of wall time in user space, {:.0}% in the kernel",
            100.0 * user / wall,
            100.0 * sys / wall
        );
    }
    for row in &r.rows {
        let (mut conns, mut events, mut flows, mut any) = (0u64, 0u64, 0usize, false);
        for s in &row.samples {
            if let (Some(c), Some(e), Some(f)) = (s.conn, s.conn_events, s.conn_flows_counted) {
                conns += c.connections;
                events += e;
                flows += f;
                any = true;
            }
        }
        if any {
            println!(
                "{}: {conns} connections, {flows} flows counted, {events} events read",
                row.scenario
            );
        }
        for program in ["cnp_from_pod", "cnp_to_pod"] {
            let (mut runs, mut conns, mut ns) = (0u64, 0u64, Vec::new());
            for s in &row.samples {
                if let Some(p) = s.conn_bpf.iter().find(|p| p.program == program) {
                    runs += p.runs;
                    conns += s.conn.map_or(0, |c| c.connections);
                    ns.push(p.ns_per_run);
                }
            }
            if let Some(ns) = Spread::of(ns) {
                println!(
                    "  {program}: {} ns per run ({:.1} runs per connection)",
                    spread(Some(ns), 0),
                    runs as f64 / conns.max(1) as f64
                );
            }
        }
    }
    for (label, f) in [
        ("flood", &r.flood),
        ("flood, --compare-object", &r.flood_compare_object),
    ] {
        let Some(f) = f else { continue };
        println!(
            "{label}: {} new UDP flows sent, {} counted in cnp_flows, {} events read at both veths (ring buffer {} KiB, reader running)",
            f.flows_sent,
            f.flows_counted,
            f.events_delivered,
            f.ring_buffer_bytes / 1024
        );
        for p in &f.bpf {
            println!(
                "  {}: {:.0} ns per run over {} runs (first packets)",
                p.program, p.ns_per_run, p.runs
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max_of_finite_values() {
        let s = Spread::of([3.0, 1.0, f64::NAN, 2.0, 10.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 10.0));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of([]).is_none());
    }
}
