//! `cnpilot lab traffic`: every pod's clients call their targets at their
//! rates, from inside the pod's network namespace, resolving names through
//! the lab's DNS responder as a pod would.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::dns;
use super::http::{self, ClientError};
use super::netns;
use super::scenario::{Client, Protocol, ServerKind, Target};
use super::state::{LabState, PodState};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub target: String,
    pub protocol: String,
    pub kind: String,
    pub request: String,
    pub rate: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// HTTP status codes seen (`"200"`), or failure reasons (`"connect timeout"`).
    pub outcomes: BTreeMap<String, u64>,
}

/// A client ready to run: where it goes and how it talks.
#[derive(Clone)]
struct Plan {
    client: Client,
    target: Target,
    kind: ServerKind,
    protocol: Protocol,
}

pub fn run(lab: &LabState, duration: Duration) -> anyhow::Result<Vec<ClientReport>> {
    let mut jobs = Vec::new();
    for pod in &lab.pods {
        let Some(w) = lab.scenario.workload(&pod.namespace, &pod.workload) else {
            continue;
        };
        let plans: Vec<Plan> = w
            .clients
            .iter()
            .filter_map(|c| {
                let target = lab.scenario.target(&c.target).ok()?;
                let server = lab.scenario.server_for(&target, c.protocol)?;
                Some(Plan {
                    client: c.clone(),
                    target,
                    kind: server.kind,
                    protocol: server.protocol,
                })
            })
            .collect();
        if !plans.is_empty() {
            jobs.push((pod.clone(), plans));
        }
    }
    let lab = Arc::new(lab.clone());
    let reports: Vec<anyhow::Result<Vec<ClientReport>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(pod, plans)| {
                let lab = lab.clone();
                scope.spawn(move || -> anyhow::Result<Vec<ClientReport>> {
                    let ns = netns::open_netns(&pod.netns)?;
                    netns::enter_netns(&ns)?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    Ok(rt.block_on(run_pod(lab, pod, plans, duration)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::new();
    for r in reports {
        out.extend(r?);
    }
    Ok(out)
}

struct Resolver {
    server: Option<Ipv4Addr>,
    lab: Arc<LabState>,
    cache: Mutex<BTreeMap<String, (Instant, Vec<Ipv4Addr>)>>,
}

impl Resolver {
    async fn resolve(&self, target: &Target) -> Result<SocketAddr, String> {
        let (name, port) = match target {
            Target::World { address, port } => return Ok(SocketAddr::from((*address, *port))),
            Target::Workload {
                namespace,
                workload,
                port,
            } => (format!("{workload}.{namespace}.svc.cluster.local"), *port),
            Target::Named { name, port } => (name.clone(), *port),
        };
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(&name)
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(u64::from(dns::TTL_SECONDS)))
                .map(|(_, ips)| ips.clone())
        });
        let ips = match (cached, self.server) {
            (Some(ips), _) => ips,
            (None, Some(server)) => {
                let ips = query(server, &name).await?;
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(name.clone(), (Instant::now(), ips.clone()));
                }
                ips
            }
            // No DNS responder in the scenario: the lab's own table.
            (None, None) => match target {
                Target::Workload {
                    namespace,
                    workload,
                    ..
                } => self.lab.workload_ips(namespace, workload),
                _ => self
                    .lab
                    .scenario
                    .world_host_named(&name)
                    .map(|h| vec![h.address])
                    .unwrap_or_default(),
            },
        };
        let pick = ips
            .get(fastrand_index(ips.len()))
            .ok_or_else(|| format!("dns: no address for {name}"))?;
        Ok(SocketAddr::from((*pick, port)))
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fastrand_index(len: usize) -> usize {
    if len <= 1 {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos as usize % len
}

async fn query(server: Ipv4Addr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let socket = UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| format!("dns: {e}"))?;
    let id = (std::process::id() as u16) ^ (fastrand_index(65_536) as u16);
    let msg = dns::build_query(id, name, dns::TYPE_A);
    let mut buf = vec![0u8; 2048];
    // One retry, as a stub resolver would.
    for _ in 0..2 {
        socket
            .send_to(&msg, (server, 53))
            .await
            .map_err(|e| format!("dns: {}", e.kind()))?;
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(CONNECT_TIMEOUT, socket.recv_from(&mut buf)).await
        {
            return dns::parse_a_answers(&buf[..n], id).map_err(|e| format!("dns: {e}"));
        }
    }
    Err("dns: timeout".into())
}

async fn run_pod(
    lab: Arc<LabState>,
    pod: PodState,
    plans: Vec<Plan>,
    duration: Duration,
) -> Vec<ClientReport> {
    let resolver = Arc::new(Resolver {
        server: lab.dns_ip,
        lab: lab.clone(),
        cache: Mutex::new(BTreeMap::new()),
    });
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|plan| tokio::spawn(run_client(pod.clone(), plan, resolver.clone(), duration)))
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            reports.push(r);
        }
    }
    reports
}

async fn run_client(
    pod: PodState,
    plan: Plan,
    resolver: Arc<Resolver>,
    duration: Duration,
) -> ClientReport {
    let method = plan.client.method.clone().unwrap_or_else(|| "GET".into());
    let path = plan.client.path.clone().unwrap_or_else(|| "/".into());
    let request = match plan.kind {
        ServerKind::Http => format!("{method} {path}"),
        ServerKind::Echo => "echo".into(),
        ServerKind::Dns => "dns A".into(),
    };
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, (u64, bool)>::new()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let period = Duration::from_secs_f64(1.0 / plan.client.rate);
    // A small spread so the clients don't all fire in the same millisecond.
    let start = tokio::time::Instant::now()
        + Duration::from_millis((fnv(&plan.client.target) ^ fnv(&pod.name) ^ fnv(&request)) % 200);
    let mut ticker = tokio::time::interval_at(start, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::Instant::now() + duration;
    let mut sent = 0u64;
    let mut running = Vec::new();
    loop {
        if tokio::time::timeout_at(deadline, ticker.tick())
            .await
            .is_err()
        {
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        sent += 1;
        let (plan, resolver, outcomes, pod_name) = (
            plan.clone(),
            resolver.clone(),
            outcomes.clone(),
            pod.name.clone(),
        );
        let (method, path) = (method.clone(), path.clone());
        running.push(tokio::spawn(async move {
            let (label, ok) = call(&plan, &resolver, &method, &path, &pod_name, sent).await;
            if let Ok(mut o) = outcomes.lock() {
                o.entry(label).or_insert((0, ok)).0 += 1;
            }
            drop(permit);
        }));
    }
    for r in running {
        let _ = r.await;
    }
    let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    let ok = outcomes
        .values()
        .filter(|(_, ok)| *ok)
        .map(|(n, _)| n)
        .sum();
    ClientReport {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        workload: pod.workload.clone(),
        target: plan.client.target.clone(),
        protocol: plan.protocol.as_str().to_string(),
        kind: format!("{:?}", plan.kind).to_lowercase(),
        request,
        rate: plan.client.rate,
        sent,
        ok,
        failed: sent - ok,
        outcomes: outcomes.into_iter().map(|(k, (n, _))| (k, n)).collect(),
    }
}

/// One call: (what happened, whether it counts as a success).
async fn call(
    plan: &Plan,
    resolver: &Resolver,
    method: &str,
    path: &str,
    pod: &str,
    seq: u64,
) -> (String, bool) {
    let addr = match resolver.resolve(&plan.target).await {
        Ok(a) => a,
        Err(e) => return (e, false),
    };
    let result: Result<String, String> = match (plan.kind, plan.protocol) {
        (ServerKind::Http, _) => {
            let host = plan.client.target.clone();
            match http::request(addr, &host, method, path, REQUEST_TIMEOUT).await {
                Ok(status) if status < 400 => Ok(status.to_string()),
                Ok(status) => Err(status.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        (ServerKind::Echo, Protocol::Tcp) => {
            echo_tcp(addr, pod, seq).await.map_err(|e| e.to_string())
        }
        (ServerKind::Echo, Protocol::Udp) => echo_udp(addr, pod, seq).await,
        (ServerKind::Dns, _) => {
            let name = match &plan.target {
                Target::Workload {
                    namespace,
                    workload,
                    ..
                } => format!("{workload}.{namespace}.svc.cluster.local"),
                Target::World { address, .. } => address.to_string(),
                Target::Named { name, .. } => name.clone(),
            };
            match addr {
                SocketAddr::V4(a) => query(*a.ip(), &name).await.map(|_| "answered".to_string()),
                SocketAddr::V6(_) => Err("dns: not ipv4".to_string()),
            }
        }
    };
    match result {
        Ok(label) => (label, true),
        Err(label) => (label, false),
    }
}

async fn echo_tcp(addr: SocketAddr, pod: &str, seq: u64) -> Result<String, ClientError> {
    let mut stream = http::connect(addr, CONNECT_TIMEOUT).await?;
    let line = format!("hello from {pod} #{seq}\n");
    let exchange = async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(back)) if back == line.as_bytes() => Ok("echoed".into()),
        Ok(Ok(_)) => Err(ClientError::BadResponse),
        Ok(Err(e)) => Err(ClientError::Io(e.kind())),
        Err(_) => Err(ClientError::Timeout),
    }
}

async fn echo_udp(addr: SocketAddr, pod: &str, seq: u64) -> Result<String, String> {
    let socket = UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.kind().to_string())?;
    let msg = format!("hello from {pod} #{seq}");
    socket
        .send_to(msg.as_bytes(), addr)
        .await
        .map_err(|e| e.kind().to_string())?;
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(REQUEST_TIMEOUT, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) if &buf[..n] == msg.as_bytes() => Ok("echoed".into()),
        Ok(Ok(_)) => Err("bad response".into()),
        Ok(Err(e)) => Err(e.kind().to_string()),
        Err(_) => Err("timeout".into()),
    }
}

/// `2s`, `500ms`, `1m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| t.split_at(i))
        .unwrap_or((t, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration `{text}`: expected e.g. 2s, 500ms, 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("duration `{text}`: unit must be ms, s, m or h")),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "duration `{text}`: must be more than 0 and at most 24h"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }
}
