//! A live cluster: reflectors (watch + local cache) on Pods, Namespaces and
//! Nodes. Snapshots read the caches; nothing blocks on the API server.

use std::future::ready;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::warn;

use super::convert::{namespace_info, node_info, pod_info};
use super::{InventoryError, InventorySnapshot, InventorySource};

/// Watches the cluster; must be created inside a tokio runtime.
pub struct KubeSource {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    tasks: Vec<JoinHandle<()>>,
}

fn spawn_reflector<K>(client: &Client) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|item| {
        if let Err(err) = item {
            warn!(kind = %K::kind(&()), %err, "inventory watch error (retrying)");
        }
        ready(())
    }));
    (reader, task)
}

impl KubeSource {
    /// In-cluster configuration, else `$KUBECONFIG` / `~/.kube/config`.
    pub async fn connect() -> Result<Self, InventoryError> {
        let client = Client::try_default()
            .await
            .map_err(|e| InventoryError::Kube(format!("connecting: {e}")))?;
        Ok(Self::start(client))
    }

    pub fn start(client: Client) -> Self {
        let (pods, t1) = spawn_reflector::<Pod>(&client);
        let (namespaces, t2) = spawn_reflector::<Namespace>(&client);
        let (nodes, t3) = spawn_reflector::<Node>(&client);
        Self {
            pods,
            namespaces,
            nodes,
            tasks: vec![t1, t2, t3],
        }
    }

    /// Wait until the first full list of each kind is in the caches.
    pub async fn wait_ready(&self) -> Result<(), InventoryError> {
        let err = |e: reflector::store::WriterDropped| InventoryError::Kube(e.to_string());
        self.pods.wait_until_ready().await.map_err(err)?;
        self.namespaces.wait_until_ready().await.map_err(err)?;
        self.nodes.wait_until_ready().await.map_err(err)?;
        Ok(())
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl InventorySource for KubeSource {
    fn describe(&self) -> String {
        "kubernetes cluster (watch)".into()
    }

    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError> {
        Ok(InventorySnapshot {
            pods: self.pods.state().iter().map(|p| pod_info(p)).collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .map(|n| namespace_info(n))
                .collect(),
            nodes: self.nodes.state().iter().map(|n| node_info(n)).collect(),
        })
    }
}
