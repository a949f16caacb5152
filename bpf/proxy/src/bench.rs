//! `cnpilot bench l7`: requests/s and latency through the proxy vs direct,
//! between two namespaces, with a built-in keep-alive load generator
//! (N connections, one request in flight each, for a fixed time).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::demo_api::serve_demo_api;
use super::http1::{parse_response_head, BodyFraming};
use super::listener::{bind_explicit, bind_transparent, L7Proxy, ProxyConfig, ProxyError};
use super::netns::spawn_in_netns;
use super::policy::{HttpRule, IdentityResolver, L7Mode, ModeResolver, PeerRule, RulePolicy};
use super::testbed::L7Lab;

#[derive(Clone, Copy, Debug)]
pub struct L7BenchOptions {
    pub connections: usize,
    pub duration: Duration,
}

impl Default for L7BenchOptions {
    fn default() -> Self {
        Self {
            connections: 8,
            duration: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub non_200: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Clone, Debug)]
pub struct L7BenchReport {
    pub options: L7BenchOptions,
    pub direct: LoadResult,
    pub proxied: LoadResult,
}

impl L7BenchReport {
    pub fn ratio(&self) -> f64 {
        if self.direct.rps > 0.0 {
            self.proxied.rps / self.direct.rps
        } else {
            0.0
        }
    }

    pub fn render(&self) -> String {
        let row = |name: &str, r: &LoadResult| {
            format!(
                "{name:<8} {:>10.0} req/s  p50 {:>6} us  p99 {:>6} us  ({} requests, {} errors, {} non-200)\n",
                r.rps, r.p50_us, r.p99_us, r.requests, r.errors, r.non_200
            )
        };
        format!(
            "L7 proxy bench: {} keep-alive connections, {:?} each run\n{}{}proxied/direct: {:.2}x\n",
            self.options.connections,
            self.options.duration,
            row("direct", &self.direct),
            row("proxied", &self.proxied),
            self.ratio()
        )
    }
}

/// One connection's loop: a request, its whole response, again.
async fn one_connection(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    end: Instant,
) -> (Vec<u32>, u64, u64) {
    let (mut latencies, mut errors, mut non_200) = (Vec::new(), 0u64, 0u64);
    'reconnect: while Instant::now() < end {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(4096);
        while Instant::now() < end {
            let started = Instant::now();
            if stream.write_all(&request).await.is_err() {
                errors += 1;
                continue 'reconnect;
            }
            let head = loop {
                match parse_response_head(&buf, "GET") {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(_) => {
                        errors += 1;
                        continue 'reconnect;
                    }
                }
                match stream.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => {
                        errors += 1;
                        continue 'reconnect;
                    }
                }
            };
            let body = match head.framing {
                BodyFraming::Empty => 0,
                BodyFraming::Length(n) => n as usize,
                _ => {
                    errors += 1;
                    continue 'reconnect;
                }
            };
            while buf.len() < head.head_len + body {
                match stream.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => {
                        errors += 1;
                        continue 'reconnect;
                    }
                }
            }
            buf.advance(head.head_len + body);
            latencies.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            if head.status != 200 {
                non_200 += 1;
            }
            if head.close {
                continue 'reconnect;
            }
        }
    }
    (latencies, errors, non_200)
}

/// Keep-alive GETs of `path` on `connections` connections for `duration`.
pub async fn load_generate(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let request = Arc::new(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes());
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| tokio::spawn(one_connection(addr, Arc::clone(&request), end)))
        .collect();
    let mut all = Vec::new();
    let (mut errors, mut non_200) = (0, 0);
    for task in tasks {
        if let Ok((lat, e, n)) = task.await {
            all.extend(lat);
            errors += e;
            non_200 += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        u64::from(all[i])
    };
    LoadResult {
        requests: all.len() as u64,
        errors,
        non_200,
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

struct BenchIdentities {
    server: IpAddr,
}

impl IdentityResolver for BenchIdentities {
    fn identity_of(&self, ip: IpAddr) -> u32 {
        if ip == self.server {
            2000
        } else {
            1001
        }
    }
}

struct AlwaysEnforce;

impl ModeResolver for AlwaysEnforce {
    fn mode_for(&self, _: IpAddr, _: u32) -> L7Mode {
        L7Mode::Enforce
    }
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ProxyError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ProxyError::Setup(format!("tokio runtime: {e}")))
}

fn join<T>(
    handle: std::thread::JoinHandle<Result<T, ProxyError>>,
    what: &str,
) -> Result<T, ProxyError> {
    handle
        .join()
        .map_err(|_| ProxyError::Setup(format!("{what} thread panicked")))?
}

/// Builds client/node/server namespaces, runs the server (8080 proxied via
/// tproxy, 8081 direct), the proxy in the node namespace (enforce, a rule
/// allowing the GET) and the load generator in the client namespace.
/// Needs root; everything is removed on return.
pub fn run_l7_bench(options: L7BenchOptions) -> Result<L7BenchReport, ProxyError> {
    const PROXY_PORT: u16 = 15001;
    let lab = L7Lab::create("bench", 1)?;
    lab.redirect_to_proxy(8080, PROXY_PORT)?;
    let server_ip = IpAddr::V4(lab.server_ip);

    let (server_stop, server_stopped) = oneshot::channel::<()>();
    let (server_ready_tx, server_ready) = std::sync::mpsc::channel::<Result<(), ProxyError>>();
    let server = spawn_in_netns(&lab.server, move || -> Result<(), ProxyError> {
        let rt = current_thread_runtime()?;
        rt.block_on(async move {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let mut listeners = Vec::new();
            for port in [8080u16, 8081] {
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                let std_listener = bind_explicit(addr)?;
                listeners.push(
                    tokio::net::TcpListener::from_std(std_listener)
                        .map_err(|e| ProxyError::Setup(e.to_string()))?,
                );
            }
            let _ = server_ready_tx.send(Ok(()));
            let serving: Vec<_> = listeners
                .into_iter()
                .map(|l| tokio::spawn(serve_demo_api(l, Arc::clone(&seen))))
                .collect();
            let _ = server_stopped.await;
            serving.iter().for_each(|t| t.abort());
            Ok(())
        })
    });
    recv_ready(&server_ready, "server")?;

    let (proxy_stop, proxy_stopped) = oneshot::channel::<()>();
    let (proxy_ready_tx, proxy_ready) = std::sync::mpsc::channel::<Result<(), ProxyError>>();
    let proxy = spawn_in_netns(&lab.node, move || -> Result<(), ProxyError> {
        let rt = current_thread_runtime()?;
        rt.block_on(async move {
            let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_PORT);
            let listener = tokio::net::TcpListener::from_std(bind_transparent(listen)?)
                .map_err(|e| ProxyError::Setup(e.to_string()))?;
            let rule = HttpRule::new("bench", Some("GET"), Some("/api/v1/charges"), None, &[])
                .map_err(|e| ProxyError::Setup(e.to_string()))?;
            let policy = RulePolicy {
                rules: vec![PeerRule {
                    name: "bench".into(),
                    src_identities: None,
                    dst_identity: 2000,
                    port: 8080,
                    http: vec![rule],
                }],
            };
            let (events, mut sink) = mpsc::channel(65536);
            let proxy = L7Proxy::new(
                ProxyConfig::transparent(),
                Arc::new(BenchIdentities { server: server_ip }),
                Arc::new(policy),
                Arc::new(AlwaysEnforce),
                events,
            );
            let drain = tokio::spawn(async move { while sink.recv().await.is_some() {} });
            let _ = proxy_ready_tx.send(Ok(()));
            tokio::select! {
                r = proxy.serve(listener) => r?,
                _ = proxy_stopped => {}
            }
            drain.abort();
            Ok(())
        })
    });
    recv_ready(&proxy_ready, "proxy")?;

    let client_ns = lab.clients[0].0.clone();
    let server_v4 = lab.server_ip;
    let load = spawn_in_netns(
        &client_ns,
        move || -> Result<(LoadResult, LoadResult), ProxyError> {
            let rt = current_thread_runtime()?;
            Ok(rt.block_on(async move {
                let direct = SocketAddr::new(IpAddr::V4(server_v4), 8081);
                let proxied = SocketAddr::new(IpAddr::V4(server_v4), 8080);
                let d = load_generate(
                    direct,
                    "/api/v1/charges",
                    options.connections,
                    options.duration,
                )
                .await;
                let p = load_generate(
                    proxied,
                    "/api/v1/charges",
                    options.connections,
                    options.duration,
                )
                .await;
                (d, p)
            }))
        },
    );
    let measured = join(load, "load generator").and_then(|r| r);
    let _ = proxy_stop.send(());
    let _ = server_stop.send(());
    let proxy_result = join(proxy, "proxy").and_then(|r| r);
    let server_result = join(server, "server").and_then(|r| r);
    let (direct, proxied) = measured?;
    proxy_result?;
    server_result?;
    Ok(L7BenchReport {
        options,
        direct,
        proxied,
    })
}

fn recv_ready(
    ready: &std::sync::mpsc::Receiver<Result<(), ProxyError>>,
    what: &str,
) -> Result<(), ProxyError> {
    match ready.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => r,
        Err(_) => Err(ProxyError::Setup(format!("{what} did not start"))),
    }
}
