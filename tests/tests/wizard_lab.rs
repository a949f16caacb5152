//! The migration wizard on the seed lab (root tier): a scripted run with
//! flags only, its rerun (every step already done), and an interactive run
//! in a real terminal (tmux: keys in, screen out).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cnpilot_e2e::steps::seed_lab;
use cnpilot_e2e::{cnpilot_bin, Lab};

fn status_of(lab: &Lab, pin: &str, ns: &str) -> (String, String) {
    let out = lab.cnpilot(&["status", "-o", "json", "--pin-dir", pin]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == ns)
        .cloned()
        .unwrap_or_default();
    (
        row["mode"].as_str().unwrap_or("-").into(),
        row["stage"].as_str().unwrap_or("-").into(),
    )
}

struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "180",
                "-y",
                "50",
                command,
            ])
            .status()
            .expect("running tmux")
            .success();
        assert!(ok, "tmux new-session");
        Tmux(name.to_string())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-S", "-2000", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.screen().contains(text) {
            assert!(
                Instant::now() < deadline,
                "`{text}` never appeared:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let ok = Command::new("tmux")
                .args(["send-keys", "-t", &self.0, k])
                .status()
                .unwrap()
                .success();
            assert!(ok);
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

fn wizard(lab: &Lab, pin: &str, work: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "wizard",
        "--work",
        work.to_str().unwrap(),
        "--pin-dir",
        pin,
        "--soak",
        "2s",
        "--watch",
        "3s",
    ];
    args.extend(extra);
    lab.cnpilot(&args)
}

#[test]
fn wizard_migrates_scripted_then_interactive() {
    let Some((lab, work)) = seed_lab("wizard_migrates_scripted_then_interactive") else {
        return;
    };
    let pin = format!("/sys/fs/bpf/cnpilot-{}", lab.prefix);

    // Scripted: flags only, no terminal.
    let scripted = work.path().join("scripted");
    let out = wizard(
        &lab,
        &pin,
        &scripted,
        &["--yes", "--record", "12s", "--namespaces", "payments"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("least-connected first"), "{text}");
    assert!(
        text.contains("payments-cnpilot-payments-api: accepted"),
        "{text}"
    );
    assert!(scripted
        .join("accepted/payments-cnpilot-payments-api.yaml")
        .exists());
    assert_eq!(
        status_of(&lab, &pin, "payments"),
        ("enforce".into(), "done".into())
    );
    assert_eq!(status_of(&lab, &pin, "web").0, "audit");

    // Rerun: resumes, every step done before.
    let again = wizard(&lab, &pin, &scripted, &["--yes"]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{text}");
    assert!(text.contains("Resuming the wizard"), "{text}");
    assert!(text.contains("payments: done before"), "{text}");
    assert!(!text.contains("$ cnpilot record"), "{text}");

    // Interactive: pick web only, accept the suggested order and the policy.
    let interactive = work.path().join("interactive");
    let command = format!(
        "env CNPILOT_LAB_PREFIX={} CNPILOT_LAB_DIR={} CNPILOT_STATE_DIR={} {} wizard --work {} \
         --pin-dir {pin} --record 10s --soak 2s --watch 3s; echo WIZARD-EXIT=$?; sleep 600",
        lab.prefix,
        lab.dir.path().display(),
        lab.dir.path().join("state").display(),
        cnpilot_bin().display(),
        interactive.display()
    );
    let tmux = Tmux::start(&format!("{}-wiz", lab.prefix), &command);
    tmux.wait_for("Namespaces to migrate", Duration::from_secs(60));
    // `a` unchecks all (all start checked); web is the ninth.
    let mut keys = vec!["a"];
    keys.extend(std::iter::repeat_n("Down", 8));
    keys.extend([" ", "Enter"]);
    tmux.keys(&keys);
    tmux.wait_for("Enforce in this order?", Duration::from_secs(10));
    tmux.keys(&["Enter"]);
    tmux.wait_for("web-cnpilot-frontend-app (web)", Duration::from_secs(60));
    tmux.keys(&["Enter"]);
    tmux.wait_for("Enforce web now", Duration::from_secs(30));
    tmux.keys(&["Enter"]);
    tmux.wait_for("WIZARD-EXIT=", Duration::from_secs(60));
    let screen = tmux.screen();
    eprintln!("{screen}");
    assert!(screen.contains("WIZARD-EXIT=0"), "{screen}");
    assert!(screen.contains("order: web"), "{screen}");
    assert_eq!(
        status_of(&lab, &pin, "web"),
        ("enforce".into(), "done".into())
    );
    assert_eq!(
        status_of(&lab, &pin, "payments"),
        ("enforce".into(), "done".into())
    );
    assert_eq!(status_of(&lab, &pin, "tenant-a").0, "audit");
    drop(tmux);
    let _ = lab.cnpilot(&["agent", "--down", "--pin-dir", &pin]);
}
