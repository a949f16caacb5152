//! Loading policy files: multi-document YAML, directories, `file:line` errors.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::check::check_policy;
use super::{CiliumPolicy, UNMODELLED_FIELDS};

/// A message tied to a place in an input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// A parsed policy and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    pub policy: CiliumPolicy,
    pub file: String,
    /// 1-based line of the document's first content line.
    pub line: usize,
}

/// Every policy loaded from a set of inputs, plus warnings about constructs
/// that parse but that the evaluator does not model.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<LoadedPolicy>,
    pub warnings: Vec<Diagnostic>,
}

impl PolicySet {
    pub fn extend(&mut self, other: PolicySet) {
        self.policies.extend(other.policies);
        self.warnings.extend(other.warnings);
    }
}

/// Load files and directories (recursively: `*.yaml`, `*.yml`, `*.json`,
/// in name order). All errors of all files are collected before returning.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<PolicySet, LoadError> {
    let mut set = PolicySet::default();
    let mut errors = Vec::new();
    for path in paths {
        for file in policy_files(path.as_ref())? {
            let label = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
                path: label.clone(),
                source,
            })?;
            match load_str(&text, &label) {
                Ok(s) => set.extend(s),
                Err(LoadError::Invalid(d)) => errors.extend(d),
                Err(e) => return Err(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

fn policy_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        // Hidden entries (`.cnpilot/`, editor swap files) are not policies:
        // `recommend` keeps its report in `.cnpilot/` beside the YAML.
        if entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        if entry.is_dir() {
            files.extend(policy_files(&entry)?);
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            files.push(entry);
        }
    }
    Ok(files)
}

/// One YAML document of a stream: its text and the line it starts on.
pub(crate) struct DocText<'a> {
    pub text: String,
    pub start_line: usize,
    pub lines: Vec<&'a str>,
}

/// Split a YAML stream on `---` / `...` lines, keeping line numbers.
pub(crate) fn split_documents(text: &str, first_line: usize) -> Vec<DocText<'_>> {
    let mut docs = Vec::new();
    let mut current = DocText {
        text: String::new(),
        start_line: first_line,
        lines: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let i = i + first_line - 1;
        let marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if marker || line.trim_end() == "..." {
            docs.push(std::mem::replace(
                &mut current,
                DocText {
                    text: String::new(),
                    start_line: i + 1,
                    lines: Vec::new(),
                },
            ));
            if marker {
                // Content after `--- ` belongs to the new document; pad so
                // its columns (and serde_yaml's line numbers) stay right.
                current.text.push_str(&format!("   {}\n", &line[3..]));
                current.lines.push(line);
            } else {
                current.start_line = i + 2;
            }
            continue;
        }
        current.text.push_str(line);
        current.text.push('\n');
        current.lines.push(line);
    }
    docs.push(current);
    docs
}

/// Parse every document of one YAML text; `file` labels diagnostics.
pub fn load_str(text: &str, file: &str) -> Result<PolicySet, LoadError> {
    load_str_at(text, file, 1)
}

/// As [`load_str`], for text that starts at line `first_line` of `file`
/// (a block embedded in another document).
pub fn load_str_at(text: &str, file: &str, first_line: usize) -> Result<PolicySet, LoadError> {
    let mut set = PolicySet::default();
    let mut errors = Vec::new();
    for doc in split_documents(text, first_line) {
        let diag = |line: usize, message: String| Diagnostic {
            file: file.to_string(),
            line,
            message,
        };
        // An empty document (only comments, or a trailing `---`) is skipped.
        match serde_yaml::from_str::<serde_yaml::Value>(&doc.text) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(_) => {}
            Err(e) => {
                errors.push(diag(error_line(&e, &doc), clean_message(&e)));
                continue;
            }
        }
        match serde_yaml::from_str::<CiliumPolicy>(&doc.text) {
            Ok(policy) => {
                let (notes, problems): (Vec<_>, Vec<_>) =
                    check_policy(&policy).into_iter().partition(|p| p.warning);
                if problems.is_empty() {
                    set.warnings.extend(
                        notes
                            .into_iter()
                            .map(|p| (locate(&doc, &p.hint), p.message))
                            .chain(top_level_description(&policy, &doc))
                            .chain(unmodelled_warnings(&policy, &doc))
                            .map(|(l, m)| diag(l, m)),
                    );
                    set.policies.push(LoadedPolicy {
                        policy,
                        file: file.to_string(),
                        line: first_content_line(&doc),
                    });
                } else {
                    errors.extend(
                        problems
                            .into_iter()
                            .map(|p| diag(locate(&doc, &p.hint), p.message)),
                    );
                }
            }
            Err(e) => errors.push(diag(error_line(&e, &doc), clean_message(&e))),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

/// The document's first line with content (not a marker, blank or comment).
fn first_content_line(doc: &DocText) -> usize {
    doc.lines
        .iter()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        })
        .map_or(doc.start_line, |i| doc.start_line + i)
}

fn error_line(e: &serde_yaml::Error, doc: &DocText) -> usize {
    e.location().map_or(doc.start_line, |l| {
        doc.start_line + l.line().saturating_sub(1)
    })
}

/// serde_yaml appends " at line X column Y" with document-relative numbers;
/// the diagnostic carries the file line instead.
fn clean_message(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    let msg = match msg.find(" at line ") {
        Some(i) => format!(
            "{}{}",
            &msg[..i],
            msg[i..]
                .split_once(" column ")
                .map_or("", |(_, rest)| rest.trim_start_matches(char::is_numeric))
        ),
        None => msg,
    };
    let msg = msg.replace("unknown variant", "unknown value");
    if msg.starts_with("missing field `apiVersion`") || msg.starts_with("missing field `kind`") {
        format!(
            "{msg}: expected a cilium.io/v2 CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy"
        )
    } else {
        msg
    }
}

/// The first line of the document that contains `hint`, else its start.
fn locate(doc: &DocText, hint: &str) -> usize {
    if hint.is_empty() {
        return doc.start_line;
    }
    doc.lines
        .iter()
        .position(|l| !l.trim_start().starts_with('#') && l.contains(hint))
        .map_or(doc.start_line, |i| doc.start_line + i)
}

/// A top-level `description` (beside `spec`, not in it): Kubernetes prunes
/// fields its CRD schema does not list, so it never reaches the cluster.
fn top_level_description(policy: &CiliumPolicy, doc: &DocText) -> Option<(usize, String)> {
    policy.description.as_ref()?;
    // The least indented line naming the key is the top-level one (a
    // `spec.description` sits deeper), in YAML and pretty-printed JSON alike.
    let line = doc
        .lines
        .iter()
        .enumerate()
        .filter(|(_, l)| mentions_key(l.split('#').next().unwrap_or(""), "description"))
        .min_by_key(|(_, l)| l.len() - l.trim_start().len())
        .map_or(doc.start_line, |(i, _)| doc.start_line + i);
    Some((
        line,
        format!(
            "top-level `description` is not part of the {} schema: the API server drops it, and cnpilot ignores it and leaves it out of what it writes (`spec.description` keeps it)",
            policy.kind.as_str()
        ),
    ))
}

/// Warnings for each unmodelled field present, at each line that names it.
fn unmodelled_warnings(policy: &CiliumPolicy, doc: &DocText) -> Vec<(usize, String)> {
    let mut present = std::collections::BTreeSet::new();
    let mut ipv6 = false;
    if let Ok(value) = serde_json::to_value(policy) {
        for part in [value.get("spec"), value.get("specs")]
            .into_iter()
            .flatten()
        {
            collect_keys(part, &mut present);
        }
    }
    for rule in policy.rules() {
        ipv6 |= format!("{rule:?}").contains("V6(");
    }
    let mut out = Vec::new();
    for field in present {
        let mut found = false;
        for (i, line) in doc.lines.iter().enumerate() {
            let code = line.split('#').next().unwrap_or("");
            if mentions_key(code, field) {
                found = true;
                out.push((doc.start_line + i, format!("not modelled: {field} (parsed and kept; the evaluator ignores it, so verdicts near it may differ from Cilium's)")));
            }
        }
        if !found {
            out.push((doc.start_line, format!("not modelled: {field}")));
        }
    }
    if ipv6 {
        out.push((
            doc.start_line,
            "not modelled: IPv6 CIDRs (the datapath is IPv4-only)".to_string(),
        ));
    }
    out
}

fn mentions_key(code: &str, key: &str) -> bool {
    code.match_indices(key).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        // A quoted key (JSON) closes its quote before the colon.
        let rest = &code[i + key.len()..];
        let after = rest
            .strip_prefix(['"', '\''])
            .unwrap_or(rest)
            .trim_start()
            .starts_with(':');
        after
            && before.is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '-' | '"' | '\''))
    })
}

fn collect_keys(value: &serde_json::Value, found: &mut std::collections::BTreeSet<&'static str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if let Some(f) = UNMODELLED_FIELDS.iter().find(|f| **f == k) {
                    found.insert(f);
                    continue;
                }
                collect_keys(v, found);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_keys(v, found)),
        _ => {}
    }
}
