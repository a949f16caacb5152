//! Root tests of the L7 proxy on real packets: client namespaces ->
//! a routing node namespace -> a server namespace. Inside the node
//! namespace only, an nft `tproxy` rule hands TCP to port 8080 from client
//! links to the proxy, which listens with `IP_TRANSPARENT` on a thread in
//! that namespace and learns the original destination from `getsockname()`.
//! The server is a real HTTP/1.1 server (hyper); clients are real `curl`
//! and raw sockets. Identities: client c0 (198.18.10.2) is web/frontend-app
//! (1001), c1 (198.18.11.2) is data/analytics-service (1002), the server
//! (198.18.20.2) is payments/payments-api (2000); the policy is the
//! article's payments-api-l7-access-control.
//!
//! Outcomes (enforce mode, frontend-app unless said; "server saw" is the
//! server's own request log):
//!
//! | attempt | answer | recorded | server saw |
//! |---|---|---|---|
//! | curl frontend POST /api/v1/charges | 200 | allowed | yes |
//! | curl frontend POST /api/v1/refunds | 403 `Access denied` | l7-denied | no |
//! | curl analytics GET /api/v1/charges | 200 | allowed | yes |
//! | curl analytics POST /api/v1/charges | 403 | l7-denied | no |
//! | POST /api/v1/refunds sent one byte per segment | 403 | l7-denied | no |
//! | pipelined GET charges + POST refunds + POST charges, one write | 200, 403, 200 in order | allowed, l7-denied, allowed | the two allowed |
//! | POST refunds as 2nd request on a keep-alive connection | 200 then 403 | allowed, l7-denied | first only |
//! | `post /api/v1/charges` (lower-case method) | 403 | l7-denied | no |
//! | `POST http://payments-api.payments:8080/api/v1/refunds` (absolute-form) | 403 | l7-denied, path /api/v1/refunds | no |
//! | `POST //api/v1/refunds` | 403 | l7-denied, path /api/v1/refunds | no |
//! | `POST /api/v1/charges/../refunds` | 403 | l7-denied, path /api/v1/refunds | no |
//! | `POST /api/v1/%72efunds` | 403 | l7-denied, path /api/v1/refunds | no |
//! | `Transfer-Encoding: chunked` + `Content-Length` (smuggling) | 400, closed | unparseable | no |
//! | HTTP/1.0 POST /api/v1/refunds | 403, closed | l7-denied | no |
//! | 70 KiB header | 400, closed | unparseable | no |
//! | audit: POST refunds on an open keep-alive connection | 200 | l7-would-deny | yes |
//! | ... flip to enforce, same connection: POST refunds | 403 | l7-denied | no |
//!
//! The proxy's upstream socket carries `SO_MARK` 0x03E90A00 (identity 1001
//! in the upper half, Cilium's ingress-proxy magic 0x0A00), checked with `ss`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use cnpilot_proxy::demo_api::{serve_demo_api, SeenLog};
use cnpilot_proxy::event::{L7Event, L7Verdict};
use cnpilot_proxy::http1::{parse_response_head, BodyFraming};
use cnpilot_proxy::listener::{bind_explicit, bind_transparent, L7Proxy, ProxyConfig};
use cnpilot_proxy::netns::spawn_in_netns;
use cnpilot_proxy::policy::{
    HttpRule, IdentityResolver, L7Mode, ModeResolver, PeerRule, RulePolicy,
};
use cnpilot_proxy::testbed::L7Lab;

const PROXY_PORT: u16 = 15001;
const FRONTEND: usize = 0;
const ANALYTICS: usize = 1;

struct LabIdentities;

impl IdentityResolver for LabIdentities {
    fn identity_of(&self, ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(v4) if v4 == Ipv4Addr::new(198, 18, 10, 2) => 1001,
            IpAddr::V4(v4) if v4 == Ipv4Addr::new(198, 18, 11, 2) => 1002,
            IpAddr::V4(v4) if v4 == Ipv4Addr::new(198, 18, 20, 2) => 2000,
            _ => 2,
        }
    }
}

struct Mode(Arc<AtomicBool>);

impl ModeResolver for Mode {
    fn mode_for(&self, _: IpAddr, _: u32) -> L7Mode {
        if self.0.load(Ordering::SeqCst) {
            L7Mode::Enforce
        } else {
            L7Mode::Audit
        }
    }
}

fn payments_policy() -> RulePolicy {
    let http = |m: &str, p: &str| {
        HttpRule::new(
            "payments-api-l7-access-control",
            Some(m),
            Some(p),
            None,
            &[],
        )
        .unwrap()
    };
    let peer = |name: &str, src, http| PeerRule {
        name: name.into(),
        src_identities: Some(vec![src]),
        dst_identity: 2000,
        port: 8080,
        http,
    };
    RulePolicy {
        rules: vec![
            peer(
                "frontend-app",
                1001,
                vec![
                    http("GET", "/api/v1/charges"),
                    http("POST", "/api/v1/charges"),
                ],
            ),
            peer(
                "analytics-service",
                1002,
                vec![http("GET", "/api/v1/charges")],
            ),
        ],
    }
}

/// The lab plus server and proxy threads; stops them and removes the
/// namespaces on drop (the lab is dropped last).
struct Running {
    seen: SeenLog,
    events: std_mpsc::Receiver<L7Event>,
    enforce: Arc<AtomicBool>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<Result<(), cnpilot_proxy::listener::ProxyError>>>,
    lab: L7Lab,
}

impl Drop for Running {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start(tag: &str, enforce: bool) -> Running {
    let lab = L7Lab::create(tag, 2).unwrap();
    lab.redirect_to_proxy(8080, PROXY_PORT).unwrap();
    let seen: SeenLog = Arc::new(Mutex::new(Vec::new()));
    let flag = Arc::new(AtomicBool::new(enforce));
    let (ready_tx, ready) = std_mpsc::channel::<()>();
    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_seen = Arc::clone(&seen);
    let server_ready = ready_tx.clone();
    let server = spawn_in_netns(&lab.server, move || {
        runtime().block_on(async move {
            let l = bind_explicit("0.0.0.0:8080".parse().unwrap()).unwrap();
            let task = tokio::spawn(serve_demo_api(
                tokio::net::TcpListener::from_std(l).unwrap(),
                server_seen,
            ));
            server_ready.send(()).unwrap();
            let _ = server_stopped.await;
            task.abort();
        })
    });
    let (proxy_stop, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let (events_tx, events) = std_mpsc::channel();
    let mode = Mode(Arc::clone(&flag));
    let proxy_thread = spawn_in_netns(&lab.node, move || {
        runtime().block_on(async move {
            let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_PORT);
            let listener =
                tokio::net::TcpListener::from_std(bind_transparent(listen).unwrap()).unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
            let proxy = L7Proxy::new(
                ProxyConfig::transparent(),
                Arc::new(LabIdentities),
                Arc::new(payments_policy()),
                Arc::new(mode),
                tx,
            );
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    let _ = events_tx.send(e);
                }
            });
            ready_tx.send(()).unwrap();
            tokio::select! {
                r = proxy.serve(listener) => r.unwrap(),
                _ = proxy_stopped => {}
            }
        })
    });
    for _ in 0..2 {
        ready.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    Running {
        seen,
        events,
        enforce: flag,
        stops: vec![proxy_stop, server_stop],
        threads: vec![proxy_thread, server],
        lab,
    }
}

impl Running {
    fn curl(&self, client: usize, method: &str, path: &str) -> String {
        let url = format!("http://payments-api.payments:8080{path}");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lab.clients[client].0,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args([
                "--resolve",
                "payments-api.payments:8080:198.18.20.2",
                "-X",
                method,
                &url,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs `f` with a connected socket from client `client`'s namespace.
    fn with_socket<T: Send + 'static>(
        &self,
        client: usize,
        f: impl FnOnce(&mut RawClient) -> T + Send + 'static,
    ) -> T {
        spawn_in_netns(&self.lab.clients[client].0, move || {
            let stream = TcpStream::connect_timeout(
                &"198.18.20.2:8080".parse().unwrap(),
                Duration::from_secs(5),
            )
            .unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            stream.set_nodelay(true).unwrap();
            f(&mut RawClient {
                stream,
                buf: Vec::new(),
            })
        })
        .join()
        .unwrap()
        .unwrap()
    }

    fn events(&self, n: usize) -> Vec<L7Event> {
        (0..n)
            .filter_map(|_| self.events.recv_timeout(Duration::from_secs(5)).ok())
            .collect()
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn send_byte_by_byte(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.stream.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Statuses of up to `n` responses, stopping early on close/timeout.
    fn statuses(&mut self, n: usize) -> Vec<u16> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 16384];
        while out.len() < n {
            if let Ok(Some(h)) = parse_response_head(&self.buf, "GET") {
                let len = if let BodyFraming::Length(l) = h.framing {
                    l as usize
                } else {
                    0
                };
                if self.buf.len() >= h.head_len + len {
                    self.buf.drain(..h.head_len + len);
                    out.push(h.status);
                    continue;
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(k) if k > 0 => self.buf.extend_from_slice(&chunk[..k]),
                _ => break,
            }
        }
        out
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 16];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn article_curls_through_tproxy() {
    if !cnpilot_bpf::testing::privileged_tests_enabled("article_curls_through_tproxy") {
        return;
    }
    let run = start("curl", true);
    let got = [
        run.curl(FRONTEND, "POST", "/api/v1/charges"),
        run.curl(FRONTEND, "POST", "/api/v1/refunds"),
        run.curl(ANALYTICS, "GET", "/api/v1/charges"),
        run.curl(ANALYTICS, "POST", "/api/v1/charges"),
    ];
    assert_eq!(got, ["200", "403", "200", "403"]);
    assert_eq!(
        run.seen(),
        ["POST /api/v1/charges 0", "GET /api/v1/charges 0"]
    );
    let events = run.events(4);
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.src_identity, e.dst_identity, e.dport, e.verdict, e.status))
        .collect();
    assert_eq!(
        summary,
        [
            (1001, 2000, 8080, L7Verdict::Allowed, Some(200)),
            (1001, 2000, 8080, L7Verdict::Denied, Some(403)),
            (1002, 2000, 8080, L7Verdict::Allowed, Some(200)),
            (1002, 2000, 8080, L7Verdict::Denied, Some(403)),
        ]
    );
    // The original destination came from the socket, not from Host.
    assert!(events
        .iter()
        .all(|e| e.dst_ip == IpAddr::V4(Ipv4Addr::new(198, 18, 20, 2))));
    assert_eq!(
        events[1].host.as_deref(),
        Some("payments-api.payments:8080")
    );
}

#[test]
fn bypass_matrix_through_tproxy() {
    if !cnpilot_bpf::testing::privileged_tests_enabled("bypass_matrix_through_tproxy") {
        return;
    }
    let run = start("bypass", true);
    let refunds =
        b"POST /api/v1/refunds HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n".to_vec();
    let charges_get =
        b"GET /api/v1/charges HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n".to_vec();
    let charges_post =
        b"POST /api/v1/charges HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n".to_vec();

    let r = refunds.clone();
    assert_eq!(
        run.with_socket(FRONTEND, move |c| {
            c.send_byte_by_byte(&r);
            c.statuses(1)
        }),
        [403]
    );

    let pipelined = [charges_get.clone(), refunds.clone(), charges_post.clone()].concat();
    assert_eq!(
        run.with_socket(FRONTEND, move |c| {
            c.send(&pipelined);
            c.statuses(3)
        }),
        [200, 403, 200]
    );

    let (g, r) = (charges_get.clone(), refunds.clone());
    assert_eq!(
        run.with_socket(FRONTEND, move |c| {
            c.send(&g);
            let a = c.statuses(1);
            c.send(&r);
            [a, c.statuses(1)].concat()
        }),
        [200, 403]
    );

    let tricks: Vec<&[u8]> = vec![
        b"post /api/v1/charges HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST http://payments-api.payments:8080/api/v1/refunds HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n",
        b"POST //api/v1/refunds HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/charges/../refunds HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/%72efunds HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for t in tricks {
        let t = t.to_vec();
        let shown = String::from_utf8_lossy(&t)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            run.with_socket(FRONTEND, move |c| {
                c.send(&t);
                c.statuses(1)
            }),
            [403],
            "{shown}"
        );
    }

    let smuggle = b"POST /api/v1/charges HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nPOST /api/v1/refunds HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(
        run.with_socket(FRONTEND, move |c| {
            c.send(&smuggle);
            (c.statuses(2), c.closed())
        }),
        (vec![400], true)
    );

    let http10 = b"POST /api/v1/refunds HTTP/1.0\r\n\r\n".to_vec();
    assert_eq!(
        run.with_socket(FRONTEND, move |c| {
            c.send(&http10);
            (c.statuses(1), c.closed())
        }),
        (vec![403], true)
    );

    let long = format!(
        "GET /api/v1/charges HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    )
    .into_bytes();
    assert_eq!(
        run.with_socket(FRONTEND, move |c| {
            let _ = c.stream.write_all(&long);
            (c.statuses(1), c.closed())
        }),
        (vec![400], true)
    );

    // Only the allowed requests ever reached the server.
    assert_eq!(
        run.seen(),
        [
            "GET /api/v1/charges 0",
            "POST /api/v1/charges 0",
            "GET /api/v1/charges 0"
        ]
    );
    let events = run.events(15);
    let denied_paths: Vec<_> = events
        .iter()
        .filter(|e| e.verdict == L7Verdict::Denied)
        .map(|e| (e.method.as_str(), e.path.as_str()))
        .collect();
    assert_eq!(
        denied_paths,
        [
            ("POST", "/api/v1/refunds"),
            ("POST", "/api/v1/refunds"),
            ("POST", "/api/v1/refunds"),
            ("post", "/api/v1/charges"),
            ("POST", "/api/v1/refunds"),
            ("POST", "/api/v1/refunds"),
            ("POST", "/api/v1/refunds"),
            ("POST", "/api/v1/refunds"),
            ("POST", "/api/v1/refunds"),
        ]
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.verdict == L7Verdict::Unparseable)
            .count(),
        2
    );
}

#[test]
fn mode_flip_applies_to_the_next_request_on_an_open_connection() {
    if !cnpilot_bpf::testing::privileged_tests_enabled(
        "mode_flip_applies_to_the_next_request_on_an_open_connection",
    ) {
        return;
    }
    let run = start("flip", false);
    let (tx, rx) = std_mpsc::channel::<()>();
    let (back_tx, back) = std_mpsc::channel::<Vec<u16>>();
    let client_ns = run.lab.clients[FRONTEND].0.clone();
    let client = spawn_in_netns(&client_ns, move || {
        let stream = TcpStream::connect("198.18.20.2:8080").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
        };
        let refunds = b"POST /api/v1/refunds HTTP/1.1\r\nHost: x\r\n\r\n";
        c.send(refunds);
        back_tx.send(c.statuses(1)).unwrap();
        rx.recv().unwrap();
        c.send(refunds);
        back_tx.send(c.statuses(1)).unwrap();
    });
    assert_eq!(back.recv_timeout(Duration::from_secs(10)).unwrap(), [200]);
    // While the keep-alive connection is open: its upstream socket carries
    // the client's identity as SO_MARK.
    let ss = Command::new("ip")
        .args([
            "netns",
            "exec",
            &run.lab.node,
            "ss",
            "-tnie",
            "dst",
            "198.18.20.2",
        ])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(ss.contains("fwmark:0x3e90a00"), "{ss}");
    run.enforce.store(true, Ordering::SeqCst);
    tx.send(()).unwrap();
    assert_eq!(back.recv_timeout(Duration::from_secs(10)).unwrap(), [403]);
    client.join().unwrap().unwrap();
    let got: Vec<_> = run
        .events(2)
        .iter()
        .map(|e| (e.verdict, e.status))
        .collect();
    assert_eq!(
        got,
        [
            (L7Verdict::WouldDeny, Some(200)),
            (L7Verdict::Denied, Some(403))
        ]
    );
    assert_eq!(run.seen(), ["POST /api/v1/refunds 0"]);
}
