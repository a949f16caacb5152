//! The review for a terminal: aligned, colour only when asked (a tty).

use std::fmt::Write as _;

use super::model::*;
use super::risk_counts;

struct Paint(bool);

impl Paint {
    fn code(&self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(&self, t: &str) -> String {
        self.code("1", t)
    }
    fn red(&self, t: &str) -> String {
        self.code("31", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.code("33", t)
    }
    fn green(&self, t: &str) -> String {
        self.code("32", t)
    }
    fn dim(&self, t: &str) -> String {
        self.code("2", t)
    }
    fn severity(&self, s: Severity, t: &str) -> String {
        match s {
            Severity::Blocker => self.red(t),
            Severity::Warning => self.yellow(t),
            Severity::Info => self.dim(t),
        }
    }
}

/// Summary lines shared by the top of every format.
pub fn headline(r: &Review) -> String {
    let s = &r.summary;
    format!(
        "{} proposed polic{} ({} new, {} changed), {} rules, {} risk note(s) ({} blocking)",
        s.policies,
        if s.policies == 1 { "y" } else { "ies" },
        s.new_policies,
        s.changed_policies,
        s.rules,
        s.risks,
        s.blockers
    )
}

pub fn replay_line(p: &ReplaySummary, r: &Review) -> String {
    format!(
        "replay: {}/{} observed flows allowed ({}/{} connections); {} newly denied, {} newly allowed, {} denied without a listed reason",
        p.allowed_flows,
        p.flows,
        p.allowed_connections,
        p.connections,
        r.newly_denied.len(),
        r.newly_allowed.len(),
        r.unexpected_denials.len()
    )
}

pub fn probes_line(p: &ProbeSummary) -> String {
    format!(
        "probes: {} never-seen flows, {} denied; {} allowed by the proposal, {} allowed by current policy or no policy",
        p.total,
        p.denied,
        p.allowed_by_proposal.len(),
        p.allowed_otherwise
    )
}

fn flows(out: &mut String, paint: &Paint, title: &str, lines: &[FlowLine], empty: &str) {
    let _ = writeln!(out, "\n{}", paint.bold(title));
    if lines.is_empty() {
        let _ = writeln!(out, "  {}", paint.dim(empty));
        return;
    }
    let width = lines
        .iter()
        .map(|l| l.flow.len())
        .max()
        .unwrap_or(0)
        .min(70);
    for l in lines {
        let conns = l.connections.map_or_else(String::new, |c| format!("x{c}"));
        let _ = writeln!(out, "  {:<width$}  {:>6}  {}", l.flow, conns, l.detail);
    }
}

/// Render for a terminal; `color` adds ANSI colours.
pub fn render(r: &Review, color: bool) -> String {
    let paint = Paint(color);
    let mut out = String::new();
    let _ = writeln!(out, "{} {}", paint.bold("cnpilot review:"), headline(r));
    let place = |label: &str, v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("{label}: {}   ", v.join(", "))
        }
    };
    let _ = writeln!(
        out,
        "{}{}{}",
        place("proposed", &r.proposed),
        place("current", &r.current),
        place("store", &r.stores)
    );
    if let Some(p) = &r.replay {
        let _ = writeln!(out, "{}", replay_line(p, r));
    }
    if let Some(p) = &r.probes {
        let _ = writeln!(out, "{}", probes_line(p));
    }
    let counts = risk_counts(r);
    if !counts.is_empty() {
        let list: Vec<String> = counts
            .iter()
            .map(|(k, n)| paint.severity(k.severity(), &format!("{} x{n}", k.label())))
            .collect();
        let _ = writeln!(out, "risks: {}", list.join(", "));
    }
    if !r.current_findings.is_empty() {
        let _ = writeln!(
            out,
            "current policies: {} one-sided rule(s)",
            r.current_findings.len()
        );
    }
    if r.should_stop() {
        let _ = writeln!(
            out,
            "{} {}",
            paint.red("STOP:"),
            r.summary.stop_reasons.join("; ")
        );
    } else {
        let _ = writeln!(
            out,
            "{}",
            paint.green("OK: nothing that should stop a pipeline")
        );
    }
    for note in &r.notes {
        let _ = writeln!(out, "{}", paint.dim(&format!("note: {note}")));
    }

    for p in &r.policies {
        let _ = writeln!(
            out,
            "\n{} [{}]  {}",
            paint.bold(&format!("== {}", p.object)),
            p.status.label(),
            paint.dim(&format!("{}:{}", p.file, p.line))
        );
        let mut who = Vec::new();
        if let Some(s) = &p.subject {
            who.push(format!("subject {s}"));
        }
        if !p.blast_radius.is_empty() {
            who.push(format!("selector matches {}", p.blast_radius.join(", ")));
        }
        if let Some(b) = &p.blast_radius_store {
            who.push(format!(
                "in the store: {}",
                if b.is_empty() {
                    "nothing".into()
                } else {
                    b.join(", ")
                }
            ));
        }
        if !who.is_empty() {
            let _ = writeln!(out, "   {}", who.join("; "));
        }
        for risk in &p.risks {
            let _ = writeln!(
                out,
                "   {} {}",
                paint.severity(risk.severity, &format!("! {}:", risk.kind.label())),
                risk.message
            );
        }
        for rule in &p.rules {
            let path = rule.path.trim_start_matches("spec.");
            if rule.default_deny_only {
                let _ = writeln!(
                    out,
                    "   {:<12} {}",
                    path,
                    paint.dim("(empty rule: default deny in this direction)")
                );
                continue;
            }
            let arrow = if rule.direction == "egress" {
                "to"
            } else {
                "from"
            };
            let ports = if rule.ports.is_empty() {
                "all ports".to_string()
            } else {
                rule.ports.join(",")
            };
            let new = if rule.new {
                paint.green("new")
            } else {
                paint.dim("kept")
            };
            let _ = writeln!(
                out,
                "   {:<12} {}  {arrow} {}  {ports}",
                path,
                new,
                rule.peers.join(" | ")
            );
            for h in &rule.http {
                // DNS entries name themselves; the others are HTTP rules.
                let label = if h.starts_with("dns:") { "" } else { "http " };
                let _ = writeln!(out, "   {:<12}   {label}{h}", "");
            }
            if let Some(e) = &rule.evidence {
                let _ = writeln!(out, "   {:<12}   evidence: {e}", "");
            }
            if let Some(o) = &rule.observed {
                if o.flows > 0 {
                    let _ = writeln!(
                        out,
                        "   {:<12}   store:    {} flow(s), {} connections/requests, {} .. {}",
                        "", o.flows, o.connections, o.first_seen, o.last_seen
                    );
                }
            }
            for risk in &rule.risks {
                let _ = writeln!(
                    out,
                    "   {:<12}   {} {}",
                    "",
                    paint.severity(risk.severity, &format!("! {}:", risk.kind.label())),
                    risk.message
                );
            }
        }
        if !p.diff.is_empty() {
            let _ = writeln!(out, "   diff against current:");
            for l in &p.diff {
                let colored = match l.as_bytes().first() {
                    Some(b'+') => paint.green(l),
                    Some(b'-') => paint.red(l),
                    _ => l.clone(),
                };
                let _ = writeln!(out, "     {colored}");
            }
        }
    }
    if !r.current_only.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            paint.bold("Current objects not in the proposal (left as they are)")
        );
        for o in &r.current_only {
            let _ = writeln!(out, "  {o}");
        }
    }
    if r.replay.is_some() {
        flows(
            &mut out,
            &paint,
            "Newly denied (allowed today)",
            &r.newly_denied,
            "none",
        );
        flows(
            &mut out,
            &paint,
            "Newly allowed (denied today)",
            &r.newly_allowed,
            "none",
        );
        if !r.unexpected_denials.is_empty() {
            flows(
                &mut out,
                &paint,
                "Denied without a listed reason",
                &r.unexpected_denials,
                "none",
            );
        }
    }
    if let Some(p) = &r.probes {
        if !p.allowed_by_proposal.is_empty() {
            flows(
                &mut out,
                &paint,
                "Never-seen flows the proposal allows",
                &p.allowed_by_proposal,
                "none",
            );
        }
    }
    if let Some(src) = &r.excluded_source {
        flows(
            &mut out,
            &paint,
            &format!("Kept denied / below --min-count ({src})"),
            &r.excluded,
            "none",
        );
    }
    if !r.current_findings.is_empty() {
        let _ = writeln!(out, "\n{}", paint.bold("Findings on the current policies"));
        for f in &r.current_findings {
            let seen = if f.observed_connections > 0 {
                format!(" ({} observed connections denied)", f.observed_connections)
            } else {
                String::new()
            };
            let _ = writeln!(out, "  {} {}{seen}", paint.yellow("! one-sided:"), f.what);
            let _ = writeln!(out, "      allowed by {}", f.allowed_by);
            let _ = writeln!(out, "      denied by  {}", f.denied_by);
            let _ = writeln!(out, "      fix: {}", f.fix);
        }
    }
    out
}
