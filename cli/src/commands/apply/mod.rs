//! `cnpilot apply`: the CNP/CCNP files of a directory, server-side applied
//! to a cluster with field manager `cnpilot`.

#[cfg(test)]
mod body_tests;
mod errors;
mod ssa;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use cnpilot_recommender::model::LoadedPolicy;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Outcome;

const APPLY_LONG_HELP: &str = "\
Every policy is loaded and checked as `cnpilot policy check` does (an error
names file:line and nothing is sent), then applied one by one with
server-side apply: field manager `cnpilot`, strict field validation (a field
the cluster's Cilium CRD does not know is an error, never silently dropped).
A CiliumNetworkPolicy goes to the namespace it was reviewed in (`default`
when the file names none), whatever the kubeconfig's namespace is.

One line per policy:
  applied payments/cnpilot-payments-api (created|configured|unchanged)
  would apply payments/cnpilot-payments-api (created; dry run)

Fields another manager set (`kubectl apply`, Helm, an operator) are not
taken over unless --force-conflicts says so; the conflict names them.
Nothing is ever deleted. The person or CI identity running this needs the
`cnpilot-apply` ClusterRole of deploy/rbac.yaml.

Exit status: 0 every policy applied (or would be); 2 bad input, or any
policy not applied (each one's reason on stderr).

Examples:

  cnpilot apply --dir proposed/ --dry-run
  cnpilot apply --dir proposed/
  cnpilot apply --dir proposed/ --context prod --kubeconfig ~/.kube/prod.yaml
  cnpilot apply --dir proposed/ --force-conflicts";

const APPLY_SHORT_HELP: &str = "Examples:

  cnpilot apply --dir proposed/ --dry-run
  cnpilot apply --dir proposed/ --context prod

More with --help.";

/// Server-side apply CiliumNetworkPolicies to a cluster.
#[derive(Debug, Args)]
#[command(after_help = APPLY_SHORT_HELP, after_long_help = APPLY_LONG_HELP)]
pub struct ApplyArgs {
    /// Policies to apply: a directory of CNP/CCNP YAML (such as
    /// `recommend --out`), or a file; repeatable.
    #[arg(long, required = true, value_name = "DIR")]
    dir: Vec<PathBuf>,
    /// Validate and admit on the API server, store nothing (`dryRun=All`).
    #[arg(long)]
    dry_run: bool,
    /// Take over the fields other field managers own.
    #[arg(long)]
    force_conflicts: bool,
    /// The kubeconfig context (default: its current context).
    #[arg(long, value_name = "C")]
    context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then
    /// the in-cluster service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

pub fn run(args: ApplyArgs) -> anyhow::Result<Outcome> {
    let set = cnpilot_recommender::load_paths(&args.dir).context("reading --dir")?;
    if set.policies.is_empty() {
        bail!(
            "no CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy in {}",
            shown(&args.dir)
        );
    }
    refuse_duplicates(&set.policies)?;
    let options = ssa::Options {
        dry_run: args.dry_run,
        force_conflicts: args.force_conflicts,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let results = rt.block_on(async {
        let (client, server) = connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        anyhow::Ok(ssa::apply_all(&client, &server, &set.policies, options).await)
    })?;
    summarize(&results, set.policies.len(), args.dry_run)
}

/// Print one line per policy; an error when any was not applied.
fn summarize(results: &[ssa::Applied], total: usize, dry_run: bool) -> anyhow::Result<Outcome> {
    let mut failed = 0;
    for applied in results {
        if applied.result.is_ok() {
            println!("{}", applied.line(dry_run));
        } else {
            failed += 1;
            eprintln!("cnpilot apply: {}", applied.line(dry_run));
        }
    }
    let not_tried = total - results.len();
    if failed + not_tried == 0 {
        return Ok(Outcome::Success);
    }
    let mut summary = format!("{failed} of {total} policies not applied");
    if not_tried > 0 {
        summary.push_str(&format!(" and {not_tried} not tried"));
    }
    bail!("{summary} (reasons above)")
}

/// Two files naming the same object would overwrite each other, in file
/// order: almost always a copy left behind.
fn refuse_duplicates(policies: &[LoadedPolicy]) -> anyhow::Result<()> {
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    for loaded in policies {
        let target = ssa::Target::of(&loaded.policy);
        let key = format!("{} {target}", target.kind.as_str());
        let here = format!("{}:{}", loaded.file, loaded.line);
        if let Some(first) = seen.insert(key.clone(), here.clone()) {
            bail!("{here}: {key} is also defined at {first}: keep one");
        }
    }
    Ok(())
}

fn shown(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A client for the kubeconfig (and context) asked for, and the API
/// server's URL to name in messages.
async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| once(&format!("reading kubeconfig {}", path.display()), &e))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| once(&format!("kubeconfig {}", path.display()), &e))?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| once(&format!("kubeconfig context {context}"), &e))?,
        (None, None) => Config::infer().await.map_err(|e| {
            once(
                "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod",
                &e,
            )
        })?,
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| once(&format!("setting up a client for {server}"), &e))?;
    Ok((client, server))
}

/// kube's errors repeat their sources in their own text: one line, once.
fn once(context: &str, err: &dyn std::error::Error) -> anyhow::Error {
    anyhow!("{context}: {}", errors::cause_chain(err))
}
