//! A semantic YAML diff of policy directories.
//!
//! Two files that Kubernetes would read as the same object must produce no
//! diff: key order, quoting, flow vs block style, comments and document
//! markers are all lost when each document is parsed into a value and
//! re-serialized with sorted keys. Cilium policies additionally go through
//! the recommender's model, so `port: 80` and `port: "80"` (both valid, read
//! the same by Cilium) are the same too. Documents are matched by
//! (kind, namespace, name); an object on one side only is shown whole.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use similar::TextDiff;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Yaml {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: two documents are {key} (the other is at {other})")]
    Duplicate {
        file: String,
        line: usize,
        key: Box<ObjectKey>,
        other: String,
    },
}

/// What identifies an object in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One parsed document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub key: ObjectKey,
    pub file: String,
    pub line: usize,
    /// The canonical YAML text (sorted keys, block style, no comments).
    pub canonical: String,
}

/// How an object differs between the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One object that differs.
#[derive(Debug, Clone)]
pub struct ObjectDiff {
    pub key: ObjectKey,
    pub change: Change,
    /// `file:line` on each side, when present.
    pub current: Option<String>,
    pub proposed: Option<String>,
    /// Unified diff lines (hunk headers and `+`/`-`/` ` lines), no file header.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DiffReport {
    pub objects: Vec<ObjectDiff>,
    /// Objects present on both sides with no difference.
    pub unchanged: usize,
}

impl DiffReport {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn count(&self, change: Change) -> usize {
        self.objects.iter().filter(|o| o.change == change).count()
    }
}

/// Every `*.yaml`, `*.yml`, `*.json` under the paths (directories
/// recursively, names in order; hidden entries such as `.cnpilot/` skipped).
pub fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DiffError> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), DiffError> {
        let io = |source| DiffError::Io {
            path: path.display().to_string(),
            source,
        };
        if !std::fs::metadata(path).map_err(io)?.is_dir() {
            out.push(path.to_path_buf());
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if entry.is_dir() {
                walk(&entry, out)?;
            } else if entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                out.push(entry);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out)?;
    }
    Ok(out)
}

/// Load every document of every file under `paths`.
pub fn load_documents(paths: &[PathBuf]) -> Result<Vec<Document>, DiffError> {
    let mut docs = Vec::new();
    for file in yaml_files(paths)? {
        let label = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|source| DiffError::Io {
            path: label.clone(),
            source,
        })?;
        docs.extend(parse_documents(&text, &label)?);
    }
    Ok(docs)
}

/// Split a stream on `---` lines, keeping each document's first line.
fn split(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        let marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if marker || line.trim_end() == "..." {
            out.push((i + 2, String::new()));
            if marker && !line[3..].trim().is_empty() {
                // `--- {a: 1}`: content on the marker line belongs to the
                // new document; keep its line number.
                if let Some(last) = out.last_mut() {
                    last.0 = i + 1;
                    last.1.push_str(&line[3..]);
                    last.1.push('\n');
                }
            }
            continue;
        }
        if let Some(last) = out.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    out
}

/// Parse one YAML text (`file` labels errors and documents).
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Document>, DiffError> {
    let mut docs = Vec::new();
    for (start, doc) in split(text) {
        let value: Value = match serde_yaml::from_str::<serde_yaml::Value>(&doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => serde_json::to_value(v).map_err(|e| DiffError::Yaml {
                file: file.to_string(),
                line: start,
                message: e.to_string(),
            })?,
            Err(e) => {
                let line = e
                    .location()
                    .map_or(start, |l| start + l.line().saturating_sub(1));
                let message = e.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_string();
                return Err(DiffError::Yaml {
                    file: file.to_string(),
                    line,
                    message,
                });
            }
        };
        let content_line = start
            + doc
                .lines()
                .position(|l| {
                    let t = l.trim();
                    !t.is_empty() && !t.starts_with('#')
                })
                .unwrap_or(0);
        let text_of = |key: &str| -> Option<String> {
            value
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_string);
        let (Some(kind), Some(name)) = (kind, text_of("name")) else {
            return Err(DiffError::Yaml {
                file: file.to_string(),
                line: content_line,
                message:
                    "a document without `kind` and `metadata.name` cannot be matched to an object"
                        .into(),
            });
        };
        let namespace = match kind.as_str() {
            // Cluster-scoped: a stray namespace does not make another object.
            "CiliumClusterwideNetworkPolicy" | "Namespace" => None,
            _ => Some(text_of("namespace").unwrap_or_else(|| "default".into())),
        };
        let value = normalize_policy(value);
        docs.push(Document {
            key: ObjectKey {
                kind,
                namespace,
                name,
            },
            file: file.to_string(),
            line: content_line,
            canonical: canonical_yaml(&value),
        });
    }
    Ok(docs)
}

/// The documents of an already loaded policy set (same canonical form as
/// [`parse_documents`]).
pub fn documents_of(set: &cnpilot_recommender::PolicySet) -> Vec<Document> {
    set.policies
        .iter()
        .map(|p| {
            let value = serde_json::to_value(&p.policy).unwrap_or(Value::Null);
            Document {
                key: ObjectKey {
                    kind: p.policy.kind.as_str().to_string(),
                    namespace: p.policy.scope_namespace().map(str::to_string),
                    name: p.policy.metadata.name.clone(),
                },
                file: p.file.clone(),
                line: p.line,
                canonical: canonical_yaml(&value),
            }
        })
        .collect()
}

/// A Cilium policy through the model and back: ports, protocols and other
/// values that have several spellings come out in one. Anything the model
/// rejects is compared as written (diff is not a validator; `policy check`
/// is).
fn normalize_policy(value: Value) -> Value {
    let is_cilium = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v == "cilium.io/v2");
    if !is_cilium {
        return value;
    }
    match serde_json::from_value::<cnpilot_recommender::model::CiliumPolicy>(value.clone()) {
        Ok(p) => serde_json::to_value(p).unwrap_or(value),
        Err(_) => value,
    }
}

/// Keys sorted at every level (explicitly: serde_json may be built with
/// `preserve_order` by another crate in the graph).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Block-style YAML with sorted keys.
pub fn canonical_yaml(value: &Value) -> String {
    serde_yaml::to_string(&sorted(value)).unwrap_or_else(|_| format!("{value:#}\n"))
}

/// Diff two sets of documents with `context` lines around each change.
pub fn diff(
    current: &[Document],
    proposed: &[Document],
    context: usize,
) -> Result<DiffReport, DiffError> {
    let index = |docs: &[Document]| -> Result<BTreeMap<ObjectKey, Document>, DiffError> {
        let mut map: BTreeMap<ObjectKey, Document> = BTreeMap::new();
        for d in docs {
            if let Some(prev) = map.get(&d.key) {
                return Err(DiffError::Duplicate {
                    file: d.file.clone(),
                    line: d.line,
                    key: Box::new(d.key.clone()),
                    other: format!("{}:{}", prev.file, prev.line),
                });
            }
            map.insert(d.key.clone(), d.clone());
        }
        Ok(map)
    };
    let cur = index(current)?;
    let prop = index(proposed)?;
    let mut keys: Vec<&ObjectKey> = cur.keys().chain(prop.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut report = DiffReport::default();
    for key in keys {
        let (a, b) = (cur.get(key), prop.get(key));
        let old = a.map_or("", |d| d.canonical.as_str());
        let new = b.map_or("", |d| d.canonical.as_str());
        if old == new {
            report.unchanged += 1;
            continue;
        }
        let change = match (a, b) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Changed,
        };
        let text = TextDiff::from_lines(old, new);
        // A whole added/removed object is shown entirely.
        let radius = if change == Change::Changed {
            context
        } else {
            usize::MAX / 2
        };
        let mut lines = Vec::new();
        for hunk in text.unified_diff().context_radius(radius).iter_hunks() {
            let rendered = hunk.to_string();
            lines.extend(rendered.lines().map(str::to_string));
        }
        let place = |d: &Document| format!("{}:{}", d.file, d.line);
        report.objects.push(ObjectDiff {
            key: key.clone(),
            change,
            current: a.map(place),
            proposed: b.map(place),
            lines,
        });
    }
    Ok(report)
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// The report as a unified diff, one header pair per object; ANSI colours
/// when `color`.
pub fn render(report: &DiffReport, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    for o in &report.objects {
        let side = |label: &str, place: &Option<String>| match place {
            Some(p) => format!("{label}: {} ({p})", o.key),
            None => format!("{label}: {} (absent)", o.key),
        };
        let _ = writeln!(
            out,
            "{}",
            paint(BOLD, &format!("--- {}", side("current", &o.current)))
        );
        let _ = writeln!(
            out,
            "{}",
            paint(BOLD, &format!("+++ {}", side("proposed", &o.proposed)))
        );
        for line in &o.lines {
            let code = match line.as_bytes().first() {
                Some(b'+') => GREEN,
                Some(b'-') => RED,
                Some(b'@') => CYAN,
                _ => "",
            };
            if code.is_empty() {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "{}", paint(code, line));
            }
        }
    }
    let _ = writeln!(
        out,
        "{} changed, {} added, {} removed, {} unchanged",
        report.count(Change::Changed),
        report.count(Change::Added),
        report.count(Change::Removed),
        report.unchanged
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
# tenant policy
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tenant-a-rules
  namespace: tenant-a
spec:
  endpointSelector:
    matchLabels:
      io.kubernetes.pod.namespace: tenant-a
  egress:
  - toEndpoints:
    - matchLabels:
        app: prometheus
    toPorts:
    - ports:
      - port: "9090"
        protocol: TCP
"#;

    fn docs(text: &str) -> Vec<Document> {
        parse_documents(text, "t.yaml").expect("test yaml parses")
    }

    fn diff_of(a: &str, b: &str) -> DiffReport {
        diff(&docs(a), &docs(b), 3).expect("no duplicates")
    }

    #[test]
    fn reordered_keys_quotes_flow_style_and_comments_are_no_diff() {
        let other = r#"---
kind: CiliumNetworkPolicy   # same object, written differently
apiVersion: 'cilium.io/v2'
metadata: {namespace: tenant-a, name: "tenant-a-rules"}
spec:
  egress:
  - toPorts: [{ports: [{protocol: TCP, port: 9090}]}]
    toEndpoints: [{matchLabels: {app: prometheus}}]
  endpointSelector: {matchLabels: {"io.kubernetes.pod.namespace": tenant-a}}
...
"#;
        let report = diff_of(BASE, other);
        assert!(report.is_empty(), "{}", render(&report, false));
        assert_eq!(report.unchanged, 1);
    }

    #[test]
    fn a_real_change_is_one_changed_line_pair() {
        let changed = BASE.replace("\"9090\"", "\"9091\"");
        let report = diff_of(BASE, &changed);
        assert_eq!(report.objects.len(), 1);
        assert_eq!(report.objects[0].change, Change::Changed);
        let minus: Vec<_> = report.objects[0]
            .lines
            .iter()
            .filter(|l| l.starts_with('-') || l.starts_with('+'))
            .collect();
        assert_eq!(minus, ["-      - port: '9090'", "+      - port: '9091'"]);
        let text = render(&report, false);
        assert!(text.starts_with(
            "--- current: CiliumNetworkPolicy tenant-a/tenant-a-rules (t.yaml:3)\n+++ proposed: CiliumNetworkPolicy tenant-a/tenant-a-rules (t.yaml:3)\n@@"
        ), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(render(&report, true).contains("\x1b[32m+"));
    }

    #[test]
    fn objects_on_one_side_are_whole_additions_and_removals() {
        let other = BASE.replace("tenant-a-rules", "tenant-a-new");
        let report = diff_of(BASE, &other);
        assert_eq!(report.count(Change::Added), 1);
        assert_eq!(report.count(Change::Removed), 1);
        let added = report
            .objects
            .iter()
            .find(|o| o.change == Change::Added)
            .expect("one added");
        assert!(added.current.is_none());
        assert!(added.lines.iter().skip(1).all(|l| l.starts_with('+')));
        assert!(added.lines.iter().any(|l| l.contains("tenant-a-new")));
    }

    #[test]
    fn yaml_errors_name_file_and_line() {
        let bad = format!("{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n");
        let err = parse_documents(&bad, "p.yaml").expect_err("bad yaml");
        let text = err.to_string();
        assert!(text.starts_with("p.yaml:25:"), "{text}");
    }

    #[test]
    fn duplicate_objects_are_an_error_naming_both_places() {
        let two = format!("{BASE}---\n{BASE}");
        let err = diff(&docs(&two), &[], 3).expect_err("duplicate");
        assert!(
            err.to_string().contains("(the other is at t.yaml:3)"),
            "{err}"
        );
    }

    #[test]
    fn a_document_without_a_name_is_an_error() {
        let err = parse_documents("kind: X\nmetadata: {}\n", "n.yaml").expect_err("no name");
        assert!(err.to_string().starts_with("n.yaml:1:"), "{err}");
    }
}
