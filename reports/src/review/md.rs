//! The review as GitHub Markdown (a pull-request comment or a job summary).

use std::fmt::Write as _;

use super::model::*;
use super::risk_counts;
use super::term::{headline, probes_line, replay_line};

/// Table cells: pipes and newlines would break the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn code(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("`{}`", s.replace('`', "'"))
    }
}

fn flows(out: &mut String, title: &str, lines: &[FlowLine]) {
    let _ = writeln!(out, "\n### {title} ({})\n", lines.len());
    if lines.is_empty() {
        let _ = writeln!(out, "None.");
        return;
    }
    let _ = writeln!(out, "| flow | connections | detail |\n|---|---:|---|");
    for l in lines {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            code(&l.flow),
            l.connections.map_or_else(String::new, |c| c.to_string()),
            cell(&l.detail)
        );
    }
}

fn icon(s: Severity) -> &'static str {
    match s {
        Severity::Blocker => "🛑",
        Severity::Warning => "⚠️",
        Severity::Info => "ℹ️",
    }
}

pub fn render(r: &Review) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## cnpilot review\n");
    let verdict = if r.should_stop() {
        format!("🛑 **Stop:** {}", r.summary.stop_reasons.join("; "))
    } else {
        "✅ **OK:** nothing that should stop a pipeline".to_string()
    };
    let _ = writeln!(out, "{verdict}\n\n{}\n", headline(r));
    for (label, v) in [
        ("proposed", &r.proposed),
        ("current", &r.current),
        ("store", &r.stores),
    ] {
        if !v.is_empty() {
            let list: Vec<String> = v.iter().map(|s| code(s)).collect();
            let _ = writeln!(out, "- {label}: {}", list.join(", "));
        }
    }
    if let Some(p) = &r.replay {
        let _ = writeln!(out, "- {}", replay_line(p, r));
    }
    if let Some(p) = &r.probes {
        let _ = writeln!(out, "- {}", probes_line(p));
    }
    let counts = risk_counts(r);
    if !counts.is_empty() {
        let list: Vec<String> = counts
            .iter()
            .map(|(k, n)| format!("{} {} ×{n}", icon(k.severity()), k.label()))
            .collect();
        let _ = writeln!(out, "- risks: {}", list.join(", "));
    }
    for n in &r.notes {
        let _ = writeln!(out, "- _note: {n}_");
    }

    let _ = writeln!(out, "\n### Policies\n");
    for p in &r.policies {
        let _ = writeln!(out, "#### {} — {}\n", code(&p.object), p.status.label());
        let _ = writeln!(out, "File {}.", code(&format!("{}:{}", p.file, p.line)));
        if let Some(s) = &p.subject {
            let _ = write!(out, " Subject {}.", code(s));
        }
        if !p.blast_radius.is_empty() {
            let _ = write!(out, " Selector matches {}.", p.blast_radius.join(", "));
        }
        if let Some(b) = &p.blast_radius_store {
            let _ = write!(
                out,
                " In the store: {}.",
                if b.is_empty() {
                    "nothing".into()
                } else {
                    b.join(", ")
                }
            );
        }
        let _ = writeln!(out, "\n");
        for risk in &p.risks {
            let _ = writeln!(
                out,
                "- {} **{}**: {}",
                icon(risk.severity),
                risk.kind.label(),
                cell(&risk.message)
            );
        }
        let _ = writeln!(out, "| rule | | peers | ports | HTTP | evidence | store | risks |\n|---|---|---|---|---|---|---|---|");
        for rule in &p.rules {
            let path = rule.path.trim_start_matches("spec.");
            if rule.default_deny_only {
                let _ = writeln!(out, "| {} | | _default deny only_ | | | | | |", code(path));
                continue;
            }
            let store = rule.observed.as_ref().map_or_else(String::new, |o| {
                if o.flows == 0 {
                    "never hit".into()
                } else {
                    format!(
                        "{} flow(s), {} conn., {} .. {}",
                        o.flows, o.connections, o.first_seen, o.last_seen
                    )
                }
            });
            let risks: Vec<String> = rule
                .risks
                .iter()
                .map(|x| format!("{} {}: {}", icon(x.severity), x.kind.label(), x.message))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} {} | {} | {} | {} | {} | {} | {} |",
                code(path),
                rule.direction,
                if rule.new { "**new**" } else { "kept" },
                cell(&rule.peers.join("<br>")),
                cell(&if rule.ports.is_empty() {
                    "all".into()
                } else {
                    rule.ports.join(", ")
                }),
                cell(
                    &rule
                        .http
                        .iter()
                        .map(|h| code(h))
                        .collect::<Vec<_>>()
                        .join("<br>")
                ),
                cell(rule.evidence.as_deref().unwrap_or("")),
                cell(&store),
                cell(&risks.join("<br>"))
            );
        }
        if !p.diff.is_empty() {
            let _ = writeln!(
                out,
                "\n<details><summary>diff against current</summary>\n\n```diff"
            );
            for l in &p.diff {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out, "```\n\n</details>");
        }
        let _ = writeln!(out);
    }
    if !r.current_only.is_empty() {
        let _ = writeln!(
            out,
            "Current objects not in the proposal (left as they are): {}",
            r.current_only
                .iter()
                .map(|s| code(s))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if r.replay.is_some() {
        flows(&mut out, "Newly denied (allowed today)", &r.newly_denied);
        flows(&mut out, "Newly allowed (denied today)", &r.newly_allowed);
        if !r.unexpected_denials.is_empty() {
            flows(
                &mut out,
                "Denied without a listed reason",
                &r.unexpected_denials,
            );
        }
    }
    if let Some(p) = &r.probes {
        if !p.allowed_by_proposal.is_empty() {
            flows(
                &mut out,
                "Never-seen flows the proposal allows",
                &p.allowed_by_proposal,
            );
        }
    }
    if let Some(src) = &r.excluded_source {
        flows(
            &mut out,
            &format!("Kept denied / below --min-count, {src}"),
            &r.excluded,
        );
    }
    if !r.current_findings.is_empty() {
        let _ = writeln!(
            out,
            "\n### Findings on the current policies ({})\n",
            r.current_findings.len()
        );
        for f in &r.current_findings {
            let _ = writeln!(out, "- ⚠️ **one-sided**: {}", f.what);
            let _ = writeln!(out, "  - allowed by {}", code(&f.allowed_by));
            let _ = writeln!(out, "  - denied by {}", code(&f.denied_by));
            if f.observed_connections > 0 {
                let _ = writeln!(
                    out,
                    "  - {} observed connections denied",
                    f.observed_connections
                );
            }
            let _ = writeln!(out, "  - fix: {}", f.fix);
        }
    }
    out
}
