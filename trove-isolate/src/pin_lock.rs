//! One process at a time under a pin path. The daemon holds the lock for its life, and `detach`
//! while it works: two daemons would write the same maps, each to its own policy, and a `detach`
//! under a starting daemon would unpin what it is attaching.
//!
//! The lock is `flock` on a file beside the state file (the pins live on bpffs, which holds no
//! regular files), and the kernel lets it go however the process ends. The holder writes its PID
//! into the file, for the refusal to name it. The file is never deleted: a process that locked a
//! new file at the same path would not see the holder of the old one.

use std::{
    fs::{self, File},
    io::{Seek as _, Write as _},
};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

use crate::pins::Pins;

/// The lock, held until dropped.
pub struct Held {
    _lock: Flock<File>,
}

/// Takes the lock of `pins` without waiting. `Ok(Err(pid))` when another process holds it, with
/// the PID it wrote (none if it has not yet, or wrote none).
pub fn try_take(pins: &Pins) -> anyhow::Result<Result<Held, Option<u32>>> {
    let path = pins.lock_file();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            return Ok(Err(pid));
        }
        Err((_, errno)) => {
            return Err(anyhow::Error::new(errno).context(format!("locking {}", path.display())))
        }
    };
    held.set_len(0)
        .and_then(|()| held.rewind())
        .and_then(|()| writeln!(held, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Ok(Held { _lock: held }))
}

/// " (PID n)", or nothing.
pub fn named(pid: Option<u32>) -> String {
    pid.map_or(String::new(), |pid| format!(" (PID {pid})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (the lock file lives under /run/trove-isolate).
    #[test]
    fn one_holder_at_a_time_and_it_is_named() {
        let pins = Pins::new(format!("/sys/fs/bpf/ti-lock-test-{}", std::process::id()));
        let first = try_take(&pins).expect("locking").expect("free");
        // flock conflicts between two opens in one process too.
        let busy = try_take(&pins).expect("locking").err();
        assert_eq!(busy, Some(Some(std::process::id())));
        drop(first);
        let again = try_take(&pins).expect("locking");
        assert!(again.is_ok(), "not taken again after the holder let go");
        drop(again);
        let _ = fs::remove_file(pins.lock_file());
    }
}
