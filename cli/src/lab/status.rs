//! `cnpilot lab status` and the tables `lab traffic` prints.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use serde::Serialize;

use super::dns;
use super::netns;
use super::scenario::{Protocol, ServerKind};
use super::state::{LabState, PodState, ServerState};
use super::traffic::ClientReport;

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub netns: String,
    pub host_veth: Option<String>,
    pub host_ifindex: Option<u32>,
    pub host_network: bool,
    pub netns_present: bool,
    pub server_pid: Option<u32>,
    pub server_running: Option<bool>,
    /// `8080/TCP http` -> answered or not.
    pub servers: Vec<ServerHealth>,
    pub healthy: bool,
}

#[derive(Debug, Serialize)]
pub struct ServerHealth {
    pub port: u16,
    pub protocol: String,
    pub kind: String,
    pub up: bool,
}

pub fn status(lab: &LabState) -> anyhow::Result<Vec<PodStatus>> {
    let rows = std::thread::scope(|scope| {
        let jobs: Vec<_> = lab
            .pods
            .iter()
            .map(|pod| scope.spawn(move || pod_status(pod)))
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    Ok(rows)
}

fn pod_status(pod: &PodState) -> PodStatus {
    let netns_present = netns::netns_exists(&pod.netns);
    let server_running = pod.server_pid.map(netns::pid_alive);
    let servers: Vec<ServerHealth> = pod
        .servers
        .iter()
        .map(|s| {
            let server = *s;
            // From inside the pod, to itself: the datapath (on the node side
            // of the veth) never sees a probe, so it can't fail one either.
            let up = netns_present
                && netns::in_netns(&pod.netns, move || probe(server)).unwrap_or(false);
            ServerHealth {
                port: s.port,
                protocol: s.protocol.as_str().to_string(),
                kind: format!("{:?}", s.kind).to_lowercase(),
                up,
            }
        })
        .collect();
    let healthy = netns_present && server_running != Some(false) && servers.iter().all(|s| s.up);
    PodStatus {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        workload: pod.workload.clone(),
        ip: pod.ip,
        node: pod.node.clone(),
        netns: pod.netns.clone(),
        host_veth: pod.host_veth.clone(),
        host_ifindex: pod.host_ifindex,
        host_network: pod.host_network,
        netns_present,
        server_pid: pod.server_pid,
        server_running,
        servers,
        healthy,
    }
}

fn probe(server: ServerState) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
    match (server.protocol, server.kind) {
        (Protocol::Tcp, _) => TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok(),
        (Protocol::Udp, kind) => {
            let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
                return false;
            };
            if socket.set_read_timeout(Some(PROBE_TIMEOUT)).is_err() {
                return false;
            }
            let msg = match kind {
                ServerKind::Dns => dns::build_query(0x4c4c, "probe.cnpilot.lab", dns::TYPE_A),
                _ => b"probe".to_vec(),
            };
            let mut buf = [0u8; 1500];
            socket.send_to(&msg, addr).is_ok() && socket.recv(&mut buf).is_ok()
        }
    }
}

pub fn print_status(lab: &LabState, rows: &[PodStatus]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "lab `{}` (prefix {}), node {} {} uplink {}",
        lab.scenario.name, lab.prefix, lab.node.netns, lab.node.ip, lab.node.uplink
    );
    let mut table = vec![vec![
        "NAMESPACE".to_string(),
        "POD".into(),
        "IP".into(),
        "NODE".into(),
        "NETNS".into(),
        "VETH(IFINDEX)".into(),
        "SERVERS".into(),
        "HEALTH".into(),
    ]];
    for r in rows {
        let veth = match (&r.host_veth, r.host_ifindex) {
            (Some(v), Some(i)) => format!("{v}({i})"),
            (Some(v), None) => v.clone(),
            (None, _) => "hostNetwork".into(),
        };
        let servers = r
            .servers
            .iter()
            .map(|s| format!("{}/{}{}", s.port, s.protocol, if s.up { "" } else { "!" }))
            .collect::<Vec<_>>()
            .join(",");
        let health = if r.healthy {
            "ok".to_string()
        } else if !r.netns_present {
            "netns missing".into()
        } else if r.server_running == Some(false) {
            "server exited".into()
        } else {
            "not answering".into()
        };
        table.push(vec![
            r.namespace.clone(),
            r.pod.clone(),
            r.ip.to_string(),
            r.node.clone(),
            r.netns.clone(),
            veth,
            if servers.is_empty() {
                "-".into()
            } else {
                servers
            },
            health,
        ]);
    }
    write_table(&mut out, &table);
}

pub fn print_traffic(reports: &[ClientReport]) {
    let mut table = vec![vec![
        "SOURCE".to_string(),
        "TARGET".into(),
        "REQUEST".into(),
        "SENT".into(),
        "OK".into(),
        "FAILED".into(),
        "OUTCOMES".into(),
    ]];
    for r in reports {
        let outcomes = r
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        table.push(vec![
            format!("{}/{}", r.namespace, r.pod),
            r.target.clone(),
            r.request.clone(),
            r.sent.to_string(),
            r.ok.to_string(),
            r.failed.to_string(),
            outcomes,
        ]);
    }
    let (sent, ok): (u64, u64) = reports
        .iter()
        .fold((0, 0), |(s, o), r| (s + r.sent, o + r.ok));
    let mut out = std::io::stdout().lock();
    write_table(&mut out, &table);
    let _ = writeln!(out, "total: {sent} sent, {ok} ok, {} failed", sent - ok);
}

fn write_table(out: &mut impl Write, rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}
