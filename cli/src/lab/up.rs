//! `cnpilot lab up`: namespaces, veths, routes, servers, state; all or nothing.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use super::netns::{self, in_netns, ip_batch};
use super::plan::{self, NODE_IP};
use super::scenario::Scenario;
use super::state::{self, LabState, RemoteNodeState};
use super::{down, inventory};

const WORLD_NET: &str = "198.19.0.0/16";
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct UpOptions {
    pub scenario: String,
    pub prefix: String,
    pub dir: PathBuf,
}

pub fn up(opts: &UpOptions) -> anyhow::Result<LabState> {
    require_root("lab up")?;
    let scenario = Scenario::load(&opts.scenario)?;
    let mut lab = plan::plan(&scenario, &opts.prefix)?;
    let state_file = state::state_path(&opts.dir);
    if state_file.exists() {
        bail!(
            "a lab is already up ({} exists); run `cnpilot lab down` first",
            state_file.display()
        );
    }
    let leftovers: Vec<String> = netns::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&plan::netns_prefix(&opts.prefix)))
        .collect();
    if !leftovers.is_empty() {
        bail!(
            "network namespaces with the lab prefix `{}` exist ({}); run `cnpilot lab down` (it removes a crashed lab's leftovers) or pick another --prefix",
            opts.prefix,
            leftovers.join(", ")
        );
    }
    match build(&mut lab, &opts.dir) {
        Ok(()) => Ok(lab),
        Err(err) => {
            // All or nothing: a half-built lab is removed before reporting why.
            if let Err(cleanup) = down::down(&down::DownOptions {
                prefix: Some(opts.prefix.clone()),
                dir: opts.dir.clone(),
                force: false,
            }) {
                tracing::warn!("cleaning up the half-built lab: {cleanup:#}");
            }
            Err(err)
        }
    }
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !cnpilot_bpf::sys::is_root() {
        bail!("{what} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN to make network namespaces)");
    }
    Ok(())
}

fn build(lab: &mut LabState, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating the lab directory {}", dir.display()))?;
    let all_netns = lab.netns_names();
    // The marker goes in before the namespace exists, so a crash at any
    // later point still leaves it recognisable as this lab's.
    for name in &all_netns {
        write_resolv_conf(lab, name)?;
    }
    ip_batch(
        None,
        &all_netns
            .iter()
            .map(|n| format!("netns add {n}"))
            .collect::<Vec<_>>(),
    )?;
    configure_sysctls(lab, &all_netns)?;
    ip_batch(Some(&lab.node.netns), &first_node_commands(lab))?;
    for remote in &lab.remote_nodes {
        ip_batch(Some(&remote.netns), &remote_node_commands(lab, remote))?;
    }
    configure_pods(lab)?;
    lab.created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // `lab serve` reads the state to know what to serve.
    lab.save_to(dir)?;
    start_servers(lab, dir)?;
    lab.save_to(dir)?;
    state::write_atomic(
        &state::inventory_path(dir),
        serde_json::to_string_pretty(&inventory::inventory(lab))?.as_bytes(),
    )?;
    Ok(())
}

pub fn resolv_conf_marker(prefix: &str) -> String {
    format!("# cnpilot lab {prefix}\n")
}

fn write_resolv_conf(lab: &LabState, netns: &str) -> anyhow::Result<()> {
    let mut text = resolv_conf_marker(&lab.prefix);
    if let Some(dns) = lab.dns_ip {
        let ns = lab
            .pods
            .iter()
            .find(|p| p.netns == netns && !p.host_network)
            .map(|p| format!("{}.svc.cluster.local ", p.namespace))
            .unwrap_or_default();
        // What the kubelet writes for ClusterFirst pods.
        text.push_str(&format!(
            "nameserver {dns}\nsearch {ns}svc.cluster.local cluster.local\noptions ndots:5\n"
        ));
    }
    let dir = netns::etc_dir(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("resolv.conf"), text)
        .with_context(|| format!("writing {}/resolv.conf", dir.display()))
}

fn configure_sysctls(lab: &LabState, all_netns: &[String]) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let jobs: Vec<_> = all_netns
            .iter()
            .map(|name| {
                let is_node =
                    *name == lab.node.netns || lab.remote_nodes.iter().any(|r| r.netns == *name);
                scope.spawn(move || {
                    in_netns(name, move || -> std::io::Result<()> {
                        // No IPv6 router solicitations or MLD: the datapath sees only the scenario's traffic.
                        netns::write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
                        netns::write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
                        if is_node {
                            netns::write_sysctl("net.ipv4.ip_forward", "1")?;
                            // A node routes pods' traffic: a segment early demux matched to
                            // a leftover TIME_WAIT socket of the L7 proxy would be dropped
                            // on forwarding (see agent/l7.rs, disable_early_demux).
                            netns::write_sysctl("net.ipv4.tcp_early_demux", "0")?;
                        }
                        Ok(())
                    })
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r.with_context(|| format!("setting sysctls in {name}")))
                })
            })
            .collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

/// `ip -n NODE` commands for one node: its IP, its pods' veths and /32 routes.
fn node_commands(lab: &LabState, node: &str, ip: Ipv4Addr) -> Vec<String> {
    let mut cmds = vec![
        "link set lo up".to_string(),
        format!("addr add {ip}/32 dev lo"),
    ];
    for pod in lab.pods.iter().filter(|p| p.node == node) {
        let Some(veth) = &pod.host_veth else { continue };
        cmds.push(format!(
            "link add {veth} type veth peer name eth0 netns {}",
            pod.netns
        ));
        cmds.push(format!("link set {veth} up"));
        cmds.push(format!("route add {}/32 dev {veth} scope link", pod.ip));
    }
    cmds
}

/// The first node also links the world and every remote node; a remote
/// node's pods are reached through that node, as over a tunnel.
fn first_node_commands(lab: &LabState) -> Vec<String> {
    let mut cmds = node_commands(lab, &lab.node.name, NODE_IP);
    let up = &lab.node.uplink;
    cmds.push(format!(
        "link add {up} type veth peer name eth0 netns {}",
        lab.world.netns
    ));
    cmds.push(format!("link set {up} up"));
    cmds.push(format!("route add {WORLD_NET} dev {up} scope link"));
    for remote in &lab.remote_nodes {
        let link = &remote.node_link;
        cmds.push(format!(
            "link add {link} type veth peer name {} netns {}",
            remote.link, remote.netns
        ));
        cmds.push(format!("link set {link} up"));
        cmds.push(format!("route add {}/32 dev {link} scope link", remote.ip));
        for pod in lab
            .pods
            .iter()
            .filter(|p| p.node == remote.name && !p.host_network)
        {
            cmds.push(format!(
                "route add {}/32 via {} dev {link} onlink",
                pod.ip, remote.ip
            ));
        }
    }
    cmds
}

fn remote_node_commands(lab: &LabState, remote: &RemoteNodeState) -> Vec<String> {
    let mut cmds = node_commands(lab, &remote.name, remote.ip);
    cmds.push(format!("link set {} up", remote.link));
    cmds.push(format!(
        "route add default via {NODE_IP} dev {} onlink",
        remote.link
    ));
    cmds
}

fn endpoint_commands(addresses: &[Ipv4Addr], gateway: Ipv4Addr) -> Vec<String> {
    let mut cmds = vec!["link set lo up".to_string()];
    cmds.extend(
        addresses
            .iter()
            .map(|a| format!("addr add {a}/32 dev eth0")),
    );
    cmds.push("link set eth0 up".into());
    // On-link gateway: pods have a /32 and no subnet, as in Cilium.
    cmds.push(format!("route add default via {gateway} dev eth0 onlink"));
    cmds
}

fn node_ip_of(lab: &LabState, node: &str) -> Ipv4Addr {
    lab.remote_nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.ip)
        .unwrap_or(NODE_IP)
}

fn configure_pods(lab: &mut LabState) -> anyhow::Result<()> {
    let mut endpoints: Vec<(String, Vec<Ipv4Addr>, Ipv4Addr)> = lab
        .pods
        .iter()
        .filter(|p| !p.host_network)
        .map(|p| (p.netns.clone(), vec![p.ip], node_ip_of(lab, &p.node)))
        .collect();
    endpoints.push((
        lab.world.netns.clone(),
        lab.world.addresses.clone(),
        NODE_IP,
    ));
    let pod_ifindexes: Vec<Option<u32>> = std::thread::scope(|scope| {
        let jobs: Vec<_> = endpoints
            .iter()
            .map(|(netns, addrs, gateway)| {
                scope.spawn(move || -> anyhow::Result<Option<u32>> {
                    ip_batch(Some(netns), &endpoint_commands(addrs, *gateway))?;
                    Ok(in_netns(netns, || netns::ifindex("eth0"))?)
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut pod_ifindexes = pod_ifindexes.into_iter();
    for pod in lab.pods.iter_mut().filter(|p| !p.host_network) {
        pod.pod_ifindex = pod_ifindexes.next().flatten();
    }
    let mut nodes = vec![lab.node.name.clone()];
    nodes.extend(lab.remote_nodes.iter().map(|n| n.name.clone()));
    for node in nodes {
        let veths: Vec<(usize, String)> = lab
            .pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.node == node)
            .filter_map(|(i, p)| p.host_veth.clone().map(|v| (i, v)))
            .collect();
        let links: Vec<String> = if node == lab.node.name {
            std::iter::once(lab.node.uplink.clone())
                .chain(lab.remote_nodes.iter().map(|r| r.node_link.clone()))
                .collect()
        } else {
            lab.remote_nodes
                .iter()
                .filter(|r| r.name == node)
                .map(|r| r.link.clone())
                .collect()
        };
        let (host, link_indexes) = in_netns(&node, move || {
            let host: Vec<(usize, Option<u32>)> =
                veths.iter().map(|(i, v)| (*i, netns::ifindex(v))).collect();
            (
                host,
                links.iter().map(|l| netns::ifindex(l)).collect::<Vec<_>>(),
            )
        })?;
        for (i, index) in host {
            lab.pods[i].host_ifindex = index;
        }
        if node == lab.node.name {
            lab.node.uplink_ifindex = link_indexes.first().copied().flatten();
            for (remote, index) in lab.remote_nodes.iter_mut().zip(link_indexes.iter().skip(1)) {
                remote.node_link_ifindex = *index;
            }
        } else if let Some(remote) = lab.remote_nodes.iter_mut().find(|r| r.name == node) {
            remote.link_ifindex = link_indexes.first().copied().flatten();
        }
    }
    Ok(())
}

/// Which server process to start: a pod (by namespace/name) or the world.
enum ServerHost {
    Pod(usize),
    World,
}

fn start_servers(lab: &mut LabState, dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the cnpilot binary")?;
    let mut hosts: Vec<ServerHost> = lab
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.servers.is_empty())
        .map(|(i, _)| ServerHost::Pod(i))
        .collect();
    if lab.scenario.world.iter().any(|h| !h.servers.is_empty()) {
        hosts.push(ServerHost::World);
    }
    let mut started = Vec::new();
    for host in &hosts {
        let (netns, selector, log_name) = match host {
            ServerHost::Pod(i) => {
                let p = &lab.pods[*i];
                (
                    p.netns.clone(),
                    vec!["--pod".to_string(), format!("{}/{}", p.namespace, p.name)],
                    format!("{}-{}", p.namespace, p.name),
                )
            }
            ServerHost::World => (
                lab.world.netns.clone(),
                vec!["--world".to_string()],
                "world".to_string(),
            ),
        };
        let log_path = dir.join("logs").join(format!("{log_name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns])
            .arg(&exe)
            .args(["lab", "serve", "--prefix", &lab.prefix, "--dir"])
            .arg(dir)
            .args(&selector)
            .env("CNPILOT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the daemon leaves our session
        // so a terminal's Ctrl-C or a test harness's process group won't stop it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting `cnpilot lab serve`")?;
        // `ip netns exec` execs (no fork): this pid is the server's.
        let pid = child.id();
        match host {
            ServerHost::Pod(i) => lab.pods[*i].server_pid = Some(pid),
            ServerHost::World => lab.world.server_pid = Some(pid),
        }
        started.push((pid, log_path));
        // The Child handle is dropped without waiting: the daemon outlives us.
    }
    wait_ready(dir, &started)
}

pub fn ready_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join("ready").join(pid.to_string())
}

fn wait_ready(dir: &Path, started: &[(u32, PathBuf)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + SERVER_READY_TIMEOUT;
    let mut pending: Vec<&(u32, PathBuf)> = started.iter().collect();
    while !pending.is_empty() {
        pending.retain(|(pid, _)| !ready_path(dir, *pid).exists());
        if let Some((pid, log)) = pending.iter().find(|(pid, _)| !netns::pid_alive(*pid)) {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let last = tail.lines().last().unwrap_or("(empty log)");
            bail!(
                "lab server {pid} exited before it was ready: {last} (log: {})",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "lab servers not ready after {SERVER_READY_TIMEOUT:?} (logs in {})",
                dir.join("logs").display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
