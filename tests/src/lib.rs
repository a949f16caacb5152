//! End-to-end tests live in `tests/tests/*.rs`; they run the real `cnpilot`
//! binary against a real network-namespace lab. This library only holds the
//! helpers they share.
//!
//! Which binary: `$CNPILOT_BIN` when set (CI may point it at a prebuilt
//! one); otherwise the helpers run `cargo build -p cnpilot --bin cnpilot` once
//! per test process (a no-op when it is up to date, so the tests never run
//! a stale binary) and use `<target dir>/debug/cnpilot`, where the target dir
//! is `$CARGO_TARGET_DIR` or the workspace's `target/`.

pub mod dns;
pub mod steps;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// The `cnpilot` binary under test, built if needed.
pub fn cnpilot_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CNPILOT_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "cnpilot", "--bin", "cnpilot"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build -p cnpilot");
        assert!(status.success(), "cargo build -p cnpilot failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug").join("cnpilot");
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

/// A lab prefix no other test (or test process) uses: `t` + 4 hex + counter.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{:04x}{:x}",
        (std::process::id() ^ nanos) & 0xffff,
        n % 256
    )
}

/// One test's lab: its own prefix and state directory; `lab down` on drop,
/// so a failing test leaves nothing behind.
pub struct Lab {
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            prefix: unique_prefix(),
            dir: tempfile::Builder::new()
                .prefix("cnpilot-lab-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// `cnpilot ARGS…` with this lab's prefix and directory.
    pub fn cnpilot(&self, args: &[&str]) -> Output {
        let out = Command::new(cnpilot_bin())
            .args(args)
            .env("CNPILOT_LAB_PREFIX", &self.prefix)
            .env("CNPILOT_LAB_DIR", self.dir.path())
            .env("CNPILOT_STATE_DIR", self.dir.path().join("state"))
            .output()
            .expect("running cnpilot");
        eprintln!(
            "$ cnpilot {} -> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state_path()).expect("state.json");
        serde_json::from_str(&text).expect("state.json is JSON")
    }

    /// The address of the first pod of `namespace`.
    pub fn first_pod_ip(&self, namespace: &str) -> String {
        self.state()["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["namespace"] == namespace)
            .and_then(|p| p["ip"].as_str())
            .unwrap_or_else(|| panic!("no pod in {namespace}"))
            .to_string()
    }

    /// What of this lab is still on the machine (empty when all is gone).
    pub fn leftovers(&self) -> Vec<String> {
        let ns_prefix = format!("{}-", self.prefix);
        let mut left = Vec::new();
        for dir in ["/run/netns", "/etc/netns"] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&ns_prefix) {
                        left.push(format!("{dir}/{name}"));
                    }
                }
            }
        }
        for pid in lab_server_pids(&self.prefix) {
            left.push(format!("process {pid}"));
        }
        // Veths live inside the lab's namespaces; none may ever show up here.
        let links = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip link");
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            if line.contains(&format!(" {}v", self.prefix))
                || line.contains(&format!(" {}up0", self.prefix))
            {
                left.push(format!("link {line}"));
            }
        }
        for f in ["state.json", "inventory.json", "logs", "ready"] {
            if self.dir.path().join(f).exists() {
                left.push(format!("{}/{f}", self.dir.path().display()));
            }
        }
        left
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(cnpilot_bin())
            .args(["lab", "down", "--prefix", &self.prefix])
            .env("CNPILOT_LAB_DIR", self.dir.path())
            .env("CNPILOT_STATE_DIR", self.dir.path().join("state"))
            .output();
    }
}

/// Live `cnpilot lab serve --prefix PREFIX` processes.
pub fn lab_server_pids(prefix: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let serve = args.windows(2).any(|w| w[0] == "lab" && w[1] == "serve");
        let ours = args
            .windows(2)
            .any(|w| w[0] == "--prefix" && w[1] == prefix);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if serve && ours && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// `cnpilot agent` on a test lab with the article's policies
/// (`cli/policies/seed`) in audit mode, its own pin dir and event file.
/// Dropping it kills the agent and runs `agent --down` (drop it before the
/// `Lab`, which then comes down).
pub struct SeedAgent<'a> {
    lab: &'a Lab,
    child: std::process::Child,
    pub pin_dir: PathBuf,
    pub events: PathBuf,
    stderr: PathBuf,
    /// `agent …` arguments other than the pin dir and event file.
    args: Vec<std::ffi::OsString>,
}

impl<'a> SeedAgent<'a> {
    /// Starts the agent and waits until it has attached to every pod.
    pub fn start(lab: &'a Lab, out: &Path) -> SeedAgent<'a> {
        let seed = workspace_root().join("cli/policies/seed");
        SeedAgent::start_with(lab, out, Some(&seed), "audit", &[])
    }

    /// The agent with any policy directory (or none), mode and extra
    /// arguments (`--store DIR`, `--http-visibility auto`, …).
    pub fn start_with(
        lab: &'a Lab,
        out: &Path,
        policies: Option<&Path>,
        mode: &str,
        extra: &[&str],
    ) -> SeedAgent<'a> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/cnpilot-{}", lab.prefix));
        let events = out.join("events.jsonl");
        let stderr = out.join("agent.err");
        let mut args: Vec<std::ffi::OsString> = vec!["agent".into()];
        if let Some(dir) = policies {
            args.push("--policies".into());
            args.push(dir.into());
        }
        args.extend(["--mode".into(), mode.into()]);
        args.extend(extra.iter().map(Into::into));
        let child = Self::spawn(lab, &args, &pin_dir, &events, &stderr);
        let agent = SeedAgent {
            lab,
            child,
            pin_dir,
            events,
            stderr,
            args,
        };
        agent.wait_attached();
        agent
    }

    fn spawn(
        lab: &Lab,
        args: &[std::ffi::OsString],
        pin_dir: &Path,
        events: &Path,
        stderr: &Path,
    ) -> std::process::Child {
        Command::new(cnpilot_bin())
            .args(args)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("--events")
            .arg(events)
            .env("CNPILOT_LAB_PREFIX", &lab.prefix)
            .env("CNPILOT_LAB_DIR", lab.dir.path())
            .env("CNPILOT_STATE_DIR", lab.dir.path().join("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(stderr).expect("creating the agent's stderr file"))
            .spawn()
            .expect("starting cnpilot agent")
    }

    fn wait_attached(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.stderr_text().contains("pods attached") {
            assert!(
                Instant::now() < deadline,
                "agent did not start:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the agent (pins, links and modes stay) and starts a new one
    /// on the same pins; returns once it has attached again. The event file
    /// starts over.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(
            self.lab,
            &self.args,
            &self.pin_dir,
            &self.events,
            &self.stderr,
        );
        self.wait_attached();
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every event line so far (flow and http events), parsed.
    pub fn all_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect()
    }

    pub fn pin(&self) -> &str {
        self.pin_dir.to_str().expect("pin dirs are UTF-8")
    }

    /// The agent's `"type":"http"` event lines so far, in order.
    pub fn http_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "http")
            .collect()
    }

    /// Waits (the agent flushes per event) for an http event matching `f`.
    pub fn wait_http(
        &self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self.http_events().into_iter().find(|e| f(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no http event {what}; got {:#?}",
                self.http_events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The http events after the first `since`, once there are at least
    /// `want` of them and no more arrive for a moment.
    pub fn events_after(&self, since: usize, want: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let all = self.http_events();
            if all.len() >= since + want {
                std::thread::sleep(Duration::from_millis(150));
                return self.http_events().split_off(since);
            }
            if Instant::now() > deadline {
                return all.into_iter().skip(since).collect();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for SeedAgent<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pin = self.pin_dir.display().to_string();
        let _ = self.lab.cnpilot(&["agent", "--down", "--pin-dir", &pin]);
    }
}
