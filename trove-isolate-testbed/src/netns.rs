//! Named network namespaces that remove themselves.

use std::{
    fs::File,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{setns, CloneFlags};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace made with `ip netns add`, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A new namespace named `ti-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> NetNs {
        let name = format!(
            "ti-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        NetNs { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file a config's `netns` key names.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <name> <args>`; panics with the command and its error output on failure.
    pub fn ip(&self, args: &str) {
        let mut all = vec!["-n", &self.name];
        all.extend(args.split_whitespace());
        run_ip(&all);
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens belong here).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.path().display()));
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering {}: {e}", self.name));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
