//! Round trips: what `observe -o json` writes, `import hubble` (the
//! learner's parser) reads back as the same flow.

use cnpilot_learner::hubble::{parse_line, LineOutcome};
use cnpilot_learner::{Direction, DnsAnswer, FlowRecord, L7Protocol, Labels, Peer, Verdict, L7};

use super::event_line::{self, Line};
use super::hubble_json::to_line;
use super::model::from_record;

fn import(line: &str) -> FlowRecord {
    match parse_line(line) {
        LineOutcome::Record(r) => *r,
        other => panic!("import hubble did not take {line}: {other:?}"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, workload: &str, identity: u32, ip: &str) -> Peer {
    Peer {
        identity,
        namespace: ns.into(),
        workload: workload.into(),
        labels: labels(&[("app", workload), ("io.kubernetes.pod.namespace", ns)]),
        ip: ip.parse().ok(),
    }
}

fn record(src: Peer, dst: Peer, proto: u8, port: u16, verdict: Verdict) -> FlowRecord {
    FlowRecord {
        window_start_ns: 1_796_418_000_123_456_789,
        window_end_ns: 1_796_418_000_123_456_789,
        node: "cnp-node".into(),
        src,
        dst,
        proto,
        dst_port: port,
        direction: Direction::Egress,
        verdict,
        reason: String::new(),
        l7: None,
        packets: 1,
        bytes: 0,
        count: 1,
    }
}

fn store_records() -> Vec<FlowRecord> {
    let web = pod("web", "frontend-app", 300, "198.18.1.2");
    let api = pod("payments", "payments-api", 301, "198.18.2.2");
    let world = Peer {
        identity: 2,
        workload: "world".into(),
        labels: Labels::reserved("world"),
        ip: "198.19.50.10".parse().ok(),
        ..Default::default()
    };
    let host = Peer {
        identity: 1,
        workload: "cnp-node".into(),
        labels: Labels::reserved("host"),
        ip: "198.18.255.1".parse().ok(),
        ..Default::default()
    };
    let mut out = vec![record(
        web.clone(),
        api.clone(),
        6,
        8080,
        Verdict::Forwarded,
    )];
    let mut evidence = record(web.clone(), api.clone(), 6, 8080, Verdict::Forwarded);
    evidence.count = 0;
    out.push(evidence);
    let mut dns = record(web.clone(), api.clone(), 17, 53, Verdict::WouldDrop);
    dns.reason = "default-deny".into();
    out.push(dns);
    let mut denied = record(api.clone(), world, 6, 443, Verdict::Dropped);
    denied.reason = "deny-rule".into();
    denied.direction = Direction::Ingress;
    out.push(denied);
    out.push(record(host, api.clone(), 1, 8, Verdict::Forwarded));
    for (verdict, status, query) in [
        (Verdict::L7WouldDeny, Some(403), Some("force=true")),
        (Verdict::L7Denied, Some(403), None),
        (Verdict::Forwarded, Some(200), None),
    ] {
        let mut http = record(web.clone(), api.clone(), 6, 8080, verdict);
        http.direction = Direction::Unknown;
        http.l7 = Some(L7 {
            protocol: L7Protocol::Http,
            method: Some("POST".into()),
            path: Some("/api/v1/refunds".into()),
            query: query.map(str::to_string),
            host: Some("payments-api.payments:8080".into()),
            status,
            dns: None,
        });
        out.push(http);
    }
    let mut query = record(web, api, 17, 53, Verdict::Forwarded);
    query.l7 = Some(L7 {
        protocol: L7Protocol::Dns,
        method: Some("A,AAAA".into()),
        path: None,
        query: None,
        host: Some("payments-api.payments.svc.cluster.local".into()),
        status: Some(0),
        dns: None,
    });
    // Its answer: a Hubble response, counted 0 (the query was).
    let mut answer = query.clone();
    answer.count = 0;
    if let Some(l7) = &mut answer.l7 {
        l7.dns = Some(DnsAnswer {
            ips: vec!["198.18.2.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            ttl: 30,
        });
    }
    out.push(query);
    out.push(answer);
    out
}

#[test]
fn store_records_survive_observe_json_and_import_hubble() {
    for original in store_records() {
        let line = to_line(&from_record(&original)).expect("timed record has a line");
        let mut expected = original.clone();
        // Hubble has Cilium's drop reason names, no free text.
        expected.reason = match (original.l7.is_some(), original.reason.as_str()) {
            (false, "default-deny") => "POLICY_DENIED".into(),
            (false, "deny-rule") => "POLICY_DENY".into(),
            _ => String::new(),
        };
        assert_eq!(import(&line), expected, "{line}");
        let answered = original.l7.as_ref().is_some_and(|l| l.dns.is_some());
        assert_eq!(line.contains(r#""type":"RESPONSE""#), answered, "{line}");
        assert_eq!(line.contains(r#""is_reply":true"#), answered, "{line}");
    }
}

const WEB: &str = r#"{"ip":"198.18.1.2","port":41000,"identity":300,"name":"web/frontend-app","namespace":"web","pod":"frontend-app-7d77448bf5-g59cc","labels":["k8s:app=frontend-app","k8s:io.kubernetes.pod.namespace=web"]}"#;
const API: &str = r#"{"ip":"198.18.2.2","port":8080,"identity":301,"name":"payments/payments-api","namespace":"payments","pod":"payments-api-0","labels":["k8s:app=payments-api","k8s:io.kubernetes.pod.namespace=payments"]}"#;
const OLD_WORLD: &str = r#"{"ip":"198.19.50.10","port":443,"identity":2,"name":"world"}"#;
const OLD_API: &str =
    r#"{"ip":"198.18.2.2","port":42000,"identity":301,"name":"payments/payments-api"}"#;

fn via_observe(line: &str) -> FlowRecord {
    let Ok(Line::Flow(flow)) = event_line::parse(line) else {
        panic!("not a flow: {line}");
    };
    import(&to_line(&flow).expect("a timed flow"))
}

#[test]
fn event_lines_survive_observe_json_and_import_hubble() {
    let flow = format!(
        r#"{{"type":"l3-l4","time":"2026-12-04T21:00:00.123456789Z","time_ns":5,"verdict":"would-drop","reason":"default-deny","direction":"ingress","endpoint_namespace":"payments","proto":"tcp","src":{WEB},"dst":{API},"rule_id":0,"node":"cnp-node","future_field":1}}"#
    );
    let r = via_observe(&flow);
    assert_eq!(r.window_start_ns, 1_796_418_000_123_456_789);
    assert_eq!(r.node, "cnp-node");
    assert_eq!((r.proto, r.dst_port), (6, 8080));
    assert_eq!(r.verdict, Verdict::WouldDrop);
    assert_eq!(r.direction, Direction::Ingress);
    assert_eq!(r.count, 1);
    assert_eq!(
        (
            r.src.namespace.as_str(),
            r.src.workload.as_str(),
            r.src.identity
        ),
        ("web", "frontend-app", 300)
    );
    assert_eq!(r.src.labels.get("app"), Some("frontend-app"));
    assert_eq!(r.src.ip, "198.18.1.2".parse().ok());
    assert_eq!(
        (r.dst.namespace.as_str(), r.dst.workload.as_str()),
        ("payments", "payments-api")
    );

    let http = format!(
        r#"{{"type":"http","time":"2026-12-04T21:00:00.2Z","time_ns":1796418000200000000,"verdict":"l7-would-deny","method":"DELETE","path":"/api/v1/charges/7","query":"x=1","host":null,"status":403,"src":{WEB},"dst":{API},"reason":"no rule","node":"cnp-node"}}"#
    );
    let r = via_observe(&http);
    assert_eq!(r.verdict, Verdict::L7WouldDeny);
    assert_eq!(r.direction, Direction::Unknown);
    let l7 = r.l7.expect("l7");
    assert_eq!(
        (
            l7.method.as_deref(),
            l7.path.as_deref(),
            l7.query.as_deref(),
            l7.status
        ),
        (
            Some("DELETE"),
            Some("/api/v1/charges/7"),
            Some("x=1"),
            Some(403)
        )
    );
    assert_eq!(r.dst.workload, "payments-api");

    // Today's agent: no type, no time (so no Hubble line), names only.
    let old = format!(
        r#"{{"time_ns":7000,"verdict":"dropped","reason":"deny-rule","direction":"egress","endpoint_namespace":"payments","proto":"tcp","src":{OLD_API},"dst":{OLD_WORLD},"rule_id":9}}"#
    );
    let Ok(Line::Flow(mut flow)) = event_line::parse(&old) else {
        panic!("not a flow: {old}");
    };
    assert!(to_line(&flow).is_none());
    flow.time_ns = Some(1);
    let r = import(&to_line(&flow).expect("timed now"));
    assert_eq!(
        (r.src.namespace.as_str(), r.src.workload.as_str()),
        ("payments", "payments-api")
    );
    assert_eq!((r.dst.identity, r.dst.workload.as_str()), (2, "world"));
    assert_eq!(r.dst.labels.get("reserved:world"), Some(""));
    assert_eq!(
        (r.verdict, r.reason.as_str()),
        (Verdict::Dropped, "POLICY_DENY")
    );
}
