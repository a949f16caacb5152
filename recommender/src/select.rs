//! Selection: which identities a label selector picks, with Cilium's label
//! sources and namespace scoping.

use std::collections::BTreeMap;

use crate::model::{LabelSelector, Operator};

/// The label key Cilium gives every pod for its namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The cluster-name label Cilium adds to every pod.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";

const SOURCES: &[&str] = &[
    "k8s",
    "any",
    "reserved",
    "cidr",
    "container",
    "unspec",
    "fqdn",
    "cilium-generated",
];

/// Split `source:key` into its source (if it names a known one) and key.
pub fn split_source(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((src, rest)) if SOURCES.contains(&src) => (Some(src), rest),
        _ => (None, key),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub source: String,
    pub key: String,
    pub value: String,
}

/// The labels of one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(pub Vec<Label>);

impl LabelSet {
    /// A pod's labels as Cilium sees them: `k8s:` labels plus the namespace
    /// and cluster labels.
    pub fn for_pod(namespace: &str, labels: &BTreeMap<String, String>) -> LabelSet {
        let mut out: Vec<Label> = labels
            .iter()
            .map(|(k, v)| {
                let (src, key) = split_source(k);
                Label {
                    source: src.unwrap_or("k8s").to_string(),
                    key: key.to_string(),
                    value: v.clone(),
                }
            })
            .collect();
        out.push(Label {
            source: "k8s".into(),
            key: NAMESPACE_LABEL.into(),
            value: namespace.into(),
        });
        if !labels.contains_key(CLUSTER_LABEL) {
            out.push(Label {
                source: "k8s".into(),
                key: CLUSTER_LABEL.into(),
                value: "default".into(),
            });
        }
        out.sort();
        out.dedup();
        LabelSet(out)
    }

    /// A node's labels, for `nodeSelector`.
    pub fn for_node(labels: &BTreeMap<String, String>) -> LabelSet {
        let mut out: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label {
                source: "k8s".into(),
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        out.push(Label {
            source: "reserved".into(),
            key: "host".into(),
            value: String::new(),
        });
        out.sort();
        LabelSet(out)
    }

    /// A reserved identity's single label (`reserved:world`, ...).
    pub fn reserved(name: &str) -> LabelSet {
        LabelSet(vec![Label {
            source: "reserved".into(),
            key: name.into(),
            value: String::new(),
        }])
    }

    fn values<'a>(
        &'a self,
        source: Option<&'a str>,
        key: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |l| l.key == key && source.is_none_or(|s| s == "any" || s == l.source))
            .map(|l| l.value.as_str())
    }
}

/// A selector ready for matching, after Cilium's namespace scoping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    reqs: Vec<(Option<String>, String, Operator, Vec<String>)>,
}

impl Selector {
    pub fn new(sel: &LabelSelector) -> Selector {
        let mut reqs = Vec::new();
        for (k, v) in &sel.match_labels {
            let (src, key) = split_source(k);
            reqs.push((
                src.map(str::to_string),
                key.to_string(),
                Operator::In,
                vec![v.clone()],
            ));
        }
        for r in &sel.match_expressions {
            let (src, key) = split_source(&r.key);
            reqs.push((
                src.map(str::to_string),
                key.to_string(),
                r.operator,
                r.values.clone(),
            ));
        }
        Selector { reqs }
    }

    /// The subject selector of a policy: a CNP's `endpointSelector` only
    /// ever selects pods of its own namespace.
    pub fn subject(sel: &LabelSelector, namespace: Option<&str>) -> Selector {
        let mut s = Selector::new(sel);
        if let Some(ns) = namespace {
            s.reqs.push((
                Some("k8s".into()),
                NAMESPACE_LABEL.into(),
                Operator::In,
                vec![ns.into()],
            ));
        }
        s
    }

    /// A peer selector (`fromEndpoints`/`toEndpoints`), scoped as Cilium's
    /// `getEndpointSelector` does: without a namespace key, a CNP's selector
    /// is limited to the policy's namespace and a CCNP's to pods (any
    /// namespace); selectors on `reserved:` labels are left alone.
    pub fn peer(sel: &LabelSelector, namespace: Option<&str>) -> Selector {
        let mut s = Selector::new(sel);
        let reserved = sel
            .match_labels
            .keys()
            .chain(sel.match_expressions.iter().map(|r| &r.key))
            .any(|k| k.starts_with("reserved:"));
        if reserved || sel.mentions_key(NAMESPACE_LABEL) {
            return s;
        }
        match namespace {
            Some(ns) => s.reqs.push((
                Some("k8s".into()),
                NAMESPACE_LABEL.into(),
                Operator::In,
                vec![ns.into()],
            )),
            None => s.reqs.push((
                Some("k8s".into()),
                NAMESPACE_LABEL.into(),
                Operator::Exists,
                vec![],
            )),
        }
        s
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.reqs.iter().all(|(src, key, op, values)| {
            let mut present = labels.values(src.as_deref(), key).peekable();
            match op {
                Operator::In => present.any(|v| values.iter().any(|w| w == v)),
                Operator::NotIn => !present.any(|v| values.iter().any(|w| w == v)),
                Operator::Exists => present.peek().is_some(),
                Operator::DoesNotExist => present.peek().is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Requirement;

    fn pod(ns: &str, kv: &[(&str, &str)]) -> LabelSet {
        LabelSet::for_pod(
            ns,
            &kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn sel(labels: &[(&str, &str)], exprs: Vec<Requirement>) -> LabelSelector {
        LabelSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: exprs,
        }
    }

    #[test]
    fn sources_and_operators() {
        let p = pod("web", &[("app", "frontend"), ("tier", "a")]);
        assert!(Selector::new(&sel(&[("k8s:app", "frontend")], vec![])).matches(&p));
        assert!(Selector::new(&sel(&[("any:app", "frontend")], vec![])).matches(&p));
        assert!(!Selector::new(&sel(&[("reserved:app", "frontend")], vec![])).matches(&p));
        let req = |op, vals: &[&str]| Requirement {
            key: "tier".into(),
            operator: op,
            values: vals.iter().map(|s| s.to_string()).collect(),
        };
        assert!(Selector::new(&sel(&[], vec![req(Operator::In, &["a", "b"])])).matches(&p));
        assert!(!Selector::new(&sel(&[], vec![req(Operator::NotIn, &["a"])])).matches(&p));
        assert!(Selector::new(&sel(&[], vec![req(Operator::Exists, &[])])).matches(&p));
        assert!(!Selector::new(&sel(&[], vec![req(Operator::DoesNotExist, &[])])).matches(&p));
        assert!(Selector::new(&sel(
            &[],
            vec![Requirement {
                key: "x".into(),
                operator: Operator::NotIn,
                values: vec!["a".into()]
            }]
        ))
        .matches(&p));
    }

    #[test]
    fn peer_scoping() {
        let p = pod("web", &[("app", "frontend")]);
        let empty = LabelSelector::default();
        assert!(Selector::peer(&empty, Some("web")).matches(&p));
        assert!(!Selector::peer(&empty, Some("other")).matches(&p));
        assert!(Selector::peer(&empty, None).matches(&p));
        assert!(!Selector::peer(&empty, None).matches(&LabelSet::reserved("world")));
        let host = sel(&[("reserved:host", "")], vec![]);
        assert!(Selector::peer(&host, Some("web")).matches(&LabelSet::reserved("host")));
        let other_ns = sel(&[(NAMESPACE_LABEL, "web")], vec![]);
        assert!(Selector::peer(&other_ns, Some("payments")).matches(&p));
        assert!(!Selector::subject(&other_ns, Some("payments")).matches(&p));
    }
}
