//! One agent per pin directory. Two agents on the same pins would program
//! the same maps from two inventories and two proxies, each undoing the
//! other; the second one refuses to start and names the first.
//!
//! The guard is an exclusive `flock` on a file next to the agent's socket
//! (bpffs holds no regular files). The kernel drops the lock when its
//! holder dies, however it dies, so a killed agent never blocks a restart;
//! the pid written into the file is only there to be named.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::Context;

/// Held for the agent's lifetime; dropping it releases the pin directory.
#[derive(Debug)]
pub struct Instance {
    _file: File,
}

/// The lock file of the agent on `pin_dir`.
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    crate::api::socket_for(pin_dir).with_extension("lock")
}

/// Takes the pin directory for this process, or says who has it.
pub fn acquire(pin_dir: &Path) -> crate::Result<Instance> {
    let path = lock_path(pin_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening the agent lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            // Best effort: the holder may be between truncate and write.
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "a process that has not written its pid yet".to_string(),
            };
            return Err(crate::AgentError::AlreadyRunning(format!(
                "another cnpilot agent ({holder}) is running on {} (lock {}); stop it first, \
                 or give this one its own --pin-dir",
                pin_dir.display(),
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Instance { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        // A pin dir name no real agent uses, so the lock is this test's own.
        let pins = dir
            .path()
            .join(format!("instance-test-{}", std::process::id()));
        let Ok(first) = acquire(&pins) else {
            eprintln!("SKIPPED: /run/cnpilot is not writable here (not root)");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "must run under CI"
            );
            return;
        };
        let err = format!("{:#}", acquire(&pins).unwrap_err());
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("another cnpilot agent"), "{err}");
        drop(first);
        // Released: the next agent starts.
        let again = acquire(&pins).unwrap();
        drop(again);
        let _ = std::fs::remove_file(lock_path(&pins));
    }
}
