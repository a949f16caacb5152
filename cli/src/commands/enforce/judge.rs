//! What the staged enforce makes of each flow event of its namespace: the
//! flows it has seen pass and seen (would-)dropped, and whether a denial in
//! the watch stage is expected, a regression, or new.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use cnpilot_learner::FlowRecord;
use serde_json::Value;

/// One event of the agent's stream, as far as the stage machine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `tcp tenant-a/frontend -> payments/api:8080`, or with
    /// `http … GET /path` for a request.
    pub key: String,
    pub outcome: Outcome,
    /// The event's own clock (monotonic ns for L3/L4, Unix ns for HTTP).
    pub time_ns: u64,
    pub monotonic: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Audit: enforce would have dropped it (L3/L4) or answered 403 (L7).
    WouldDeny,
    /// Enforce: dropped, or answered 403.
    Denied,
}

fn proto_of_number(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

/// `ns/workload` for a pod, the address for anything else (the world,
/// a client that has no identity yet).
fn side(peer: &Value) -> String {
    let name = peer["name"].as_str().unwrap_or_default();
    if peer["namespace"].is_string() && name.contains('/') {
        name.to_string()
    } else {
        peer["ip"].as_str().unwrap_or(name).to_string()
    }
}

/// The event if it is a decision of `namespace`'s policy: an L3/L4 event
/// seen on one of its pods' interfaces, or a request to or from one of its
/// pods.
pub fn observe(line: &Value, namespace: &str) -> Option<Observed> {
    let kind = line["type"].as_str().unwrap_or("l3-l4");
    let verdict = line["verdict"].as_str()?;
    let (src, dst) = (&line["src"], &line["dst"]);
    let dport = dst["port"].as_u64().unwrap_or(0);
    match kind {
        "l3-l4" => {
            if line["endpoint_namespace"].as_str() != Some(namespace) {
                return None;
            }
            let outcome = match verdict {
                "forwarded" | "redirected" => Outcome::Passed,
                "would-drop" => Outcome::WouldDeny,
                "dropped" => Outcome::Denied,
                _ => return None,
            };
            Some(Observed {
                key: format!(
                    "{} {} -> {}:{dport}",
                    line["proto"].as_str().unwrap_or("?"),
                    side(src),
                    side(dst)
                ),
                outcome,
                time_ns: line["time_ns"].as_u64().unwrap_or(0),
                monotonic: true,
            })
        }
        "http" => {
            let ours = |p: &Value| p["namespace"].as_str() == Some(namespace);
            if !ours(src) && !ours(dst) {
                return None;
            }
            let outcome = match verdict {
                "allowed" => Outcome::Passed,
                "l7-would-deny" => Outcome::WouldDeny,
                "l7-denied" => Outcome::Denied,
                _ => return None,
            };
            Some(Observed {
                key: format!(
                    "http {} -> {}:{dport} {} {}",
                    side(src),
                    side(dst),
                    line["method"].as_str().unwrap_or(""),
                    line["path"].as_str().unwrap_or("")
                ),
                outcome,
                time_ns: line["time_ns"].as_u64().unwrap_or(0),
                monotonic: false,
            })
        }
        _ => None,
    }
}

fn record_side(peer: &cnpilot_learner::record::Peer) -> String {
    if peer.namespace.is_empty() {
        peer.ip
            .map_or_else(|| peer.workload.clone(), |ip| ip.to_string())
    } else {
        format!("{}/{}", peer.namespace, peer.workload)
    }
}

/// The keys of a learned record, in the same form as [`observe`]'s.
pub fn record_key(r: &FlowRecord) -> String {
    let (src, dst) = (record_side(&r.src), record_side(&r.dst));
    match &r.l7 {
        Some(l7) if l7.protocol == cnpilot_learner::record::L7Protocol::Http => format!(
            "http {src} -> {dst}:{} {} {}",
            r.dst_port,
            l7.method.as_deref().unwrap_or(""),
            l7.path.as_deref().unwrap_or("")
        ),
        _ => format!("{} {src} -> {dst}:{}", proto_of_number(r.proto), r.dst_port),
    }
}

/// What a denial in the watch stage means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A flow seen passing during learning or soak: the policy breaks it.
    Regression(String),
    /// A flow seen (would-)denied during soak: accepted.
    Expected,
    /// Never seen: counted against `--max-new-drops`.
    New(String),
}

#[derive(Debug, Default)]
pub struct Judge {
    learned: HashSet<String>,
    pub soak_passed: HashSet<String>,
    pub soak_denied: HashSet<String>,
}

impl Judge {
    pub fn learn(&mut self, key: String) {
        self.learned.insert(key);
    }

    pub fn learned(&self) -> usize {
        self.learned.len()
    }

    /// During soak: whether the flow is new to what soak saw of its kind
    /// (a new would-deny starts the clean window over).
    pub fn soak(&mut self, ev: &Observed) -> bool {
        match ev.outcome {
            Outcome::Passed => self.soak_passed.insert(ev.key.clone()),
            Outcome::WouldDeny | Outcome::Denied => self.soak_denied.insert(ev.key.clone()),
        }
    }

    /// During watch: what a denial means (passes are `None`). What soak saw
    /// decides first: a flow soak saw denied was reviewed away, even if
    /// learning saw it pass before the proposal existed.
    pub fn watch(&self, ev: &Observed) -> Option<Finding> {
        if ev.outcome == Outcome::Passed {
            return None;
        }
        Some(if self.soak_denied.contains(&ev.key) {
            Finding::Expected
        } else if self.soak_passed.contains(&ev.key) || self.learned.contains(&ev.key) {
            Finding::Regression(ev.key.clone())
        } else {
            Finding::New(ev.key.clone())
        })
    }
}

/// New drops in the last `window`.
#[derive(Debug)]
pub struct NewDrops {
    window: Duration,
    at: VecDeque<(Instant, String)>,
}

impl NewDrops {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            at: VecDeque::new(),
        }
    }

    /// Adds one and returns how many are in the window now.
    pub fn push(&mut self, now: Instant, key: String) -> usize {
        self.at.push_back((now, key));
        while self
            .at
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            self.at.pop_front();
        }
        self.at.len()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.at.iter().map(|(_, k)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(verdict: &str, src_ns: Option<&str>, src: &str, ip: &str) -> Value {
        json!({
            "type": "l3-l4", "time_ns": 5, "verdict": verdict, "proto": "tcp",
            "endpoint_namespace": "payments", "direction": "ingress",
            "src": {"ip": ip, "port": 40000, "name": src, "namespace": src_ns},
            "dst": {"ip": "198.18.2.5", "port": 8080, "name": "payments/api", "namespace": "payments"},
        })
    }

    #[test]
    fn keys_name_workloads_and_fall_back_to_addresses() {
        let ev = observe(
            &flow("forwarded", Some("shop"), "shop/web", "198.18.1.1"),
            "payments",
        )
        .unwrap();
        assert_eq!(ev.key, "tcp shop/web -> payments/api:8080");
        let world = observe(&flow("dropped", None, "world", "198.18.9.9"), "payments").unwrap();
        assert_eq!(world.key, "tcp 198.18.9.9 -> payments/api:8080");
        assert_eq!(world.outcome, Outcome::Denied);
        assert_eq!(
            observe(&flow("forwarded", None, "world", "1.2.3.4"), "other"),
            None
        );
    }

    #[test]
    fn soak_restarts_only_on_a_denial_not_seen_before_and_watch_sorts_denials() {
        let mut judge = Judge::default();
        judge.learn("tcp shop/web -> payments/api:8080".into());
        let denied = observe(&flow("would-drop", None, "world", "198.18.9.9"), "payments").unwrap();
        assert!(judge.soak(&denied));
        assert!(!judge.soak(&denied), "the same flow again is known");
        let passed = observe(
            &flow("forwarded", Some("shop"), "shop/other", "198.18.1.2"),
            "payments",
        )
        .unwrap();
        assert!(judge.soak(&passed));
        assert!(!judge.soak(&passed));

        let drop =
            |src_ns, src: &str, ip| observe(&flow("dropped", src_ns, src, ip), "payments").unwrap();
        assert_eq!(
            judge.watch(&drop(None, "world", "198.18.9.9")),
            Some(Finding::Expected)
        );
        assert!(matches!(
            judge.watch(&drop(Some("shop"), "shop/web", "198.18.1.1")),
            Some(Finding::Regression(_))
        ));
        assert!(matches!(
            judge.watch(&drop(Some("shop"), "shop/other", "198.18.1.2")),
            Some(Finding::Regression(_))
        ));
        assert!(matches!(
            judge.watch(&drop(None, "world", "198.18.7.7")),
            Some(Finding::New(_))
        ));
        assert_eq!(judge.watch(&passed), None);
    }

    #[test]
    fn new_drops_slide_out_of_their_window() {
        let mut drops = NewDrops::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(drops.push(t0, "a".into()), 1);
        assert_eq!(drops.push(t0 + Duration::from_secs(5), "b".into()), 2);
        assert_eq!(drops.push(t0 + Duration::from_secs(12), "a".into()), 2);
        assert_eq!(drops.keys(), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn http_requests_are_keyed_with_method_and_path() {
        let line = json!({
            "type": "http", "time_ns": 9, "verdict": "l7-denied", "method": "POST",
            "path": "/refunds",
            "src": {"ip": "198.18.1.1", "port": 0, "name": "shop/web", "namespace": "shop"},
            "dst": {"ip": "198.18.2.5", "port": 8080, "name": "payments/api", "namespace": "payments"},
        });
        let ev = observe(&line, "payments").unwrap();
        assert_eq!(ev.key, "http shop/web -> payments/api:8080 POST /refunds");
        assert_eq!(ev.outcome, Outcome::Denied);
        assert!(!ev.monotonic);
    }
}
