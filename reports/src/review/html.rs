//! The review as one self-contained HTML file: inline CSS, no external
//! URL, no script (diffs fold with `<details>`), readable when printed.

use std::fmt::Write as _;

use super::model::*;
use super::risk_counts;
use super::term::{probes_line, replay_line};

/// Escape text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root{--fg:#1f2328;--mute:#656d76;--line:#d0d7de;--bg:#f6f8fa;--red:#cf222e;--redbg:#ffebe9;--yel:#9a6700;--yelbg:#fff8c5;--grn:#1a7f37;--grnbg:#dafbe1;--blu:#0969da;--blubg:#ddf4ff}
*{box-sizing:border-box}
body{font:14px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:var(--fg);margin:0;background:#fff}
main{max-width:1200px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:0}
code,.mono{font:12px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.sub{color:var(--mute);margin:0 0 16px}
.verdict{padding:12px 16px;border-radius:6px;font-weight:600;margin:16px 0}
.verdict.ok{background:var(--grnbg);color:var(--grn);border:1px solid #aceebb}
.verdict.stop{background:var(--redbg);color:var(--red);border:1px solid #ffcecb}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:130px;background:var(--bg)}
.card b{display:block;font-size:22px}.card span{color:var(--mute);font-size:12px}
.card.bad b{color:var(--red)}.card.warn b{color:var(--yel)}.card.good b{color:var(--grn)}
.facts{margin:8px 0;padding-left:18px;color:var(--mute)}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:1px 8px;border-radius:10px;margin:1px 4px 1px 0;white-space:nowrap;border:1px solid transparent}
.b-blocker{background:var(--redbg);color:var(--red);border-color:#ffcecb}
.b-warning{background:var(--yelbg);color:var(--yel);border-color:#f5e0a0}
.b-info{background:var(--bg);color:var(--mute);border-color:var(--line)}
.b-new{background:var(--grnbg);color:var(--grn)}.b-changed{background:var(--blubg);color:var(--blu)}.b-unchanged{background:var(--bg);color:var(--mute)}
.b-kept{background:var(--bg);color:var(--mute)}
section.policy{border:1px solid var(--line);border-radius:6px;margin:16px 0;overflow:hidden}
section.policy>header{background:var(--bg);padding:10px 14px;border-bottom:1px solid var(--line)}
section.policy>header p{margin:4px 0 0;color:var(--mute);font-size:13px}
.risks{margin:8px 14px;padding:0;list-style:none}.risks li{margin:4px 0}
table{border-collapse:collapse;width:100%;font-size:13px}
table.rules{table-layout:fixed}table.rules td{overflow-wrap:anywhere}
th,td{border-top:1px solid var(--line);padding:6px 10px;text-align:left;vertical-align:top}
th{background:#fff;color:var(--mute);font-weight:600;font-size:12px}
td.num{text-align:right;white-space:nowrap}
tr.dd td{color:var(--mute);font-style:italic}
.ev{color:var(--mute);font-size:12px}
details{margin:8px 14px 12px}summary{cursor:pointer;color:var(--blu)}
pre.diff{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:8px 12px;overflow-x:auto;margin:6px 0}
.add{color:var(--grn)}.del{color:var(--red)}.hunk{color:var(--blu)}
.list{border:1px solid var(--line);border-radius:6px;overflow:hidden}
.list table th{background:var(--bg)}
.none{color:var(--mute);font-style:italic}
.finding{border:1px solid #f5e0a0;background:#fffdf0;border-radius:6px;padding:10px 14px;margin:10px 0}
.finding p{margin:3px 0}
@media print{.cards{break-inside:avoid}section.policy{break-inside:avoid}}
"#;

fn badge_severity(s: Severity) -> &'static str {
    match s {
        Severity::Blocker => "b-blocker",
        Severity::Warning => "b-warning",
        Severity::Info => "b-info",
    }
}

fn card(out: &mut String, value: &str, label: &str, class: &str) {
    let _ = write!(
        out,
        "<div class=\"card {class}\"><b>{}</b><span>{}</span></div>",
        esc(value),
        esc(label)
    );
}

fn flow_table(out: &mut String, title: &str, lines: &[FlowLine], empty: &str) {
    let _ = write!(
        out,
        "<h2>{} <span class=\"badge b-info\">{}</span></h2>",
        esc(title),
        lines.len()
    );
    if lines.is_empty() {
        let _ = write!(out, "<p class=\"none\">{}</p>", esc(empty));
        return;
    }
    let _ = write!(
        out,
        "<div class=\"list\"><table><tr><th>flow</th><th>connections</th><th>detail</th></tr>"
    );
    for l in lines {
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&l.flow),
            l.connections.map_or_else(String::new, |c| c.to_string()),
            esc(&l.detail)
        );
    }
    let _ = write!(out, "</table></div>");
}

fn policy_section(out: &mut String, p: &PolicyReview) {
    let status_class = match p.status {
        Status::New => "b-new",
        Status::Changed => "b-changed",
        Status::Unchanged => "b-unchanged",
    };
    let _ = write!(
        out,
        "<section class=\"policy\"><header><h3><code>{}</code> <span class=\"badge {status_class}\">{}</span>",
        esc(&p.object),
        p.status.label()
    );
    for r in p.all_risks() {
        let _ = write!(
            out,
            "<span class=\"badge {}\">{}</span>",
            badge_severity(r.severity),
            esc(r.kind.label())
        );
    }
    let _ = write!(
        out,
        "</h3><p><span class=\"mono\">{}:{}</span>",
        esc(&p.file),
        p.line
    );
    if let Some(s) = &p.subject {
        let _ = write!(out, " · subject <b>{}</b>", esc(s));
    }
    if !p.blast_radius.is_empty() {
        let _ = write!(
            out,
            " · selector matches {}",
            esc(&p.blast_radius.join(", "))
        );
    }
    if let Some(b) = &p.blast_radius_store {
        let text = if b.is_empty() {
            "nothing".to_string()
        } else {
            b.join(", ")
        };
        let _ = write!(out, " · in the store: {}", esc(&text));
    }
    let _ = write!(out, "</p></header>");
    if !p.risks.is_empty() {
        let _ = write!(out, "<ul class=\"risks\">");
        for r in &p.risks {
            let _ = write!(
                out,
                "<li><span class=\"badge {}\">{}</span>{}</li>",
                badge_severity(r.severity),
                esc(r.kind.label()),
                esc(&r.message)
            );
        }
        let _ = write!(out, "</ul>");
    }
    let _ = write!(out, "<table class=\"rules\"><colgroup><col style=\"width:9%\"><col style=\"width:19%\"><col style=\"width:9%\"><col style=\"width:16%\"><col style=\"width:31%\"><col style=\"width:16%\"></colgroup><tr><th>rule</th><th>peers</th><th>ports</th><th>HTTP</th><th>evidence</th><th>risks</th></tr>");
    for rule in &p.rules {
        let path = rule.path.trim_start_matches("spec.");
        if rule.default_deny_only {
            let _ = write!(out, "<tr class=\"dd\"><td class=\"mono\">{}</td><td colspan=\"5\">empty rule: keeps {} in default deny, allows nothing</td></tr>", esc(path), rule.direction);
            continue;
        }
        let new = if rule.new {
            "<span class=\"badge b-new\">new</span>"
        } else {
            "<span class=\"badge b-kept\">kept</span>"
        };
        let arrow = if rule.direction == "egress" {
            "to"
        } else {
            "from"
        };
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}<br>{new}</td><td>{arrow} {}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>",
            esc(path),
            rule.peers.iter().map(|x| esc(x)).collect::<Vec<_>>().join("<br>"),
            if rule.ports.is_empty() { "all".to_string() } else { esc(&rule.ports.join(", ")) },
            rule.http.iter().map(|x| esc(x)).collect::<Vec<_>>().join("<br>")
        );
        if let Some(e) = &rule.evidence {
            let _ = write!(out, "<div class=\"ev\">{}</div>", esc(e));
        }
        if let Some(o) = &rule.observed {
            if o.flows > 0 {
                let _ = write!(
                    out,
                    "<div>store: <b>{}</b> connections in {} flow(s), {} .. {}</div>",
                    o.connections,
                    o.flows,
                    esc(&o.first_seen),
                    esc(&o.last_seen)
                );
            }
        }
        let _ = write!(out, "</td><td>");
        for r in &rule.risks {
            let _ = write!(
                out,
                "<div><span class=\"badge {}\">{}</span>{}</div>",
                badge_severity(r.severity),
                esc(r.kind.label()),
                esc(&r.message)
            );
        }
        let _ = write!(out, "</td></tr>");
    }
    let _ = write!(out, "</table>");
    if !p.diff.is_empty() {
        let _ = write!(
            out,
            "<details><summary>diff against current ({} lines)</summary><pre class=\"diff mono\">",
            p.diff.len()
        );
        for l in &p.diff {
            let class = match l.as_bytes().first() {
                Some(b'+') => "add",
                Some(b'-') => "del",
                Some(b'@') => "hunk",
                _ => "",
            };
            let _ = writeln!(out, "<span class=\"{class}\">{}</span>", esc(l));
        }
        let _ = write!(out, "</pre></details>");
    }
    let _ = write!(out, "</section>");
}

pub fn render(r: &Review) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>cnpilot review</title><style>{CSS}</style></head><body><main>"
    );
    let _ = write!(out, "<h1>cnpilot review</h1><p class=\"sub\">");
    for (label, v) in [
        ("proposed", &r.proposed),
        ("current", &r.current),
        ("store", &r.stores),
    ] {
        if !v.is_empty() {
            let _ = write!(out, "{label} <code>{}</code> &nbsp; ", esc(&v.join(", ")));
        }
    }
    let _ = write!(out, "</p>");
    if r.should_stop() {
        let _ = write!(
            out,
            "<div class=\"verdict stop\">Stop: {}</div>",
            esc(&r.summary.stop_reasons.join("; "))
        );
    } else {
        let _ = write!(
            out,
            "<div class=\"verdict ok\">OK: nothing that should stop a pipeline</div>"
        );
    }
    let s = &r.summary;
    let _ = write!(out, "<div class=\"cards\">");
    card(&mut out, &s.policies.to_string(), "proposed policies", "");
    card(
        &mut out,
        &format!("{} / {}", s.new_policies, s.changed_policies),
        "new / changed",
        "",
    );
    card(&mut out, &s.rules.to_string(), "rules", "");
    card(
        &mut out,
        &s.risks.to_string(),
        "risk notes",
        if s.risks > 0 { "warn" } else { "good" },
    );
    card(
        &mut out,
        &s.blockers.to_string(),
        "blocking",
        if s.blockers > 0 { "bad" } else { "good" },
    );
    if let Some(p) = &r.replay {
        card(
            &mut out,
            &format!("{}/{}", p.allowed_flows, p.flows),
            "observed flows allowed",
            "",
        );
        card(
            &mut out,
            &r.newly_denied.len().to_string(),
            "newly denied",
            if r.newly_denied.is_empty() {
                "good"
            } else {
                "bad"
            },
        );
        card(
            &mut out,
            &r.newly_allowed.len().to_string(),
            "newly allowed",
            "",
        );
    }
    if let Some(p) = &r.probes {
        let bad = !p.allowed_by_proposal.is_empty();
        card(
            &mut out,
            &format!("{}/{}", p.denied, p.total),
            "probes denied",
            if bad { "bad" } else { "good" },
        );
    }
    card(
        &mut out,
        &r.current_findings.len().to_string(),
        "current: one-sided rules",
        if r.current_findings.is_empty() {
            "good"
        } else {
            "warn"
        },
    );
    let _ = write!(out, "</div><ul class=\"facts\">");
    if let Some(p) = &r.replay {
        let _ = write!(out, "<li>{}</li>", esc(&replay_line(p, r)));
    }
    if let Some(p) = &r.probes {
        let _ = write!(out, "<li>{}</li>", esc(&probes_line(p)));
    }
    let counts = risk_counts(r);
    if !counts.is_empty() {
        let _ = write!(out, "<li>risks: ");
        for (k, n) in &counts {
            let _ = write!(
                out,
                "<span class=\"badge {}\">{} ×{n}</span>",
                badge_severity(k.severity()),
                esc(k.label())
            );
        }
        let _ = write!(out, "</li>");
    }
    for n in &r.notes {
        let _ = write!(out, "<li><i>{}</i></li>", esc(n));
    }
    let _ = write!(out, "</ul><h2>Policies</h2>");
    for p in &r.policies {
        policy_section(&mut out, p);
    }
    if !r.current_only.is_empty() {
        let _ = write!(
            out,
            "<p class=\"none\">Current objects not in the proposal (left as they are): {}</p>",
            esc(&r.current_only.join(", "))
        );
    }
    if r.replay.is_some() {
        flow_table(
            &mut out,
            "Newly denied (allowed today)",
            &r.newly_denied,
            "None: every flow allowed today stays allowed.",
        );
        flow_table(
            &mut out,
            "Newly allowed (denied today)",
            &r.newly_allowed,
            "None.",
        );
        if !r.unexpected_denials.is_empty() {
            flow_table(
                &mut out,
                "Denied without a listed reason",
                &r.unexpected_denials,
                "None.",
            );
        }
    }
    if let Some(p) = &r.probes {
        if !p.allowed_by_proposal.is_empty() {
            flow_table(
                &mut out,
                "Never-seen flows the proposal allows",
                &p.allowed_by_proposal,
                "None.",
            );
        }
    }
    if let Some(src) = &r.excluded_source {
        flow_table(
            &mut out,
            &format!("Kept denied / below --min-count ({src})"),
            &r.excluded,
            "None: every observed flow is allowed.",
        );
    }
    if !r.current_findings.is_empty() {
        let _ = write!(
            out,
            "<h2>Findings on the current policies <span class=\"badge b-warning\">{}</span></h2>",
            r.current_findings.len()
        );
        for f in &r.current_findings {
            let _ = write!(out, "<div class=\"finding\"><p><span class=\"badge b-warning\">one-sided</span><b>{}</b></p>", esc(&f.what));
            let _ = write!(
                out,
                "<p>allowed by <code>{}</code></p><p>denied by <code>{}</code></p>",
                esc(&f.allowed_by),
                esc(&f.denied_by)
            );
            if f.observed_connections > 0 {
                let _ = write!(
                    out,
                    "<p>{} observed connections denied</p>",
                    f.observed_connections
                );
            }
            let _ = write!(out, "<p><b>fix:</b> {}</p></div>", esc(&f.fix));
        }
    }
    let _ = writeln!(out, "</main></body></html>");
    out
}
