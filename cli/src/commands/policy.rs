//! `cnpilot policy check|test`: validate policy files and run policy cases.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use cnpilot_recommender::cases::{load_case_paths, run_case, FlowResult};
use cnpilot_recommender::model::{load_paths, Diagnostic, LoadError};

use crate::Outcome;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy
    /// files or directories. Errors are `file:line: message` (exit 2);
    /// constructs the evaluator does not model are warnings (exit 0).
    Check {
        /// Policy files (multi-document YAML) or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
    },
    /// Run policy cases (the format of policy-cases/README.md): every flow's
    /// verdict is compared with the expected one. Prints each disagreeing
    /// flow with the rules that decided it, then `N passed, N failed`.
    /// Exit 1 if any flow fails, 2 on bad input.
    Test {
        /// Case files or directories of case files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        /// Also print the flows that pass, with their deciding rules.
        #[arg(short, long)]
        verbose: bool,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<Outcome> {
    match cmd {
        PolicyCommand::Check { paths, output } => check(&paths, output),
        PolicyCommand::Test {
            paths,
            output,
            verbose,
        } => test(&paths, output, verbose),
    }
}

fn report_invalid(diags: &[Diagnostic], output: Format) -> anyhow::Error {
    if output == Format::Json {
        println!("{}", serde_json::json!({"valid": false, "errors": diags}));
    } else {
        for d in diags {
            eprintln!("{d}");
        }
    }
    anyhow::anyhow!(
        "{} invalid input(s); first: {}",
        diags.len(),
        diags.first().map(ToString::to_string).unwrap_or_default()
    )
}

fn check(paths: &[PathBuf], output: Format) -> anyhow::Result<Outcome> {
    let set = match load_paths(paths) {
        Ok(set) => set,
        Err(LoadError::Invalid(diags)) => return Err(report_invalid(&diags, output)),
        Err(e) => return Err(e).context("cannot read policies"),
    };
    match output {
        Format::Json => {
            let policies: Vec<_> = set
                .policies
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "file": p.file, "line": p.line, "kind": p.policy.kind.as_str(),
                        "namespace": p.policy.metadata.namespace, "name": p.policy.metadata.name,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"valid": true, "policies": policies, "warnings": set.warnings})
            );
        }
        Format::Text => {
            for w in &set.warnings {
                eprintln!("{}:{}: warning: {}", w.file, w.line, w.message);
            }
            println!(
                "{} policies valid, {} warnings",
                set.policies.len(),
                set.warnings.len()
            );
        }
    }
    Ok(Outcome::Success)
}

fn test(paths: &[PathBuf], output: Format, verbose: bool) -> anyhow::Result<Outcome> {
    let files = match load_case_paths(paths) {
        Ok(f) => f,
        Err(LoadError::Invalid(diags)) => return Err(report_invalid(&diags, output)),
        Err(e) => return Err(e).context("cannot read cases"),
    };
    let mut results: Vec<FlowResult> = Vec::new();
    for file in &files {
        for case in &file.cases {
            match run_case(case, &file.file) {
                Ok(r) => results.extend(r),
                Err(LoadError::Invalid(diags)) => return Err(report_invalid(&diags, output)),
                Err(e) => return Err(e.into()),
            }
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let failed = results.len() - passed;
    match output {
        Format::Json => {
            println!(
                "{}",
                serde_json::json!({"passed": passed, "failed": failed, "flows": results})
            );
        }
        Format::Text => {
            for r in results.iter().filter(|r| verbose || !r.passed) {
                let status = if r.passed { "ok  " } else { "FAIL" };
                println!(
                    "{status} {} flow {}: {}: expected {}, got {}",
                    r.case,
                    r.index,
                    r.flow,
                    verdict_name(r.expected),
                    verdict_name(r.got)
                );
                for line in &r.explanation {
                    println!("       {line}");
                }
            }
            println!("{passed} passed, {failed} failed");
        }
    }
    Ok(if failed == 0 {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}

fn verdict_name(v: cnpilot_recommender::Verdict) -> &'static str {
    match v {
        cnpilot_recommender::Verdict::Allow => "allow",
        cnpilot_recommender::Verdict::Deny => "deny",
        cnpilot_recommender::Verdict::DenyL7 => "deny-l7",
    }
}
