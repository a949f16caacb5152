//! `cnpilot agent`, `cnpilot mode`, `cnpilot record`: load the datapath,
//! attach it to every lab pod, fill its maps, stream its events.

mod events;
mod instance;
mod inventory;
mod l7;
mod maps;
mod policy;
mod socket;
mod source;
pub(crate) mod store;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use cnpilot_bpf::maps::verdict;
use cnpilot_bpf::{Datapath, Mode, Tables, DEFAULT_PIN_DIR};

use crate::Outcome;
pub use inventory::ns_id;
use maps::{attach_pod, churn, program_maps, reprogram_policy};
pub use policy::Visibility;
use source::{inventory_source, node_of};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Directory of CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML files.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Mode for every namespace. Without it, namespaces keep their pinned
    /// mode and new ones start in audit.
    #[arg(long)]
    pub mode: Option<Mode>,
    /// bpffs directory for cnpilot's pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Where flow events go, as JSON lines: a file, or `-` for stdout.
    #[arg(long, default_value = "-")]
    pub events: String,
    /// Print only would-drop and drop events.
    #[arg(long)]
    pub drops_only: bool,
    /// What runs on this node: `lab` (the lab's `inventory.json`), `kube`
    /// (the cluster: in-cluster config or $KUBECONFIG; Pods, Namespaces,
    /// Nodes are watched), or a file as `kubectl get pods,namespaces,nodes
    /// -A -o json` writes it. Read again every second: a pod that appears is
    /// attached (once its /32 route to its interface exists), a pod that
    /// goes is detached, a reused IP takes its new pod's identity before the
    /// new pod's interface is attached.
    #[arg(long, default_value = "lab", value_name = "lab|kube|FILE")]
    pub inventory: String,
    /// This node's name in the inventory (only its pods are attached).
    /// Default: the lab's node with `--inventory lab`, else the host name.
    #[arg(long, env = "CNPILOT_NODE")]
    pub node: Option<String>,
    /// The node's network namespace, where pods' host-side interfaces and
    /// their /32 routes live. Default: the lab's node namespace with
    /// `--inventory lab`, else this process's own (a real node).
    #[arg(long, value_name = "PATH")]
    pub node_netns: Option<PathBuf>,
    /// The lab's state directory (`--inventory lab`).
    #[arg(long, env = "CNPILOT_LAB_DIR", default_value = inventory::DEFAULT_LAB_DIR)]
    pub lab_dir: PathBuf,
    /// Flow store directory: every event (and L7 request) also becomes a
    /// learner `FlowRecord` there, durable once appended; `cnpilot learn
    /// --store DIR` reads it.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Detach from every interface, remove every pin, and exit (enforcement stops).
    #[arg(long)]
    pub down: bool,
    /// Port of the transparent L7 (HTTP) proxy in the node namespace, for
    /// ports with `rules.http`; 0 runs no proxy (those ports are then
    /// decided at L3/L4 only: their HTTP rules are not enforced).
    #[arg(long, default_value_t = l7::DEFAULT_PROXY_PORT)]
    pub proxy_port: u16,
    /// Size of the event ring buffer, in MiB (a power of two). 256 KiB
    /// overflowed at 300k events/s on a busy 2-core node; 16 MiB held
    /// 1M events/s into the flow store (`cnpilot bench ingest`). Events
    /// lost to a full ring are still counted per flow.
    #[arg(long, default_value_t = DEFAULT_RING_MIB, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,
    /// HTTP visibility without L7 rules, as Cilium's proxy visibility:
    /// connections to these pod ports go through the proxy, which records
    /// every request (method, path, host, status) and forwards it; policy
    /// decides exactly as without it. `auto`: the ports pods declare as
    /// HTTP (the default for `record`, which is for learning); `off`: none
    /// (the default for `agent`); or a list: `8080,9090`, `auto,8443`.
    #[arg(long, value_name = "auto|off|PORTS")]
    pub http_visibility: Option<Visibility>,
    /// The local API (`cnpilot observe`, `enforce`, `status`): a root-only
    /// Unix socket. By default `/run/cnpilot/agent.sock` for the default pin
    /// directory, `/run/cnpilot/agent-NAME.sock` for a pin directory NAME.
    #[arg(long, env = "CNPILOT_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Staged-enforce records (`cnpilot enforce`): namespaces in a staged
    /// enforce get their proposal's policies instead of `--policies`', and
    /// keep their mode when `--mode` is given.
    #[arg(long, env = "CNPILOT_STATE_DIR", default_value = crate::commands::enforce::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// The agent's event ring buffer (see `--ring-buffer-mib`).
pub const DEFAULT_RING_MIB: u32 = 16;

/// A power of two from 1 to 1024 MiB.
pub fn parse_ring_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of MiB"))?;
    if !(1..=1024).contains(&mib) || !mib.is_power_of_two() {
        return Err(format!(
            "{mib} MiB: the ring buffer must be a power of two from 1 to 1024 MiB"
        ));
    }
    Ok(mib)
}

#[derive(Debug, Args)]
pub struct ModeArgs {
    /// The Kubernetes namespace to flip.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// off, audit or enforce; without it, print the current mode.
    pub mode: Option<Mode>,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// How long to record: `30s`, `5m`, `1h`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub agent: AgentArgs,
}

pub fn run_agent(args: AgentArgs) -> anyhow::Result<Outcome> {
    if args.down {
        if let Ok((_, Some(node))) = node_of(&args) {
            l7::remove_proxy_route(&node);
        }
        cnpilot_bpf::unpin_all(&args.pin_dir)?;
        eprintln!("cnpilot: detached and unpinned {}", args.pin_dir.display());
        return Ok(Outcome::Success);
    }
    run(args, None)
}

pub fn run_record(args: RecordArgs) -> anyhow::Result<Outcome> {
    run(args.agent, Some(args.duration))
}

pub fn run_mode(args: ModeArgs) -> anyhow::Result<Outcome> {
    let mut tables = Tables::open_pinned(&args.pin_dir)?;
    let id = ns_id(&args.namespace);
    match args.mode {
        None => println!("{}: {}", args.namespace, tables.mode(id)?),
        Some(mode) => {
            let old = tables.set_mode(id, mode)?;
            println!("{}: {old} -> {mode}", args.namespace);
        }
    }
    Ok(Outcome::Success)
}

/// The namespaces a staged enforce has taken over, and where their
/// proposals are.
fn staged_namespaces(
    state_dir: &std::path::Path,
) -> anyhow::Result<(Vec<policy::Staged>, Vec<String>)> {
    use crate::commands::enforce::state::{self, Stage};
    let records = state::all(state_dir)?;
    let staged = records
        .iter()
        .filter(|(_, r)| r.stage.proposal_loaded())
        .map(|(ns, _)| policy::Staged {
            namespace: ns.namespace.clone(),
            dir: ns.policies_dir(),
        })
        .collect();
    let keep_mode = records
        .iter()
        .filter(|(_, r)| matches!(r.stage, Stage::Enforce | Stage::Watch | Stage::Done))
        .map(|(ns, _)| ns.namespace.clone())
        .collect();
    Ok((staged, keep_mode))
}

fn run(args: AgentArgs, duration: Option<Duration>) -> anyhow::Result<Outcome> {
    let _instance = instance::acquire(&args.pin_dir)?;
    let (node_name, node_netns) = node_of(&args)?;
    let node_netns = node_netns.unwrap_or_else(|| PathBuf::from(inventory::OWN_NETNS));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let _in_runtime = rt.enter();
    let source = inventory_source(&args, &rt)?;
    let mut snapshot = source
        .snapshot()
        .with_context(|| format!("reading the inventory ({})", source.describe()))?;
    let mut identities = cnpilot_learner::IdentityAllocator::new();
    let mut inv = inventory::Inventory::build(&snapshot, &node_name, &node_netns, &mut identities)?;
    for pod in &inv.unrouted {
        eprintln!("cnpilot agent: {pod}: no route to an interface yet; attached when it has one");
    }
    let visibility = args.http_visibility.clone().unwrap_or(match duration {
        Some(_) => Visibility::Auto(Vec::new()),
        None => Visibility::Off,
    });
    let (staged, keep_mode) = staged_namespaces(&args.state_dir)?;
    for ns in &staged {
        eprintln!(
            "cnpilot agent: {}: policies from its staged enforce ({})",
            ns.namespace,
            ns.dir.display()
        );
    }
    let compile = |staged: &[policy::Staged], inv: &inventory::Inventory| {
        policy::compile(
            args.policies.as_deref(),
            staged,
            inv,
            args.proxy_port,
            &visibility,
        )
    };
    let entries = compile(&staged, &inv)?;

    store::fresh_event_ring(&args.pin_dir);
    let mut dp = Datapath::load_or_open_with(&args.pin_dir, Some(args.ring_buffer_mib << 20))?;
    // Tells `lab down` which pins to remove with the lab.
    let pins_note = args.lab_dir.join(crate::lab::AGENT_PIN_DIR_FILE);
    let lab_note = if args.inventory == "lab" {
        std::fs::write(&pins_note, args.pin_dir.display().to_string())
    } else {
        Ok(())
    };
    if let Err(err) = lab_note {
        tracing::warn!(
            "{}: {err}; `lab down` will not remove the pins",
            pins_note.display()
        );
    }
    program_maps(&mut dp, &inv, &entries, args.mode, &keep_mode)?;
    let slot = std::sync::Arc::new(l7::PolicySlot::new(std::sync::Arc::clone(
        &entries.compiled,
    )));
    let ns_of_identity: l7::NamespaceOfIdentity =
        std::sync::Arc::new(std::sync::RwLock::new(l7::namespaces_of(&inv)));
    // The proxy listens before any program can hand it a connection.
    let mut http_events = match args.proxy_port {
        0 => None,
        port => {
            l7::install_proxy_route(&inv.node_netns)?;
            Some(l7::start_proxy(
                &inv,
                std::sync::Arc::clone(&slot),
                std::sync::Arc::clone(&ns_of_identity),
                &args.pin_dir,
                port,
            )?)
        }
    };
    if http_events.is_some() {
        dp.attach_proxy_lookup(&inv.node_netns)
            .context("attaching the proxy's sk_lookup program to the node namespace")?;
    }
    for pod in &inv.pods {
        attach_pod(&mut dp, &inv.node_netns, pod)?;
    }
    let mut reader = dp.events()?;
    let socket_path = args
        .socket
        .clone()
        .unwrap_or_else(|| crate::agent_api::socket_for(&args.pin_dir));
    let (hub, mut reloads) = socket::serve(&socket_path)?;
    let cx = events::LineContext::new(inv.node_name.clone());
    let mut sink = match &args.store {
        Some(dir) => Some(store::StoreThread::spawn(store::StoreSink::open(
            dir,
            &snapshot,
            &node_name,
            dp.tables(),
        )?)?),
        None => None,
    };
    eprintln!(
        "cnpilot agent: {} pods attached, {} policy entries, {} namespaces; pinned under {}; \
         socket {}",
        inv.pods.len(),
        entries.policy.len(),
        inv.namespaces.len(),
        args.pin_dir.display(),
        socket_path.display()
    );
    for ns in inv.namespaces.keys() {
        eprintln!("  {ns}: {}", dp.tables().mode(ns_id(ns))?);
    }

    let mut out: Box<dyn Write> = if args.events == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.events)
                .with_context(|| format!("creating {}", args.events))?,
        ))
    };
    let (mut seen, mut drops) = (0u64, 0u64);
    // `record` is a fixed window: a bar shows how much of it is left and
    // what has been seen so far (hidden when stderr is not a terminal).
    let bar = match duration {
        Some(d) => {
            let bar = indicatif::ProgressBar::new(d.as_millis() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} recording [{elapsed_precise}] {wide_bar} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        }
        None => indicatif::ProgressBar::hidden(),
    };
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut refresh = tokio::time::interval(INVENTORY_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish_modes = |t: &Tables, inv: &inventory::Inventory| {
        let modes = inv
            .namespaces
            .keys()
            .map(|ns| {
                let mode = t
                    .mode(ns_id(ns))
                    .map_or_else(|e| format!("? ({e})"), |m| m.to_string());
                (ns.clone(), mode)
            })
            .collect();
        hub.set_modes(modes);
    };
    publish_modes(dp.tables(), &inv);
    let result: anyhow::Result<()> = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                batch = reader.next_batch() => {
                    let batch = batch?;
                    if let Some(sink) = sink.as_mut() {
                        sink.record_events(batch.clone())?;
                    }
                    let live = hub.has_clients();
                    for ev in batch {
                        seen += 1;
                        let dropped = ev.verdict == verdict::WOULD_DROP || ev.verdict == verdict::DROPPED;
                        drops += u64::from(dropped);
                        if dropped {
                            if let Some(ns) = inv.namespace_of_ns_id(ev.ns_id) {
                                hub.count(ns, if ev.verdict == verdict::DROPPED {
                                    socket::Denial::Dropped
                                } else {
                                    socket::Denial::WouldDrop
                                });
                            }
                        }
                        let to_file = !args.drops_only || dropped;
                        if !to_file && !live {
                            continue;
                        }
                        let text: std::sync::Arc<str> =
                            serde_json::to_string(&events::line(&ev, &inv, &cx))?.into();
                        if live {
                            hub.publish(&text);
                        }
                        if to_file {
                            out.write_all(text.as_bytes())?;
                            out.write_all(b"\n")?;
                        }
                    }
                    out.flush()?;
                }
                Some(ev) = async {
                    match http_events.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    seen += 1;
                    let dropped = events::http_is_drop(&ev);
                    if let Some(sink) = sink.as_mut() {
                        sink.record_l7(ev.clone())?;
                    }
                    drops += u64::from(dropped);
                    if dropped {
                        let ns = inv.pods.iter().find(|p| p.identity == ev.dst_identity)
                            .or_else(|| inv.pods.iter().find(|p| p.identity == ev.src_identity))
                            .map(|p| p.namespace.clone());
                        if let Some(ns) = ns {
                            hub.count(&ns, match ev.verdict {
                                cnpilot_proxy::event::L7Verdict::Denied => socket::Denial::L7Denied,
                                _ => socket::Denial::L7WouldDeny,
                            });
                        }
                    }
                    let live = hub.has_clients();
                    if live || !args.drops_only || dropped {
                        let text: std::sync::Arc<str> =
                            serde_json::to_string(&events::http_line(&ev, &inv, &cx))?.into();
                        if live {
                            hub.publish(&text);
                        }
                        if !args.drops_only || dropped {
                            out.write_all(text.as_bytes())?;
                            out.write_all(b"\n")?;
                            out.flush()?;
                        }
                    }
                }
                _ = refresh.tick() => {
                    let next = match source.snapshot() {
                        Ok(next) => next,
                        Err(e) => {
                            tracing::warn!("inventory ({}): {e}; keeping the last one", source.describe());
                            continue;
                        }
                    };
                    // Unrouted pods may have been wired since: look again.
                    if next == snapshot && inv.unrouted.is_empty() {
                        continue;
                    }
                    let changed_at = std::time::Instant::now();
                    let new_inv = match inventory::Inventory::build(&next, &node_name, &node_netns, &mut identities) {
                        Ok(new_inv) => new_inv,
                        Err(e) => {
                            tracing::warn!("inventory: {e:#}; keeping the last one");
                            continue;
                        }
                    };
                    let changes = inventory::Changes::between(&inv, &new_inv);
                    if next != snapshot {
                        if let Some(sink) = sink.as_mut() {
                            sink.set_inventory(next.clone(), node_name.clone())?;
                        }
                    }
                    snapshot = next;
                    if changes.is_empty() && new_inv.pods == inv.pods && new_inv.namespaces == inv.namespaces {
                        inv = new_inv;
                        continue;
                    }
                    let (now_staged, keep_mode) = staged_namespaces(&args.state_dir)?;
                    let entries = compile(&now_staged, &new_inv)?;
                    churn(&mut dp, &args, &changes, &new_inv, &entries, &keep_mode)?;
                    slot.replace(std::sync::Arc::clone(&entries.compiled));
                    match ns_of_identity.write() {
                        Ok(mut map) => *map = l7::namespaces_of(&new_inv),
                        Err(poisoned) => *poisoned.into_inner() = l7::namespaces_of(&new_inv),
                    }
                    let names = |pods: &[inventory::Pod]| pods.iter()
                        .map(|p| format!("{}/{} ({}, {})", p.namespace, p.name, p.ip, p.host_veth))
                        .collect::<Vec<_>>().join(", ");
                    if !changes.detach.is_empty() {
                        eprintln!("cnpilot agent: detached {}", names(&changes.detach));
                    }
                    if !changes.attach.is_empty() {
                        eprintln!(
                            "cnpilot agent: attached {} ({:.1} ms after reading the change)",
                            names(&changes.attach),
                            changed_at.elapsed().as_secs_f64() * 1000.0
                        );
                    }
                    inv = new_inv;
                    publish_modes(dp.tables(), &inv);
                }
                Some(request) = reloads.recv() => {
                    let result = staged_namespaces(&args.state_dir)
                        .and_then(|(now_staged, _)| {
                            let entries = compile(&now_staged, &inv)?;
                            reprogram_policy(&mut dp, &inv, &entries)?;
                            slot.replace(std::sync::Arc::clone(&entries.compiled));
                            Ok(format!(
                                "{} policy entries, {} staged namespaces",
                                entries.policy.len(),
                                now_staged.len()
                            ))
                        })
                        .map_err(|e| format!("{e:#}"));
                    match &result {
                        Ok(summary) => tracing::info!("reloaded: {summary}"),
                        Err(e) => tracing::warn!("reload failed: {e}"),
                    }
                    let _ = request.reply.send(result);
                }
                _ = tick.tick() => {
                    publish_modes(dp.tables(), &inv);
                    if duration.is_some() {
                        bar.set_position(started.elapsed().as_millis() as u64);
                        bar.set_message(format!("{seen} events, {drops} would-drop/drop"));
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = &mut deadline => break,
            }
        }
        Ok(())
    });
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&socket_path);
    result?;
    out.flush()?;
    let flows = dp.tables().read_counters()?;
    if let (Some(sink), Some(dir)) = (sink, &args.store) {
        let s = sink.join()?.finish(dp.tables())?;
        eprintln!(
            "cnpilot agent: flow store {}: {} event records, {} L7 records, {} counter records \
             ({} connections recovered from counters)",
            dir.display(),
            s.event_records,
            s.l7_records,
            s.counter_records,
            s.recovered_connections
        );
    }
    eprintln!(
        "cnpilot agent: stopping; {seen} events ({drops} would-drop/drop), {} flows counted; \
         programs stay attached and pinned (`cnpilot agent --down` removes them)",
        flows.len()
    );
    Ok(if drops > 0 && duration.is_some() {
        Outcome::Finding
    } else {
        Outcome::Success
    })
}

/// How often the agent reads its inventory again (pod churn is picked up
/// within this plus the time to attach: well under the 2 s a new pod may
/// wait).
const INVENTORY_REFRESH: Duration = Duration::from_millis(500);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 5m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}`: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }
}
