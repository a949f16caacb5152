//! `cnpilot lab`: a one-machine cluster of network namespaces (see DESIGN.md,
//! "Lab"). The agent reads what the lab built through [`state::LabState`].

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};

use crate::Outcome;

mod dns;
mod down;
pub use down::AGENT_PIN_DIR_FILE;
mod http;
mod inventory;
mod netns;
mod plan;
pub mod scenario;
mod serve;
pub mod state;
mod status;
mod traffic;
mod up;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// Where the lab keeps its state and what its names start with; several
/// labs can be up at once with distinct prefixes and directories.
#[derive(Debug, Args)]
pub struct LabLocation {
    /// Directory of state.json and inventory.json.
    #[arg(long, env = state::DIR_ENV, default_value = state::DEFAULT_DIR)]
    pub lab_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab cluster: node, pods, veths, routes, servers, DNS.
    Up {
        /// `seed` (built in: the article's cluster), `two-nodes` (built in), or a scenario YAML file.
        #[arg(long, default_value = "seed")]
        scenario: String,
        /// First part of every netns and veth name (1-8 lowercase letters/digits).
        #[arg(long, env = state::PREFIX_ENV, default_value = state::DEFAULT_PREFIX)]
        prefix: String,
        #[command(flatten)]
        location: LabLocation,
    },
    /// Remove everything the lab made, also after a crash (by name prefix).
    Down {
        /// Prefix of a crashed lab to sweep (default: the state's, else `cnp`).
        #[arg(long, env = state::PREFIX_ENV)]
        prefix: Option<String>,
        /// Also remove `<prefix>-*` namespaces that lack the lab's mark.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        location: LabLocation,
    },
    /// Run a command inside a pod's network namespace (exit code passed through).
    Exec {
        /// The pod's workload as NAMESPACE/WORKLOAD.
        workload: String,
        /// Which replica (0-based).
        #[arg(long, default_value_t = 0)]
        replica: u32,
        #[command(flatten)]
        location: LabLocation,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Let the scenario's clients talk for a while; per-client counts.
    Traffic {
        /// How long: `2s`, `500ms`, `1m`.
        #[arg(long, default_value = "10s")]
        duration: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: OutputFormat,
        #[command(flatten)]
        location: LabLocation,
    },
    /// Pods, addresses, veths and server health (exit 1 when a server is down).
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: OutputFormat,
        #[command(flatten)]
        location: LabLocation,
    },
    /// Run one pod's servers (started by `lab up` inside the pod's netns).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, conflicts_with = "world", required_unless_present = "world")]
        pod: Option<String>,
        #[arg(long)]
        world: bool,
    },
}

pub fn run(cmd: LabCommand) -> anyhow::Result<Outcome> {
    match cmd {
        LabCommand::Up {
            scenario,
            prefix,
            location,
        } => {
            let started = Instant::now();
            let lab = up::up(&up::UpOptions {
                scenario,
                prefix,
                dir: location.lab_dir.clone(),
            })?;
            let pods = lab.pods.len();
            let servers = lab.server_pids().len();
            println!(
                "lab `{}` up in {:.2}s: node {} ({}), {pods} pods, {servers} server processes",
                lab.scenario.name,
                started.elapsed().as_secs_f64(),
                lab.node.netns,
                lab.node.ip
            );
            println!(
                "state: {}   inventory: {}",
                state::state_path(&location.lab_dir).display(),
                state::inventory_path(&location.lab_dir).display()
            );
            if lab.scenario.name == "seed" {
                println!("try: cnpilot lab exec web/frontend-app -- curl -s -X POST http://payments-api.payments:8080/api/v1/charges");
            }
            Ok(Outcome::Success)
        }
        LabCommand::Down {
            prefix,
            force,
            location,
        } => {
            let started = Instant::now();
            let report = down::down(&down::DownOptions {
                prefix,
                dir: location.lab_dir,
                force,
            })?;
            if report.is_empty() {
                println!("no lab to remove");
            } else {
                println!(
                    "lab down in {:.2}s: {} processes stopped, {} network namespaces and {} files removed",
                    started.elapsed().as_secs_f64(),
                    report.processes.len(),
                    report.netns.len(),
                    report.files.len()
                );
            }
            Ok(Outcome::Success)
        }
        LabCommand::Exec {
            workload,
            replica,
            location,
            command,
        } => exec(&location, &workload, replica, &command),
        LabCommand::Traffic {
            duration,
            output,
            location,
        } => {
            let duration = traffic::parse_duration(&duration).map_err(anyhow::Error::msg)?;
            let lab = state::LabState::load_from(&location.lab_dir)?;
            up::require_root("lab traffic")?;
            let reports = traffic::run(&lab, duration)?;
            match output {
                OutputFormat::Json => print_json(&reports)?,
                OutputFormat::Table => status::print_traffic(&reports),
            }
            Ok(Outcome::Success)
        }
        LabCommand::Status { output, location } => {
            let lab = state::LabState::load_from(&location.lab_dir)?;
            up::require_root("lab status")?;
            let rows = status::status(&lab)?;
            match output {
                OutputFormat::Json => print_json(&rows)?,
                OutputFormat::Table => status::print_status(&lab, &rows),
            }
            let healthy = rows.iter().all(|r| r.healthy);
            Ok(if healthy {
                Outcome::Success
            } else {
                Outcome::Finding
            })
        }
        LabCommand::Serve {
            prefix: _,
            dir,
            pod,
            world,
        } => {
            let which = match (&pod, world) {
                (Some(p), _) => serve::Serve::Pod(p),
                (None, _) => serve::Serve::World,
            };
            serve::serve(&dir, which)?;
            Ok(Outcome::Success)
        }
    }
}

/// A closed pipe (`| head`) is not an error worth a panic.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value)?;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

fn exec(
    location: &LabLocation,
    workload: &str,
    replica: u32,
    command: &[String],
) -> anyhow::Result<Outcome> {
    let (ns, name) = workload.split_once('/').ok_or_else(|| {
        anyhow::anyhow!("`{workload}`: expected NAMESPACE/WORKLOAD, e.g. web/frontend-app")
    })?;
    let lab = state::LabState::load_from(&location.lab_dir)?;
    let pod = lab.pod(ns, name, replica)?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(command)
        .status()
        .map_err(|e| anyhow::anyhow!("running `ip netns exec {}`: {e}", pod.netns))?;
    // The command's own exit code, not cnpilot's 0/1/2: scripts test it.
    match status.code() {
        Some(code) => std::process::exit(code),
        None => std::process::exit(
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0),
        ),
    }
}
