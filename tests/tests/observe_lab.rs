//! `cnpilot observe` against the real agent on the seed lab (root tier):
//! live flows in Hubble's JSON, and a client that does not read loses
//! events (told how many) while the agent and its other outputs lose none.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cnpilot_e2e::steps::seed_lab;
use cnpilot_e2e::{cnpilot_bin, SeedAgent};

fn socket_of(agent: &SeedAgent<'_>) -> String {
    let name = agent
        .pin_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    format!("/run/cnpilot/agent-{name}.sock")
}

#[test]
fn observe_live_and_a_slow_client_loses_events_not_the_agent() {
    let Some((lab, work)) = seed_lab("observe_live_and_a_slow_client_loses_events_not_the_agent")
    else {
        return;
    };
    let agent = SeedAgent::start(&lab, work.path());
    let socket = socket_of(&agent);
    let mode = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600, "root-only socket");

    // Live, Hubble JSON: the article's cross-tenant call is an AUDIT flow.
    let mut observe = Command::new(cnpilot_bin())
        .args([
            "observe",
            "-o",
            "json",
            "--pin-dir",
            agent.pin(),
            "-n",
            "tenant-b",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = lab.cnpilot(&[
        "lab",
        "exec",
        "tenant-a/app",
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "http://app.tenant-b:8080/",
    ]);
    let mut lines = BufReader::new(observe.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = observe.kill();
    let _ = observe.wait();
    let flow = &first["flow"];
    assert_eq!(flow["verdict"], "AUDIT", "{first:#}");
    assert_eq!(flow["source"]["namespace"], "tenant-a", "{first:#}");
    assert_eq!(flow["destination"]["namespace"], "tenant-b", "{first:#}");
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 8080, "{first:#}");

    // A client that subscribes and does not read.
    let mut slow = UnixStream::connect(&socket).unwrap();
    slow.write_all(b"{\"op\":\"events\"}\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let flood = 30_000;
    let script = format!(
        "import socket\nfor _ in range({flood}):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.sendto(b'x', ('{}', 9))\n    s.close()\n",
        lab.state()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["namespace"] == "tenant-b")
            .unwrap()["ip"]
            .as_str()
            .unwrap()
    );
    let sent = Instant::now();
    let out = lab.cnpilot(&[
        "lab",
        "exec",
        "tenant-a/app",
        "--",
        "python3",
        "-c",
        &script,
    ]);
    assert!(out.status.success());
    eprintln!("{flood} new UDP flows sent in {:?}", sent.elapsed());
    // The agent wrote every one to its events file meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    let udp = || {
        agent
            .all_events()
            .iter()
            .filter(|e| e["proto"] == "udp" && e["dst"]["port"] == 9)
            .count()
    };
    while udp() < flood && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        udp() >= flood * 99 / 100,
        "the agent's file has {} of {flood}",
        udp()
    );
    // One more event so the slow client's next line carries the lost count.
    let _ = lab.cnpilot(&[
        "lab",
        "exec",
        "tenant-a/app",
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "http://app.tenant-b:8080/",
    ]);
    slow.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = slow.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let lost: u64 = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "lost")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    let received = text.lines().count() as u64;
    eprintln!("slow client: {received} lines received, {lost} reported lost");
    assert!(lost > 0, "a slow client is told what it lost");
    assert!(
        received + lost >= flood as u64,
        "{received} + {lost} < {flood}"
    );
    // And status still answers: the agent is alive.
    let status = lab.cnpilot(&["status", "-o", "json", "--pin-dir", agent.pin()]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("\"running\""));
}
