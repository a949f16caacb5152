//! The watch stage: enforcing, judged event by event; a regression or too
//! many new drops send the namespace back to audit at once.

use std::time::{Duration, Instant};

use cnpilot_bpf::Mode;
use serde_json::Value;

use super::addition;
use super::judge::{Finding, NewDrops, Observed};
use super::state::{self, Stage};
use super::{human, say, Controller, EnforceArgs};
use crate::Outcome;

/// `CLOCK_MONOTONIC` in ns: the clock the kernel stamps flow events with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec * 1_000_000_000 + ts.tv_nsec).unwrap_or(0)
}

/// From the event's own timestamp (when the datapath or the proxy denied
/// it) to now.
fn since_event(ev: &Observed) -> Duration {
    let now = if ev.monotonic {
        monotonic_ns()
    } else {
        u64::try_from(state::now_unix_ns()).unwrap_or(0)
    };
    Duration::from_nanos(now.saturating_sub(ev.time_ns))
}

pub(super) fn run(c: &mut Controller, args: &EnforceArgs) -> anyhow::Result<Outcome> {
    let ns = c.ns.namespace.clone();
    let deadline_unix_ns = c
        .record
        .since_unix_ns
        .saturating_add(i64::try_from(args.watch.as_nanos()).unwrap_or(i64::MAX));
    let mut new_drops = NewDrops::new(args.window);
    let mut expected = 0u64;
    let mut last_mode_check = Instant::now();
    // Every offending event of this watch: the addition is proposed from
    // them all, not only from the window that crossed the line.
    let mut offending: Vec<Value> = Vec::new();
    let bar = super::stage_bar(args.watch, "watch");
    loop {
        if let Some((ev, line)) = c.next(Duration::from_millis(50))? {
            let finding = c.judge.watch(&ev);
            if matches!(finding, Some(Finding::Regression(_) | Finding::New(_)))
                && offending.len() < addition::MAX_LINES
            {
                offending.push(line.clone());
            }
            let verdict = match finding {
                None => None,
                Some(Finding::Expected) => {
                    expected += 1;
                    None
                }
                Some(Finding::Regression(key)) => Some((
                    format!("dropped a flow seen passing during learning or soak: {key}"),
                    vec![key],
                )),
                Some(Finding::New(key)) => {
                    let n = new_drops.push(Instant::now(), key);
                    (n > args.max_new_drops).then(|| {
                        (
                            format!(
                                "{n} drops of never-seen flows within {} (--max-new-drops {})",
                                human(args.window),
                                args.max_new_drops
                            ),
                            new_drops.keys(),
                        )
                    })
                }
            };
            if let Some((reason, keys)) = verdict {
                bar.finish_and_clear();
                return roll_back(c, &reason, &keys, &ev, &offending);
            }
        }
        if last_mode_check.elapsed() >= Duration::from_millis(500) {
            last_mode_check = Instant::now();
            if c.mode()? != Mode::Enforce {
                bar.finish_and_clear();
                return outside_change(c);
            }
        }
        let left = deadline_unix_ns.saturating_sub(state::now_unix_ns());
        bar.set_position(
            args.watch
                .saturating_sub(Duration::from_nanos(u64::try_from(left).unwrap_or(0)))
                .as_millis() as u64,
        );
        if left <= 0 {
            bar.finish_and_clear();
            c.transition(
                Stage::Done,
                &format!("watch passed ({expected} expected denials)"),
            )?;
            println!(
                "{ns}: done: enforcing revision {} ({expected} expected denials during watch)",
                c.record.revision
            );
            return Ok(Outcome::Success);
        }
    }
}

/// The record first (so a crash right after still says why), then the one
/// map update, then the evidence.
fn roll_back(
    c: &mut Controller,
    reason: &str,
    keys: &[String],
    ev: &Observed,
    offending: &[Value],
) -> anyhow::Result<Outcome> {
    c.record.reason = Some(reason.to_string());
    c.transition(Stage::RolledBack, "automatic rollback")?;
    c.set_mode(Mode::Audit)?;
    let latency = since_event(ev);
    let ns = c.ns.namespace.clone();
    c.ns.append(
        &c.ns.surprises_path(),
        &serde_json::json!({
            "revision": c.record.revision,
            "reason": reason,
            "flows": keys,
            "event": offending.last(),
            "events": offending.len(),
            "rollback_after_ms": latency.as_secs_f64() * 1000.0,
        }),
    )?;
    say(
        &ns,
        &format!(
            "rolled back to audit {:.1} ms after the event: {reason}",
            latency.as_secs_f64() * 1000.0
        ),
    );
    println!("{ns}: rolled back: {reason}");
    println!("  offending flows:");
    for key in keys {
        println!("    {key}");
    }
    println!(
        "  evidence: {}; `cnpilot status` shows the stage",
        c.ns.surprises_path().display()
    );
    // After the flip back: the rollback never waits for the proposal.
    match addition::propose(&c.ns, offending) {
        Ok(Some(a)) => {
            println!(
                "  proposed addition: {} policies in {} (from {} offending events, kept as the flow store {})",
                a.policies,
                a.dir.display(),
                a.records,
                a.store.display()
            );
            for why in &a.left_out {
                println!("    not proposed: {why}");
            }
            println!(
                "  review it: cnpilot review --proposed {} --current {} --store {}",
                a.dir.display(),
                c.ns.policies_dir().display(),
                a.store.display()
            );
        }
        Ok(None) => println!("  no addition proposed: the offending events carry no flow"),
        Err(e) => say(
            &ns,
            &format!("warning: proposing an addition failed: {e:#}"),
        ),
    }
    Ok(Outcome::Finding)
}

/// The mode left enforce without this controller: `cnpilot rollback`, or
/// someone's `cnpilot mode`.
fn outside_change(c: &mut Controller) -> anyhow::Result<Outcome> {
    let ns = c.ns.namespace.clone();
    match c.ns.load()? {
        Some(r) if r.stage == Stage::RolledBack => {
            say(
                &ns,
                &format!(
                    "rolled back from outside: {}",
                    r.reason.as_deref().unwrap_or("no reason recorded")
                ),
            );
            Ok(Outcome::Finding)
        }
        _ => {
            c.record.reason = Some(format!(
                "the mode was changed to {} outside cnpilot enforce",
                c.mode()?
            ));
            c.transition(Stage::RolledBack, "mode changed outside")?;
            say(&ns, c.record.reason.as_deref().unwrap_or(""));
            Ok(Outcome::Finding)
        }
    }
}
