//! Verdicts per second with 10 and with 10,000 rules: the compiled index
//! makes a verdict a few hash lookups, so the two should be about equal.
//!
//! `cargo bench -p cnpilot-recommender --bench verdict`

use std::hint::black_box;

use cnpilot_recommender::{model, CompiledPolicy, IdentityInput, Verdict};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SERVICES: u32 = 500;

/// `rules` CNPs: rule i lets client-(i mod 500) reach svc-(i mod 500) on
/// port 1000+i; each service is default-deny at ingress.
fn setup(rules: u32) -> (CompiledPolicy, Vec<(u32, u32, u16, Verdict)>) {
    let mut yaml = String::new();
    for i in 0..rules {
        let s = i % SERVICES;
        yaml.push_str(&format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: r{i}, namespace: bench}}\nspec:\n  endpointSelector: {{matchLabels: {{app: svc-{s}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client-{s}}}}}]\n    toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
            1000 + i
        ));
    }
    let set = model::load_str(&yaml, "bench.yaml").expect("bench policies parse");
    let mut identities = Vec::new();
    for s in 0..SERVICES {
        for (role, base) in [("svc", 256), ("client", 256 + SERVICES)] {
            identities.push(IdentityInput {
                id: base + s,
                namespace: "bench".into(),
                labels: [("app".to_string(), format!("{role}-{s}"))].into(),
                ..Default::default()
            });
        }
    }
    let compiled = CompiledPolicy::compile(&set, &identities, None);
    // A mix of allowed and denied flows touching many rules.
    let flows: Vec<_> = (0..1024u32)
        .map(|k| {
            let i = (k * 7919) % rules;
            let s = i % SERVICES;
            if k % 2 == 0 {
                (
                    256 + SERVICES + s,
                    256 + s,
                    (1000 + i) as u16,
                    Verdict::Allow,
                )
            } else {
                (
                    256 + SERVICES + (s + 1) % SERVICES,
                    256 + s,
                    (1000 + i) as u16,
                    Verdict::Deny,
                )
            }
        })
        .collect();
    for (src, dst, port, expect) in &flows {
        assert_eq!(
            compiled.verdict(*src, *dst, 6, *port, None).verdict,
            *expect
        );
    }
    (compiled, flows)
}

fn verdicts(c: &mut Criterion) {
    let mut group = c.benchmark_group("verdict");
    for rules in [10u32, 10_000] {
        let (compiled, flows) = setup(rules);
        group.throughput(Throughput::Elements(flows.len() as u64));
        group.bench_function(format!("{rules}_rules"), |b| {
            b.iter(|| {
                let mut allowed = 0u32;
                for (src, dst, port, _) in &flows {
                    let d = compiled.verdict(
                        black_box(*src),
                        black_box(*dst),
                        6,
                        black_box(*port),
                        None,
                    );
                    allowed += u32::from(d.verdict == Verdict::Allow);
                }
                allowed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verdicts);
criterion_main!(benches);
