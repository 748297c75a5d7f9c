//! Running kernel work inside a NIC's network namespace.
//!
//! The network namespace is per thread, so work for a NIC in another namespace (the business NIC
//! lives in the database container's) runs on a scoped thread that entered it. Netlink sockets,
//! ifindexes and TCX attachments made there belong to that namespace; bpffs pins do not depend on
//! it (mounts are a different namespace), which is why the daemon itself stays in the host's.

use std::{fs::File, path::Path};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter { path: String, source: nix::Error },
}

/// Runs `f` in the network namespace at `netns` (a `/run/netns/NAME` or
/// `/var/run/docker/netns/ID` file), or in the caller's own when `None`.
pub fn run_in<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    let Some(path) = netns else {
        return Ok(f());
    };
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: path.display().to_string(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
