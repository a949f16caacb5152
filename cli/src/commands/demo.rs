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

    /// How long the lab's clients talk in audit mode.
    #[arg(long, default_value = "3s")]
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
    if !is_root() {
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

    step("4. The agent attaches eBPF programs to every pod's veth, in audit mode");
    let work = std::env::temp_dir().join(format!("cnpilot-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let events = work.join("events.jsonl");
    let store = work.join("store");
    println!(
        "$ cnpilot agent --mode audit --policies {} --events {} --store {} &",
        policies.display(),
        events.display(),
        store.display()
    );
    let agent = Command::new(me)
        .args(["agent", "--mode", "audit", "--policies"])
        .arg(policies)
        .arg("--events")
        .arg(&events)
        .arg("--store")
        .arg(&store)
        .stdin(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let mut agent = AgentProcess(agent);
    std::thread::sleep(Duration::from_secs(2));

    step("5. The workloads talk; audit mode drops nothing but records what policy would drop");
    run_checked(me, &["lab", "traffic", "--duration", &args.traffic])?;
    summarize_events(&events)?;

    step("6. payments flips to enforce (one map update); the article's four curls");
    run_checked(me, &["mode", "-n", "payments", "enforce"])?;
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
        println!("  [{mark}] {pod:<24} {method:<4} {path:<18} -> {code} (article: {expect})");
    }

    step("7. The agent stops (programs stay attached, enforcement holds); what it learned");
    agent.stop()?;
    run_checked(me, &["learn", "--store", &path_arg(&store)])?;
    println!(
        "\n  events: {}\n  store:  {}",
        events.display(),
        store.display()
    );
    Ok(())
}

/// The agent as a child: stopped with SIGTERM so it flushes its store, and
/// killed if the demo fails before that.
struct AgentProcess(std::process::Child);

impl AgentProcess {
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

fn step(title: &str) {
    println!("\n== {title}");
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Runs a child command, showing it; returns whether it exited 0 (exit 1 is
/// a finding, not a failure to run).
fn run_shown(me: &Path, args: &[&str]) -> anyhow::Result<bool> {
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
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
