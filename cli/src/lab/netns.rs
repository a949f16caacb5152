//! The system calls and `ip` invocations the lab is built from: network
//! namespaces, running code inside one, and the lab's own processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `ip netns add` mounts namespaces, and where `ip netns exec` finds
/// per-namespace `/etc` files.
pub const NETNS_RUN_DIR: &str = "/run/netns";
pub const NETNS_ETC_DIR: &str = "/etc/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running `ip`: {0} (is iproute2 installed?)")]
    Spawn(std::io::Error),
    #[error("entering network namespace {name}: {source}")]
    Enter {
        name: String,
        source: std::io::Error,
    },
}

/// `ip [-n NETNS] -batch -`: many changes for one process start.
pub fn ip_batch(netns: Option<&str>, commands: &[String]) -> Result<(), NetnsError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let script = commands.join("\n") + "\n";
    match cnpilot_bpf::sys::run("ip", &args, Some(&script)) {
        Ok(_) => Ok(()),
        Err(cnpilot_bpf::sys::CommandError::Spawn { source, .. }) => Err(NetnsError::Spawn(source)),
        Err(cnpilot_bpf::sys::CommandError::Failed { stderr, .. }) => Err(NetnsError::Ip {
            args: format!("{} <<< {}", args.join(" "), commands.join("; ")),
            stderr,
        }),
    }
}

/// Named network namespaces on this machine.
pub fn list_netns() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(name).exists()
}

pub fn etc_dir(netns: &str) -> PathBuf {
    Path::new(NETNS_ETC_DIR).join(netns)
}

/// Runs `f` on a thread that has entered the namespace: sockets it opens
/// live there. The calling thread's namespace never changes.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let enter_err = |source| NetnsError::Enter {
        name: name.to_string(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(enter_err)?;
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> std::io::Result<T> {
            enter_netns(&file)?;
            Ok(f())
        })
        .map_err(enter_err)?;
    match handle.join() {
        Ok(result) => result.map_err(enter_err),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Moves the calling thread into the network namespace behind `file`.
pub fn enter_netns(file: &std::fs::File) -> std::io::Result<()> {
    cnpilot_bpf::netns::enter_file(file)
}

pub fn open_netns(name: &str) -> Result<std::fs::File, NetnsError> {
    std::fs::File::open(Path::new(NETNS_RUN_DIR).join(name)).map_err(|source| NetnsError::Enter {
        name: name.to_string(),
        source,
    })
}

/// ifindex of an interface, seen from the current thread's namespace.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Writes a sysctl of the current thread's network namespace.
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
}

/// Alive and not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// Network namespace identity (inode) of a process, and of a named netns.
pub fn pid_netns_inode(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

pub fn netns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(Path::new(NETNS_RUN_DIR).join(name))
        .ok()
        .map(|m| m.ino())
}

/// SIGTERM, then SIGKILL for whatever is still alive after `grace`.
pub fn terminate(pids: &[u32], grace: Duration) {
    let signal = |pid: u32, sig| {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
    };
    for &pid in pids {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|p| pid_alive(*p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for &pid in pids.iter().filter(|p| pid_alive(**p)) {
        tracing::warn!(pid, "did not stop on SIGTERM; sending SIGKILL");
        signal(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids.iter().any(|p| pid_alive(*p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
}
