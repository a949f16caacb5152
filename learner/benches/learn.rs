//! Criterion: path templating, and the aggregation over a small store.

use std::hint::black_box;

use cnpilot_learner::aggregate::{learn, LearnOptions};
use cnpilot_learner::pathtemplate::template;
use cnpilot_learner::synth::{SynthConfig, SynthFlows};
use cnpilot_learner::FlowStore;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench_template(c: &mut Criterion) {
    let paths = [
        "/api/v1/charges",
        "/api/v1/charges/12345",
        "/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301/orders/7",
        "/static/app.js",
    ];
    c.bench_function("pathtemplate/4 paths", |b| {
        b.iter(|| {
            for p in paths {
                black_box(template(black_box(p)));
            }
        })
    });
}

fn bench_learn(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = FlowStore::open(dir.path()).expect("store");
    let records: Vec<_> = SynthFlows::new(SynthConfig::default())
        .take(100_000)
        .collect();
    store.append(&records).expect("append");
    store.close().expect("close");
    let dirs = [dir.path().to_path_buf()];
    let mut group = c.benchmark_group("learn");
    group.sample_size(10);
    group.bench_function("100k records", |b| {
        b.iter(|| learn(black_box(&dirs), &LearnOptions::default()).expect("learn"))
    });
    group.finish();
}

criterion_group!(benches, bench_template, bench_learn);
criterion_main!(benches);
