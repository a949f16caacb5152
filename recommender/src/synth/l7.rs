//! HTTP rules from observed requests: method + path, full-anchored as
//! Envoy matches them, identifier segments collapsed into a pattern only
//! when enough distinct values were seen.

use std::collections::{BTreeMap, BTreeSet};

use cnpilot_learner::pathtemplate::{self, ID};

use crate::model::{HttpRegex, HttpRule};

/// A template becomes a pattern only with at least this many distinct
/// member paths; below it, each path is its own rule (two ids seen are
/// evidence of two objects, not of "any object").
pub const MIN_TEMPLATE_MEMBERS: usize = 3;

/// How much of each request the rules keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L7Mode {
    /// No HTTP rules: ports are allowed at L4.
    Off,
    /// One rule per method seen, any path.
    Methods,
    /// Method and path (the default).
    #[default]
    Paths,
}

impl std::str::FromStr for L7Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(L7Mode::Off),
            "methods" => Ok(L7Mode::Methods),
            "paths" => Ok(L7Mode::Paths),
            other => Err(format!(
                "unknown --l7 `{other}`: expected off, methods or paths"
            )),
        }
    }
}

/// Requests seen on one port from one peer: method → path template →
/// the distinct raw paths behind it.
pub type Requests = BTreeMap<String, BTreeMap<String, Members>>;

/// The raw paths of one template, and whether any request carried a query
/// string: Envoy matches a rule's `path` against `:path`, which includes
/// `?query`, so such a rule must allow a query after the path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub paths: BTreeSet<String>,
    pub with_query: bool,
}

/// What a path rule appends when queries were seen.
pub const QUERY_SUFFIX: &str = r"(\?.*)?";

/// One generated HTTP rule and the observed paths it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedHttp {
    pub rule: HttpRule,
    pub members: Vec<String>,
}

fn literal(path: &str) -> String {
    regex::escape(path)
}

/// The regex for an identifier position, from the values seen there.
fn id_class(values: &BTreeSet<&str>) -> &'static str {
    if values.iter().all(|v| v.bytes().all(|b| b.is_ascii_digit())) {
        "[0-9]+"
    } else if values
        .iter()
        .all(|v| v.len() == 36 && v.matches('-').count() == 4)
    {
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    } else {
        "[0-9a-fA-F]+"
    }
}

fn template_regex(template: &str, members: &BTreeSet<String>) -> String {
    let segments: Vec<&str> = template.split('/').collect();
    let mut out = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        if *seg == ID {
            let values: BTreeSet<&str> =
                members.iter().filter_map(|m| m.split('/').nth(i)).collect();
            out.push(id_class(&values).to_string());
        } else {
            out.push(literal(seg));
        }
    }
    out.join("/")
}

fn rule(method: &str, path: Option<String>) -> HttpRule {
    HttpRule {
        // Regexes built from escaped literals and fixed classes always
        // compile; a method is a token (no regex metacharacters survive
        // escaping).
        method: HttpRegex::new(&regex::escape(method)).ok(),
        path: path.and_then(|p| HttpRegex::new(&p).ok()),
        ..HttpRule::default()
    }
}

/// The HTTP rules for the requests of one port.
pub fn http_rules(requests: &Requests, mode: L7Mode) -> Vec<GeneratedHttp> {
    let mut out = Vec::new();
    for (method, templates) in requests {
        match mode {
            L7Mode::Off => {}
            L7Mode::Methods => out.push(GeneratedHttp {
                rule: rule(method, None),
                members: templates
                    .values()
                    .flat_map(|m| m.paths.iter().cloned())
                    .collect(),
            }),
            L7Mode::Paths => {
                for (template, m) in templates {
                    let query = if m.with_query { QUERY_SUFFIX } else { "" };
                    let collapsible =
                        template.contains(ID) && m.paths.len() >= MIN_TEMPLATE_MEMBERS;
                    if collapsible {
                        out.push(GeneratedHttp {
                            rule: rule(
                                method,
                                Some(format!("{}{query}", template_regex(template, &m.paths))),
                            ),
                            members: m.paths.iter().cloned().collect(),
                        });
                    } else {
                        for path in &m.paths {
                            out.push(GeneratedHttp {
                                rule: rule(method, Some(format!("{}{query}", literal(path)))),
                                members: vec![path.clone()],
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Add one observed request to `requests`.
pub fn observe(
    requests: &mut Requests,
    method: &str,
    template: &str,
    paths: &BTreeSet<String>,
    with_query: bool,
) {
    let members = requests
        .entry(method.to_string())
        .or_default()
        .entry(template.to_string())
        .or_default();
    members.with_query |= with_query;
    if paths.is_empty() {
        members.paths.insert(template.to_string());
    } else {
        members.paths.extend(paths.iter().cloned());
    }
    // A template recomputed from its members keeps rows merged from
    // different tables consistent.
    debug_assert!(members
        .paths
        .iter()
        .all(|m| pathtemplate::template(m) == template || m == template));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{http_matches, HttpRequest};

    fn req(method: &str, path: &str) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            ..HttpRequest::default()
        }
    }

    fn seen(method: &str, paths: &[&str]) -> Requests {
        let mut r = Requests::new();
        for p in paths {
            let t = pathtemplate::template(p).into_owned();
            observe(&mut r, method, &t, &[p.to_string()].into(), false);
        }
        r
    }

    #[test]
    fn three_ids_collapse_and_two_do_not() {
        let three = http_rules(
            &seen("GET", &["/orders/1", "/orders/22", "/orders/333"]),
            L7Mode::Paths,
        );
        assert_eq!(three.len(), 1);
        let r = &three[0].rule;
        assert_eq!(
            r.path.as_ref().map(|p| p.source.as_str()),
            Some("/orders/[0-9]+")
        );
        assert!(http_matches(r, &req("GET", "/orders/4444")));
        assert!(!http_matches(r, &req("GET", "/orders/abc")));
        assert!(!http_matches(r, &req("GET", "/orders/1/items")));
        assert!(!http_matches(r, &req("POST", "/orders/1")));

        let two = http_rules(&seen("GET", &["/orders/1", "/orders/2"]), L7Mode::Paths);
        assert_eq!(two.len(), 2);
        assert!(!two
            .iter()
            .any(|g| http_matches(&g.rule, &req("GET", "/orders/3"))));
    }

    #[test]
    fn literal_paths_are_escaped_and_anchored() {
        let rules = http_rules(&seen("GET", &["/v1.0/status"]), L7Mode::Paths);
        assert!(http_matches(&rules[0].rule, &req("GET", "/v1.0/status")));
        assert!(!http_matches(&rules[0].rule, &req("GET", "/v1x0/status")));
        assert!(!http_matches(&rules[0].rule, &req("GET", "/v1.0/status/x")));
    }

    #[test]
    fn a_query_seen_lets_the_rule_match_path_and_query() {
        let mut r = Requests::new();
        observe(
            &mut r,
            "GET",
            "/search",
            &["/search".to_string()].into(),
            true,
        );
        let rules = http_rules(&r, L7Mode::Paths);
        assert!(http_matches(&rules[0].rule, &req("GET", "/search?q=a")));
        assert!(http_matches(&rules[0].rule, &req("GET", "/search")));
        assert!(!http_matches(&rules[0].rule, &req("GET", "/search/x")));
        // Without a query seen, a query is not allowed (Envoy's `:path`).
        let plain = http_rules(&seen("GET", &["/search"]), L7Mode::Paths);
        assert!(!http_matches(&plain[0].rule, &req("GET", "/search?q=a")));
    }

    #[test]
    fn methods_mode_keeps_only_methods() {
        let rules = http_rules(&seen("GET", &["/a", "/b"]), L7Mode::Methods);
        assert_eq!(rules.len(), 1);
        assert!(rules[0].rule.path.is_none());
        assert!(http_matches(&rules[0].rule, &req("GET", "/anything")));
        assert!(http_rules(&seen("GET", &["/a"]), L7Mode::Off).is_empty());
    }
}
