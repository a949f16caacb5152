//! `cnpilot explain`: a thin wrapper over `cnpilot_reports::explain`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use cnpilot_learner::aggregate::{learn, LearnOptions};
use cnpilot_recommender::HttpRequest;
use cnpilot_reports::explain::{self, Endpoint, Query};

use crate::Outcome;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

// The variant's doc comment in main.rs is the one-line about; clap
// lets it replace a struct doc comment, so the long help is here.
const EXPLAIN_LONG_HELP: &str = "The flow is evaluated as Cilium would: the source's egress and the
destination's ingress must both allow it, a deny rule wins, and on a port
with HTTP rules the request must match one. For each side the deciding
rule is named with file:line (for a default deny: every policy that
selects the subject in that direction). With --store, the cnpilot
evidence annotations of the deciding rule and the flow table rows of this
flow (connections, first/last seen, verdicts) are shown too.

Endpoints: NS/WORKLOAD (from the store's flow table, or --labels), an
entity (world, host, remote-node, kube-apiserver, health, ingress, …) or
an IPv4 address (a world/CIDR peer).

Exit status: 0 allowed, 1 denied, 2 bad input.

Examples:

  cnpilot explain --policies cli/policies/seed --store /tmp/store \\
      --from tenant-a/worker --to monitoring/prometheus --port 9090/TCP

  cnpilot explain --policies cli/policies/seed \\
      --labels web/frontend-app=app=frontend-app \\
      --labels payments/payments-api=app=payments-api \\
      --from web/frontend-app --to payments/payments-api --port 8080/TCP \\
      --http POST /api/v1/refunds";

const EXPLAIN_SHORT_HELP: &str = "Examples:

  cnpilot explain --policies cli/policies/seed --store /tmp/store \\
      --from tenant-a/worker --to monitoring/prometheus --port 9090/TCP

  cnpilot explain --policies cli/policies/seed \\
      --labels web/frontend-app=app=frontend-app \\
      --labels payments/payments-api=app=payments-api \\
      --from web/frontend-app --to payments/payments-api --port 8080/TCP \\
      --http POST /api/v1/refunds\n\nMore with --help.";

/// Which rule allows or denies one flow, and the evidence behind it.
#[derive(Debug, Args)]
#[command(after_help = EXPLAIN_SHORT_HELP, after_long_help = EXPLAIN_LONG_HELP)]
pub struct ExplainArgs {
    /// Policy files or directories (repeatable).
    #[arg(long, required = true, num_args = 1.., value_name = "DIR")]
    policies: Vec<PathBuf>,
    /// Source: NS/WORKLOAD, an entity, or an IPv4 address.
    #[arg(long, value_name = "NS/WORKLOAD|ENTITY|IP")]
    from: String,
    /// Destination: NS/WORKLOAD, an entity, or an IPv4 address.
    #[arg(long, value_name = "NS/WORKLOAD|ENTITY|IP")]
    to: String,
    /// Destination port and protocol: 8080/TCP, 53/UDP (TCP if omitted).
    #[arg(long, value_name = "N/PROTO")]
    port: String,
    /// An HTTP request on that port: method and path.
    #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"])]
    http: Option<Vec<String>>,
    /// Flow store(s): workload identities and the evidence of observed flows.
    #[arg(long, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Labels of a workload not in a store: NS/WORKLOAD=k=v,k=v (repeatable;
    /// the namespace label is added).
    #[arg(long, value_name = "NS/WORKLOAD=k=v,…")]
    labels: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<Outcome> {
    let policies = cnpilot_recommender::load_paths(&args.policies).context("loading --policies")?;
    let (proto, port) = explain::parse_port(&args.port)?;
    let extra = args
        .labels
        .iter()
        .map(|l| explain::parse_labels(l))
        .collect::<Result<Vec<_>, _>>()?;
    let table = if args.store.is_empty() {
        None
    } else {
        Some(learn(&args.store, &LearnOptions::default()).context("reading --store")?)
    };
    let universe = explain::universe(table.as_ref(), &extra);
    let http = args.http.as_deref().map(|h| HttpRequest {
        method: h.first().cloned().unwrap_or_default(),
        path: h.get(1).cloned().unwrap_or_default(),
        ..HttpRequest::default()
    });
    let query = Query {
        from: Endpoint::parse(&args.from).context("--from")?,
        to: Endpoint::parse(&args.to).context("--to")?,
        proto,
        port,
        http,
    };
    let e = explain::explain(&policies, &universe, table.as_ref(), &query)?;
    match args.output {
        Format::Text => print!("{}", explain::render_text(&e)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&e)?),
    }
    Ok(if e.verdict == cnpilot_recommender::Verdict::Allow {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}
