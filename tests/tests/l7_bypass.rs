//! L7 bypass attempts and the seed-payments case matrix over real HTTP on
//! the lab, through the real product path (root tier): `cnpilot lab up`, the
//! agent with the article's policies, `cnpilot mode -n payments enforce`; the
//! tc program hands connections on payments-api:8080 to the agent's proxy
//! with `bpf_sk_assign`. One lab for the whole file.
//!
//! The attempts are raw bytes written from `web/frontend-app` (allowed only
//! GET/POST `/api/v1/charges`) with bash's `/dev/tcp`, so nothing between the
//! test and the proxy rewrites them. "Never reached the server" is checked
//! three ways: the agent's http events for the attempt are exactly the
//! expected verdicts (`l7-denied` / `unparseable`, never `allowed` for
//! refunds); the client's byte stream holds no server answer for a denied
//! request (the server echoes `{"pod","method","path","status"}`); and,
//! for the bypass attempts, the payments-api servers are replaced by a
//! recorder (this test binary, [`recording_payments_server`], started in
//! the pods' namespaces) that appends every byte it receives to a file,
//! which must never contain `refunds`.
//!
//! | attempt (from web/frontend-app) | expected | observed |
//! |---|---|---|
//! | `POST /api/v1/refunds`, request line and headers one byte per write (20 ms apart) | 403, `l7-denied` | 403, `l7-denied` |
//! | `POST /api/v1/charges` + `POST /api/v1/refunds` pipelined in one write | 200 then 403, in order; `allowed`, `l7-denied` | 200 then 403; `allowed`, `l7-denied` |
//! | `POST /api/v1/charges`, then `POST /api/v1/refunds` on the same keep-alive connection | 200 then 403 | 200 then 403 |
//! | `post /api/v1/refunds` (lower-case method) | 403 (methods are case-sensitive, as in Envoy) | 403, `l7-denied` method `post` |
//! | `POST http://payments-api.payments:8080/api/v1/refunds` (absolute-form) | 403, path `/api/v1/refunds` | 403, `l7-denied`, host = the authority |
//! | `POST //api/v1/refunds` | 403 (slashes merged) | 403, `l7-denied` path `/api/v1/refunds` |
//! | `POST /api/v1/charges/../refunds` | 403 (dot segments removed) | 403, `l7-denied` path `/api/v1/refunds` |
//! | `POST /api/v1/%72efunds` | 403 (unreserved escape decoded) | 403, `l7-denied` path `/api/v1/refunds` |
//! | `POST /api/v1/charges` with `Content-Length` + `Transfer-Encoding: chunked`, a `POST /api/v1/refunds` smuggled in the body | 400, `unparseable`, connection closed, nothing forwarded | 400, `unparseable` |
//! | `POST /api/v1/refunds HTTP/1.0` | 403 | 403, `l7-denied` |
//! | `POST /api/v1/charges HTTP/1.0` (control: 1.0 is not refused as such) | 200 | 200, `allowed` |
//! | `POST /api/v1/refunds` with a 70 KiB header | fail closed: 400, `unparseable` | 400, `unparseable` |
//!
//! Seed-payments case matrix (`shared/policy-cases/seed.yaml`,
//! `seed-payments-l7`), `curl` from the pods:
//!
//! | from | request | expected | observed |
//! |---|---|---|---|
//! | web/frontend-app | GET /api/v1/charges | 200 | 200 |
//! | web/frontend-app | POST /api/v1/charges | 200 | 200 |
//! | web/frontend-app | POST /api/v1/refunds | 403 | 403 |
//! | data/analytics-service | GET /api/v1/charges | 200 | 200 |
//! | data/analytics-service | POST /api/v1/charges | 403 | 403 |
//! | ops/finance-tool | POST /api/v1/refunds | 200 | 200 |
//! | ops/finance-tool | GET /api/v1/charges | 403 | 403 |
//! | web/frontend-app | TCP payments-api:9090 | no connection (L3/L4 deny) | curl `000` |
//! | tenant-a/worker | TCP payments-api:8080 | no connection (L3/L4 deny), never at the proxy | curl `000`, no http event |
//!
//! The case's `payments -> frontend:80 allow` flow has no server in the lab
//! scenario (frontend-app serves nothing), so it is not exercised here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::{cnpilot_bin, Lab, SeedAgent as Agent};

const HOST: &str = "Host: payments-api.payments:8080\r\n";

/// A shell command running `args` inside a lab pod.
fn in_pod(lab: &Lab, pod: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(cnpilot_bin());
    cmd.args(["lab", "exec", pod, "--"])
        .args(args)
        .env("CNPILOT_LAB_PREFIX", &lab.prefix)
        .env("CNPILOT_LAB_DIR", lab.dir.path())
        .env("CNPILOT_STATE_DIR", lab.dir.path().join("state"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

/// `curl` from inside a pod: (status code as curl prints it, body).
fn curl(lab: &Lab, pod: &str, method: &str, url: &str) -> (String, String) {
    let out = in_pod(
        lab,
        pod,
        &[
            "curl",
            "-s",
            "-m",
            "2",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            url,
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().to_string(), body.to_string())
}

/// A shell statement writing `bytes` to fd 3 in one `write` (every byte as
/// an octal escape, so no quoting or `%` can change it).
fn send(bytes: &[u8]) -> String {
    let escaped: String = bytes.iter().map(|b| format!("\\{b:03o}")).collect();
    format!("printf '{escaped}' >&3\n")
}

/// Shell statements writing `bytes` one byte per write, 20 ms apart.
fn send_bytewise(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{}sleep 0.02\n", send(&[*b])))
        .collect()
}

/// Runs `steps` (shell statements writing to fd 3) on one TCP connection
/// from web/frontend-app to payments-api:8080 and returns every byte read
/// back until the peer closes (or 2 s of silence).
fn raw_exchange(lab: &Lab, steps: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/payments-api.payments/8080 || exit 97\n{steps}timeout 2 cat <&3\n"
    );
    let out = in_pod(lab, "web/frontend-app", &["bash", "-c", &script])
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(97),
        "no connection: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status codes of every HTTP response in a byte stream, in order.
fn statuses(stream: &str) -> Vec<u16> {
    stream
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| stream.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The paths the lab server says it answered (from its JSON echo).
fn server_paths(stream: &str) -> Vec<String> {
    stream
        .match_indices("\"path\":\"")
        .map(|(i, m)| {
            let rest = &stream[i + m.len()..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_string()
        })
        .collect()
}

fn req(method: &str, target: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\n{HOST}{extra}\r\n")
}

/// One bypass attempt: what is written, the statuses the client must read,
/// and the agent's (verdict, method, path) for each request, in order.
struct Attempt {
    name: &'static str,
    steps: String,
    want_statuses: Vec<u16>,
    want_events: Vec<(&'static str, &'static str, &'static str)>,
}

fn attempts() -> Vec<Attempt> {
    let close = "Connection: close\r\n";
    let refunds = req("POST", "/api/v1/refunds", close);
    let charges_keep = req("POST", "/api/v1/charges", "");
    let denied = ("l7-denied", "POST", "/api/v1/refunds");
    let allowed = ("allowed", "POST", "/api/v1/charges");
    let unparseable = ("unparseable", "", "");
    let smuggled = format!(
        "POST /api/v1/charges HTTP/1.1\r\n{HOST}Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{refunds}",
        len = 5 + refunds.len(),
    );
    // Over the proxy's (and Envoy's) 60-64 KiB head limit; written by the
    // shell in pieces, an argument that long would not fit one argv string.
    let big_header = format!(
        "{}for i in $(seq 70); do printf '%01024d' 0 >&3; done\n{}",
        send(b"POST /api/v1/refunds HTTP/1.1\r\nHost: payments-api.payments:8080\r\nX-Big: "),
        send(b"\r\nConnection: close\r\n\r\n"),
    );
    vec![
        Attempt {
            name: "request split byte by byte",
            steps: send_bytewise(refunds.as_bytes()),
            want_statuses: vec![403],
            want_events: vec![denied],
        },
        Attempt {
            name: "pipelined allowed + denied in one write",
            steps: send(format!("{charges_keep}{refunds}").as_bytes()),
            want_statuses: vec![200, 403],
            want_events: vec![allowed, denied],
        },
        Attempt {
            name: "denied as the 2nd request on a keep-alive connection",
            steps: format!(
                "{}sleep 0.3\n{}",
                send(charges_keep.as_bytes()),
                send(refunds.as_bytes())
            ),
            want_statuses: vec![200, 403],
            want_events: vec![allowed, denied],
        },
        Attempt {
            name: "lower-case method",
            steps: send(req("post", "/api/v1/refunds", close).as_bytes()),
            want_statuses: vec![403],
            want_events: vec![("l7-denied", "post", "/api/v1/refunds")],
        },
        Attempt {
            name: "absolute-form target",
            steps: send(
                req(
                    "POST",
                    "http://payments-api.payments:8080/api/v1/refunds",
                    close,
                )
                .as_bytes(),
            ),
            want_statuses: vec![403],
            want_events: vec![denied],
        },
        Attempt {
            name: "double slash",
            steps: send(req("POST", "//api/v1/refunds", close).as_bytes()),
            want_statuses: vec![403],
            want_events: vec![denied],
        },
        Attempt {
            name: "dot-dot segment",
            steps: send(req("POST", "/api/v1/charges/../refunds", close).as_bytes()),
            want_statuses: vec![403],
            want_events: vec![denied],
        },
        Attempt {
            name: "percent-encoded path",
            steps: send(req("POST", "/api/v1/%72efunds", close).as_bytes()),
            want_statuses: vec![403],
            want_events: vec![denied],
        },
        Attempt {
            name: "Transfer-Encoding + Content-Length smuggling",
            steps: send(smuggled.as_bytes()),
            want_statuses: vec![400],
            want_events: vec![unparseable],
        },
        Attempt {
            name: "HTTP/1.0 denied",
            steps: send(format!("POST /api/v1/refunds HTTP/1.0\r\n{HOST}\r\n").as_bytes()),
            want_statuses: vec![403],
            want_events: vec![denied],
        },
        Attempt {
            name: "HTTP/1.0 allowed (control)",
            steps: send(format!("POST /api/v1/charges HTTP/1.0\r\n{HOST}\r\n").as_bytes()),
            want_statuses: vec![200],
            want_events: vec![allowed],
        },
        Attempt {
            name: "70 KiB header",
            steps: big_header,
            want_statuses: vec![400],
            want_events: vec![unparseable],
        },
    ]
}

fn check_attempt(lab: &Lab, agent: &Agent<'_>, a: &Attempt) -> String {
    let since = agent.http_events().len();
    let started = Instant::now();
    let stream = raw_exchange(lab, &a.steps);
    let events = agent.events_after(since, a.want_events.len());
    let observed: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["verdict"].as_str().unwrap_or("").to_string(),
                e["method"].as_str().unwrap_or("").to_string(),
                e["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let summary = format!(
        "{}: statuses {:?}, events {:?}, server answered {:?} ({:?})",
        a.name,
        statuses(&stream),
        observed,
        server_paths(&stream),
        started.elapsed()
    );
    eprintln!("{summary}");
    assert_eq!(statuses(&stream), a.want_statuses, "{summary}\n{stream}");
    let want: Vec<(String, String, String)> = a
        .want_events
        .iter()
        .map(|(v, m, p)| (v.to_string(), m.to_string(), p.to_string()))
        .collect();
    if a.want_events.iter().all(|(v, _, _)| *v == "unparseable") {
        // What an unparseable request carries besides its verdict depends
        // on how far parsing got: only the verdicts are compared.
        let verdicts: Vec<&str> = observed.iter().map(|o| o.0.as_str()).collect();
        assert_eq!(verdicts, vec!["unparseable"; want.len()], "{summary}");
    } else {
        assert_eq!(observed, want, "{summary}");
    }
    for e in &events {
        assert_eq!(e["src"]["name"], "web/frontend-app", "{e}");
        assert_eq!(e["dst"]["name"], "payments/payments-api", "{e}");
    }
    // The lab server answered exactly the allowed requests, nothing else.
    let allowed_paths: Vec<String> = a
        .want_events
        .iter()
        .filter(|(v, _, _)| *v == "allowed")
        .map(|(_, _, p)| p.to_string())
        .collect();
    assert_eq!(server_paths(&stream), allowed_paths, "{summary}\n{stream}");
    if a.want_statuses.contains(&403) {
        assert!(stream.contains("Access denied"), "{summary}\n{stream}");
    }
    summary
}

#[test]
fn l7_bypass_attempts_and_seed_payments_matrix_on_the_lab() {
    if !privileged_tests_enabled("l7_bypass_attempts_and_seed_payments_matrix_on_the_lab") {
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let up = lab.cnpilot(&["lab", "up", "--scenario", "seed"]);
    assert_eq!(up.status.code(), Some(0), "lab up failed");
    let out = tempfile::tempdir().unwrap();
    let agent = Agent::start(&lab, out.path());
    let flip = lab.cnpilot(&[
        "mode",
        "-n",
        "payments",
        "enforce",
        "--pin-dir",
        agent.pin_dir.to_str().unwrap(),
    ]);
    assert_eq!(flip.status.code(), Some(0));
    eprintln!("lab + agent + enforce in {:?}", started.elapsed());

    // The case matrix, all at once (the L3/L4 denies wait out curl's -m).
    let api = "http://payments-api.payments:8080";
    let http_cases = [
        ("web/frontend-app", "GET", "/api/v1/charges", "200"),
        ("web/frontend-app", "POST", "/api/v1/charges", "200"),
        ("web/frontend-app", "POST", "/api/v1/refunds", "403"),
        ("data/analytics-service", "GET", "/api/v1/charges", "200"),
        ("data/analytics-service", "POST", "/api/v1/charges", "403"),
        ("ops/finance-tool", "POST", "/api/v1/refunds", "200"),
        ("ops/finance-tool", "GET", "/api/v1/charges", "403"),
    ];
    let l4_denies = [
        (
            "web/frontend-app",
            "http://payments-api.payments:9090/metrics",
        ),
        (
            "tenant-a/worker",
            "http://payments-api.payments:8080/api/v1/charges",
        ),
    ];
    std::thread::scope(|s| {
        let lab = &lab;
        let l4: Vec<_> = l4_denies
            .iter()
            .map(|(pod, url)| s.spawn(move || (pod, url, curl(lab, pod, "GET", url))))
            .collect();
        let http: Vec<_> = http_cases
            .iter()
            .map(|c| s.spawn(move || (c, curl(lab, c.0, c.1, &format!("{api}{}", c.2)))))
            .collect();
        for h in http {
            let ((pod, method, path, want), (code, body)) = h.join().unwrap();
            eprintln!("case {pod} {method} {path}: {code}");
            assert_eq!(&code, want, "{pod} {method} {path}: body {body:?}");
            if *want == "403" {
                assert_eq!(body.trim_end(), "Access denied", "{pod} {method} {path}");
            } else {
                assert!(
                    body.contains(&format!("\"path\":\"{path}\"")),
                    "{pod} {method} {path}: the server answered {body:?}"
                );
            }
        }
        for h in l4 {
            let (pod, url, (code, body)) = h.join().unwrap();
            eprintln!("case {pod} {url}: {code}");
            assert_eq!(code, "000", "{pod} {url} must not connect, got {body:?}");
        }
    });
    let events = agent.events_after(0, http_cases.len());
    for (pod, method, path, want) in http_cases {
        let verdict = if want == "200" {
            "allowed"
        } else {
            "l7-denied"
        };
        let n = events
            .iter()
            .filter(|e| {
                e["src"]["name"] == pod
                    && e["method"] == method
                    && e["path"] == path
                    && e["verdict"] == verdict
            })
            .count();
        assert_eq!(n, 1, "{pod} {method} {path} {verdict}: {events:#?}");
    }
    assert_eq!(events.len(), http_cases.len(), "{events:#?}");
    assert!(
        events.iter().all(|e| e["src"]["name"] != "tenant-a/worker"),
        "tenant-a reached the proxy: {events:#?}"
    );

    // The bypass attempts, one after the other: each one's events are the
    // ones that arrive while it runs.
    let mut table = Vec::new();
    let recorded = out.path().join("payments-received.bin");
    let recorders = Recorders::replace_payments_servers(&lab, &recorded);
    for a in attempts() {
        table.push(check_attempt(&lab, &agent, &a));
        let received =
            String::from_utf8_lossy(&std::fs::read(&recorded).unwrap_or_default()).into_owned();
        assert!(
            !received.contains("refunds"),
            "BYPASS: the server received a denied request during `{}`:\n{received}",
            a.name
        );
    }
    let received = std::fs::read(&recorded).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&received).contains("/api/v1/charges"),
        "the recorder saw none of the allowed requests: is it the server?"
    );
    drop(recorders);
    eprintln!("{}", table.join("\n"));
    eprintln!("whole run {:?}", started.elapsed());
    drop(agent);
    drop(lab);
}

const RECORD_ENV: &str = "CNPILOT_BYPASS_RECORD";

/// The recorders standing in for payments-api's lab servers; killed on drop.
struct Recorders(Vec<Child>);

impl Recorders {
    /// Stops the lab's payments-api servers (processes this test's lab
    /// started, by pid) and starts a recorder in each replica's namespace.
    fn replace_payments_servers(lab: &Lab, file: &std::path::Path) -> Recorders {
        let state = lab.state();
        let mut children = Vec::new();
        for pod in state["pods"].as_array().unwrap() {
            if pod["namespace"] != "payments" {
                continue;
            }
            let pid = pod["serverPid"].as_i64().unwrap();
            Command::new("kill").arg(pid.to_string()).status().unwrap();
            let netns = pod["netns"].as_str().unwrap();
            let port_free = || {
                !String::from_utf8_lossy(
                    &Command::new("ip")
                        .args(["netns", "exec", netns, "ss", "-Htln", "sport = :8080"])
                        .output()
                        .unwrap()
                        .stdout,
                )
                .contains("8080")
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while !port_free() {
                assert!(Instant::now() < deadline, "lab server {pid} still on 8080");
                std::thread::sleep(Duration::from_millis(20));
            }
            let child = Command::new("ip")
                .args(["netns", "exec", netns])
                .arg(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "recording_payments_server"])
                .env(RECORD_ENV, file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            children.push(child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while port_free() {
                assert!(
                    Instant::now() < deadline,
                    "recorder not listening in {netns}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(children.len(), 2, "payments-api has two replicas");
        Recorders(children)
    }
}

impl Drop for Recorders {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Not a test: the recorder the main test runs inside the payments-api
/// pods (`--ignored --exact`, with `CNPILOT_BYPASS_RECORD` set). It appends
/// every byte it receives to that file and answers each request head with
/// a 200 echoing the path, as the lab server does (requests carry no body
/// here); it exits after 60 s at most.
#[test]
#[ignore = "helper process of l7_bypass_attempts_and_seed_payments_matrix_on_the_lab"]
fn recording_payments_server() {
    use std::io::{Read, Write};
    let Some(file) = std::env::var_os(RECORD_ENV) else {
        return;
    };
    let listener = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(0);
    });
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let file = PathBuf::from(&file);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            while Instant::now() < give_up {
                let n = match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&file)
                    .unwrap();
                log.write_all(&chunk[..n]).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let mut words = head.split(' ');
                    let method = words.next().unwrap_or("");
                    let path = words.next().unwrap_or("");
                    let body = format!(
                        "{{\"pod\":\"recorder\",\"method\":\"{method}\",\"path\":\"{path}\",\"status\":200}}"
                    );
                    let close = head.contains("HTTP/1.0")
                        || head.to_ascii_lowercase().contains("connection: close");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
                        body.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    );
                    if stream.write_all(answer.as_bytes()).is_err() || close {
                        return;
                    }
                }
            }
        });
    }
}
