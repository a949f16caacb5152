//! The agent on the seed lab with the seed policies (root tier): audit
//! records would-drops without dropping, enforce drops per namespace with no
//! program reload, enforcement outlives a SIGKILLed agent, and `record
//! --store` feeds `cnpilot learn` with the same columns as a Hubble import.
//!
//! Every test has its own lab prefix, lab directory, pin directory
//! (`/sys/fs/bpf/cnpilot-test-<prefix>`) and store. The `Rig` guard kills
//! the agent, runs `agent --down --pin-dir` (which detaches and removes
//! every pin, since nothing else holds the programs) and then the lab's own
//! guard runs `lab down`, on success and on failure alike.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::{cnpilot_bin, workspace_root, Lab};
use serde_json::Value;

struct Rig {
    agent: Option<Child>,
    agent_log: PathBuf,
    pin_dir: PathBuf,
    work: tempfile::TempDir,
    // Dropped after `Rig::drop` ran `agent --down`: `lab down` comes last.
    lab: Lab,
}

impl Rig {
    fn up() -> Rig {
        let lab = Lab::new();
        let up = lab.cnpilot(&["lab", "up", "--scenario", "seed"]);
        assert_eq!(up.status.code(), Some(0), "lab up failed");
        let work = tempfile::Builder::new()
            .prefix("cnpilot-agent-")
            .tempdir()
            .unwrap();
        Rig {
            agent: None,
            agent_log: work.path().join("agent.log"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/cnpilot-test-{}", lab.prefix)),
            work,
            lab,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn pin(&self) -> &str {
        self.pin_dir.to_str().unwrap()
    }

    fn seed_policies() -> String {
        workspace_root()
            .join("cli/policies/seed")
            .to_string_lossy()
            .into_owned()
    }

    /// `cnpilot <sub> --policies seed --pin-dir ... EXTRA`, in the background,
    /// returned once it says it is attached.
    fn spawn(&mut self, sub: &[&str], extra: &[&str]) {
        assert!(self.agent.is_none(), "one agent at a time");
        let log = std::fs::File::create(&self.agent_log).unwrap();
        let policies = Self::seed_policies();
        let mut args: Vec<&str> = sub.to_vec();
        args.extend(["--policies", &policies, "--pin-dir", self.pin()]);
        args.extend_from_slice(extra);
        eprintln!("$ cnpilot {} &", args.join(" "));
        let child = Command::new(cnpilot_bin())
            .args(&args)
            .env("CNPILOT_LAB_PREFIX", &self.lab.prefix)
            .env("CNPILOT_LAB_DIR", self.lab.dir.path())
            .env("CNPILOT_STATE_DIR", self.lab.dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.agent_log).unwrap_or_default();
            if text.contains("pods attached") {
                eprintln!("agent attached in {:?}", started.elapsed());
                return;
            }
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited with {status} before attaching:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "agent not attached after 30s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_agent(&mut self, extra: &[&str]) {
        self.spawn(&["agent"], extra);
    }

    fn signal_agent(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("an agent is running");
        let ok = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = wait_at_most(&mut child, Duration::from_secs(20));
        eprintln!(
            "agent {signal}: {status}\n{}",
            std::fs::read_to_string(&self.agent_log).unwrap_or_default()
        );
        status
    }

    fn wait_agent(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.agent.take().unwrap();
        let status = wait_at_most(&mut child, limit);
        eprintln!(
            "agent ended: {status}\n{}",
            std::fs::read_to_string(&self.agent_log).unwrap_or_default()
        );
        status
    }

    fn pod_ip(&self, namespace: &str, workload: &str) -> String {
        self.lab.state()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["namespace"] == namespace && p["workload"] == workload)
            .unwrap_or_else(|| panic!("no pod {namespace}/{workload}"))["ip"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// HTTP status from inside a pod (`000` when the connection failed).
    fn curl(&self, pod: &str, url: &str) -> String {
        let out = self.lab.cnpilot(&[
            "lab",
            "exec",
            pod,
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn mode(&self, ns: &str, mode: &str) {
        let out = self
            .lab
            .cnpilot(&["mode", "-n", ns, mode, "--pin-dir", self.pin()]);
        assert_eq!(out.status.code(), Some(0), "mode -n {ns} {mode}");
    }

    /// Program id behind every pinned tcx link, by link name.
    fn program_ids(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.pin_dir.join("links")).unwrap() {
            let path = entry.unwrap().path();
            let json = Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(json.status.success(), "bpftool link show {path:?}");
            let v: Value = serde_json::from_slice(&json.stdout).unwrap();
            let id = v["prog_id"].as_u64().expect("prog_id");
            out.push((path.file_name().unwrap().to_string_lossy().into(), id));
        }
        out.sort();
        out
    }

    fn flow_entries(&self) -> usize {
        cnpilot_bpf::Tables::open_pinned(&self.pin_dir)
            .unwrap()
            .read_counters()
            .unwrap()
            .len()
    }

    fn learn(&self, store: &Path) -> Vec<Value> {
        let out = self
            .lab
            .cnpilot(&["learn", "--store", store.to_str().unwrap(), "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "learn failed");
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self
            .lab
            .cnpilot(&["agent", "--down", "--pin-dir", self.pin()]);
    }
}

/// The child's exit status; SIGKILL and a panic if it takes longer (a hung
/// agent must fail the test, not block it).
fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pid {} still running after {limit:?}: killed", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn event_lines(path: &Path) -> Vec<Value> {
    let file = std::fs::File::open(path).unwrap();
    std::io::BufReader::new(file)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn events_between<'a>(events: &'a [Value], src: &str, dst: &str, port: u64) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["src"]["name"] == src && e["dst"]["name"] == dst && e["dst"]["port"] == port)
        .collect()
}

fn row<'a>(rows: &'a [Value], src: (&str, &str), dst: (&str, &str), port: u64) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["src_namespace"] == src.0
                && r["src_workload"] == src.1
                && r["dst_namespace"] == dst.0
                && r["dst_workload"] == dst.1
                && r["dst_port"] == port
                && r["l7_protocol"].is_null()
        })
        .unwrap_or_else(|| panic!("no learned row {src:?} -> {dst:?}:{port}"))
}

#[test]
fn audit_records_would_drops_with_identities_and_drops_nothing() {
    if !privileged_tests_enabled("audit_records_would_drops_with_identities_and_drops_nothing") {
        return;
    }
    let mut rig = Rig::up();
    let events = rig.path("events.jsonl");
    rig.start_agent(&["--mode", "audit", "--events", events.to_str().unwrap()]);

    let traffic = rig
        .lab
        .cnpilot(&["lab", "traffic", "--duration", "2s", "-o", "json"]);
    assert_eq!(traffic.status.code(), Some(0), "audit must not drop");
    let reports: Value = serde_json::from_slice(&traffic.stdout).unwrap();
    for r in reports.as_array().unwrap() {
        assert_eq!(r["failed"], 0, "audit dropped something: {r}");
        assert!(r["ok"].as_u64().unwrap() >= 1, "{r}");
    }
    rig.signal_agent("-TERM");

    let events = event_lines(&events);
    let cross = events_between(&events, "tenant-a/worker", "tenant-b/app", 8080);
    assert!(
        cross.iter().any(|e| e["verdict"] == "would-drop"),
        "tenant-a/worker -> tenant-b/app:8080 is a would-drop: {cross:?}"
    );
    assert!(cross.iter().all(|e| e["verdict"] != "dropped"), "{cross:?}");
    let within = events_between(&events, "tenant-a/worker", "tenant-a/app", 8080);
    assert!(
        !within.is_empty(),
        "no tenant-a/worker -> tenant-a/app event"
    );
    assert!(
        within.iter().all(|e| e["verdict"] == "forwarded"),
        "tenant-a worker -> app is allowed: {within:?}"
    );
}

#[test]
fn enforce_flips_without_reload_and_survives_a_killed_agent() {
    if !privileged_tests_enabled("enforce_flips_without_reload_and_survives_a_killed_agent") {
        return;
    }
    let mut rig = Rig::up();
    let store = rig.path("store");
    let store_arg = store.to_str().unwrap().to_string();
    let events = rig.path("events.jsonl");
    let events_arg = events.to_str().unwrap().to_string();
    // No --mode: every namespace starts in audit (new pins).
    rig.start_agent(&["--events", &events_arg, "--store", &store_arg]);
    let tenant_a_app = format!("http://{}:8080/api/items", rig.pod_ip("tenant-a", "app"));
    let tenant_b_app = format!("http://{}:8080/api/items", rig.pod_ip("tenant-b", "app"));
    let datadog = "http://datadog-agent.datadog:8126/metrics";
    assert_eq!(rig.curl("tenant-a/worker", &tenant_b_app), "200", "audit");

    let before = rig.program_ids();
    assert!(!before.is_empty());
    rig.mode("tenant-b", "enforce");
    rig.mode("tenant-a", "enforce");
    assert_eq!(rig.program_ids(), before, "a mode flip must not reload");

    // Addresses, not names: tenant-a's policy allows no DNS.
    let enforced = |rig: &Rig, when: &str| {
        assert_eq!(
            rig.curl("tenant-a/worker", &tenant_b_app),
            "000",
            "{when}: tenant-a/worker -> tenant-b/app must be dropped"
        );
        assert_eq!(
            rig.curl("tenant-a/worker", &tenant_a_app),
            "200",
            "{when}: tenant-a/worker -> tenant-a/app (and its replies) must pass"
        );
    };
    enforced(&rig, "enforce");
    // Namespaces still in audit: default-deny would-drops, nothing dropped.
    assert_eq!(rig.curl("monitoring/prometheus", datadog), "200");
    let dns = rig.lab.cnpilot(&[
        "lab",
        "exec",
        "web/frontend-app",
        "--",
        "getent",
        "ahostsv4",
        "payments-api.payments",
    ]);
    assert_eq!(dns.status.code(), Some(0), "audit namespaces keep DNS");

    // A second agent on the same pins refuses, naming the running one, and
    // changes nothing.
    let first_pid = rig.agent.as_ref().unwrap().id();
    let policies = Rig::seed_policies();
    let second = rig.lab.cnpilot(&[
        "agent",
        "--policies",
        &policies,
        "--pin-dir",
        rig.pin(),
        "--events",
        "/dev/null",
    ]);
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{second_err}");
    assert!(
        second_err.contains(&format!("another cnpilot agent (pid {first_pid})")),
        "{second_err}"
    );
    assert_eq!(
        rig.program_ids(),
        before,
        "the refused agent changed nothing"
    );
    enforced(&rig, "second agent refused");

    // SIGKILL: the pinned programs and maps keep enforcing with no agent.
    // (Its lock goes with it: the restart below must not be blocked.)
    let flows_before = rig.flow_entries();
    assert!(flows_before > 0);
    let status = rig.signal_agent("-KILL");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    enforced(&rig, "agent dead");
    assert_eq!(rig.program_ids(), before, "nothing changed while dead");

    // Restart: the counters and the store survive, enforcement goes on.
    rig.start_agent(&["--events", &events_arg, "--store", &store_arg]);
    assert!(
        rig.flow_entries() >= flows_before,
        "cnp_flows lost entries across the restart"
    );
    enforced(&rig, "restarted");
    rig.signal_agent("-TERM");

    // What the first agent acknowledged before SIGKILL was replayed from
    // the write-ahead file: the drops of the first enforce phase are there.
    let rows = rig.learn(&store);
    let cross = row(&rows, ("tenant-a", "worker"), ("tenant-b", "app"), 8080);
    assert!(
        cross["verdicts"]["dropped"].as_u64().unwrap_or(0) >= 1,
        "{cross}"
    );
    assert!(
        cross["verdicts"]["would-drop"].as_u64().unwrap_or(0) >= 1,
        "the audit-phase connection: {cross}"
    );
}

#[test]
fn record_feeds_learn_with_the_columns_of_a_hubble_import() {
    if !privileged_tests_enabled("record_feeds_learn_with_the_columns_of_a_hubble_import") {
        return;
    }
    let mut rig = Rig::up();
    let store = rig.path("store");
    let store_arg = store.to_str().unwrap().to_string();
    rig.spawn(
        &["record", "--duration", "3s"],
        &[
            "--mode",
            "audit",
            "--events",
            "/dev/null",
            "--store",
            &store_arg,
        ],
    );
    let started = Instant::now();
    let traffic = rig.lab.cnpilot(&["lab", "traffic", "--duration", "2s"]);
    assert_eq!(traffic.status.code(), Some(0));
    let status = rig.wait_agent(Duration::from_secs(30));
    eprintln!("record took {:?} after attaching", started.elapsed());
    // Would-drops seen: a finding.
    assert_eq!(status.code(), Some(1), "record exits 1 on would-drops");
    let log = std::fs::read_to_string(&rig.agent_log).unwrap();
    assert!(log.contains("event records"), "{log}");

    let rows = rig.learn(&store);
    let within = row(&rows, ("tenant-a", "worker"), ("tenant-a", "app"), 8080);
    assert_eq!(within["proto"], 6);
    assert!(within["connections"].as_u64().unwrap() >= 4, "{within}");
    assert!(within["packets"].as_u64().unwrap() > within["connections"].as_u64().unwrap());
    assert!(
        within["bytes"].as_u64().unwrap() > 0,
        "counters folded in: {within}"
    );
    assert_eq!(
        within["verdicts"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["forwarded"],
        "{within}"
    );
    let cross = row(&rows, ("tenant-a", "worker"), ("tenant-b", "app"), 8080);
    assert!(
        cross["verdicts"]["would-drop"].as_u64().unwrap_or(0) >= 1,
        "{cross}"
    );
    let cross_b = row(&rows, ("tenant-b", "worker"), ("tenant-a", "app"), 8080);
    assert!(
        cross_b["verdicts"]["would-drop"].as_u64().unwrap_or(0) >= 1,
        "{cross_b}"
    );
    // Default deny everywhere else (the clusterwide policy): would-drops.
    let pay = row(
        &rows,
        ("web", "frontend-app"),
        ("payments", "payments-api"),
        8080,
    );
    assert!(pay["connections"].as_u64().unwrap() >= 1, "{pay}");
    let scrape = row(
        &rows,
        ("monitoring", "prometheus"),
        ("tenant-b", "app"),
        8080,
    );
    assert!(
        scrape["verdicts"]["would-drop"].as_u64().unwrap_or(0) >= 1,
        "{scrape}"
    );

    // The same table from Hubble's export has the same columns.
    let hubble_store = rig.path("hubble-store");
    let hubble = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../learner/tests/fixtures/hubble/observe-jsonpb.jsonl"
    );
    let import = rig.lab.cnpilot(&[
        "import",
        "hubble",
        hubble,
        "--store",
        hubble_store.to_str().unwrap(),
    ]);
    assert_eq!(import.status.code(), Some(0));
    let hubble_rows = rig.learn(&hubble_store);
    assert!(!hubble_rows.is_empty());
    let keys = |r: &Value| {
        r.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<String>>()
    };
    assert_eq!(keys(&hubble_rows[0]), keys(within));
    for r in rows.iter().chain(&hubble_rows) {
        assert_eq!(keys(r), keys(within));
    }
}

#[test]
fn agent_down_leaves_no_pins_and_lab_down_nothing_else() {
    if !privileged_tests_enabled("agent_down_leaves_no_pins_and_lab_down_nothing_else") {
        return;
    }
    let mut rig = Rig::up();
    rig.start_agent(&["--events", "/dev/null"]);
    assert!(rig.pin_dir.join("links").read_dir().unwrap().count() > 0);
    rig.signal_agent("-TERM");
    // The agent leaves its programs attached and pinned on purpose
    // (enforcement outlives it); `agent --down` is what removes them.
    assert!(rig.pin_dir.exists());
    let down = rig
        .lab
        .cnpilot(&["agent", "--down", "--pin-dir", rig.pin()]);
    assert_eq!(down.status.code(), Some(0));
    assert!(!rig.pin_dir.exists(), "pins left under {:?}", rig.pin_dir);
    let lab_down = rig.lab.cnpilot(&["lab", "down"]);
    assert_eq!(lab_down.status.code(), Some(0));
    assert_eq!(rig.lab.leftovers(), Vec::<String>::new());
    assert!(!rig.pin_dir.exists());
}

#[test]
fn lab_down_alone_removes_the_pins_of_an_agent_that_ran_on_it() {
    if !privileged_tests_enabled("lab_down_alone_removes_the_pins_of_an_agent_that_ran_on_it") {
        return;
    }
    let mut rig = Rig::up();
    rig.start_agent(&["--events", "/dev/null"]);
    assert!(rig.pin_dir.join("links").read_dir().unwrap().count() > 0);
    rig.signal_agent("-TERM");
    assert!(rig.pin_dir.exists(), "the agent must leave its pins");
    // No `agent --down`: the lab going away takes the pins with it.
    let lab_down = rig.lab.cnpilot(&["lab", "down"]);
    assert_eq!(lab_down.status.code(), Some(0));
    assert_eq!(rig.lab.leftovers(), Vec::<String>::new());
    assert!(!rig.pin_dir.exists(), "pins left under {:?}", rig.pin_dir);
}
