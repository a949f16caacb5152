//! The staged-enforce records: one directory per namespace under
//! `STATE/enforce/NS/` holding `record.json` (the current stage, replaced
//! atomically), `journal.jsonl` (every transition, appended and synced),
//! `policies/` (the proposal, frozen when the stage machine starts) and,
//! after a rollback, `surprises.jsonl` (the offending flows),
//! `surprises-store/` (them as a flow store) and `addition/` (the policy
//! proposed to let them pass, for the next review).
//!
//! On a cluster the same records are meant to live in a ConfigMap; here a
//! directory keeps them durable across a crash or a reboot of the
//! controller: every transition is on disk before it takes effect.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `/var/lib/cnpilot`: what survives a reboot of the node.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cnpilot";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Proposed,
    AuditSoak,
    Enforce,
    Watch,
    Done,
    RolledBack,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Proposed => "proposed",
            Stage::AuditSoak => "audit-soak",
            Stage::Enforce => "enforce",
            Stage::Watch => "watch",
            Stage::Done => "done",
            Stage::RolledBack => "rolled-back",
        }
    }

    /// Whether the agent loads the proposal for this namespace. A rolled
    /// back namespace keeps it, in audit: its would-drops keep showing what
    /// the proposal would still break.
    pub fn proposal_loaded(self) -> bool {
        !matches!(self, Stage::Proposed)
    }

    /// A run of `enforce` can still move it.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            Stage::Proposed | Stage::AuditSoak | Stage::Enforce | Stage::Watch
        )
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub namespace: String,
    pub stage: Stage,
    /// When the current stage began (RFC 3339) and as Unix ns.
    pub since: String,
    pub since_unix_ns: i64,
    /// Content hash of the frozen proposal.
    pub revision: String,
    /// Why the namespace was rolled back (or why a stage was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Times the soak window started over because of a new would-drop.
    #[serde(default)]
    pub soak_restarts: u64,
}

pub fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub fn rfc3339(unix_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(unix_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One namespace's directory of records.
#[derive(Debug, Clone)]
pub struct NamespaceState {
    pub dir: PathBuf,
    pub namespace: String,
}

impl NamespaceState {
    pub fn new(state_dir: &Path, namespace: &str) -> Self {
        Self {
            dir: state_dir.join("enforce").join(namespace),
            namespace: namespace.to_string(),
        }
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    pub fn surprises_path(&self) -> PathBuf {
        self.dir.join("surprises.jsonl")
    }

    pub fn load(&self) -> anyhow::Result<Option<Record>> {
        let path = self.dir.join("record.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is not a staged-enforce record", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the record (temp file, fsync, rename, fsync of the directory)
    /// and appends the transition to the journal, before the caller acts on
    /// it.
    pub fn save(&self, record: &Record, event: &str) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join("record.json");
        let tmp = self.dir.join(".record.json.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(record)?)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        let line = serde_json::json!({
            "time": rfc3339(now_unix_ns()),
            "stage": record.stage,
            "revision": record.revision,
            "event": event,
            "reason": record.reason,
        });
        self.append(&self.dir.join("journal.jsonl"), &line)
    }

    pub fn append(&self, path: &Path, line: &serde_json::Value) -> anyhow::Result<()> {
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        journal
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| journal.sync_data())
            .with_context(|| format!("appending to {}", path.display()))
    }

    /// Copies the proposal's files into `policies/` (replacing an older
    /// one) and returns its revision.
    pub fn freeze_policies(&self, files: &[PathBuf]) -> anyhow::Result<String> {
        anyhow::ensure!(!files.is_empty(), "no policy files to stage");
        let target = self.policies_dir();
        if target.exists() {
            fs::remove_dir_all(&target)
                .with_context(|| format!("removing the old proposal {}", target.display()))?;
        }
        fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        for file in files {
            let name = file.file_name().context("a policy file without a name")?;
            fs::copy(file, target.join(name))
                .with_context(|| format!("copying {}", file.display()))?;
        }
        revision_of(&target)
    }
}

pub fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading policy directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// FNV-1a over the names and bytes of the YAML files: the same proposal
/// always has the same revision, any edit a new one.
pub fn revision_of(dir: &Path) -> anyhow::Result<String> {
    revision_of_files(&yaml_files(dir)?)
}

/// [`revision_of`] for files before they are frozen (same names, same
/// bytes, same revision).
pub fn revision_of_files(files: &[PathBuf]) -> anyhow::Result<String> {
    let mut sorted: Vec<&PathBuf> = files.iter().collect();
    sorted.sort_by_key(|f| f.file_name().map(|n| n.to_os_string()));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in sorted {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        eat(name.unwrap_or_default().as_bytes());
        eat(&[0]);
        eat(&fs::read(file).with_context(|| format!("reading {}", file.display()))?);
        eat(&[0]);
    }
    Ok(format!("{h:016x}"))
}

/// Every namespace with a record, sorted by name.
pub fn all(state_dir: &Path) -> anyhow::Result<Vec<(NamespaceState, Record)>> {
    let root = state_dir.join("enforce");
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(namespace) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let ns = NamespaceState::new(state_dir, &namespace);
        if let Some(record) = ns.load()? {
            out.push((ns, record));
        }
    }
    out.sort_by(|a, b| a.0.namespace.cmp(&b.0.namespace));
    Ok(out)
}

/// One controller per namespace: held for the life of an `enforce` run
/// (released by the kernel when it dies, so a crash never blocks a rerun).
pub fn lock(ns: &NamespaceState) -> anyhow::Result<File> {
    fs::create_dir_all(&ns.dir).with_context(|| format!("creating {}", ns.dir.display()))?;
    let path = ns.dir.join("controller.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        anyhow::bail!(
            "another `cnpilot enforce -n {}` is running (it holds {})",
            ns.namespace,
            path.display()
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_the_journal_keeps_every_transition() {
        let dir = tempfile::tempdir().unwrap();
        let ns = NamespaceState::new(dir.path(), "payments");
        assert_eq!(ns.load().unwrap(), None);
        let mut record = Record {
            namespace: "payments".into(),
            stage: Stage::Proposed,
            since: rfc3339(1),
            since_unix_ns: 1,
            revision: "r".into(),
            reason: None,
            soak_restarts: 0,
        };
        ns.save(&record, "proposed").unwrap();
        record.stage = Stage::AuditSoak;
        ns.save(&record, "soak").unwrap();
        assert_eq!(ns.load().unwrap(), Some(record));
        let journal = fs::read_to_string(ns.dir.join("journal.jsonl")).unwrap();
        assert_eq!(journal.lines().count(), 2);
        assert!(journal.contains("\"stage\":\"audit-soak\""), "{journal}");
    }

    #[test]
    fn a_revision_changes_with_any_byte_and_staging_copies_the_files() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.yaml"), "x: 1\n").unwrap();
        fs::write(src.path().join("notes.txt"), "ignored").unwrap();
        let state = tempfile::tempdir().unwrap();
        let ns = NamespaceState::new(state.path(), "p");
        let first = ns
            .freeze_policies(&yaml_files(src.path()).unwrap())
            .unwrap();
        assert!(ns.policies_dir().join("a.yaml").exists());
        assert!(!ns.policies_dir().join("notes.txt").exists());
        fs::write(src.path().join("a.yaml"), "x: 2\n").unwrap();
        assert_ne!(revision_of(src.path()).unwrap(), first);
        assert_eq!(revision_of(&ns.policies_dir()).unwrap(), first);
    }

    #[test]
    fn a_second_controller_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let ns = NamespaceState::new(state.path(), "p");
        let _held = lock(&ns).unwrap();
        let err = lock(&ns).unwrap_err().to_string();
        assert!(err.contains("another `cnpilot enforce -n p`"), "{err}");
    }
}
