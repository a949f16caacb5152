//! `observe`'s filters; every one given must match (AND).

use anyhow::bail;

use super::model::{Endpoint, Flow, Kind, Verdict};

/// `NS/NAME` of `--from-pod` / `--to-pod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn parse(flag: &str, text: &str) -> anyhow::Result<Self> {
        match text.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => bail!(
                "{flag} `{text}`: expected NAMESPACE/POD, e.g. web/frontend-app-7d77448bf5-g59cc"
            ),
        }
    }

    /// The pod name when the source knows it; else the workload, since a
    /// flow store and today's agent lines name workloads, not pods.
    fn matches(&self, e: &Endpoint) -> bool {
        if e.namespace.as_deref() != Some(self.namespace.as_str()) {
            return false;
        }
        match &e.pod {
            Some(pod) => *pod == self.name,
            None => e.workload.as_deref() == Some(self.name.as_str()),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub since_ns: Option<i64>,
    pub from_pod: Option<PodRef>,
    pub to_pod: Option<PodRef>,
    pub from_namespace: Option<String>,
    pub to_namespace: Option<String>,
    /// Either side.
    pub namespace: Option<String>,
    pub verdicts: Vec<Verdict>,
    pub kinds: Vec<Kind>,
}

fn in_namespace(e: &Endpoint, ns: &str) -> bool {
    e.namespace.as_deref() == Some(ns)
}

impl Filter {
    pub fn matches(&self, f: &Flow) -> bool {
        if let Some(since) = self.since_ns {
            // A flow of unknown time cannot be shown to be recent.
            if f.time_ns.is_none_or(|t| t < since) {
                return false;
            }
        }
        if self.from_pod.as_ref().is_some_and(|p| !p.matches(&f.src))
            || self.to_pod.as_ref().is_some_and(|p| !p.matches(&f.dst))
            || self
                .from_namespace
                .as_deref()
                .is_some_and(|ns| !in_namespace(&f.src, ns))
            || self
                .to_namespace
                .as_deref()
                .is_some_and(|ns| !in_namespace(&f.dst, ns))
        {
            return false;
        }
        if let Some(ns) = &self.namespace {
            if !in_namespace(&f.src, ns) && !in_namespace(&f.dst, ns) {
                return false;
            }
        }
        (self.verdicts.is_empty() || self.verdicts.contains(&f.verdict))
            && (self.kinds.is_empty() || self.kinds.contains(&f.kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src_ns: &str, src_wl: &str, dst_ns: &str, verdict: Verdict, t: i64) -> Flow {
        let ep = |ns: &str, wl: &str| Endpoint {
            namespace: Some(ns.into()),
            workload: Some(wl.into()),
            ..Default::default()
        };
        Flow {
            time_ns: Some(t),
            kind: Kind::L3L4,
            verdict,
            reason: String::new(),
            direction: None,
            proto: 6,
            src: ep(src_ns, src_wl),
            dst: ep(dst_ns, "api"),
            node: None,
            http: None,
            dns: None,
            count: 1,
        }
    }

    #[test]
    fn filters_combine_with_and() {
        let f = flow("web", "frontend-app", "payments", Verdict::WouldDrop, 100);
        let mut filter = Filter {
            from_pod: Some(PodRef::parse("--from-pod", "web/frontend-app").unwrap()),
            namespace: Some("payments".into()),
            verdicts: vec![Verdict::WouldDrop, Verdict::Dropped],
            since_ns: Some(50),
            ..Default::default()
        };
        assert!(filter.matches(&f));
        filter.since_ns = Some(101);
        assert!(!filter.matches(&f));
        filter.since_ns = None;
        filter.kinds = vec![Kind::Http];
        assert!(!filter.matches(&f));
        filter.kinds.clear();
        filter.to_namespace = Some("web".into());
        assert!(!filter.matches(&f));
    }

    #[test]
    fn pod_names_win_over_workloads_when_known() {
        let mut f = flow("web", "frontend-app", "payments", Verdict::Forwarded, 1);
        let by_workload = PodRef::parse("--from-pod", "web/frontend-app").unwrap();
        assert!(by_workload.matches(&f.src));
        f.src.pod = Some("frontend-app-0".into());
        assert!(!by_workload.matches(&f.src));
        assert!(PodRef::parse("--from-pod", "web/frontend-app-0")
            .unwrap()
            .matches(&f.src));
    }

    #[test]
    fn bad_pod_refs_are_one_line_errors() {
        for bad in ["web", "/x", "web/", "a/b/c"] {
            let err = PodRef::parse("--to-pod", bad).unwrap_err().to_string();
            assert!(err.contains("NAMESPACE/POD"), "{err}");
        }
    }
}
