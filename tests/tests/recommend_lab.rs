//! The whole loop on real packets (root tier): record the seed lab in
//! audit with HTTP visibility, `recommend`, enforce the proposal with the
//! agent, run the scenario's traffic again, then try what was never seen.
//!
//! | test | policies enforced | expected |
//! |---|---|---|
//! | greenfield | the proposal alone (no policies while recording) | every scenario request answered, 0 drops; unseen paths and methods 403; unseen peers and ports dropped |
//! | brownfield | the article's policies + the proposal | exactly the flows the recommendation listed as kept denied fail (cross-tenant calls, the two L7-denied requests); DNS, tenants → prometheus:9090 and the article's four curls (200/403/200/403) work |

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::steps::{recommend, record};
use cnpilot_e2e::{workspace_root, Lab, SeedAgent as Agent};

/// `lab traffic` totals and the failing rows (source, target, request).
fn traffic(lab: &Lab, seconds: u32) -> (u64, u64, Vec<String>) {
    let out = lab.cnpilot(&["lab", "traffic", "--duration", &format!("{seconds}s")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut failed_rows = Vec::new();
    let mut totals = (0, 0);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("total: ") {
            let nums: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            totals = (nums[0], nums[2]);
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        // SOURCE TARGET REQUEST… SENT OK FAILED OUTCOMES…
        if let Some(i) = cols.iter().rposition(|c| c.parse::<u64>().is_ok()) {
            if i >= 3
                && cols[i].parse::<u64>().unwrap_or(0) > 0
                && cols[i - 1].parse::<u64>().is_ok()
            {
                failed_rows.push(line.to_string());
            }
        }
    }
    (totals.0, totals.1, failed_rows)
}

fn curl(lab: &Lab, pod: &str, method: &str, url: &str) -> String {
    let out = lab.cnpilot(&[
        "lab",
        "exec",
        pod,
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "-o",
        "/dev/null",
        "-X",
        method,
        "-w",
        "%{http_code}",
        url,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn drops(agent: &Agent<'_>) -> Vec<serde_json::Value> {
    agent
        .all_events()
        .into_iter()
        .filter(|e| e["verdict"] == "dropped" || e["verdict"] == "denied")
        .collect()
}

#[test]
fn greenfield_recommendation_enforced_on_real_packets() {
    if !privileged_tests_enabled("greenfield_recommendation_enforced_on_real_packets") {
        return;
    }
    let lab = Lab::new();
    let work = tempfile::tempdir().unwrap();
    assert!(lab
        .cnpilot(&["lab", "up", "--scenario", "seed"])
        .status
        .success());
    let store = work.path().join("store");
    record(&lab, &store, None, 12);
    let proposed = work.path().join("proposed");
    let report = recommend(&lab, &store, None, &proposed);
    assert_eq!(report["replay"]["unexpected"], 0);
    assert!(report["probes"]["total"].as_u64().unwrap() > 100);
    assert_eq!(
        report["probes"]["allowed_by_proposal"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let payments =
        std::fs::read_to_string(proposed.join("payments-cnpilot-payments-api.yaml")).unwrap();
    assert!(
        payments.contains("path: /api/v1/refunds"),
        "visibility gave L7 rules:\n{payments}"
    );

    let agent = Agent::start_with(&lab, work.path(), Some(&proposed), "enforce", &[]);
    let (sent, failed, rows) = traffic(&lab, 5);
    assert!(sent > 50, "{sent} requests");
    assert_eq!(
        failed,
        0,
        "scenario requests failed under the proposal:\n{}",
        rows.join("\n")
    );
    assert!(drops(&agent).is_empty(), "drops: {:#?}", drops(&agent));

    // Never seen: other paths and methods on an HTTP port (403 from the
    // proxy), other peers and ports (dropped: curl gives 000).
    let api = "http://payments-api.payments:8080";
    assert_eq!(
        curl(
            &lab,
            "web/frontend-app",
            "GET",
            &format!("{api}/api/v1/charges")
        ),
        "200"
    );
    assert_eq!(
        curl(
            &lab,
            "web/frontend-app",
            "DELETE",
            &format!("{api}/api/v1/charges")
        ),
        "403"
    );
    assert_eq!(
        curl(&lab, "web/frontend-app", "GET", &format!("{api}/admin")),
        "403"
    );
    assert_eq!(
        curl(
            &lab,
            "ops/finance-tool",
            "GET",
            &format!("{api}/api/v1/charges")
        ),
        "403"
    );
    assert_eq!(
        curl(
            &lab,
            "web/frontend-app",
            "GET",
            "http://app.tenant-a:8080/api/items"
        ),
        "000"
    );
    assert_eq!(
        curl(
            &lab,
            "tenant-a/worker",
            "GET",
            "http://prometheus.monitoring:9091/"
        ),
        "000"
    );
    assert_eq!(
        curl(
            &lab,
            "tenant-a/worker",
            "GET",
            "http://payments-api.payments:8080/api/v1/charges"
        ),
        "000"
    );
    assert!(
        !drops(&agent).is_empty(),
        "the unseen peers were dropped by the datapath"
    );
    drop(agent);
}

#[test]
fn brownfield_recommendation_keeps_exactly_the_listed_denials() {
    if !privileged_tests_enabled("brownfield_recommendation_keeps_exactly_the_listed_denials") {
        return;
    }
    let lab = Lab::new();
    let work = tempfile::tempdir().unwrap();
    assert!(lab
        .cnpilot(&["lab", "up", "--scenario", "seed"])
        .status
        .success());
    let current = workspace_root().join("cli/policies/seed");
    let store = work.path().join("store");
    record(&lab, &store, Some(&current), 12);
    let proposed = work.path().join("proposed");
    let report = recommend(&lab, &store, Some(&current), &proposed);
    let excluded = report["excluded"].as_array().unwrap();
    let listed = |src: &str, dst: &str| {
        excluded
            .iter()
            .any(|e| e["flow"]["src"] == src && e["flow"]["dst"] == dst)
    };
    assert!(listed("tenant-a/worker", "tenant-b/app"), "{excluded:#?}");
    assert!(listed("tenant-b/worker", "tenant-a/app"));
    assert!(excluded
        .iter()
        .any(|e| e["disposition"]["kind"] == "l7-denied-by-current"));

    // Enforce the article's policies and the proposal together.
    let both = work.path().join("both");
    std::fs::create_dir(&both).unwrap();
    for dir in [&current, &proposed] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(&path, both.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let agent = Agent::start_with(&lab, work.path(), Some(&both), "enforce", &[]);
    let (_, _, failing) = traffic(&lab, 5);
    // Every failing scenario row is one the review listed as kept denied.
    for row in &failing {
        let kept = excluded.iter().any(|e| {
            let src = e["flow"]["src"].as_str().unwrap_or("");
            let dst = e["flow"]["dst"].as_str().unwrap_or("");
            let dst_short = dst.split('/').next_back().unwrap_or("");
            row.starts_with(src) && row.contains(dst_short)
        });
        assert!(
            kept,
            "a request failed that the recommendation did not list: {row}\n{excluded:#?}"
        );
    }
    assert!(!failing.is_empty(), "the kept denials still fail");
    // DNS works (curl resolves names), tenants reach prometheus, and the
    // article's four curls.
    assert_eq!(
        curl(
            &lab,
            "tenant-a/worker",
            "POST",
            "http://prometheus.monitoring:9090/api/v1/write"
        ),
        "200"
    );
    let api = "http://payments-api.payments:8080/api/v1";
    assert_eq!(
        curl(&lab, "web/frontend-app", "POST", &format!("{api}/charges")),
        "200"
    );
    assert_eq!(
        curl(&lab, "web/frontend-app", "POST", &format!("{api}/refunds")),
        "403"
    );
    assert_eq!(
        curl(
            &lab,
            "data/analytics-service",
            "GET",
            &format!("{api}/charges")
        ),
        "200"
    );
    assert_eq!(
        curl(
            &lab,
            "data/analytics-service",
            "POST",
            &format!("{api}/charges")
        ),
        "403"
    );
    drop(agent);
}

#[test]
fn own_scenario_with_per_id_paths_queries_udp_and_world_peers() {
    if !privileged_tests_enabled("own_scenario_with_per_id_paths_queries_udp_and_world_peers") {
        return;
    }
    let lab = Lab::new();
    let work = tempfile::tempdir().unwrap();
    let scenario = workspace_root().join("tests/scenarios/shop.yaml");
    assert!(lab
        .cnpilot(&["lab", "up", "--scenario", scenario.to_str().unwrap()])
        .status
        .success());
    let store = work.path().join("store");
    record(&lab, &store, None, 12);
    let proposed = work.path().join("proposed");
    let report = recommend(&lab, &store, None, &proposed);
    assert_eq!(report["replay"]["unexpected"], 0);
    let orders = std::fs::read_to_string(proposed.join("shop-cnpilot-orders.yaml")).unwrap();
    // Three order ids seen: a template; two cart ids: each its own rule.
    assert!(orders.contains("path: /orders/[0-9]+"), "{orders}");
    assert!(
        orders.contains("path: /carts/7") && orders.contains("path: /carts/8"),
        "{orders}"
    );
    assert!(
        orders.contains(r"path: /search(\?.*)?"),
        "a query was seen:\n{orders}"
    );
    // web and orders share `tier`; the name label tells them apart.
    assert!(
        orders.contains("app.kubernetes.io/name: orders"),
        "{orders}"
    );

    let agent = Agent::start_with(&lab, work.path(), Some(&proposed), "enforce", &[]);
    let (sent, failed, rows) = traffic(&lab, 5);
    assert!(sent > 50);
    assert_eq!(failed, 0, "{}", rows.join("\n"));
    let api = "http://orders.shop:8080";
    assert_eq!(
        curl(&lab, "shop/web", "GET", &format!("{api}/orders/4242")),
        "200",
        "the template"
    );
    assert_eq!(
        curl(&lab, "shop/web", "GET", &format!("{api}/orders/abc")),
        "403"
    );
    assert_eq!(
        curl(&lab, "shop/web", "GET", &format!("{api}/carts/9")),
        "403",
        "two ids are not a template"
    );
    assert_eq!(
        curl(&lab, "shop/web", "GET", &format!("{api}/search?q=boots")),
        "200"
    );
    assert_eq!(
        curl(&lab, "ops/reporter", "GET", &format!("{api}/orders/1002")),
        "403",
        "reporter saw one id only"
    );
    assert_eq!(
        curl(&lab, "ops/reporter", "POST", &format!("{api}/orders")),
        "403"
    );
    assert!(drops(&agent).is_empty(), "{:#?}", drops(&agent));
    drop(agent);
}
