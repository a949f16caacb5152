//! Flow rows and helpers the recommender's integration tests share.
#![allow(dead_code)] // each test crate uses its own subset

use std::collections::BTreeMap;

use cnpilot_learner::aggregate::FlowSummary;
use cnpilot_learner::pathtemplate;
use cnpilot_learner::Labels;
use cnpilot_recommender::model::{load_str, PolicySet};
use cnpilot_recommender::synth::{self, emit};

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub struct W {
    pub id: u32,
    pub ns: &'static str,
    pub name: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
}

pub const FRONTEND: W = W {
    id: 3855,
    ns: "web",
    name: "frontend-app",
    labels: &[("app", "frontend-app")],
};
pub const ANALYTICS: W = W {
    id: 4000,
    ns: "data",
    name: "analytics-service",
    labels: &[("app", "analytics-service")],
};
pub const FINANCE: W = W {
    id: 4100,
    ns: "ops",
    name: "finance-tool",
    labels: &[("app", "finance-tool")],
};
pub const PAYMENTS: W = W {
    id: 5000,
    ns: "payments",
    name: "payments-api",
    labels: &[("app", "payments-api")],
};
pub const DNS: W = W {
    id: 600,
    ns: "kube-system",
    name: "kube-dns",
    labels: &[("k8s-app", "kube-dns")],
};
pub const A_APP: W = W {
    id: 700,
    ns: "tenant-a",
    name: "app",
    labels: &[("app", "app"), ("tier", "backend")],
};
pub const A_WORKER: W = W {
    id: 701,
    ns: "tenant-a",
    name: "worker",
    labels: &[("app", "worker")],
};
pub const B_APP: W = W {
    id: 800,
    ns: "tenant-b",
    name: "app",
    labels: &[("app", "app"), ("tier", "backend")],
};
pub const PROM: W = W {
    id: 900,
    ns: "monitoring",
    name: "prometheus",
    labels: &[("app", "prometheus")],
};

pub fn labels(w: &W) -> Labels {
    let mut l: Labels = w
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("io.kubernetes.pod.namespace", w.ns);
    l
}

pub fn row(
    src: &W,
    dst: &W,
    proto: u8,
    port: u16,
    http: Option<(&str, &[&str])>,
    n: u64,
) -> FlowSummary {
    let (l7_protocol, l7_method, path_template, paths) = match http {
        Some((m, paths)) => (
            Some("http".to_string()),
            Some(m.to_string()),
            Some(pathtemplate::template(paths[0]).into_owned()),
            paths.iter().map(|p| p.to_string()).collect(),
        ),
        None => (None, None, None, Default::default()),
    };
    FlowSummary {
        src_identity: src.id,
        src_namespace: src.ns.into(),
        src_workload: src.name.into(),
        src_labels: labels(src),
        dst_identity: dst.id,
        dst_namespace: dst.ns.into(),
        dst_workload: dst.name.into(),
        dst_labels: labels(dst),
        dst_peer: String::new(),
        proto,
        dst_port: port,
        l7_protocol,
        l7_method,
        path_template,
        connections: n,
        records: n,
        packets: n * 10,
        bytes: n * 1000,
        first_seen_ns: 1_780_000_000_000_000_000,
        last_seen_ns: 1_780_000_060_000_000_000,
        verdicts: BTreeMap::from([("forwarded".to_string(), n)]),
        nodes: ["node-1".to_string()].into(),
        paths,
        with_query: 0,
    }
}

pub fn to_world(src: &W, ip: &str, port: u16, n: u64) -> FlowSummary {
    let mut r = row(src, src, 6, port, None, n);
    r.dst_identity = 2;
    r.dst_namespace = String::new();
    r.dst_workload = "world".into();
    r.dst_labels = Labels::reserved("world");
    r.dst_peer = format!("{ip}/32");
    r
}

/// The proposal as files on disk would load it back.
pub fn proposed_set(rec: &synth::Recommendation) -> PolicySet {
    let mut set = PolicySet::default();
    for p in &rec.policies {
        set.extend(
            load_str(
                &emit::render(p).unwrap(),
                &format!("proposed/{}", p.file_name),
            )
            .unwrap(),
        );
    }
    set
}

pub fn schema(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(format!("{ROOT}/recommender/crds/{file}")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}
