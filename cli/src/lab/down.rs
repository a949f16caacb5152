//! `cnpilot lab down`: removes what a lab made, from its state file and, for
//! a crashed lab, by name prefix. Something is only removed when it carries
//! the lab's mark: a netns named `<prefix>-…` whose `/etc/netns/<name>/resolv.conf`
//! starts with `# cnpilot lab <prefix>` (written before the netns was made), a
//! process whose command line is `cnpilot lab serve --prefix <prefix> …`,
//! or something listed in the state file.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::netns::{self, ip_batch};
use super::plan;
use super::state::{self, LabState, StateError};
use super::up::{require_root, resolv_conf_marker};

/// Written by `cnpilot agent` in the lab directory: the bpffs directory it
/// pinned its programs and maps under, for `lab down` to remove.
pub const AGENT_PIN_DIR_FILE: &str = "agent-pin-dir";

pub struct DownOptions {
    /// `None`: the state file's prefix, else the default.
    pub prefix: Option<String>,
    pub dir: PathBuf,
    /// Remove netns with the prefix even without the lab's mark.
    pub force: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct DownReport {
    pub processes: Vec<u32>,
    pub netns: Vec<String>,
    pub files: Vec<PathBuf>,
}

impl DownReport {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.netns.is_empty() && self.files.is_empty()
    }
}

pub fn down(opts: &DownOptions) -> anyhow::Result<DownReport> {
    require_root("lab down")?;
    let state = match LabState::load_from(&opts.dir) {
        Ok(s) => Some(s),
        Err(StateError::NotUp(_)) => None,
        Err(err) => {
            tracing::warn!("ignoring an unreadable lab state: {err}; cleaning up by prefix");
            None
        }
    };
    let mut prefixes = BTreeSet::new();
    if let Some(p) = &opts.prefix {
        prefixes.insert(p.clone());
    }
    if let Some(s) = &state {
        prefixes.insert(s.prefix.clone());
    }
    if prefixes.is_empty() {
        prefixes.insert(state::DEFAULT_PREFIX.to_string());
    }
    for p in &prefixes {
        plan::check_prefix(p)?;
    }
    let mut report = DownReport::default();

    // Servers first: a namespace with a live process in it outlives `ip netns del`.
    let mut pids: BTreeSet<u32> = state
        .iter()
        .flat_map(|s| s.server_pids())
        .filter(|pid| prefixes.iter().any(|p| is_lab_server(*pid, p)))
        .collect();
    pids.extend(
        netns::all_pids()
            .into_iter()
            .filter(|pid| prefixes.iter().any(|p| is_lab_server(*pid, p))),
    );

    let mut doomed: BTreeSet<String> = state.iter().flat_map(|s| s.netns_names()).collect();
    doomed.retain(|n| netns::netns_exists(n));
    for name in netns::list_netns() {
        if prefixes
            .iter()
            .any(|p| name.starts_with(&plan::netns_prefix(p)) && (opts.force || has_mark(&name, p)))
        {
            doomed.insert(name);
        }
    }
    // Anything else still running inside the lab (a `lab exec` shell, an agent
    // started in the node netns) would keep its namespace and veths alive.
    let inodes: BTreeSet<u64> = doomed
        .iter()
        .filter_map(|n| netns::netns_inode(n))
        .collect();
    let me = std::process::id();
    for pid in netns::all_pids() {
        if pid != me
            && !pids.contains(&pid)
            && netns::pid_netns_inode(pid).is_some_and(|i| inodes.contains(&i))
        {
            tracing::warn!(pid, cmdline = ?netns::cmdline(pid), "stopping a process inside the lab");
            pids.insert(pid);
        }
    }
    let pids: Vec<u32> = pids.into_iter().collect();
    netns::terminate(&pids, Duration::from_secs(2));
    report.processes = pids;

    if !doomed.is_empty() {
        let cmds: Vec<String> = doomed.iter().map(|n| format!("netns del {n}")).collect();
        if let Err(err) = ip_batch(None, &cmds) {
            // One failure must not keep the others: retry one by one.
            tracing::warn!("{err}");
            for c in &cmds {
                if let Err(err) = ip_batch(None, std::slice::from_ref(c)) {
                    tracing::warn!("{err}");
                }
            }
        }
    }
    let left: Vec<&String> = doomed.iter().filter(|n| netns::netns_exists(n)).collect();
    if !left.is_empty() {
        anyhow::bail!("could not remove network namespaces: {left:?}");
    }
    report.netns = doomed.iter().cloned().collect();

    // /etc/netns entries: ours by state, or by prefix and mark.
    let mut etc: BTreeSet<String> = doomed.clone();
    if let Ok(entries) = std::fs::read_dir(netns::NETNS_ETC_DIR) {
        for e in entries.filter_map(|e| e.ok()) {
            if let Some(name) = e.file_name().to_str() {
                if prefixes
                    .iter()
                    .any(|p| name.starts_with(&plan::netns_prefix(p)) && has_mark(name, p))
                {
                    etc.insert(name.to_string());
                }
            }
        }
    }
    for name in etc {
        let dir = netns::etc_dir(&name);
        if dir.exists() && prefixes.iter().any(|p| has_mark(&name, p)) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => report.files.push(dir),
                Err(err) => tracing::warn!("removing {}: {err}", dir.display()),
            }
        }
    }

    // An agent that ran on this lab left its programs pinned on purpose
    // (enforcement outlives the agent); the lab going away ends that.
    let agent_pins_note = opts.dir.join(AGENT_PIN_DIR_FILE);
    if let Ok(pin_dir) = std::fs::read_to_string(&agent_pins_note) {
        let pin_dir = PathBuf::from(pin_dir.trim());
        if pin_dir.exists() {
            match cnpilot_bpf::unpin_all(&pin_dir) {
                Ok(()) => report.files.push(pin_dir),
                Err(err) => tracing::warn!("unpinning {}: {err}", pin_dir.display()),
            }
        }
    }

    let mut lab_files = vec![
        agent_pins_note,
        state::state_path(&opts.dir),
        state::inventory_path(&opts.dir),
        opts.dir.join("logs"),
        opts.dir.join("ready"),
    ];
    lab_files.retain(|p| p.exists());
    for path in lab_files {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => report.files.push(path),
            Err(err) => tracing::warn!("removing {}: {err}", path.display()),
        }
    }
    // Only if empty: the directory may be shared with something else.
    let _ = std::fs::remove_dir(&opts.dir);
    Ok(report)
}

fn has_mark(netns: &str, prefix: &str) -> bool {
    std::fs::read_to_string(netns::etc_dir(netns).join("resolv.conf"))
        .is_ok_and(|t| t.starts_with(&resolv_conf_marker(prefix)))
}

/// `… lab serve --prefix <prefix> …`: one of this lab's servers.
pub fn is_lab_server(pid: u32, prefix: &str) -> bool {
    let Some(args) = netns::cmdline(pid) else {
        return false;
    };
    let serve = args.windows(2).any(|w| w[0] == "lab" && w[1] == "serve");
    let ours = args
        .windows(2)
        .any(|w| w[0] == "--prefix" && w[1] == prefix);
    let cnpilot = args.first().is_some_and(|a0| {
        a0.rsplit('/')
            .next()
            .is_some_and(|b| b.starts_with("cnpilot"))
    });
    serve && ours && cnpilot
}
