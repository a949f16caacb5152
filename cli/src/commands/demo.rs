//! `cnpilot demo`: the main job, end to end, on the embedded lab. It drives
//! the same commands a user would type (as child processes of this binary),
//! so every step it shows can be repeated by hand from its printed command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Policies to observe with (a directory of CNP/CCNP YAML). Default: the
    /// article's policies shipped with cnpilot (`cli/policies/seed`).
    #[arg(long)]
    policies: Option<PathBuf>,

    /// How long the lab's clients talk while recording (whole seconds).
    #[arg(long, default_value = "8s")]
    traffic: String,

    /// Leave the lab up at the end (for poking around with `lab exec`).
    #[arg(long)]
    keep: bool,

    /// Only check and test the policies (no lab, no root needed).
    #[arg(long)]
    policies_only: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let me = std::env::current_exe().context("locating the cnpilot binary")?;
    let root = source_root();
    let policies = args
        .policies
        .clone()
        .unwrap_or_else(|| root.join("cli/policies/seed"));

    step("1. The article's policies parse and validate");
    run_shown(&me, &["policy", "check", &path_arg(&policies)])?;

    step("2. What Cilium does with the article's flows (policy cases)");
    let mut case_args = vec!["policy".to_string(), "test".to_string()];
    case_args.push(path_arg(&root.join("recommender/seed-cases/article.yaml")));
    case_args.push(path_arg(&root.join("recommender/cases")));
    let case_refs: Vec<&str> = case_args.iter().map(String::as_str).collect();
    let cases_ok = run_shown(&me, &case_refs)?;

    if args.policies_only {
        return Ok(if cases_ok {
            Outcome::Success
        } else {
            Outcome::Finding
        });
    }
    if !cnpilot_bpf::sys::is_root() {
        bail!("the lab part of the demo needs root (network namespaces, eBPF); `cnpilot demo --policies-only` runs without it");
    }

    let result = run_lab_demo(&me, &policies, &args);
    if !args.keep {
        step("Tearing down: programs and pins, then the lab");
        let _ = run_shown(&me, &["agent", "--down"]);
        let _ = run_shown(&me, &["lab", "down"]);
    }
    result?;
    Ok(if cases_ok {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}

fn run_lab_demo(me: &Path, policies: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    step("3. A one-machine cluster: the article's workloads in network namespaces");
    run_checked(me, &["lab", "up", "--scenario", "seed"])?;
    run_checked(me, &["lab", "status"])?;

    let work = std::env::temp_dir().join(format!("cnpilot-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let store = work.join("store");
    let proposed = work.join("proposed");
    let events = work.join("events.jsonl");

    step("4. Record in audit: the article's policies loaded, HTTP visibility on, nothing dropped");
    let window = record_seconds(&args.traffic)?;
    let record_args = [
        "record".to_string(),
        "--duration".to_string(),
        format!("{}s", window + 3),
        "--policies".to_string(),
        path_arg(policies),
        "--store".to_string(),
        path_arg(&store),
        "--events".to_string(),
        path_arg(&events),
        "--http-visibility".to_string(),
        "auto".to_string(),
    ];
    println!("$ cnpilot {} &", record_args.join(" "));
    let recorder = Command::new(me)
        .args(&record_args)
        .stdin(Stdio::null())
        .spawn()
        .context("starting cnpilot record")?;
    let mut recorder = AgentProcess(recorder);
    std::thread::sleep(Duration::from_secs(2));
    run_checked(me, &["lab", "traffic", "--duration", &format!("{window}s")])?;
    recorder.wait()?;
    summarize_events(&events)?;

    step("5. Learn: the flow table (identities resolved when each packet was seen)");
    run_checked(me, &["learn", "--store", &path_arg(&store)])?;

    step("6. Recommend: least privilege on top of the article's policies, proved by replay and probes");
    run_checked(
        me,
        &[
            "recommend",
            "--store",
            &path_arg(&store),
            "--current",
            &path_arg(policies),
            "--out",
            &path_arg(&proposed),
        ],
    )?;

    step("7. Review: evidence, blast radius, what changes, risks");
    let _ = run_shown(
        me,
        &[
            "review",
            "--proposed",
            &path_arg(&proposed),
            "--current",
            &path_arg(policies),
            "--store",
            &path_arg(&store),
        ],
    );

    step("8. Diff: what the proposal adds to the article's policies");
    let _ = run_shown(
        me,
        &[
            "diff",
            "--current",
            &path_arg(policies),
            // What applying the proposal changes: current + proposed.
            "--proposed",
            &path_arg(policies),
            "--proposed",
            &path_arg(&proposed),
            "--color",
            "never",
        ],
    );

    step("9. Enforce payments with current + proposed (one map update); the article's four curls");
    let enforced = work.join("enforced");
    std::fs::create_dir_all(&enforced)?;
    for dir in [policies, proposed.as_path()] {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                if let Some(name) = path.file_name() {
                    std::fs::copy(&path, enforced.join(name))?;
                }
            }
        }
    }
    println!(
        "$ cnpilot agent --mode audit --policies {} --events {} &",
        enforced.display(),
        work.join("enforce-events.jsonl").display()
    );
    let agent = Command::new(me)
        .args(["agent", "--mode", "audit", "--policies"])
        .arg(&enforced)
        .arg("--events")
        .arg(work.join("enforce-events.jsonl"))
        .stdin(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let mut agent = AgentProcess(agent);
    std::thread::sleep(Duration::from_secs(2));
    run_checked(me, &["mode", "-n", "payments", "enforce"])?;
    let mut agreed = 0;
    for (pod, method, path, expect) in [
        ("web/frontend-app", "POST", "/api/v1/charges", "200"),
        ("web/frontend-app", "POST", "/api/v1/refunds", "403"),
        ("data/analytics-service", "GET", "/api/v1/charges", "200"),
        ("data/analytics-service", "POST", "/api/v1/charges", "403"),
    ] {
        let url = format!("http://payments-api.payments:8080{path}");
        let out = Command::new(me)
            .args([
                "lab",
                "exec",
                pod,
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
                "-X",
                method,
                &url,
            ])
            .output()
            .context("running curl in the lab")?;
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mark = if code == expect { "ok " } else { "BAD" };
        agreed += usize::from(code == expect);
        println!("  [{mark}] {pod:<24} {method:<4} {path:<18} -> {code} (article: {expect})");
    }
    agent.stop()?;

    step("Summary");
    let report: serde_json::Value = std::fs::read_to_string(proposed.join(".cnpilot/report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    println!(
        "  recorded {} flows; proposed {} policies in {}",
        report["flows"],
        report["policies"].as_array().map_or(0, Vec::len),
        proposed.display()
    );
    println!(
        "  replay: {} of {} observed flows allowed, {} unexpected denials; probes: {} of {} never-seen flows denied",
        report["replay"]["allowed_flows"],
        report["replay"]["flows"],
        report["replay"]["unexpected"],
        report["probes"]["denied"],
        report["probes"]["total"]
    );
    println!("  payments enforced: {agreed}/4 curls as the article says");
    println!("  store: {}  events: {}", store.display(), events.display());
    if agreed != 4 {
        bail!("{} of the article's curls disagreed", 4 - agreed);
    }
    Ok(())
}

/// The recording window from `--traffic` (`3s`, `10s`).
fn record_seconds(text: &str) -> anyhow::Result<u64> {
    text.trim_end_matches('s')
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=600).contains(s))
        .with_context(|| format!("--traffic {text}: expected whole seconds such as 8s"))
}

/// The agent as a child: stopped with SIGTERM so it flushes its store, and
/// killed if the demo fails before that.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    /// Waits for a process that ends by itself (`record`).
    fn wait(&mut self) -> anyhow::Result<()> {
        let status = self.0.wait().context("waiting for cnpilot record")?;
        if !matches!(status.code(), Some(0) | Some(1)) {
            bail!("cnpilot record ended with {status}");
        }
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.0.id()).context("agent pid out of range")?;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = self.0.wait().context("waiting for the agent")?;
        // Exit 1 means it saw drops: expected here.
        if !matches!(status.code(), Some(0) | Some(1)) {
            bail!("the agent ended with {status}");
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Folds the agent's JSON-line events into one line per distinct flow
/// (source, destination, port, verdict), would-drops first.
fn summarize_events(events: &Path) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("reading the agent's events {}", events.display()))?;
    let mut flows: BTreeMap<(u8, String, String, String, String), usize> = BTreeMap::new();
    let mut total = 0usize;
    for line in text.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        total += 1;
        let field = |path: &[&str]| {
            let mut v = &ev;
            for p in path {
                v = &v[*p];
            }
            match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            }
        };
        let verdict = field(&["verdict"]);
        let rank = match verdict.as_str() {
            "dropped" => 0,
            "would-drop" => 1,
            _ => 2,
        };
        let port = format!("{}/{}", field(&["proto"]), field(&["dst", "port"]));
        *flows
            .entry((
                rank,
                verdict,
                field(&["src", "name"]),
                field(&["dst", "name"]),
                port,
            ))
            .or_default() += 1;
    }
    println!("  {total} events, {} distinct flows:", flows.len());
    for ((_, verdict, src, dst, port), n) in &flows {
        println!("  {verdict:<11} {src:<32} -> {dst:<32} {port:<10} x{n}");
    }
    Ok(())
}

pub(crate) fn step(title: &str) {
    println!("\n== {title}");
}

pub(crate) fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Runs a child command, showing it; returns whether it exited 0 (exit 1 is
/// a finding, not a failure to run).
pub(crate) fn run_shown(me: &Path, args: &[&str]) -> anyhow::Result<bool> {
    println!("$ cnpilot {}", args.join(" "));
    let status = Command::new(me)
        .args(args)
        .status()
        .with_context(|| format!("running cnpilot {}", args.join(" ")))?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("`cnpilot {}` failed ({status})", args.join(" ")),
    }
}

fn run_checked(me: &Path, args: &[&str]) -> anyhow::Result<()> {
    if !run_shown(me, args)? {
        bail!("`cnpilot {}` reported a finding", args.join(" "));
    }
    Ok(())
}

/// The source checkout, for the shipped policies and cases: the current
/// directory when it is the checkout (how `make demo` runs), else the
/// directory this binary was built from.
fn source_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    if cwd.join("cli/policies/seed").is_dir() {
        return cwd;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}
