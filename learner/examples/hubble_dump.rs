//! Print what `cnpilot import hubble` makes of each line of a file: a
//! debugging aid for new Hubble exports.
use cnpilot_learner::hubble::{parse_line, LineOutcome};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        for (i, line) in std::fs::read_to_string(&path)?.lines().enumerate() {
            match parse_line(line) {
                LineOutcome::Record(r) => println!(
                    "{path}:{}: {} {}/{} -> {}/{} {}:{} {} count={} l7={:?} reason={}",
                    i + 1,
                    r.node,
                    r.src.namespace,
                    r.src.workload,
                    r.dst.namespace,
                    r.dst.workload,
                    r.proto,
                    r.dst_port,
                    r.verdict,
                    r.count,
                    r.l7.as_ref()
                        .map(|l| (l.method.clone(), l.path.clone(), l.host.clone())),
                    r.reason
                ),
                LineOutcome::Skipped(reason) => println!("{path}:{}: skipped: {reason}", i + 1),
                LineOutcome::Blank => {}
            }
        }
    }
    Ok(())
}
