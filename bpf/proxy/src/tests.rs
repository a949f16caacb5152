//! Loopback tests in explicit mode (fixed upstream): the same parsing,
//! decision and forwarding code as transparent mode, without root.
//! Sources are told apart by loopback address: 127.0.0.2 is frontend-app,
//! .3 analytics-service, .4 finance-tool, .1 payments-api.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;

use super::demo_api::{serve_demo_api, SeenLog};
use super::event::{L7Event, L7Verdict, ProxyStats};
use super::http1::{parse_response_head, BodyFraming, ChunkedScanner, HeadScanner};
use super::listener::{bind_explicit, L7Proxy, ProxyConfig};
use super::policy::{
    HttpRequestView, HttpRule, IdentityResolver, L7Decision, L7Mode, L7Policy, ModeResolver,
    PeerRule, RulePolicy,
};

pub const FRONTEND: u8 = 2;
pub const ANALYTICS: u8 = 3;

struct LoopbackIdentities;

impl IdentityResolver for LoopbackIdentities {
    fn identity_of(&self, ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(v4) => match v4.octets() {
                [127, 0, 0, 1] => 2000,
                [127, 0, 0, n] if (2..=4).contains(&n) => 1000 + u32::from(n) - 1,
                _ => 2,
            },
            IpAddr::V6(_) => 2,
        }
    }
}

struct SwitchableMode(Arc<AtomicBool>);

impl ModeResolver for SwitchableMode {
    fn mode_for(&self, _: IpAddr, _: u32) -> L7Mode {
        if self.0.load(Ordering::SeqCst) {
            L7Mode::Enforce
        } else {
            L7Mode::Audit
        }
    }
}

/// The article's payments-api-l7-access-control, on `port`.
pub fn article_policy(port: u16) -> RulePolicy {
    let http = |name: &str, method: &str, path: &str| {
        HttpRule::new(name, Some(method), Some(path), None, &[]).unwrap()
    };
    let peer = |name: &str, src: u32, http: Vec<HttpRule>| PeerRule {
        name: name.to_string(),
        src_identities: Some(vec![src]),
        dst_identity: 2000,
        port,
        http,
    };
    RulePolicy {
        rules: vec![
            peer(
                "frontend-app",
                1001,
                vec![
                    http("f", "GET", "/api/v1/charges"),
                    http("f", "POST", "/api/v1/charges"),
                ],
            ),
            peer(
                "analytics-service",
                1002,
                vec![http("a", "GET", "/api/v1/charges")],
            ),
            peer(
                "finance-tool",
                1003,
                vec![http("t", "POST", "/api/v1/refunds")],
            ),
        ],
    }
}

struct Harness {
    proxy: SocketAddr,
    seen: SeenLog,
    seen_port: u16,
    events: mpsc::Receiver<L7Event>,
    enforce: Arc<AtomicBool>,
    stats: Arc<ProxyStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

async fn harness(enforce: bool) -> Harness {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let seen: SeenLog = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = vec![tokio::spawn(serve_demo_api(server, Arc::clone(&seen)))];
    let listener =
        TcpListener::from_std(bind_explicit("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let flag = Arc::new(AtomicBool::new(enforce));
    let (tx, events) = mpsc::channel(1024);
    let proxy = L7Proxy::new(
        ProxyConfig::explicit(server_addr),
        Arc::new(LoopbackIdentities),
        Arc::new(article_policy(server_addr.port())),
        Arc::new(SwitchableMode(Arc::clone(&flag))),
        tx,
    );
    let stats = proxy.stats();
    tasks.push(tokio::spawn(async move {
        let _ = proxy.serve(listener).await;
    }));
    Harness {
        proxy: proxy_addr,
        seen,
        seen_port: server_addr.port(),
        events,
        enforce: flag,
        stats,
        tasks,
    }
}

/// A client connection from 127.0.0.`src`.
struct Client {
    stream: tokio::net::TcpStream,
    buf: BytesMut,
}

impl Harness {
    async fn connect(&self, src: u8) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, src)),
                0,
            ))
            .unwrap();
        let stream = socket.connect(self.proxy).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// One connection: send `request`, read responses until `expect` came
    /// or the proxy closed. Returns (status, body) pairs.
    async fn exchange(&self, src: u8, request: &[u8], expect: usize) -> Vec<(u16, String)> {
        let mut client = self.connect(src).await;
        client.stream.write_all(request).await.unwrap();
        client.responses(expect).await
    }

    async fn next_events(&mut self, n: usize) -> Vec<L7Event> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), self.events.recv()).await {
                Ok(Some(e)) => out.push(e),
                _ => break,
            }
        }
        out
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn responses(&mut self, expect: usize) -> Vec<(u16, String)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while out.len() < expect {
            if let Ok(Some(head)) = parse_response_head(&self.buf, "GET") {
                let len = match head.framing {
                    BodyFraming::Length(n) => n as usize,
                    _ => 0,
                };
                if self.buf.len() >= head.head_len + len {
                    self.buf.advance(head.head_len);
                    let body = String::from_utf8_lossy(&self.buf.split_to(len)).to_string();
                    out.push((head.status, body));
                    continue;
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        out
    }

    /// Whether the proxy closed the connection (EOF within a second).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn statuses(r: &[(u16, String)]) -> Vec<u16> {
    r.iter().map(|(s, _)| *s).collect()
}

const POST_CHARGES: &[u8] = b"POST /api/v1/charges HTTP/1.1\r\nHost: payments-api.payments:8080\r\nContent-Length: 0\r\n\r\n";
const POST_REFUNDS: &[u8] =
    b"POST /api/v1/refunds HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n";
const GET_CHARGES: &[u8] =
    b"GET /api/v1/charges HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n";

#[tokio::test]
async fn article_curls_give_200_403_200_403() {
    let mut h = harness(true).await;
    let frontend_ok = h.exchange(FRONTEND, POST_CHARGES, 1).await;
    let frontend_denied = h.exchange(FRONTEND, POST_REFUNDS, 1).await;
    let analytics_ok = h.exchange(ANALYTICS, GET_CHARGES, 1).await;
    let analytics_denied = h
        .exchange(
            ANALYTICS,
            b"POST /api/v1/charges HTTP/1.1\r\nHost: x\r\n\r\n",
            1,
        )
        .await;
    assert_eq!(statuses(&frontend_ok), [200]);
    assert_eq!(frontend_denied, [(403, "Access denied\r\n".to_string())]);
    assert_eq!(statuses(&analytics_ok), [200]);
    assert_eq!(statuses(&analytics_denied), [403]);
    assert_eq!(
        h.seen(),
        ["POST /api/v1/charges 0", "GET /api/v1/charges 0"]
    );
    let events = h.next_events(4).await;
    let verdicts: Vec<_> = events
        .iter()
        .map(|e| (e.src_identity, e.verdict, e.status))
        .collect();
    assert_eq!(
        verdicts,
        [
            (1001, L7Verdict::Allowed, Some(200)),
            (1001, L7Verdict::Denied, Some(403)),
            (1002, L7Verdict::Allowed, Some(200)),
            (1002, L7Verdict::Denied, Some(403)),
        ]
    );
    assert_eq!(
        (events[1].method.as_str(), events[1].path.as_str()),
        ("POST", "/api/v1/refunds")
    );
    assert_eq!(events[1].src_ip, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(events[1].dst_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(events[1].dport, h.seen_port);
    assert_eq!(events[1].query, None);
    assert!(events[0].ts <= events[1].ts);
    assert_eq!(events[1].dst_identity, 2000);
    assert_eq!(
        events[1].host.as_deref(),
        Some("payments-api.payments:8080")
    );
    assert_eq!(events[1].verdict.as_str(), "l7-denied");
    assert_eq!(ProxyStats::get(&h.stats.denied), 2);
}

#[tokio::test]
async fn request_line_sent_byte_by_byte_is_still_denied() {
    let mut h = harness(true).await;
    let mut client = h.connect(FRONTEND).await;
    for b in POST_REFUNDS {
        client.send(&[*b]).await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(statuses(&client.responses(1).await), [403]);
    let allowed_after = {
        for b in GET_CHARGES {
            client.send(&[*b]).await;
        }
        client.responses(1).await
    };
    assert_eq!(statuses(&allowed_after), [200]);
    assert_eq!(h.seen(), ["GET /api/v1/charges 0"]);
    assert_eq!(h.next_events(2).await[0].verdict, L7Verdict::Denied);
}

#[tokio::test]
async fn pipelined_allowed_denied_allowed_in_one_write_answer_in_order() {
    let h = harness(true).await;
    let all = [GET_CHARGES, POST_REFUNDS, POST_CHARGES].concat();
    let r = h.exchange(FRONTEND, &all, 3).await;
    assert_eq!(statuses(&r), [200, 403, 200]);
    assert!(r[0].1.starts_with("GET /api/v1/charges"));
    assert!(r[2].1.starts_with("POST /api/v1/charges"));
    assert_eq!(
        h.seen(),
        ["GET /api/v1/charges 0", "POST /api/v1/charges 0"]
    );
}

#[tokio::test]
async fn denied_second_request_on_keep_alive_then_allowed_third() {
    let h = harness(true).await;
    let mut c = h.connect(FRONTEND).await;
    c.send(GET_CHARGES).await;
    assert_eq!(statuses(&c.responses(1).await), [200]);
    c.send(POST_REFUNDS).await;
    assert_eq!(statuses(&c.responses(1).await), [403]);
    c.send(POST_CHARGES).await;
    assert_eq!(statuses(&c.responses(1).await), [200]);
    assert_eq!(h.seen().len(), 2);
}

#[tokio::test]
async fn tricked_requests_are_decided_like_the_plain_one() {
    let h = harness(true).await;
    let denied: &[&[u8]] = &[
        b"post /api/v1/charges HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST http://payments-api.payments:8080/api/v1/refunds HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n",
        b"POST //api/v1/refunds HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/charges/../refunds HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/%72efunds HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/charges?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/chargesX HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for req in denied {
        let r = h.exchange(FRONTEND, req, 1).await;
        assert_eq!(statuses(&r), [403], "{}", String::from_utf8_lossy(req));
    }
    assert!(h.seen().is_empty(), "{:?}", h.seen());
    // The same tricks on an allowed request reach the server normalized.
    let allowed: &[&[u8]] = &[
        b"POST http://other.example/api/v1/charges HTTP/1.1\r\nHost: other.example\r\n\r\n",
        b"POST //api//v1/charges HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/x/../%63harges HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for req in allowed {
        assert_eq!(statuses(&h.exchange(FRONTEND, req, 1).await), [200]);
    }
    assert_eq!(h.seen(), ["POST /api/v1/charges 0"; 3]);
}

#[tokio::test]
async fn ambiguous_framing_is_400_and_close_and_never_forwarded() {
    let mut h = harness(true).await;
    let long_header = format!(
        "GET /api/v1/charges HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: Vec<&[u8]> = vec![
        b"POST /api/v1/charges HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST /api/v1/charges HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nA",
        b"GET /api/v1/charges HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /api/v1/charges HTTP/1.1\nHost: x\r\n\r\n",
        b"POST /api/v1/charges HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"GET /api/v1/%2e%2e%2frefunds HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/charges HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        long_header.as_bytes(),
    ];
    for req in &cases {
        let mut c = h.connect(FRONTEND).await;
        // A big head may be refused before it is all written: ignore that.
        let _ = c.stream.write_all(req).await;
        let r = c.responses(1).await;
        assert_eq!(
            statuses(&r),
            [400],
            "{}",
            String::from_utf8_lossy(&req[..60.min(req.len())])
        );
        assert!(c.closed().await);
    }
    assert!(h.seen().is_empty());
    let events = h.next_events(cases.len()).await;
    assert!(events
        .iter()
        .all(|e| e.verdict == L7Verdict::Unparseable && e.status == Some(400)));
    assert_eq!(events.len(), cases.len());
}

#[tokio::test]
async fn http_1_0_is_decided_and_closed() {
    let h = harness(true).await;
    let mut c = h.connect(FRONTEND).await;
    c.send(b"POST /api/v1/refunds HTTP/1.0\r\n\r\n").await;
    assert_eq!(statuses(&c.responses(1).await), [403]);
    assert!(c.closed().await);
    let ok = h
        .exchange(ANALYTICS, b"GET /api/v1/charges HTTP/1.0\r\n\r\n", 1)
        .await;
    assert_eq!(statuses(&ok), [200]);
}

#[tokio::test]
async fn bodies_are_forwarded_exactly_and_keep_the_stream_in_step() {
    let h = harness(true).await;
    let chunked = b"POST /api/v1/charges HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let sized =
        b"POST /api/v1/charges HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
    let all = [&chunked[..], &sized[..], POST_REFUNDS, GET_CHARGES].concat();
    let r = h.exchange(FRONTEND, &all, 4).await;
    assert_eq!(statuses(&r), [200, 200, 403, 200]);
    assert_eq!(
        h.seen(),
        [
            "POST /api/v1/charges 11",
            "POST /api/v1/charges 11",
            "GET /api/v1/charges 0"
        ]
    );
}

#[tokio::test]
async fn denied_request_with_a_body_is_answered_then_closed() {
    let h = harness(true).await;
    let mut c = h.connect(FRONTEND).await;
    c.send(b"POST /api/v1/refunds HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(statuses(&c.responses(1).await), [403]);
    assert!(c.closed().await);
    assert!(h.seen().is_empty());
}

#[tokio::test]
async fn audit_forwards_and_records_would_deny_then_flip_enforces_next_request() {
    let mut h = harness(false).await;
    let mut c = h.connect(FRONTEND).await;
    c.send(POST_REFUNDS).await;
    assert_eq!(statuses(&c.responses(1).await), [200]);
    h.enforce.store(true, Ordering::SeqCst);
    c.send(POST_REFUNDS).await;
    assert_eq!(statuses(&c.responses(1).await), [403]);
    c.send(GET_CHARGES).await;
    assert_eq!(statuses(&c.responses(1).await), [200]);
    let events = h.next_events(3).await;
    let got: Vec<_> = events.iter().map(|e| (e.verdict, e.status)).collect();
    assert_eq!(
        got,
        [
            (L7Verdict::WouldDeny, Some(200)),
            (L7Verdict::Denied, Some(403)),
            (L7Verdict::Allowed, Some(200)),
        ]
    );
    assert_eq!(
        h.seen(),
        ["POST /api/v1/refunds 0", "GET /api/v1/charges 0"]
    );
}

#[tokio::test]
async fn audit_passes_unparseable_bytes_through_and_records_them() {
    let mut h = harness(false).await;
    let r = h
        .exchange(FRONTEND, b"GET /api/v1/charges HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nAB", 1)
        .await;
    // The server (hyper) judges the bytes itself: it refuses them too.
    assert_eq!(statuses(&r), [400]);
    let e = h.next_events(1).await;
    assert_eq!(e[0].verdict, L7Verdict::Unparseable);
    assert_eq!(e[0].status, None);
    assert_eq!(e[0].reason, "duplicate Content-Length");
}

#[tokio::test]
async fn load_generator_measures_through_the_proxy() {
    let h = harness(true).await;
    let r = super::bench::load_generate(h.proxy, "/api/v1/charges", 2, Duration::from_millis(300))
        .await;
    // 127.0.0.1 is not a known client: world (2) has no rule, so 403s.
    assert!(r.requests > 10, "{r:?}");
    assert_eq!(r.non_200, r.requests);
    assert!(r.p50_us <= r.p99_us);
}

#[test]
fn rules_are_anchored_case_sensitive_and_match_the_query() {
    let rule = HttpRule::new(
        "r",
        Some("GET|HEAD"),
        Some("/api/v1/charges(\\?.*)?"),
        Some("pay.*"),
        &["X-Tenant: a", "X-Trace"],
    )
    .unwrap();
    let headers = vec![
        ("x-tenant".to_string(), "a".to_string()),
        ("x-trace".to_string(), "1".to_string()),
    ];
    let view = |method, path: &'static str, query: Option<&'static str>| HttpRequestView {
        method,
        path,
        query,
        envoy_path: Box::leak(
            query
                .map_or(path.to_string(), |q| format!("{path}?{q}"))
                .into_boxed_str(),
        ),
        host: Some("payments"),
        headers: &headers,
    };
    assert!(rule.matches(&view("GET", "/api/v1/charges", None)));
    assert!(rule.matches(&view("HEAD", "/api/v1/charges", Some("a=1"))));
    assert!(!rule.matches(&view("get", "/api/v1/charges", None)));
    assert!(!rule.matches(&view("GETX", "/api/v1/charges", None)));
    assert!(!rule.matches(&view("GET", "/api/v1/charges/x", None)));
    let plain = HttpRule::new("p", Some("GET"), Some("/a"), None, &[]).unwrap();
    assert!(!plain.matches(&view("GET", "/a", Some("q"))));
    assert!(HttpRule::new("bad", Some("("), None, None, &[]).is_err());
    let policy = article_policy(8080);
    let v = view("GET", "/api/v1/charges", None);
    assert!(matches!(
        policy.decide(1001, 2000, 8080, &v),
        L7Decision::Allow { .. }
    ));
    assert!(matches!(
        policy.decide(1001, 2000, 9090, &v),
        L7Decision::Deny { .. }
    ));
    assert_eq!(v.header("X-TENANT"), Some("a"));
    assert_eq!((v.path, v.query), ("/api/v1/charges", None));
}

#[test]
fn upstream_mark_carries_the_identity_like_cilium() {
    assert_eq!(super::conn::upstream_mark(1001), (1001 << 16) | 0x0A00);
    assert_eq!(
        super::conn::upstream_mark(0x0012_3456),
        (0x3456 << 16) | 0x0A00 | 0x12
    );
}

#[test]
fn chunked_scanner_finds_the_end_across_splits() {
    let body = b"4\r\nwiki\r\n0\r\nT: v\r\n\r\nNEXT";
    for split in 0..body.len() {
        let mut s = ChunkedScanner::default();
        let first = s.scan(&body[..split]).unwrap();
        assert_eq!(first, split.min(body.len() - 4));
        let rest = s.scan(&body[first..]).unwrap();
        assert_eq!(first + rest, body.len() - 4, "split {split}");
        assert!(s.is_done());
    }
    assert!(ChunkedScanner::default().scan(b"4\nwiki").is_err());
    assert!(ChunkedScanner::default().scan(b"zz\r\n").is_err());
}

#[test]
fn head_scanner_rejects_bare_lf_and_oversize() {
    let mut s = HeadScanner::default();
    assert_eq!(s.find_end(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
    assert_eq!(
        s.find_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap(),
        Some(27)
    );
    assert!(HeadScanner::default()
        .find_end(b"GET / HTTP/1.1\nHost: x\r\n\r\n")
        .is_err());
    assert!(HeadScanner::default()
        .find_end(&vec![b'a'; super::http1::MAX_HEAD + 1])
        .is_err());
}

#[test]
fn bench_between_namespaces_reports_both_paths() {
    if !cnpilot_bpf::testing::privileged_tests_enabled(
        "bench_between_namespaces_reports_both_paths",
    ) {
        return;
    }
    // CNPILOT_L7_BENCH_SECS / _CONNS make this the full bench (`--nocapture`).
    let secs: f64 = std::env::var("CNPILOT_L7_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let connections = std::env::var("CNPILOT_L7_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let report = super::bench::run_l7_bench(super::bench::L7BenchOptions {
        connections,
        duration: Duration::from_secs_f64(secs),
    })
    .unwrap();
    eprintln!("{}", report.render());
    assert!(
        report.direct.requests > 0 && report.proxied.requests > 0,
        "{report:?}"
    );
    assert_eq!(report.proxied.non_200, 0);
    assert!(report.ratio() > 0.0);
}

/// The HTTP flows of `seed-payments-l7` in `policy-cases/seed.yaml` (the
/// L3/L4 ones never reach the proxy: the kernel decides them).
#[tokio::test]
async fn seed_payments_cases_over_real_http() {
    const FINANCE: u8 = 4;
    let h = harness(true).await;
    let cases: [(u8, &str, &str, u16); 7] = [
        (FRONTEND, "GET", "/api/v1/charges", 200),
        (FRONTEND, "POST", "/api/v1/charges", 200),
        (FRONTEND, "POST", "/api/v1/refunds", 403),
        (ANALYTICS, "GET", "/api/v1/charges", 200),
        (ANALYTICS, "POST", "/api/v1/charges", 403),
        (FINANCE, "POST", "/api/v1/refunds", 200),
        (FINANCE, "GET", "/api/v1/charges", 403),
    ];
    for (src, method, path, want) in cases {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: payments-api.payments:8080\r\n\r\n");
        let got = h.exchange(src, req.as_bytes(), 1).await;
        assert_eq!(statuses(&got), [want], "127.0.0.{src} {method} {path}");
    }
    assert_eq!(h.seen().len(), 4);
}
