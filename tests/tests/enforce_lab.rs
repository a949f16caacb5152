//! Staged enforce on the seed lab, real traffic (root tier): learn, recommend,
//! then `cnpilot enforce -n payments` — killed mid-soak and resumed, through
//! to `done`; rolled back by hand; and rolled back by itself when a workload
//! that learning never saw starts calling payments during the watch.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cnpilot_e2e::steps::{recommend, record, seed_lab, NewPod};
use cnpilot_e2e::{cnpilot_bin, Lab, SeedAgent};

fn enforce(lab: &Lab, agent: &SeedAgent<'_>, args: &[&str], log: &Path) -> Child {
    Command::new(cnpilot_bin())
        .args([
            "enforce",
            "-n",
            "payments",
            "--pin-dir",
            agent.pin(),
            "--min-evidence",
            "0",
        ])
        .args(args)
        .env("CNPILOT_LAB_PREFIX", &lab.prefix)
        .env("CNPILOT_LAB_DIR", lab.dir.path())
        .env("CNPILOT_STATE_DIR", lab.dir.path().join("state"))
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting cnpilot enforce")
}

fn status(lab: &Lab, agent: &SeedAgent<'_>) -> serde_json::Value {
    let out = lab.cnpilot(&["status", "-o", "json", "--pin-dir", agent.pin()]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("status -o json is JSON")
}

/// (mode, stage) of a namespace in `status -o json`.
fn stage_of(status: &serde_json::Value, ns: &str) -> (String, String) {
    let row = status["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == ns)
        .cloned()
        .unwrap_or_default();
    (
        row["mode"].as_str().unwrap_or("-").to_string(),
        row["stage"].as_str().unwrap_or("-").to_string(),
    )
}

fn wait_stage(lab: &Lab, agent: &SeedAgent<'_>, stage: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = status(lab, agent);
        if stage_of(&s, "payments").1 == stage {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "payments never reached {stage}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_exit(child: &mut Child, within: Duration, log: &Path) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "enforce did not finish:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn others_audit(status: &serde_json::Value) {
    for row in status["namespaces"].as_array().unwrap() {
        if row["namespace"] != "payments" {
            assert_eq!(row["mode"], "audit", "{row:#}");
        }
    }
}

#[test]
fn staged_enforce_resumes_finishes_and_rolls_back_by_itself() {
    let Some((lab, work)) = seed_lab("staged_enforce_resumes_finishes_and_rolls_back_by_itself")
    else {
        return;
    };
    let store = work.path().join("store");
    record(&lab, &store, None, 12);
    let proposed = work.path().join("proposed");
    recommend(&lab, &store, None, &proposed);

    let agent = SeedAgent::start_with(&lab, work.path(), None, "audit", &[]);
    let mut traffic = Command::new(cnpilot_bin())
        .args(["lab", "traffic", "--duration", "120s"])
        .env("CNPILOT_LAB_PREFIX", &lab.prefix)
        .env("CNPILOT_LAB_DIR", lab.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let policies = proposed.to_str().unwrap();
    let store_arg = store.to_str().unwrap();

    // 1. kill -9 mid-soak: the stage survives, the namespace stays in audit.
    let log = work.path().join("enforce-1.err");
    let mut first = enforce(
        &lab,
        &agent,
        &[
            "--policies",
            policies,
            "--store",
            store_arg,
            "--soak",
            "60s",
            "--watch",
            "4s",
        ],
        &log,
    );
    wait_stage(&lab, &agent, "audit-soak", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    first.kill().unwrap();
    first.wait().unwrap();
    let s = status(&lab, &agent);
    assert_eq!(
        stage_of(&s, "payments"),
        ("audit".into(), "audit-soak".into())
    );

    // 2. Rerun: resumes from the recorded stage and reaches done.
    let log = work.path().join("enforce-2.err");
    let mut second = enforce(
        &lab,
        &agent,
        &[
            "--policies",
            policies,
            "--store",
            store_arg,
            "--soak",
            "3s",
            "--watch",
            "4s",
        ],
        &log,
    );
    let code = wait_exit(&mut second, Duration::from_secs(60), &log);
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("resuming revision"), "{text}");
    assert!(text.contains("watch -> done"), "{text}");
    let s = status(&lab, &agent);
    assert_eq!(stage_of(&s, "payments"), ("enforce".into(), "done".into()));
    others_audit(&s);
    let journal =
        std::fs::read_to_string(lab.dir.path().join("state/enforce/payments/journal.jsonl"))
            .unwrap();
    for stage in ["proposed", "audit-soak", "enforce", "watch", "done"] {
        assert!(
            journal.contains(&format!("\"stage\":\"{stage}\"")),
            "{journal}"
        );
    }
    // Rerunning a finished revision changes nothing.
    let again = lab.cnpilot(&[
        "enforce",
        "-n",
        "payments",
        "--pin-dir",
        agent.pin(),
        "--min-evidence",
        "0",
        "--policies",
        policies,
    ]);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already done"));

    // 3. Manual rollback: one map update, recorded.
    let back = lab.cnpilot(&["rollback", "-n", "payments", "--pin-dir", agent.pin()]);
    assert!(back.status.success());
    assert_eq!(
        stage_of(&status(&lab, &agent), "payments"),
        ("audit".into(), "rolled-back".into())
    );

    // 4. Again, and during the watch a client nobody has seen calls payments.
    let log = work.path().join("enforce-3.err");
    let mut third = enforce(
        &lab,
        &agent,
        &[
            "--policies",
            policies,
            "--store",
            store_arg,
            "--soak",
            "3s",
            "--watch",
            "120s",
        ],
        &log,
    );
    wait_stage(&lab, &agent, "watch", Duration::from_secs(60));
    // Legitimate traffic keeps flowing under enforce: no rollback by itself.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        third.try_wait().unwrap(),
        None,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let payments_ip = lab.first_pod_ip("payments");
    let newcomer = NewPod::start(&lab, "198.18.200.10");
    // Its first SYN is dropped under enforce; the rollback lands before
    // TCP's retransmission a second later, so the request still succeeds.
    let first_try = newcomer.curl(&format!("http://{payments_ip}:8080/api/v1/charges"));
    let code = wait_exit(&mut third, Duration::from_secs(10), &log);
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!("{text}");
    assert_eq!(code, 1, "{text}");
    let ms: f64 = text
        .lines()
        .find_map(|l| l.split("rolled back to audit ").nth(1))
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rollback latency in:\n{text}"));
    eprintln!("detection-to-rollback: {ms} ms");
    assert!(ms < 1000.0, "rolled back {ms} ms after the drop");
    let s = status(&lab, &agent);
    assert_eq!(
        stage_of(&s, "payments"),
        ("audit".into(), "rolled-back".into())
    );
    others_audit(&s);
    let surprises = std::fs::read_to_string(
        lab.dir
            .path()
            .join("state/enforce/payments/surprises.jsonl"),
    )
    .unwrap();
    assert!(surprises.contains("198.18.200.10"), "{surprises}");
    // The offending flow comes back as a proposed addition: a payments
    // policy that lets the newcomer's port in, with its evidence, that
    // `cnpilot review` reads against the frozen proposal.
    let out = std::fs::read_to_string(log.with_extension("out")).unwrap();
    assert!(out.contains("proposed addition: 1 policies"), "{out}");
    let addition = lab.dir.path().join("state/enforce/payments/addition");
    let yaml: String = std::fs::read_dir(&addition)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    eprintln!("{out}\n{yaml}");
    assert!(yaml.contains("namespace: payments"), "{yaml}");
    // Beside the enforced policy, not in its place: applying it adds.
    assert!(yaml.contains("name: cnpilot-payments-api-2"), "{yaml}");
    assert!(
        yaml.contains("port: '8080'") || yaml.contains("port: \"8080\""),
        "{yaml}"
    );
    assert!(yaml.contains("cnpilot.io/evidence"), "{yaml}");
    let review = lab.cnpilot(&[
        "review",
        "--proposed",
        addition.to_str().unwrap(),
        "--current",
        lab.dir
            .path()
            .join("state/enforce/payments/policies")
            .to_str()
            .unwrap(),
        "--store",
        lab.dir
            .path()
            .join("state/enforce/payments/surprises-store")
            .to_str()
            .unwrap(),
    ]);
    let review_text = String::from_utf8_lossy(&review.stdout);
    assert!(
        review_text.contains("[new]") && !review_text.contains("[changed]"),
        "review of the addition:\n{review_text}\n{}",
        String::from_utf8_lossy(&review.stderr)
    );
    assert_eq!(first_try, "200", "the newcomer waited out the rollback");
    let drops: Vec<serde_json::Value> = agent
        .all_events()
        .into_iter()
        .filter(|e| e["verdict"] == "dropped" && e["src"]["ip"] == "198.18.200.10")
        .collect();
    assert!(
        !drops.is_empty(),
        "the newcomer's SYN was dropped under enforce"
    );
    drop(newcomer);
    let _ = traffic.kill();
    let _ = traffic.wait();
}
