//! The measurements: iperf3 throughput, a TCP connect loop, a UDP flood.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cnpilot_bpf::netns;
use serde::Serialize;

use super::topo::{Topo, ADDR_A, ADDR_B};

pub const IPERF_PORT: u16 = 5201;
/// The connect loop's server ports: the client takes them in turn. Linux
/// picks a connect's source port from a sequence per destination, so one
/// server port gives ~32,000 distinct tuples before they repeat, fewer than
/// a 2 s sample opens; a repeated tuple would find its earlier connection in
/// conntrack and not be a new flow.
pub const CONN_PORTS: std::ops::Range<u16> = 5300..5308;

/// iperf3 TCP from A to B for `secs`, in Gbit/s (receiver side).
pub fn throughput(topo: &Topo, secs: u32) -> anyhow::Result<f64> {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.pod_b,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &ADDR_B.to_string(),
        ])
        .args(["-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s (is iperf3 installed? scripts/deps.sh)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.pod_a,
            "iperf3",
            "-J",
            "-c",
            &ADDR_B.to_string(),
        ])
        .args(["-p", &IPERF_PORT.to_string(), "-t", &secs.to_string()])
        .output()
        .context("running iperf3 -c");
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(|v| v.as_f64())
        .map(|bps| bps / 1e9)
        .context("iperf3 -J output has no end.sum_received.bits_per_second")
}

/// One run of the connect loop.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConnSample {
    pub conn_per_s: f64,
    pub connections: u64,
    pub failures: u64,
    pub wall_s: f64,
    /// CPU time of the client thread (the connect loop itself) in user
    /// space and in the kernel: a loop that spent most of its wall time in
    /// user space would be measuring itself, not the datapath.
    pub client_user_s: f64,
    pub client_sys_s: f64,
}

/// New TCP connections per second from A to B (connect, server closes, done).
pub fn connection_rate(topo: &Topo, window: Duration) -> anyhow::Result<ConnSample> {
    let listeners = netns::run_in(&topo.netns(&topo.pod_b), || {
        CONN_PORTS
            .map(|port| TcpListener::bind((ADDR_B, port)).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let stop = Arc::new(AtomicBool::new(false));
    // Blocking accepts: a non-blocking one polled in a loop keeps a whole
    // core busy, and this machine has two (the client and softirq run on
    // them). shutdown() on the listeners below wakes them to stop.
    let servers: Vec<_> = listeners
        .iter()
        .map(|listener| {
            let (listener, stop) = (listener.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match conn {
                        Ok(conn) => drop(conn), // server closes first: TIME_WAIT stays on B
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    let targets: Vec<SocketAddr> = CONN_PORTS
        .map(|port| SocketAddr::from((ADDR_B, port)))
        .collect();
    let result = netns::run_in(&topo.netns(&topo.pod_a), || {
        let cpu_before = thread_cpu();
        let start = Instant::now();
        let mut n = 0u64;
        let mut failures = 0u64;
        while start.elapsed() < window {
            let to = &targets[(n + failures) as usize % targets.len()];
            match TcpStream::connect_timeout(to, Duration::from_millis(500)) {
                Ok(mut s) => {
                    let mut buf = [0u8; 1];
                    let _ = s.read(&mut buf);
                    n += 1;
                }
                Err(_) => failures += 1,
            }
        }
        let wall = start.elapsed();
        let cpu_after = thread_cpu();
        (n, failures, wall, cpu_before, cpu_after)
    });
    stop.store(true, Ordering::Relaxed);
    for listener in &listeners {
        // SAFETY: `listeners` keeps the fds open until after the joins;
        // shutdown only makes a blocked accept return an error.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
    for server in servers {
        let _ = server.join();
    }
    let (n, failures, wall, before, after) = result?;
    if n == 0 {
        bail!("no connection succeeded ({failures} failed)");
    }
    Ok(ConnSample {
        conn_per_s: n as f64 / wall.as_secs_f64(),
        connections: n,
        failures,
        wall_s: wall.as_secs_f64(),
        client_user_s: after.0 - before.0,
        client_sys_s: after.1 - before.1,
    })
}

/// (user, system) CPU seconds of the calling thread.
fn thread_cpu() -> (f64, f64) {
    // SAFETY: getrusage fills a zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

/// Sends one UDP packet to each of `flows` distinct ports of B (paced so the
/// veth backlog drops nothing); returns how many sends succeeded.
pub fn udp_flood(topo: &Topo, first_port: u16, flows: u16) -> anyhow::Result<u32> {
    let sent = netns::run_in(&topo.netns(&topo.pod_a), || -> std::io::Result<u32> {
        let s = UdpSocket::bind((ADDR_A, 0))?;
        let mut sent = 0;
        for i in 0..flows {
            if s.send_to(b"x", (ADDR_B, first_port.wrapping_add(i)))
                .is_ok()
            {
                sent += 1;
            }
            if i % 200 == 199 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(sent)
    })??;
    Ok(sent)
}
