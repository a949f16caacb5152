//! Kubernetes label selectors as Cilium reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `matchLabels` + `matchExpressions`, ANDed. An empty selector selects
/// everything it is matched against (Cilium narrows peer selectors by
/// namespace before matching; see [`crate::select`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether the selector constrains `key` (with or without a source prefix).
    pub fn mentions_key(&self, key: &str) -> bool {
        let bare = |k: &str| crate::select::split_source(k).1 == key;
        self.match_labels.keys().any(|k| bare(k))
            || self.match_expressions.iter().any(|r| bare(&r.key))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry, checked on parse: `In`/`NotIn` need values,
/// `Exists`/`DoesNotExist` must have none (as the Kubernetes API server
/// enforces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRequirement")]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Option<Vec<String>>,
}

impl TryFrom<RawRequirement> for Requirement {
    type Error = String;

    fn try_from(raw: RawRequirement) -> Result<Self, Self::Error> {
        let values = raw.values.unwrap_or_default();
        match raw.operator {
            Operator::In | Operator::NotIn if values.is_empty() => Err(format!(
                "matchExpressions key `{}`: operator {:?} needs a non-empty `values` list",
                raw.key, raw.operator
            )),
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => Err(format!(
                "matchExpressions key `{}`: operator {:?} takes no `values`",
                raw.key, raw.operator
            )),
            _ => Ok(Requirement {
                key: raw.key,
                operator: raw.operator,
                values,
            }),
        }
    }
}
