//! `kubectl get pods,namespaces,nodes -A -o json` output (a `List`), also the
//! shape of the lab's `/run/cnpilot/lab/inventory.json`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::debug;

use super::convert::{namespace_info, node_info, pod_info};
use super::{InventoryError, InventorySnapshot, InventorySource};

/// Where the lab writes its inventory.
pub const LAB_INVENTORY_PATH: &str = "/run/cnpilot/lab/inventory.json";

/// A snapshot file source.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

impl SnapshotFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The running lab's inventory.
    pub fn lab() -> Self {
        Self::new(LAB_INVENTORY_PATH)
    }
}

impl InventorySource for SnapshotFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| InventoryError::Io {
            path: self.path.clone(),
            source,
        })?;
        parse_list(&self.path, &text)
    }
}

/// Parse a kubectl JSON `List` (or a `PodList`/… of one kind). Items of other
/// kinds (Services, …) are ignored.
pub fn parse_list(path: &Path, text: &str) -> Result<InventorySnapshot, InventoryError> {
    let format = |reason: String| InventoryError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let list: Value = serde_json::from_str(text)
        .map_err(|e| format(format!("line {} column {}: {e}", e.line(), e.column())))?;
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| format("expected an object with an `items` array".into()))?;
    // A typed list (`PodList`) leaves `kind` out of its items.
    let list_kind = list
        .get("kind")
        .and_then(Value::as_str)
        .and_then(|k| k.strip_suffix("List"));
    let mut snapshot = InventorySnapshot::default();
    for (index, item) in items.iter().enumerate() {
        let kind = item
            .get("kind")
            .and_then(Value::as_str)
            .or(list_kind)
            .unwrap_or("");
        fn typed<T: DeserializeOwned>(
            path: &Path,
            index: usize,
            kind: &str,
            item: &Value,
        ) -> Result<T, InventoryError> {
            T::deserialize(item).map_err(|e| InventoryError::Item {
                path: path.to_path_buf(),
                index,
                kind: kind.to_string(),
                reason: e.to_string(),
            })
        }
        match kind {
            "Pod" => snapshot
                .pods
                .push(pod_info(&typed::<Pod>(path, index, kind, item)?)),
            "Namespace" => snapshot.namespaces.push(namespace_info(&typed::<Namespace>(
                path, index, kind, item,
            )?)),
            "Node" => snapshot
                .nodes
                .push(node_info(&typed::<Node>(path, index, kind, item)?)),
            other => debug!(path = %path.display(), index, kind = other, "ignoring inventory item"),
        }
    }
    Ok(snapshot)
}
