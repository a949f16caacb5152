//! Choosing a workload's selector: the fewest identity labels that select
//! exactly that workload among the workloads of its namespace.

use std::collections::BTreeMap;

use cnpilot_learner::identity::{is_selector_label, NAMESPACE_LABEL};

use super::universe::{Universe, Workload};
use crate::model::{LabelSelector, Operator, Requirement};
use crate::select::{LabelSet, Selector};

/// Label keys in the order a selector prefers them (the Kubernetes
/// recommended labels first, then `app`); other keys follow by name.
const PREFERRED: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app",
    "k8s-app",
    "app.kubernetes.io/component",
];

/// A chosen selector and what it matches in the subject's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub selector: LabelSelector,
    /// `namespace/workload` of every workload of the universe it selects.
    pub blast_radius: Vec<String>,
    /// Whether it selects the workload and nothing else.
    pub exact: bool,
}

fn candidate_keys(w: &Workload) -> Vec<String> {
    let mut keys: Vec<String> = w
        .labels
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| is_selector_label(k))
        .collect();
    keys.sort_by_key(|k| {
        (
            PREFERRED
                .iter()
                .position(|p| p == k)
                .unwrap_or(PREFERRED.len()),
            k.clone(),
        )
    });
    keys
}

fn selector_of(w: &Workload, keys: &[&String]) -> LabelSelector {
    LabelSelector {
        match_labels: keys
            .iter()
            .map(|k| ((*k).clone(), w.labels.get(k).unwrap_or("").to_string()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

/// Every workload of each namespace with its labels in matching form,
/// built once: a selector search tries many candidates against them.
pub struct Neighbours<'a> {
    by_namespace: BTreeMap<&'a str, Vec<(&'a Workload, LabelSet)>>,
}

impl<'a> Neighbours<'a> {
    pub fn new(universe: &'a Universe) -> Neighbours<'a> {
        let mut by_namespace: BTreeMap<&'a str, Vec<(&'a Workload, LabelSet)>> = BTreeMap::new();
        for w in universe.workloads.values() {
            let labels: BTreeMap<String, String> = w
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            by_namespace
                .entry(w.namespace.as_str())
                .or_default()
                .push((w, LabelSet::for_pod(&w.namespace, &labels)));
        }
        Neighbours { by_namespace }
    }
}

fn matches_in_namespace<'a>(
    neighbours: &Neighbours<'a>,
    namespace: &str,
    sel: &LabelSelector,
) -> Vec<&'a Workload> {
    let scoped = Selector::subject(sel, Some(namespace));
    neighbours
        .by_namespace
        .get(namespace)
        .into_iter()
        .flatten()
        .filter(|(_, labels)| scoped.matches(labels))
        .map(|(w, _)| *w)
        .collect()
}

/// Every subset of `keys` of size `k`, in lexicographic order of positions
/// (so subsets of preferred keys come first).
fn subsets<'a>(keys: &'a [String], k: usize, out: &mut Vec<Vec<&'a String>>) {
    fn go<'a>(
        keys: &'a [String],
        k: usize,
        start: usize,
        cur: &mut Vec<&'a String>,
        out: &mut Vec<Vec<&'a String>>,
    ) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..keys.len() {
            cur.push(&keys[i]);
            go(keys, k, i + 1, cur, out);
            cur.pop();
        }
    }
    go(keys, k, 0, &mut Vec::new(), out);
}

/// The smallest label set that selects `w` and nothing else of its
/// namespace. When labels alone cannot tell it apart (another workload
/// carries a superset of its labels), `DoesNotExist` requirements on the
/// other workloads' extra keys make it exact; a workload with no selector
/// labels at all gets `{}` (its whole namespace), flagged as not exact.
pub fn choose(w: &Workload, universe: &Universe) -> Chosen {
    choose_among(w, &Neighbours::new(universe))
}

/// [`choose`] against neighbours built once.
pub fn choose_among(w: &Workload, universe: &Neighbours<'_>) -> Chosen {
    let keys = candidate_keys(w);
    // At most 4 labels are tried in combination: beyond that the search
    // is exponential and a selector that long reads worse than the
    // all-labels fallback below.
    for k in 1..=keys.len().min(4) {
        let mut candidates = Vec::new();
        subsets(&keys, k, &mut candidates);
        for subset in candidates {
            let sel = selector_of(w, &subset);
            let hits = matches_in_namespace(universe, &w.namespace, &sel);
            if hits.len() == 1 && hits[0].identity == w.identity {
                return Chosen {
                    selector: sel,
                    blast_radius: vec![w.name()],
                    exact: true,
                };
            }
        }
    }
    let all: Vec<&String> = keys.iter().collect();
    let mut sel = selector_of(w, &all);
    let others: Vec<&Workload> = matches_in_namespace(universe, &w.namespace, &sel)
        .into_iter()
        .filter(|o| o.identity != w.identity)
        .collect();
    let mut extra: Vec<String> = others
        .iter()
        .flat_map(|o| o.labels.iter().map(|(k, _)| k.to_string()))
        .filter(|k| is_selector_label(k) && w.labels.get(k).is_none())
        .collect();
    extra.sort();
    extra.dedup();
    sel.match_expressions = extra
        .into_iter()
        .map(|key| Requirement {
            key,
            operator: Operator::DoesNotExist,
            values: Vec::new(),
        })
        .collect();
    let hits = matches_in_namespace(universe, &w.namespace, &sel);
    let exact = hits.len() == 1 && hits[0].identity == w.identity;
    Chosen {
        blast_radius: hits.iter().map(|h| h.name()).collect(),
        selector: sel,
        exact,
    }
}

/// Every workload's selector, chosen once (a workload is the subject of
/// one policy and a peer in many).
pub fn choose_all(universe: &Universe) -> BTreeMap<u32, Chosen> {
    let neighbours = Neighbours::new(universe);
    universe
        .workloads
        .values()
        .map(|w| (w.identity, choose_among(w, &neighbours)))
        .collect()
}

/// `w` as a peer of a policy in `policy_namespace`: its own selector, plus
/// the namespace label when it lives elsewhere (a CNP's peer selector
/// without one is scoped to the policy's namespace).
pub fn peer_selector(w: &Workload, chosen: &Chosen, policy_namespace: &str) -> LabelSelector {
    let mut sel = chosen.selector.clone();
    if w.namespace != policy_namespace {
        sel.match_labels
            .insert(NAMESPACE_LABEL.to_string(), w.namespace.clone());
    }
    sel
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnpilot_learner::Labels;

    fn wl(id: u32, ns: &str, name: &str, labels: &[(&str, &str)]) -> Workload {
        let mut l: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert(NAMESPACE_LABEL, ns);
        Workload {
            identity: id,
            namespace: ns.into(),
            workload: name.into(),
            labels: l,
        }
    }

    fn universe(ws: &[Workload]) -> Universe {
        Universe {
            workloads: ws.iter().map(|w| (w.identity, w.clone())).collect(),
            ..Universe::default()
        }
    }

    #[test]
    fn prefers_the_recommended_name_label_and_stays_small() {
        let api = wl(
            300,
            "shop",
            "api",
            &[
                ("app", "api"),
                ("app.kubernetes.io/name", "api"),
                ("tier", "backend"),
                ("pod-template-hash", "abc"),
            ],
        );
        let db = wl(301, "shop", "db", &[("app", "db"), ("tier", "backend")]);
        let u = universe(&[api.clone(), db]);
        let c = choose(&api, &u);
        assert!(c.exact);
        assert_eq!(
            c.selector.match_labels.keys().collect::<Vec<_>>(),
            ["app.kubernetes.io/name"]
        );
        assert_eq!(c.blast_radius, ["shop/api"]);
    }

    #[test]
    fn a_shared_preferred_label_gives_way_to_one_that_tells_them_apart() {
        let a = wl(300, "ns", "a", &[("app", "web"), ("track", "stable")]);
        let b = wl(301, "ns", "b", &[("app", "web"), ("track", "canary")]);
        let u = universe(&[a.clone(), b]);
        let c = choose(&a, &u);
        assert!(c.exact);
        assert_eq!(
            c.selector.match_labels.keys().collect::<Vec<_>>(),
            ["track"]
        );
    }

    #[test]
    fn two_keys_when_no_single_key_is_unique() {
        let a = wl(300, "ns", "a", &[("app", "web"), ("track", "stable")]);
        let b = wl(301, "ns", "b", &[("app", "web"), ("track", "canary")]);
        let c2 = wl(302, "ns", "c", &[("app", "api"), ("track", "stable")]);
        let u = universe(&[a.clone(), b, c2]);
        let c = choose(&a, &u);
        assert!(c.exact);
        assert_eq!(c.selector.match_labels.len(), 2);
    }

    #[test]
    fn a_superset_workload_is_excluded_with_does_not_exist() {
        let a = wl(300, "ns", "a", &[("app", "web")]);
        let b = wl(301, "ns", "b", &[("app", "web"), ("canary", "true")]);
        let u = universe(&[a.clone(), b]);
        let c = choose(&a, &u);
        assert!(c.exact, "{c:?}");
        assert_eq!(c.selector.match_expressions[0].key, "canary");
    }

    #[test]
    fn no_labels_excludes_the_labelled_neighbours() {
        let a = wl(300, "ns", "a", &[]);
        let b = wl(301, "ns", "b", &[("app", "b")]);
        let u = universe(&[a.clone(), b]);
        let c = choose(&a, &u);
        assert!(c.exact, "{c:?}");
        assert_eq!(c.selector.match_expressions[0].key, "app");
        // Two unlabelled workloads cannot be told apart: the namespace.
        let a2 = wl(302, "ns", "a2", &[]);
        let u = universe(&[a.clone(), a2]);
        let c = choose(&a, &u);
        assert!(!c.exact);
        assert_eq!(c.blast_radius, ["ns/a", "ns/a2"]);
    }

    #[test]
    fn cross_namespace_peers_carry_the_namespace_key() {
        let a = wl(300, "web", "front", &[("app", "front")]);
        let u = universe(std::slice::from_ref(&a));
        let c = choose(&a, &u);
        assert!(!peer_selector(&a, &c, "web")
            .match_labels
            .contains_key(NAMESPACE_LABEL));
        assert_eq!(
            peer_selector(&a, &c, "payments").match_labels[NAMESPACE_LABEL],
            "web"
        );
    }
}
