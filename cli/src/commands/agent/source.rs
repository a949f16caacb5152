//! Where the agent's inventory comes from, and which node it is: the flags,
//! else the lab's defaults (`--inventory lab`), else this host.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cnpilot_learner::inventory::{InventorySource, SnapshotFile};

use super::AgentArgs;

/// This node's name and namespace: the flags, else the lab's (with
/// `--inventory lab`), else the host name and this process's namespace.
pub(super) fn node_of(args: &AgentArgs) -> anyhow::Result<(String, Option<PathBuf>)> {
    let lab = (args.inventory == "lab")
        .then(|| crate::lab::state::LabState::load_from(&args.lab_dir))
        .transpose()
        .context("--inventory lab needs a lab (`cnpilot lab up`), or give --inventory kube|FILE")?;
    let name = match (&args.node, &lab) {
        (Some(n), _) => n.clone(),
        (None, Some(lab)) => lab.node.name.clone(),
        (None, None) => host_name().context("no --node given and no host name to use")?,
    };
    let netns = match (&args.node_netns, &lab) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(lab)) => Some(cnpilot_bpf::netns::named(&lab.node.netns)),
        (None, None) => None,
    };
    Ok((name, netns))
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is ours and its length is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    std::str::from_utf8(&buf[..end])
        .ok()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// The inventory source of `--inventory`; `kube` needs the runtime.
pub(super) fn inventory_source(
    args: &AgentArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Box<dyn InventorySource>> {
    Ok(match args.inventory.as_str() {
        "lab" => Box::new(SnapshotFile::new(crate::lab::state::inventory_path(
            &args.lab_dir,
        ))),
        "kube" => {
            let source = rt
                .block_on(async {
                    let source = cnpilot_learner::inventory::KubeSource::connect().await?;
                    tokio::time::timeout(Duration::from_secs(30), source.wait_ready())
                        .await
                        .map_err(|_| {
                            cnpilot_learner::inventory::InventoryError::Kube(
                                "no answer from the API server within 30 s".into(),
                            )
                        })??;
                    Ok::<_, cnpilot_learner::inventory::InventoryError>(source)
                })
                .context("--inventory kube")?;
            Box::new(source)
        }
        file => {
            let path = PathBuf::from(file);
            anyhow::ensure!(
                path.is_file(),
                "--inventory {file}: no such file (expected lab, kube or a kubectl JSON file)"
            );
            Box::new(SnapshotFile::new(path))
        }
    })
}
