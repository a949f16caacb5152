//! `cnpilot agent`, `cnpilot mode`, `cnpilot record`: the flags and the
//! printing around the node agent (`cnpilot-agent`), and where its
//! inventory comes from (`--inventory lab|kube|FILE`).

mod source;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use cnpilot_agent::{Agent, AgentConfig, Notice, RunOptions, StagedSet, Visibility};
use cnpilot_bpf::{Mode, Tables, DEFAULT_PIN_DIR};

use crate::Outcome;
pub use cnpilot_agent::{ns_id, parse_ring_mib, DEFAULT_RING_MIB};
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
    #[arg(long, env = "CNPILOT_LAB_DIR", default_value = crate::lab::state::DEFAULT_DIR)]
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
    #[arg(long, default_value_t = cnpilot_agent::DEFAULT_PROXY_PORT)]
    pub proxy_port: u16,
    /// Port (UDP and TCP) of the transparent DNS proxy in the node namespace. Every
    /// pod's queries to port 53 that L3/L4 policy lets through go through it
    /// (one it denies, or would deny in audit, is only an L3/L4 event): each query and answer is an
    /// event (`"type":"dns"`: name, type, rcode, answered addresses, TTL),
    /// `rules.dns` decides which names a pod may ask (REFUSED in enforce),
    /// and answers teach `toFQDNs` which addresses a name stands for, for
    /// the answer's TTL. 0 runs no DNS proxy: `rules.dns` is then allowed
    /// at L4 only and `toFQDNs` allows nothing.
    #[arg(long, default_value_t = cnpilot_agent::DEFAULT_DNS_PROXY_PORT)]
    pub dns_proxy_port: u16,
    /// Seconds an address a DNS answer gave keeps its name for `toFQDNs`,
    /// at least, whatever the answer's TTL (Cilium's `--tofqdns-min-ttl`).
    /// 0, the default as in Cilium, honours the TTL (plus one second of
    /// grace for resolvers that cache to the last moment).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub fqdn_min_ttl: u32,
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
    /// The host firewall, as Cilium's: the programs also go on the node's
    /// own devices, so the node's own traffic (hostNetwork pods included)
    /// is observed with identity `host` and judged by
    /// CiliumClusterwideNetworkPolicies with a `nodeSelector`. `auto`: every
    /// device the node routes anything but a single local pod through (its
    /// uplink, its links to other nodes); or a list: `eth0,eth1`. The node
    /// starts in audit; `cnpilot mode --node NAME enforce` enforces it.
    /// Always passes, whatever the policy: non-IPv4 (ARP, IPv6), loopback,
    /// traffic between the node and its local pods (judged by the pods'
    /// policies only), and packets crossing the device that are not to or
    /// from the node's address (forwarded pod traffic).
    #[arg(long, value_name = "off|auto|DEVICES", default_value = "off")]
    pub host_firewall: cnpilot_agent::HostFirewall,
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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["namespace", "node"])))]
pub struct ModeArgs {
    /// The Kubernetes namespace to flip.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// A node's host firewall to flip (the agent runs with `--host-firewall`;
    /// the name is the agent's `--node`).
    #[arg(long)]
    pub node: Option<String>,
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
        let node = node_of(&args).ok().and_then(|(_, netns)| netns);
        cnpilot_agent::down(&args.pin_dir, node.as_deref())?;
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
    let (id, what) = match (&args.namespace, &args.node) {
        (Some(ns), _) => (ns_id(ns), ns.clone()),
        (None, Some(node)) => (cnpilot_agent::host_mode_id(node), format!("node {node}")),
        (None, None) => anyhow::bail!("give --namespace NAME or --node NAME"),
    };
    match args.mode {
        None => println!("{what}: {}", tables.mode(id)?),
        Some(mode) => {
            let old = tables.set_mode(id, mode)?;
            println!("{what}: {old} -> {mode}");
        }
    }
    Ok(Outcome::Success)
}

/// The staged-enforce records of `cnpilot enforce`, as the agent asks for
/// them.
struct EnforceRecords(PathBuf);

impl cnpilot_agent::StagedSource for EnforceRecords {
    fn staged(&self) -> Result<StagedSet, Box<dyn std::error::Error + Send + Sync>> {
        use crate::commands::enforce::state::{self, Stage};
        let records = state::all(&self.0)?;
        let namespaces = records
            .iter()
            .filter(|(_, r)| r.stage.proposal_loaded())
            .map(|(ns, _)| cnpilot_agent::Staged {
                namespace: ns.namespace.clone(),
                dir: ns.policies_dir(),
            })
            .collect();
        let keep_mode = records
            .iter()
            .filter(|(_, r)| matches!(r.stage, Stage::Enforce | Stage::Watch | Stage::Done))
            .map(|(ns, _)| ns.namespace.clone())
            .collect();
        Ok(StagedSet {
            namespaces,
            keep_mode,
        })
    }
}

fn run(args: AgentArgs, duration: Option<Duration>) -> anyhow::Result<Outcome> {
    let (node_name, node_netns) = node_of(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let _in_runtime = rt.enter();
    let source = inventory_source(&args, &rt)?;
    if args.inventory == "lab" {
        // Tells `lab down` which pins to remove with the lab.
        let pins_note = args.lab_dir.join(crate::lab::AGENT_PIN_DIR_FILE);
        if let Err(err) = std::fs::write(&pins_note, args.pin_dir.display().to_string()) {
            tracing::warn!(
                "{}: {err}; `lab down` will not remove the pins",
                pins_note.display()
            );
        }
    }
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| cnpilot_agent::api::socket_for(&args.pin_dir));
    let config = AgentConfig {
        policies: args.policies.clone(),
        mode: args.mode,
        pin_dir: args.pin_dir.clone(),
        node_name,
        node_netns: node_netns.unwrap_or_else(|| PathBuf::from(cnpilot_agent::OWN_NETNS)),
        store: args.store.clone(),
        proxy_port: args.proxy_port,
        dns_proxy_port: args.dns_proxy_port,
        fqdn_min_ttl: args.fqdn_min_ttl,
        ring_buffer_mib: args.ring_buffer_mib,
        visibility: args.http_visibility.clone().unwrap_or(match duration {
            Some(_) => Visibility::Auto(Vec::new()),
            None => Visibility::Off,
        }),
        socket: socket.clone(),
        host_firewall: args.host_firewall.clone(),
        staged: Some(Box::new(EnforceRecords(args.state_dir.clone()))),
        notices: Box::new(|notice: Notice| eprintln!("cnpilot agent: {notice}")),
    };
    let agent = Agent::start(config, source)?;
    let started = agent.started();
    eprintln!(
        "cnpilot agent: {} pods attached, {} policy entries, {} namespaces; pinned under {}; \
         socket {}",
        started.pods_attached,
        started.policy_entries,
        started.modes.len(),
        args.pin_dir.display(),
        socket.display()
    );
    for (ns, mode) in &started.modes {
        eprintln!("  {ns}: {mode}");
    }

    let events: Box<dyn Write + Send> = if args.events == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.events)
                .with_context(|| format!("creating {}", args.events))?,
        ))
    };
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
    let options = RunOptions {
        duration,
        events,
        drops_only: args.drops_only,
    };
    let stopped = rt.block_on(agent.run(options, |p| {
        bar.set_position(p.elapsed.as_millis() as u64);
        bar.set_message(format!("{} events, {} would-drop/drop", p.seen, p.drops));
    }));
    bar.finish_and_clear();
    let stopped = stopped?;
    if let (Some(s), Some(dir)) = (&stopped.store, &args.store) {
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
        "cnpilot agent: stopping; {} events ({} would-drop/drop), {} flows counted; \
         programs stay attached and pinned (`cnpilot agent --down` removes them)",
        stopped.seen, stopped.drops, stopped.flows
    );
    Ok(if stopped.drops > 0 && duration.is_some() {
        Outcome::Finding
    } else {
        Outcome::Success
    })
}

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
