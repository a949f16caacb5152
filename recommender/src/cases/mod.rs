//! Policy cases: the shared format of `seed-cases/FORMAT.md` ("what does
//! Cilium do with this flow?") and a runner that checks each flow against
//! the evaluator.

mod run;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compile::{HttpRequest, Verdict};
use crate::model::{Diagnostic, LoadError};
pub use run::{fqdn_inputs, run_case, FlowResult};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub id: String,
    pub source: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Outside addresses DNS answers gave, with the names asked for: what
    /// `toFQDNs` selects.
    #[serde(default)]
    pub world: Vec<WorldSpec>,
    pub policies: String,
    pub flows: Vec<FlowSpec>,
    /// Line of the case file where the `policies` block's text starts.
    #[serde(skip)]
    pub policies_line: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub named_ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

/// An outside address and the names whose DNS answers gave it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldSpec {
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub fqdns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlowProto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    /// VRRP and IGMP have no ports: their flows name none.
    Vrrp,
    Igmp,
}

impl FlowProto {
    pub fn number(self) -> u8 {
        match self {
            FlowProto::Tcp => 6,
            FlowProto::Udp => 17,
            FlowProto::Sctp => 132,
            FlowProto::Icmp => 1,
            FlowProto::Vrrp => 112,
            FlowProto::Igmp => 2,
        }
    }

    /// Whether flows of this protocol carry a destination port.
    pub fn has_ports(self) -> bool {
        matches!(self, FlowProto::Tcp | FlowProto::Udp | FlowProto::Sctp)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Ipv4Addr>,
    pub proto: FlowProto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRequest>,
    /// The query name of a DNS request (checked against `rules.dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    pub expect: Verdict,
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            "deny-l7" => Ok(Verdict::DenyL7),
            other => Err(serde::de::Error::custom(format!(
                "unknown expect `{other}`: expected allow, deny or deny-l7"
            ))),
        }
    }
}

/// A case file's cases, with the file they came from.
#[derive(Debug, Clone)]
pub struct CaseFile {
    pub file: String,
    pub cases: Vec<Case>,
}

/// Load case files and directories of them (`*.yaml`, `*.yml`).
pub fn load_case_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<CaseFile>, LoadError> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        for file in case_files(path.as_ref())? {
            let label = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
                path: label.clone(),
                source,
            })?;
            match parse_cases(&text, &label) {
                Ok(cases) => files.push(CaseFile { file: label, cases }),
                Err(d) => errors.push(d),
            }
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

pub fn parse_cases(text: &str, file: &str) -> Result<Vec<Case>, Diagnostic> {
    let mut cases: Vec<Case> = serde_yaml::from_str::<Option<Vec<Case>>>(text)
        .map_err(|e| Diagnostic {
            file: file.to_string(),
            line: e.location().map_or(1, |l| l.line()),
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string(),
        })?
        .unwrap_or_default();
    // Each case has exactly one `policies:` key; with a block scalar its
    // text starts on the next line.
    let mut starts = text.lines().enumerate().filter_map(|(i, l)| {
        let t = l.trim_start().trim_start_matches("- ");
        t.strip_prefix("policies:").map(|rest| {
            if rest.trim().starts_with('|') || rest.trim().starts_with('>') {
                i + 2
            } else {
                i + 1
            }
        })
    });
    for c in &mut cases {
        c.policies_line = starts.next().unwrap_or(1);
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &cases {
        if !seen.insert(c.id.as_str()) {
            let line = text
                .lines()
                .position(|l| l.contains(&c.id))
                .map_or(1, |i| i + 1);
            return Err(Diagnostic {
                file: file.to_string(),
                line,
                message: format!("duplicate case id `{}`", c.id),
            });
        }
    }
    Ok(cases)
}

fn case_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e == "yaml" || e == "yml")
        })
        .collect();
    files.sort();
    Ok(files)
}
