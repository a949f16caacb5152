//! Checks that need more than one field, made after parsing (single values
//! check themselves while they deserialize).

use super::{
    CidrRule, CiliumPolicy, IcmpRule, PolicyKind, PortProtocol, PortRule, PortSpec, Protocol, Rule,
};

pub(crate) struct Problem {
    pub message: String,
    /// Text to look for in the document to find the line.
    pub hint: String,
    /// Cilium accepts it, but it may not mean what it says: the policy
    /// loads and the message is a warning.
    pub warning: bool,
}

fn problem(path: &str, message: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        message: format!("{path}: {}", message.into()),
        hint: hint.into(),
        warning: false,
    }
}

fn warning(path: &str, message: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        warning: true,
        ..problem(path, message, hint)
    }
}

pub(crate) fn check_policy(policy: &CiliumPolicy) -> Vec<Problem> {
    let mut out = Vec::new();
    if policy.metadata.name.is_empty() {
        out.push(problem(
            "metadata.name",
            "missing: every policy needs a name",
            "metadata",
        ));
    }
    if policy.kind == PolicyKind::CiliumClusterwideNetworkPolicy
        && policy.metadata.namespace.is_some()
    {
        out.push(problem(
            "metadata.namespace",
            "a CiliumClusterwideNetworkPolicy is not namespaced",
            "namespace",
        ));
    }
    if policy.spec.is_none() && policy.specs.as_ref().is_none_or(Vec::is_empty) {
        out.push(problem(
            "spec",
            "missing: expected `spec` or a non-empty `specs` list",
            "kind",
        ));
    }
    let specs = policy
        .specs
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| (format!("specs[{i}]"), r));
    for (path, rule) in policy
        .spec
        .iter()
        .map(|r| ("spec".to_string(), r))
        .chain(specs)
    {
        check_rule(policy.kind, &path, rule, &mut out);
    }
    if let Some(proto) = first_portless_protocol(policy) {
        // Said once per document: the agent flag is cluster state the
        // policy cannot show, and without it Cilium's verdict differs.
        let name = proto.as_str();
        out.push(warning(
            name,
            "Cilium enforces VRRP and IGMP rules only with `enable-extended-ip-protocols: true`; without it its datapath drops both protocols whatever the policy allows, and its API refuses a `ports` entry without `port`. cnpilot evaluates them as enabled",
            name,
        ));
    }
    out
}

fn first_portless_protocol(policy: &CiliumPolicy) -> Option<Protocol> {
    policy
        .rules()
        .flat_map(|r| {
            let ingress = r.ingress.iter().chain(&r.ingress_deny).flatten();
            let egress = r.egress.iter().chain(&r.egress_deny).flatten();
            ingress
                .map(|i| i.as_peer_rule())
                .chain(egress.map(|e| e.as_peer_rule()))
                .collect::<Vec<_>>()
        })
        .flat_map(|pr| pr.to_ports.unwrap_or_default())
        .flat_map(|pr| &pr.ports)
        .map(|p| p.protocol)
        .find(|p| p.is_portless())
}

fn check_rule(kind: PolicyKind, path: &str, rule: &Rule, out: &mut Vec<Problem>) {
    match (&rule.endpoint_selector, &rule.node_selector) {
        (None, None) => out.push(problem(
            path,
            "expected exactly one of `endpointSelector` or `nodeSelector`",
            "spec",
        )),
        (Some(_), Some(_)) => out.push(problem(
            path,
            "`endpointSelector` and `nodeSelector` are mutually exclusive",
            "nodeSelector",
        )),
        (None, Some(_)) if kind == PolicyKind::CiliumNetworkPolicy => out.push(problem(
            path,
            "`nodeSelector` is only allowed in a CiliumClusterwideNetworkPolicy",
            "nodeSelector",
        )),
        _ => {}
    }
    if rule.ingress.is_none()
        && rule.ingress_deny.is_none()
        && rule.egress.is_none()
        && rule.egress_deny.is_none()
    {
        out.push(problem(
            path,
            "expected at least one of `ingress`, `ingressDeny`, `egress`, `egressDeny`",
            "Selector",
        ));
    }
    let lists = [
        (
            "ingress",
            rule.ingress
                .iter()
                .flatten()
                .map(|r| {
                    (
                        r.to_ports.as_deref(),
                        r.from_cidr_set.as_deref(),
                        r.authentication.is_some(),
                        r.icmps.as_deref(),
                    )
                })
                .collect::<Vec<_>>(),
            false,
        ),
        (
            "ingressDeny",
            rule.ingress_deny
                .iter()
                .flatten()
                .map(|r| {
                    (
                        r.to_ports.as_deref(),
                        r.from_cidr_set.as_deref(),
                        r.authentication.is_some(),
                        r.icmps.as_deref(),
                    )
                })
                .collect(),
            true,
        ),
        (
            "egress",
            rule.egress
                .iter()
                .flatten()
                .map(|r| {
                    (
                        r.to_ports.as_deref(),
                        r.to_cidr_set.as_deref(),
                        r.authentication.is_some(),
                        r.icmps.as_deref(),
                    )
                })
                .collect(),
            false,
        ),
        (
            "egressDeny",
            rule.egress_deny
                .iter()
                .flatten()
                .map(|r| {
                    (
                        r.to_ports.as_deref(),
                        r.to_cidr_set.as_deref(),
                        r.authentication.is_some(),
                        r.icmps.as_deref(),
                    )
                })
                .collect(),
            true,
        ),
    ];
    for (field, rules, deny) in lists {
        for (i, (ports, cidr_sets, auth, icmps)) in rules.into_iter().enumerate() {
            let here = format!("{path}.{field}[{i}]");
            check_icmps(&here, ports.is_some_and(|p| !p.is_empty()), icmps, out);
            if deny && auth {
                out.push(problem(
                    &here,
                    "`authentication` is not allowed in deny rules",
                    "authentication",
                ));
            }
            for (j, set) in cidr_sets.unwrap_or_default().iter().enumerate() {
                check_cidr_set(&format!("{here}.CIDRSet[{j}]"), set, out);
            }
            for (j, pr) in ports.unwrap_or_default().iter().enumerate() {
                let at = format!("{here}.toPorts[{j}]");
                check_port_rule(&at, pr, deny, out);
                // pkg/policy/api/rule_validation.go, PortRule.Validate: the
                // DNS proxy sees a pod's own queries only.
                if field.starts_with("ingress")
                    && pr.rules.as_ref().is_some_and(|r| r.dns.is_some())
                {
                    out.push(problem(&at, "`rules.dns` is not allowed on ingress", "dns"));
                }
            }
        }
    }
    for (i, r) in rule.egress.iter().flatten().enumerate() {
        for (j, sel) in r.to_fqdns.iter().flatten().enumerate() {
            check_dns_selector(
                &format!("{path}.egress[{i}].toFQDNs[{j}]"),
                sel.match_name.as_deref(),
                sel.match_pattern.as_deref(),
                "toFQDNs",
                out,
            );
        }
    }
    if let (Some(egress_deny), true) = (&rule.egress_deny, true) {
        for (i, r) in egress_deny.iter().enumerate() {
            if r.to_fqdns.is_some() {
                out.push(problem(
                    &format!("{path}.egressDeny[{i}]"),
                    "`toFQDNs` is not allowed in deny rules",
                    "toFQDNs",
                ));
            }
        }
    }
}

/// Cilium's sanitizer refuses `icmps` beside `toPorts` in one rule ("The
/// ICMPs block may only be present without ToPorts. Define a separate rule
/// to use ToPorts."), and a type name must belong to its field's family.
fn check_icmps(path: &str, has_ports: bool, icmps: Option<&[IcmpRule]>, out: &mut Vec<Problem>) {
    let Some(icmps) = icmps else { return };
    if has_ports && !icmps.is_empty() {
        out.push(problem(
            path,
            "`icmps` may only be present without `toPorts`: put the ports in a rule of their own",
            "icmps",
        ));
    }
    for (j, rule) in icmps.iter().enumerate() {
        if rule.fields.len() > 40 {
            out.push(problem(
                &format!("{path}.icmps[{j}]"),
                format!("{} fields: at most 40 per ICMP rule", rule.fields.len()),
                "fields",
            ));
        }
        for (k, field) in rule.fields.iter().enumerate() {
            if let Err(e) = field.type_number() {
                out.push(problem(
                    &format!("{path}.icmps[{j}].fields[{k}].type"),
                    e,
                    field.icmp_type.to_string(),
                ));
            }
        }
    }
}

fn check_cidr_set(path: &str, set: &CidrRule, out: &mut Vec<Problem>) {
    let given = [
        set.cidr.is_some(),
        set.cidr_group_ref.is_some(),
        set.cidr_group_selector.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        out.push(problem(
            path,
            "expected exactly one of `cidr`, `cidrGroupRef`, `cidrGroupSelector`",
            "CIDRSet",
        ));
    }
    if let Some(cidr) = &set.cidr {
        for ex in &set.except {
            if !cidr.contains_prefix(ex) && cidr.as_v4().is_some() {
                out.push(problem(
                    path,
                    format!("except `{ex}` is not inside cidr `{cidr}`"),
                    ex.to_string().split('/').next().unwrap_or(""),
                ));
            }
        }
    }
}

fn check_port_rule(path: &str, pr: &PortRule, deny: bool, out: &mut Vec<Problem>) {
    for (k, p) in pr.ports.iter().enumerate() {
        check_port_protocol(&format!("{path}.ports[{k}]"), p, out);
        if let (Some((start, _)), Some(end)) = (p.range(), p.end_port) {
            if end != 0 && start != 0 && end < start {
                out.push(problem(
                    &format!("{path}.ports[{k}]"),
                    format!("endPort {end} is below port {start}"),
                    "endPort",
                ));
            }
        }
    }
    let Some(rules) = &pr.rules else { return };
    if deny {
        out.push(problem(
            path,
            "L7 `rules` are not allowed in deny rules",
            "rules",
        ));
        return;
    }
    let kinds = [
        rules.http.is_some(),
        rules.kafka.is_some(),
        rules.dns.is_some(),
        rules.l7proto.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        out.push(problem(
            path,
            "`rules` may hold only one of `http`, `kafka`, `dns`, `l7proto`",
            "rules",
        ));
    }
    if rules.l7.is_some() && rules.l7proto.is_none() {
        out.push(problem(path, "`rules.l7` needs `l7proto`", "l7"));
    }
    if pr.ports.is_empty() || pr.ports.iter().any(|p| p.range() == Some((0, 0))) {
        out.push(problem(
            path,
            "L7 rules need a specific port (not empty, not 0)",
            "rules",
        ));
    }
    if rules.http.is_some() && pr.ports.iter().any(|p| p.protocol == super::Protocol::Udp) {
        out.push(problem(
            path,
            "HTTP rules need TCP (or ANY), not UDP",
            "rules",
        ));
    }
    for (k, d) in rules.dns.iter().flatten().enumerate() {
        check_dns_selector(
            &format!("{path}.rules.dns[{k}]"),
            d.match_name.as_deref(),
            d.match_pattern.as_deref(),
            "dns",
            out,
        );
    }
}

/// A `toFQDNs` or `rules.dns` entry as Cilium validates it: one of
/// `matchName` / `matchPattern` (its sanitizer refuses both,
/// pkg/policy/api/fqdn.go), in the CRD's shape (`^([-a-zA-Z0-9_]+[.]?)+$`,
/// `*` also allowed in a pattern: labels of allowed characters, one dot
/// between them, no leading dot), at most 255 characters
/// (pkg/fqdn/matchpattern/matchpattern.go, `MaxFQDNLength`).
fn check_dns_selector(
    path: &str,
    name: Option<&str>,
    pattern: Option<&str>,
    section: &str,
    out: &mut Vec<Problem>,
) {
    let (field, value, allowed) = match (name, pattern) {
        (Some(n), None) => ("matchName", n, "letters, digits, '-', '_' and '.'"),
        (None, Some(p)) => ("matchPattern", p, "letters, digits, '-', '_', '.' and '*'"),
        _ => {
            out.push(problem(
                path,
                "expected exactly one of `matchName`, `matchPattern`",
                section,
            ));
            return;
        }
    };
    let hint = if value.is_empty() { field } else { value };
    let ok_char = |c: u8| {
        c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'_' | b'.')
            || (c == b'*' && field == "matchPattern")
    };
    let message = if value.is_empty() {
        format!("`{field}` is empty")
    } else if let Some(c) = value.chars().find(|c| !c.is_ascii() || !ok_char(*c as u8)) {
        format!("`{field}: {value}`: `{c}` is not allowed (only {allowed})")
    } else if value.starts_with('.') || value.contains("..") {
        format!("`{field}: {value}`: empty label (a leading dot or two dots in a row)")
    } else if value.len() > crate::compile::MAX_FQDN_LENGTH {
        format!(
            "`{field}`: {} characters, at most {}",
            value.len(),
            crate::compile::MAX_FQDN_LENGTH
        )
    } else {
        return;
    };
    out.push(problem(path, message, hint));
}

/// `port` against `protocol`, as Cilium's PortProtocol.Validate
/// (pkg/policy/api/rule_validation.go) checks it: VRRP and IGMP take port
/// "0" or none ("port must be empty or 0"). Cilium takes a missing port
/// for any protocol once `enable-extended-ip-protocols` is on; its meaning
/// for TCP/UDP/SCTP is not documented, so only the port-less protocols may
/// leave it out here.
fn check_port_protocol(path: &str, p: &PortProtocol, out: &mut Vec<Problem>) {
    let proto = p.protocol.as_str();
    if !p.protocol.is_portless() {
        if p.port_omitted {
            out.push(problem(
                path,
                format!("`port` missing: {proto} needs one (\"0\" for every port); only VRRP and IGMP, which have no ports, may leave it out"),
                "ports",
            ));
        }
        return;
    }
    match &p.port {
        PortSpec::Number(0) => {}
        PortSpec::Number(n) => out.push(problem(
            path,
            format!("{proto} has no ports: expected `port: \"0\"` or no `port`, not {n}"),
            proto,
        )),
        // Cilium does not check a name here, but no container port is a
        // VRRP or IGMP port: the entry allows nothing.
        PortSpec::Named(name) => out.push(warning(
            path,
            format!("named port `{name}` on {proto} never matches: {proto} has no ports (Cilium accepts it; it allows nothing)"),
            name.as_str(),
        )),
    }
}
