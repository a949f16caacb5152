//! `cnpilot`: a thin binary over the cnpilot libraries. Every command exits
//! 0 on success, 1 on a finding that should stop a script (a failing case,
//! would-drops), 2 on bad input or a failure to run, with a one-line reason on
//! stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod lab;
mod outcome;

use outcome::Outcome;

// The agent turns every datapath event into a flow record: a few small
// allocations each, at up to a million events a second. mimalloc makes
// those ~2x cheaper than glibc's malloc (learner/examples/ingestbench.rs
// uses the same allocator, so its figures are the agent's).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Least-privilege, L7-aware Cilium network policy for brownfield clusters,
/// learned from real traffic with eBPF.
///
/// The loop: observe in audit mode (`agent`, `record`, `import hubble`;
/// watch the flows with `observe`), learn the flow table (`learn`), check and test policy (`policy`), and run
/// all of it on one machine with the network-namespace `lab`; then
/// `recommend` least-privilege policies, `review`, `diff` and `explain` them,
/// and `apply` them to a cluster.
#[derive(Debug, Parser)]
#[command(name = "cnpilot", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `cnpilot_bpf=debug`.
    #[arg(long, global = true, env = "CNPILOT_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the main job on the embedded lab: see the README.
    Demo(commands::demo::DemoArgs),
    /// Parse, validate and test CiliumNetworkPolicy files.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// A one-machine cluster of network namespaces to run everything on.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Load the eBPF programs, attach them to every pod, record (long-running).
    ///
    /// One agent per --pin-dir: a second one refuses to start and names the
    /// running one's pid (a lock next to its socket in /run/cnpilot; a
    /// killed agent's lock goes with it, so restarts are never blocked).
    Agent(commands::agent::AgentArgs),
    /// Flip one namespace, or one node's host firewall, between off, audit and enforce (one map update).
    Mode(commands::agent::ModeArgs),
    /// Staged enforce of one namespace: soak in audit, flip, watch, roll
    /// back by itself on surprises.
    Enforce(commands::enforce::EnforceArgs),
    /// Send a namespace back to audit now (one map update), recorded.
    Rollback(commands::enforce::RollbackArgs),
    /// Per namespace: mode, stage, last minute's drops, rollback reasons.
    Status(commands::enforce::StatusArgs),
    /// The brownfield migration, step by step: record, choose, recommend,
    /// review, accept, staged enforce; resumes after an interruption.
    Wizard(commands::wizard::WizardArgs),
    /// Run the agent for a fixed window and store what it saw.
    Record(commands::agent::RecordArgs),
    /// Flows as Hubble shows them: live from the agent, or recorded.
    Observe(commands::observe::ObserveArgs),
    /// Import flows recorded elsewhere (Hubble) into a flow store.
    #[command(subcommand)]
    Import(commands::learn::ImportCommand),
    /// Print the aggregated flow table of a flow store.
    Learn(commands::learn::LearnArgs),
    /// Least-privilege policies for what a flow store observed, with proofs.
    Recommend(commands::recommend::RecommendArgs),
    /// Review proposed policies: evidence, blast radius, what changes, risks.
    Review(commands::review::ReviewArgs),
    /// YAML diff of current and proposed policies, without formatting noise.
    Diff(commands::diff::DiffArgs),
    /// Which rule allows or denies a flow, and the evidence behind it.
    Explain(commands::explain::ExplainArgs),
    /// Server-side apply CNP/CCNP files to a cluster (field manager `cnpilot`).
    Apply(commands::apply::ApplyArgs),
    /// Datapath and pipeline benchmarks (built with the `bench` feature).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    if cli.command.prints_to_a_pipe() {
        restore_default_sigpipe();
    }
    let result = match cli.command {
        Command::Demo(args) => commands::demo::run(args),
        Command::Policy(cmd) => commands::policy::run(cmd),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Agent(args) => commands::agent::run_agent(args),
        Command::Mode(args) => commands::agent::run_mode(args),
        Command::Record(args) => commands::agent::run_record(args),
        Command::Enforce(args) => commands::enforce::run(args),
        Command::Wizard(args) => commands::wizard::run(args),
        Command::Rollback(args) => commands::enforce::run_rollback(args),
        Command::Status(args) => commands::enforce::run_status(args),
        Command::Observe(args) => commands::observe::run(args),
        Command::Import(cmd) => commands::learn::run_import(cmd),
        Command::Learn(args) => commands::learn::run_learn(args),
        Command::Recommend(args) => commands::recommend::run(args),
        Command::Review(args) => commands::review::run(args),
        Command::Diff(args) => commands::diff::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::Apply(args) => commands::apply::run(args),
        #[cfg(feature = "bench")]
        Command::Bench(cmd) => commands::bench::run(cmd),
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => {
            // One line a script can show; the cause chain joined with ": ".
            eprintln!("cnpilot: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

impl Command {
    /// Short-lived commands that print data: `cnpilot … | head` must end
    /// quietly when `head` closes the pipe, as any Unix filter does. The
    /// long-running ones (agent, lab servers, proxy) keep Rust's default of
    /// ignoring SIGPIPE so a closed socket is an error, not a death.
    fn prints_to_a_pipe(&self) -> bool {
        matches!(
            self,
            Command::Policy(_)
                | Command::Learn(_)
                | Command::Mode(_)
                | Command::Status(_)
                | Command::Import(_)
                | Command::Observe(_)
                | Command::Recommend(_)
                | Command::Review(_)
                | Command::Diff(_)
                | Command::Explain(_)
                | Command::Apply(_)
        )
    }
}

fn restore_default_sigpipe() {
    // SAFETY: resetting a signal disposition to its default before any other
    // thread exists has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
