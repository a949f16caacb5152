//! Steps of the whole loop that several lab tests take: record the seed
//! lab's traffic into a store, recommend from it, and start a workload the
//! recording never saw.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{cnpilot_bin, Lab};

/// A root-tier test's seed lab, up, and a scratch directory; `None` (with
/// the loud skip line) where root tiers cannot run.
pub fn seed_lab(test: &str) -> Option<(Lab, tempfile::TempDir)> {
    if !cnpilot_bpf::testing::privileged_tests_enabled(test) {
        return None;
    }
    let lab = Lab::new();
    let work = tempfile::tempdir().expect("temp dir");
    let up = lab.cnpilot(&["lab", "up", "--scenario", "seed"]);
    assert!(up.status.success(), "lab up failed");
    Some((lab, work))
}

/// The network namespace of the first pod (not hostNetwork) of `namespace`
/// in the lab's `state.json`.
pub fn pod_netns(state: &serde_json::Value, namespace: &str) -> String {
    state["pods"]
        .as_array()
        .and_then(|pods| {
            pods.iter()
                .find(|p| p["namespace"] == namespace && p["hostNetwork"] != true)
        })
        .and_then(|p| p["netns"].as_str())
        .unwrap_or_else(|| panic!("no pod of `{namespace}` in the lab's state"))
        .to_string()
}

/// `cnpilot record` for `seconds` while the scenario's clients talk.
pub fn record(lab: &Lab, store: &Path, current: Option<&Path>, seconds: u32) {
    record_with(lab, store, current, seconds, &[]);
}

/// [`record`] with more agent arguments (`--host-firewall auto`, …).
pub fn record_with(lab: &Lab, store: &Path, current: Option<&Path>, seconds: u32, extra: &[&str]) {
    let pin = format!("/sys/fs/bpf/cnpilot-{}", lab.prefix);
    let mut cmd = Command::new(cnpilot_bin());
    cmd.args(["record", "--duration", &format!("{seconds}s"), "--store"])
        .arg(store)
        .args([
            "--pin-dir",
            &pin,
            "--events",
            "/dev/null",
            "--mode",
            "audit",
        ]);
    if let Some(dir) = current {
        cmd.arg("--policies").arg(dir);
    }
    cmd.args(extra);
    let child = cmd
        .env("CNPILOT_LAB_PREFIX", &lab.prefix)
        .env("CNPILOT_LAB_DIR", lab.dir.path())
        .env("CNPILOT_STATE_DIR", lab.dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cnpilot record");
    // The agent attaches within a second or two; traffic starts after.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let traffic = lab.cnpilot(&["lab", "traffic", "--duration", &format!("{}s", seconds - 5)]);
    assert!(traffic.status.success() || traffic.status.code() == Some(1));
    let out = child
        .wait_with_output()
        .expect("waiting for cnpilot record");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("record: {err}");
    assert!(err.contains("L7 records"), "{err}");
    let _ = lab.cnpilot(&["agent", "--down", "--pin-dir", &pin]);
}

pub fn recommend(lab: &Lab, store: &Path, current: Option<&Path>, out: &Path) -> serde_json::Value {
    let mut args = vec![
        "recommend",
        "--store",
        store.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(c) = current {
        args.extend(["--current", c.to_str().unwrap()]);
    }
    let rec = lab.cnpilot(&args);
    assert_eq!(rec.status.code(), Some(0), "recommend's proofs failed");
    let report = std::fs::read_to_string(out.join(".cnpilot/report.json")).unwrap();
    serde_json::from_str(&report).unwrap()
}

/// A pod that appears after learning: its own network namespace and veth
/// into the lab's node, routed like the lab's pods (a /32 on the node side)
/// but unknown to the agent's inventory. Removed on drop.
pub struct NewPod {
    pub netns: String,
    pub ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NewPod {
    /// `ip` must be free in the lab's 198.18.0.0/15 (e.g. 198.18.200.10).
    pub fn start(lab: &Lab, ip_addr: &str) -> NewPod {
        let state = lab.state();
        let node = state["node"]["netns"]
            .as_str()
            .expect("node netns")
            .to_string();
        let node_ip = state["node"]["ip"].as_str().expect("node ip").to_string();
        let netns = format!("{}-newpod", lab.prefix);
        let host_veth = format!("{}np0", lab.prefix);
        ip(&["netns", "add", &netns]);
        let pod = NewPod {
            netns: netns.clone(),
            ip: ip_addr.to_string(),
        };
        ip(&[
            "-n", &node, "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ]);
        ip(&["-n", &node, "link", "set", &host_veth, "up"]);
        ip(&[
            "-n",
            &node,
            "route",
            "add",
            &format!("{ip_addr}/32"),
            "dev",
            &host_veth,
            "scope",
            "link",
        ]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip_addr}/32"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n", &netns, "route", "add", "default", "via", &node_ip, "dev", "eth0", "onlink",
        ]);
        pod
    }

    /// `curl` from the new pod; the HTTP status (`000` when dropped).
    pub fn curl(&self, url: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ])
            .stderr(Stdio::null())
            .output()
            .expect("running curl in the new pod");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for NewPod {
    fn drop(&mut self) {
        // The veth pair goes with its namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
