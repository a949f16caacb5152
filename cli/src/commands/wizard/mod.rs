//! `cnpilot wizard`: the brownfield migration, one step after another, with
//! the same commands a user would type (child processes of this binary) and
//! a progress file that lets an interrupted run resume where it stopped.

mod plan;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use dialoguer::{Confirm, Editor, MultiSelect, Select};

use super::demo::{path_arg, run_shown, step};
use crate::commands::agent::parse_duration;
use crate::commands::enforce::{human, parse_duration_or_zero};
use crate::Outcome;
use plan::{Decision, Progress};

#[derive(Debug, Args)]
#[command(after_help = "\
Steps (each one is skipped when the progress file says it is done):
  1. inventory   the lab's namespaces and pods (--lab-dir)
  2. record      the agent in audit for --record, the lab's clients talking
                 (or --store DIR: flows recorded before)
  3. choose      namespaces (--namespaces) and their order (--order); the
                 suggestion is least-connected first, with the reason
  4. recommend   least-privilege policies from the recording
  5. review      the review and the YAML diff against --current
  6. decide      accept, edit or skip each policy (--accept / --skip); the
                 accepted ones are written to WORK/accepted/
  7. enforce     `cnpilot enforce` per namespace, in order: soak, flip,
                 watch, done or rolled back (a rollback stops the wizard)

Without a terminal, or with --yes, nothing is asked: every choice comes from
its flag or its default (all namespaces, the suggested order, accept all).

Examples:
  cnpilot wizard                       # asks at each step
  cnpilot wizard --yes --record 60s --namespaces payments,web \\
      --soak 5m --watch 10m            # the same, for a script")]
pub struct WizardArgs {
    /// Where the wizard keeps the recording, the proposal, the accepted
    /// policies and its progress file.
    #[arg(long, default_value = "cnpilot-wizard", value_name = "DIR")]
    pub work: PathBuf,
    /// The lab's state directory (the inventory).
    #[arg(long, env = "CNPILOT_LAB_DIR", default_value = "/run/cnpilot/lab")]
    pub lab_dir: PathBuf,
    /// How long to record.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub record: Duration,
    /// Use this flow store instead of recording.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Do not drive the lab's clients while recording (real traffic only).
    #[arg(long)]
    pub no_lab_traffic: bool,
    /// Namespaces to migrate (comma-separated), or `all`.
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// The order to enforce them in (comma-separated); default: suggested.
    #[arg(long, value_delimiter = ',')]
    pub order: Vec<String>,
    /// Policies applied today, for the review and the diff.
    #[arg(long, value_name = "DIR")]
    pub current: Option<PathBuf>,
    /// Policies to accept (file names without `.yaml`, comma-separated), or `all`.
    #[arg(long, value_delimiter = ',')]
    pub accept: Vec<String>,
    /// Policies to skip (file names without `.yaml`).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Ask nothing: flags and defaults decide.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Passed to `cnpilot enforce`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub soak: Duration,
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub watch: Duration,
    #[arg(long, default_value_t = 0)]
    pub max_new_drops: usize,
    #[arg(long, default_value = "0", value_parser = parse_duration_or_zero)]
    pub min_evidence: Duration,
    /// bpffs directory of the agent's pins.
    #[arg(long, default_value = cnpilot_bpf::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

fn interactive(args: &WizardArgs) -> bool {
    use std::io::IsTerminal;
    !args.yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// The agent this wizard started for the enforce step; stopped (SIGTERM)
/// at the end. Its programs stay attached and pinned, as always.
struct AgentChild(Child);

impl Drop for AgentChild {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn run(args: WizardArgs) -> anyhow::Result<Outcome> {
    if !cnpilot_bpf::sys::is_root() {
        bail!("the wizard runs the agent (eBPF, network namespaces): it needs root");
    }
    let me = std::env::current_exe().context("locating the cnpilot binary")?;
    let ask = interactive(&args);
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating {}", args.work.display()))?;
    let mut progress = Progress::load(&args.work)?;
    if progress.steps_done() > 0 {
        println!(
            "Resuming the wizard in {} ({} steps done).",
            args.work.display(),
            progress.steps_done()
        );
    }

    step("1. Inventory");
    let inventory = plan::Inventory::from_lab(&args.lab_dir)?;
    for (ns, pods) in &inventory.namespaces {
        println!("  {ns:<16} {pods} pods");
    }

    step("2. Record");
    let store = match (&args.store, &progress.store) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => {
            println!("  recorded before: {}", dir.display());
            dir.clone()
        }
        (None, None) => {
            let dir = args.work.join("store");
            record(&me, &args, &dir)?;
            dir
        }
    };
    progress.store = Some(store.clone());
    progress.save(&args.work)?;

    step("3. Namespaces and order");
    let degrees = plan::connectedness(&store, &inventory)?;
    let suggested = plan::suggest(&degrees);
    if progress.order.is_empty() {
        let chosen = choose_namespaces(&args, &inventory, ask)?;
        let order = choose_order(&args, &chosen, &suggested, &degrees, ask)?;
        progress.order = order;
        progress.save(&args.work)?;
    }
    println!("  order: {}", progress.order.join(" → "));

    step("4. Recommend");
    let proposed = args.work.join("proposed");
    if !progress.recommended {
        let ok = run_shown(
            &me,
            &[
                "recommend",
                "--store",
                &path_arg(&store),
                "--out",
                &path_arg(&proposed),
            ],
        )?;
        if !ok {
            bail!("recommend's proofs failed: see its report above; nothing was enforced");
        }
        progress.recommended = true;
        progress.save(&args.work)?;
    }

    step("5. Review and diff");
    let mut review = vec![
        "review".to_string(),
        "--proposed".into(),
        path_arg(&proposed),
        "--store".into(),
        path_arg(&store),
    ];
    if let Some(current) = &args.current {
        review.extend(["--current".into(), path_arg(current)]);
    }
    run_shown(&me, &review.iter().map(String::as_str).collect::<Vec<_>>())?;
    match &args.current {
        Some(current) => {
            run_shown(
                &me,
                &[
                    "diff",
                    "--current",
                    &path_arg(current),
                    "--proposed",
                    &path_arg(&proposed),
                ],
            )?;
        }
        None => println!("  no --current policies: every proposed policy is new (nothing to diff)"),
    }

    step("6. Accept, edit or skip each policy");
    let accepted = args.work.join("accepted");
    decide(&args, &mut progress, &proposed, &accepted, ask)?;

    step("7. Staged enforce");
    let _agent = start_agent(&me, &args)?;
    for ns in progress.order.clone() {
        if progress.enforced.get(&ns).map(String::as_str) == Some("done") {
            println!("  {ns}: done before");
            continue;
        }
        if !plan::has_policy_of(&accepted, &ns)? {
            println!("  {ns}: no accepted policy: skipped");
            progress.enforced.insert(ns.clone(), "skipped".into());
            progress.save(&args.work)?;
            continue;
        }
        if ask
            && !Confirm::new()
                .with_prompt(format!(
                    "Enforce {ns} now (soak {}, watch {})?",
                    human(args.soak),
                    human(args.watch)
                ))
                .default(true)
                .interact()?
        {
            println!("  {ns}: left in audit; rerun the wizard to continue");
            return Ok(Outcome::Success);
        }
        let done = run_shown(
            &me,
            &[
                "enforce",
                "-n",
                &ns,
                "--policies",
                &path_arg(&accepted),
                "--store",
                &path_arg(&store),
                "--soak",
                &human(args.soak),
                "--watch",
                &human(args.watch),
                "--max-new-drops",
                &args.max_new_drops.to_string(),
                "--min-evidence",
                &human(args.min_evidence),
                "--pin-dir",
                &path_arg(&args.pin_dir),
            ],
        )?;
        let outcome = if done { "done" } else { "rolled-back" };
        progress.enforced.insert(ns.clone(), outcome.into());
        progress.save(&args.work)?;
        if !done {
            println!(
                "  {ns}: rolled back (see `cnpilot status`); review the offending flows, \
                 then rerun the wizard"
            );
            return Ok(Outcome::Finding);
        }
    }
    println!("\nAll chosen namespaces are enforcing:");
    for ns in &progress.order {
        println!(
            "  {ns:<16} {}",
            progress.enforced.get(ns).map_or("-", String::as_str)
        );
    }
    Ok(Outcome::Success)
}

fn record(me: &Path, args: &WizardArgs, store: &Path) -> anyhow::Result<()> {
    let secs = args.record.as_secs();
    let cmd = [
        "record".to_string(),
        "--duration".into(),
        human(args.record),
        "--store".into(),
        path_arg(store),
        "--pin-dir".into(),
        path_arg(&args.pin_dir),
        "--events".into(),
        "/dev/null".into(),
        "--mode".into(),
        "audit".into(),
    ];
    println!("$ cnpilot {}", cmd.join(" "));
    let mut child = Command::new(me)
        .args(&cmd)
        .stdout(Stdio::null())
        .spawn()
        .context("starting cnpilot record")?;
    // The lab's clients start once the agent has attached.
    let traffic = if args.no_lab_traffic || secs < 6 {
        None
    } else {
        std::thread::sleep(Duration::from_secs(3));
        Some(
            Command::new(me)
                .args(["lab", "traffic", "--duration", &format!("{}s", secs - 4)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting lab traffic")?,
        )
    };
    let status = child.wait().context("waiting for cnpilot record")?;
    if let Some(mut t) = traffic {
        let _ = t.wait();
    }
    // 1: would-drops were seen (a finding, not a failure).
    if !matches!(status.code(), Some(0 | 1)) {
        bail!("`cnpilot record` failed ({status})");
    }
    Ok(())
}

fn choose_namespaces(
    args: &WizardArgs,
    inventory: &plan::Inventory,
    ask: bool,
) -> anyhow::Result<Vec<String>> {
    let all: Vec<String> = inventory.namespaces.keys().cloned().collect();
    if !args.namespaces.is_empty() && args.namespaces != ["all"] {
        for ns in &args.namespaces {
            if !all.contains(ns) {
                bail!(
                    "--namespaces: {ns} is not in the inventory ({})",
                    all.join(", ")
                );
            }
        }
        return Ok(args.namespaces.clone());
    }
    if !ask || args.namespaces == ["all"] {
        return Ok(all);
    }
    let picked = MultiSelect::new()
        .with_prompt("Namespaces to migrate (space toggles, enter confirms)")
        .items(&all)
        .defaults(&vec![true; all.len()])
        .interact()?;
    if picked.is_empty() {
        bail!("no namespace chosen");
    }
    Ok(picked.into_iter().map(|i| all[i].clone()).collect())
}

fn choose_order(
    args: &WizardArgs,
    chosen: &[String],
    suggested: &[String],
    degrees: &std::collections::BTreeMap<String, usize>,
    ask: bool,
) -> anyhow::Result<Vec<String>> {
    if !args.order.is_empty() {
        let mut a = args.order.clone();
        let mut b = chosen.to_vec();
        a.sort();
        b.sort();
        if a != b {
            bail!(
                "--order must list exactly the chosen namespaces ({})",
                chosen.join(", ")
            );
        }
        return Ok(args.order.clone());
    }
    let order: Vec<String> = suggested
        .iter()
        .filter(|ns| chosen.contains(ns))
        .cloned()
        .collect();
    println!("  suggested: least-connected first (fewer peers, fewer ways to break):");
    for ns in &order {
        println!(
            "    {ns:<16} {} distinct peers",
            degrees.get(ns).copied().unwrap_or(0)
        );
    }
    if ask
        && !Confirm::new()
            .with_prompt("Enforce in this order?")
            .default(true)
            .interact()?
    {
        let mut rest = order.clone();
        let mut mine = Vec::new();
        while !rest.is_empty() {
            let i = Select::new()
                .with_prompt(format!("Namespace #{}", mine.len() + 1))
                .items(&rest)
                .default(0)
                .interact()?;
            mine.push(rest.remove(i));
        }
        return Ok(mine);
    }
    Ok(order)
}

fn decide(
    args: &WizardArgs,
    progress: &mut Progress,
    proposed: &Path,
    accepted: &Path,
    ask: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(accepted)
        .with_context(|| format!("creating {}", accepted.display()))?;
    for (name, file, ns) in plan::policy_files(proposed)? {
        if !progress.order.contains(&ns) {
            continue;
        }
        if let Some(d) = progress.decisions.get(&name) {
            println!("  {name}: {d} before");
            continue;
        }
        let by_flag = if args.skip.contains(&name) {
            Some(Decision::Skip)
        } else if args.accept.contains(&name) || args.accept == ["all"] {
            Some(Decision::Accept)
        } else {
            None
        };
        let decision = match by_flag {
            Some(d) => d,
            None if !ask => Decision::Accept,
            None => {
                let items = ["accept", "edit", "skip"];
                match Select::new()
                    .with_prompt(format!("{name} ({ns})"))
                    .items(items)
                    .default(0)
                    .interact()?
                {
                    0 => Decision::Accept,
                    1 => Decision::Edit,
                    _ => Decision::Skip,
                }
            }
        };
        let target = accepted.join(format!("{name}.yaml"));
        match decision {
            Decision::Accept => {
                std::fs::copy(&file, &target)
                    .with_context(|| format!("copying {}", file.display()))?;
            }
            Decision::Edit => {
                let text = std::fs::read_to_string(&file)?;
                let mut edited = Editor::new()
                    .extension(".yaml")
                    .edit(&text)?
                    .unwrap_or(text);
                // An edit that does not parse is asked again, not accepted.
                while let Err(e) = cnpilot_recommender::load_str(&edited, &name) {
                    eprintln!("{name}: {e}");
                    edited = Editor::new()
                        .extension(".yaml")
                        .edit(&edited)?
                        .unwrap_or(edited);
                }
                std::fs::write(&target, edited)
                    .with_context(|| format!("writing {}", target.display()))?;
            }
            Decision::Skip => {
                let _ = std::fs::remove_file(&target);
            }
        }
        println!("  {name}: {decision}");
        progress.decisions.insert(name, decision);
        progress.save(&args.work)?;
    }
    Ok(())
}

/// The agent on `--pin-dir`: the one already running, or one started for
/// the enforce step.
fn start_agent(me: &Path, args: &WizardArgs) -> anyhow::Result<Option<AgentChild>> {
    let socket = cnpilot_agent::api::socket_for(&args.pin_dir);
    if cnpilot_agent::api::request(&socket, "status").is_ok() {
        println!("  using the agent already running at {}", socket.display());
        return Ok(None);
    }
    let log = args.work.join("agent.log");
    println!(
        "$ cnpilot agent --pin-dir {} --events /dev/null   (log: {})",
        args.pin_dir.display(),
        log.display()
    );
    let child = Command::new(me)
        .args([
            "agent",
            "--pin-dir",
            &path_arg(&args.pin_dir),
            "--events",
            "/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .spawn()
        .context("starting cnpilot agent")?;
    let mut agent = AgentChild(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cnpilot_agent::api::request(&socket, "status").is_err() {
        if let Some(status) = agent.0.try_wait()? {
            bail!(
                "the agent stopped ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            bail!("the agent did not open {} within 30 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Some(agent))
}
