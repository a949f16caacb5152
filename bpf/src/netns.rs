//! Running code inside a network namespace. `setns(CLONE_NEWNET)` changes only
//! the calling thread, so each call runs on a fresh scoped thread and the
//! caller's thread never leaves its namespace.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where `ip netns add NAME` puts a namespace.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Moves the calling thread (only it) into the network namespace at
/// `netns`; threads it spawns afterwards start there too. The one `setns`
/// of the workspace.
pub fn enter(netns: &Path) -> std::io::Result<()> {
    enter_file(&std::fs::File::open(netns)?)
}

/// [`enter`] with the namespace already open (a file held across many
/// entries).
pub fn enter_file(file: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: setns on a valid fd we own; it affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside the network namespace at `netns` (a bind
/// mount such as `/run/netns/NAME`, or `/proc/PID/ns/net`).
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(netns)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `if_nametoindex` in the namespace at `netns`.
pub fn ifindex(netns: &Path, ifname: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(ifname).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name has a NUL")
    })?;
    run_in(netns, || {
        // SAFETY: a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if idx == 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(idx)
        }
    })?
}
