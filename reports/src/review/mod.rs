//! The review of a proposal: per policy and rule, its evidence (the
//! `cnpilot.io/*` annotations, and the store's flows when given), its blast
//! radius, what is new against the current policies, the risks; then the
//! flows the proposal newly denies or allows (replay), the flows it keeps
//! denied, the probes, and findings on the current policies alone.
//!
//! [`build`] computes a [`model::Review`]; [`term`], [`md`] and [`html`]
//! render it.

pub mod checks;
pub mod html;
pub mod md;
pub mod model;
pub mod rules;
pub mod term;

use std::collections::{BTreeMap, BTreeSet};

use cnpilot_learner::aggregate::FlowTable;
use cnpilot_recommender::proof::{probes, replay, Evaluators};
use cnpilot_recommender::synth::{self, Universe};
use cnpilot_recommender::{CompiledPolicy, PolicySet};
use serde_json::Value;

use crate::diff::{self, documents_of, Change};
use crate::explain::evidence_key;
use model::*;

/// What a review is computed from.
pub struct Input<'a> {
    pub proposed: &'a PolicySet,
    pub proposed_dirs: Vec<String>,
    /// Empty when there is no `--current`.
    pub current: &'a PolicySet,
    pub current_dirs: Vec<String>,
    pub table: Option<&'a FlowTable>,
    pub stores: Vec<String>,
    /// `DIR/.cnpilot/report.json` of `cnpilot recommend`, if present. Read
    /// loosely: a missing field means "not known".
    pub saved: Option<Value>,
    /// Used when the exclusions must be recomputed from the store.
    pub options: synth::Options,
}

/// `src -> dst TCP/8080 [GET /x]` from a serialized `FlowRef`.
fn saved_flow(v: &Value) -> (String, Option<u64>) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?");
    let mut text = format!("{} -> {} {}", s("src"), s("dst"), s("port"));
    if let Some(h) = v.get("http").and_then(Value::as_str) {
        text.push(' ');
        text.push_str(h);
    }
    (text, v.get("connections").and_then(Value::as_u64))
}

/// A serialized `Disposition` as one line.
fn saved_disposition(v: &Value) -> String {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("excluded");
    let rules: Vec<&str> = v
        .get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let extra = ["rule", "what", "min_count"].iter().find_map(|k| {
        v.get(*k)
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
    });
    match (rules.is_empty(), extra) {
        (false, _) => format!("{kind}: {}", rules.join("; ")),
        (true, Some(x)) => format!("{kind}: {x}"),
        (true, None) => kind.to_string(),
    }
}

fn saved_lines(v: Option<&Value>, detail: &dyn Fn(&Value) -> String) -> Vec<FlowLine> {
    v.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    let flow_v = item.get("flow").unwrap_or(item);
                    let (flow, connections) = match flow_v {
                        Value::String(s) => (s.clone(), None),
                        other => saved_flow(other),
                    };
                    FlowLine {
                        flow,
                        connections,
                        detail: detail(item),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn line_of(f: &synth::FlowRef, detail: String) -> FlowLine {
    FlowLine {
        flow: f.to_string(),
        connections: Some(f.connections),
        detail,
    }
}

/// Compute the review.
pub fn build(input: &Input<'_>) -> Review {
    let mut review = Review {
        proposed: input.proposed_dirs.clone(),
        current: input.current_dirs.clone(),
        stores: input.stores.clone(),
        ..Review::default()
    };
    let has_current = !input.current.policies.is_empty();

    // What is new: objects by (kind, namespace, name), rules by content.
    let current_docs = documents_of(input.current);
    let proposed_docs = documents_of(input.proposed);
    let object_diff = diff::diff(&current_docs, &proposed_docs, 3).ok();
    let current_rules: BTreeSet<(u8, String)> = input
        .current
        .policies
        .iter()
        .flat_map(|p| rules::rules_of(&p.policy))
        .map(|r| (r.direction as u8, r.json))
        .collect();
    let proposed_keys: BTreeSet<String> = proposed_docs.iter().map(|d| d.key.to_string()).collect();
    review.current_only = current_docs
        .iter()
        .map(|d| d.key.to_string())
        .filter(|k| !proposed_keys.contains(k))
        .collect();

    // The store: rule hits, exclusions, replay, probes.
    let universe = input.table.map(Universe::from_table);
    let hits = match (input.table, &universe) {
        (Some(t), Some(u)) => {
            let alone = CompiledPolicy::compile(
                input.proposed,
                &u.identity_inputs(),
                Some(&u.node_input()),
            );
            Some(rules::hits(t, u, &alone))
        }
        _ => None,
    };
    let saved = input.saved.as_ref();
    let saved_excluded = saved.and_then(|s| s.get("excluded"));
    let mut recomputed = None;
    if let Some(table) = input.table {
        recomputed = Some(synth::recommend(table, input.current, &input.options));
    }
    if let Some(ex) = saved_excluded {
        review.excluded = saved_lines(Some(ex), &|item| {
            item.get("disposition")
                .map_or_else(String::new, saved_disposition)
        });
        review.excluded_source = Some("from .cnpilot/report.json".into());
    } else if let Some(rec) = &recomputed {
        review.excluded = rec
            .excluded
            .iter()
            .map(|e| line_of(&e.flow, e.disposition.describe()))
            .collect();
        review.excluded_source = Some("recomputed from --store".into());
    }
    let listed: BTreeSet<String> = review.excluded.iter().map(|l| l.flow.clone()).collect();
    if let (Some(table), Some(u), Some(rec)) = (input.table, &universe, &recomputed) {
        let ev = Evaluators::new(u, input.current, input.proposed);
        let r = replay::replay(table, u, &ev, &rec.excluded);
        review.replay = Some(ReplaySummary {
            flows: r.flows,
            connections: r.connections,
            allowed_flows: r.allowed_flows,
            allowed_connections: r.allowed_connections,
        });
        review.newly_denied = r
            .denied
            .iter()
            .filter(|d| r.newly_denied.contains(&d.flow))
            .map(|d| {
                // Listed exclusions still break a flow that works today:
                // they stay here (a person must accept them), marked.
                let listed_note = if listed.contains(&d.flow.to_string()) {
                    " [listed: kept denied on purpose]"
                } else {
                    ""
                };
                line_of(&d.flow, format!("{}{listed_note}", d.reason))
            })
            .collect();
        review.newly_allowed = r
            .newly_allowed
            .iter()
            .map(|f| line_of(f, "allowed now by the proposal".into()))
            .collect();
        review.unexpected_denials = r
            .denied
            .iter()
            .filter(|d| !listed.contains(&d.flow.to_string()))
            .map(|d| line_of(&d.flow, d.reason.clone()))
            .collect();
        let p = probes::probes(table, u, &ev);
        review.probes = Some(ProbeSummary {
            total: p.total,
            denied: p.denied,
            allowed_by_proposal: p
                .allowed_by_proposal
                .iter()
                .map(|pr| FlowLine {
                    flow: pr.flow.clone(),
                    connections: None,
                    detail: pr.allowed_by.clone(),
                })
                .collect(),
            allowed_otherwise: p.allowed_otherwise.len(),
        });
    } else if let Some(s) = saved {
        // No store: what `recommend` proved when it wrote the proposal.
        let rp = s.get("replay");
        let num = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        if let Some(rp) = rp {
            review.replay = Some(ReplaySummary {
                flows: num(Some(rp), "flows") as usize,
                connections: num(Some(rp), "connections"),
                allowed_flows: num(Some(rp), "allowed_flows") as usize,
                allowed_connections: num(Some(rp), "allowed_connections"),
            });
            review.newly_denied =
                saved_lines(rp.get("newly_denied"), &|_| "from report.json".into());
            review.newly_allowed =
                saved_lines(rp.get("newly_allowed"), &|_| "from report.json".into());
            review.unexpected_denials = rp
                .get("denied")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter(|d| d.get("expected").is_none_or(Value::is_null))
                        .map(|d| {
                            let (flow, connections) = saved_flow(d.get("flow").unwrap_or(d));
                            let reason = d.get("reason").and_then(Value::as_str).unwrap_or("");
                            FlowLine {
                                flow,
                                connections,
                                detail: reason.into(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        if let Some(pb) = s.get("probes") {
            review.probes = Some(ProbeSummary {
                total: num(Some(pb), "total") as usize,
                denied: num(Some(pb), "denied") as usize,
                allowed_by_proposal: saved_lines(pb.get("allowed_by_proposal"), &|item| {
                    item.get("allowed_by")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                }),
                allowed_otherwise: pb
                    .get("allowed_otherwise")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            });
        }
        review.notes.push("no --store: replay and probes are those `cnpilot recommend` saved in .cnpilot/report.json".into());
    } else {
        review.notes.push("no --store and no .cnpilot/report.json: evidence comes from the annotations only; replay, probes and kept-denied flows are not known".into());
    }

    // Shadowed HTTP rules: against the store's workloads, or stand-ins for
    // the policies' own selectors.
    let check_universe = universe
        .clone()
        .unwrap_or_else(|| checks::synthetic_universe(&[input.proposed, input.current]));
    let shadowed = checks::shadowed_l7(input.proposed, input.current, &check_universe);

    for p in &input.proposed.policies {
        let ann = &p.policy.metadata.annotations;
        let ns = p.policy.scope_namespace();
        let object = match ns {
            Some(n) if p.policy.kind.as_str() == "CiliumNetworkPolicy" => {
                format!("{} {n}/{}", p.policy.kind.as_str(), p.policy.metadata.name)
            }
            _ => format!("{} {}", p.policy.kind.as_str(), p.policy.metadata.name),
        };
        let obj_diff = object_diff
            .as_ref()
            .and_then(|d| d.objects.iter().find(|o| o.key.to_string() == object));
        let status = match obj_diff.map(|o| o.change) {
            Some(Change::Added) | None if !has_current => Status::New,
            Some(Change::Added) => Status::New,
            Some(_) => Status::Changed,
            None => Status::Unchanged,
        };
        let blast_radius: Vec<String> = ann
            .get("cnpilot.io/blast-radius")
            .map(|b| {
                b.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let blast_radius_store = universe.as_ref().map(|u| checks::selected_workloads(p, u));
        let mut risks = Vec::new();
        let wide = blast_radius_store
            .as_ref()
            .filter(|b| b.len() > 1)
            .or(Some(&blast_radius).filter(|b| b.len() > 1));
        if let Some(w) = wide {
            risks.push(Risk::new(
                RiskKind::BlastRadius,
                format!(
                    "the selector ({}) matches {} workloads: {}",
                    checks::subject_text(p),
                    w.len(),
                    w.join(", ")
                ),
            ));
        }
        let mut rule_reviews = Vec::new();
        for r in rules::rules_of(&p.policy) {
            let (peers, ports, http) = rules::describe(&r.peer, ns);
            let default_deny_only = rules::is_empty_rule(&r.peer);
            let evidence = ann.get(&evidence_key(&r.path)).cloned();
            let key = rules::key_for(p, &r.path);
            let observed = hits
                .as_ref()
                .map(|h| h.get(&key).cloned().unwrap_or_default());
            let mut rr = Vec::new();
            if !default_deny_only {
                if r.direction == cnpilot_bpf::maps::Direction::Egress
                    && rules::allows_world(&r.peer)
                {
                    rr.push(Risk::new(
                        RiskKind::WorldEgress,
                        format!("allows egress outside the cluster: {}", peers.join(", ")),
                    ));
                }
                let conns = observed
                    .as_ref()
                    .map(|o| o.connections)
                    .or_else(|| evidence.as_deref().and_then(rules::annotated_connections));
                match (&observed, conns) {
                    (Some(o), _) if o.flows == 0 => rr.push(Risk::new(
                        RiskKind::NeverHit,
                        "no flow of the store is decided by this rule".into(),
                    )),
                    (_, Some(c)) if c < FEW_CONNECTIONS => rr.push(Risk::new(
                        RiskKind::FewFlows,
                        format!(
                            "learned from {c} connection(s) only (fewer than {FEW_CONNECTIONS})"
                        ),
                    )),
                    _ => {}
                }
                if let Some(msg) = shadowed.get(&key) {
                    rr.push(Risk::new(RiskKind::ShadowedL7, msg.clone()));
                }
            }
            rule_reviews.push(RuleReview {
                new: !current_rules.contains(&(r.direction as u8, r.json.clone())),
                path: r.path,
                direction: if r.direction == cnpilot_bpf::maps::Direction::Egress {
                    "egress"
                } else {
                    "ingress"
                },
                peers,
                ports,
                http,
                evidence,
                observed,
                default_deny_only,
                risks: rr,
            });
        }
        review.policies.push(PolicyReview {
            object,
            file: p.file.clone(),
            line: p.line,
            subject: ann.get("cnpilot.io/subject").cloned(),
            blast_radius,
            blast_radius_store,
            status,
            diff: obj_diff
                .filter(|o| o.change == Change::Changed)
                .map(|o| o.lines.clone())
                .unwrap_or_default(),
            rules: rule_reviews,
            risks,
        });
    }

    if has_current {
        review.current_findings = checks::one_sided_findings(input.current, input.table);
    }
    summarize(&mut review);
    review
}

fn summarize(r: &mut Review) {
    let risks: Vec<&Risk> = r
        .policies
        .iter()
        .flat_map(PolicyReview::all_risks)
        .collect();
    let mut by_kind: BTreeMap<RiskKind, usize> = BTreeMap::new();
    for risk in &risks {
        *by_kind.entry(risk.kind).or_default() += 1;
    }
    let mut stop = Vec::new();
    if !r.unexpected_denials.is_empty() {
        stop.push(format!(
            "{} observed flow(s) denied without a listed reason (replay)",
            r.unexpected_denials.len()
        ));
    }
    if !r.newly_denied.is_empty() {
        stop.push(format!(
            "{} flow(s) allowed today would be denied",
            r.newly_denied.len()
        ));
    }
    if let Some(n) = by_kind.get(&RiskKind::ShadowedL7) {
        stop.push(format!(
            "{n} HTTP rule set(s) shadowed by a plain L3/L4 allow"
        ));
    }
    if let Some(p) = &r.probes {
        if !p.allowed_by_proposal.is_empty() {
            stop.push(format!(
                "{} never-seen flow(s) allowed by the proposal (probes)",
                p.allowed_by_proposal.len()
            ));
        }
    }
    r.summary = Summary {
        policies: r.policies.len(),
        new_policies: r
            .policies
            .iter()
            .filter(|p| p.status == Status::New)
            .count(),
        changed_policies: r
            .policies
            .iter()
            .filter(|p| p.status == Status::Changed)
            .count(),
        rules: r
            .policies
            .iter()
            .map(|p| p.rules.iter().filter(|x| !x.default_deny_only).count())
            .sum(),
        risks: risks.len(),
        blockers: risks
            .iter()
            .filter(|x| x.severity == Severity::Blocker)
            .count(),
        stop_reasons: stop,
    };
}

/// Risk counts by kind, for summaries.
pub fn risk_counts(r: &Review) -> BTreeMap<RiskKind, usize> {
    let mut out = BTreeMap::new();
    for risk in r.policies.iter().flat_map(PolicyReview::all_risks) {
        *out.entry(risk.kind).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests;
