//! What the shipped unit (dist/trove-isolate.service) leaves the daemon, its capabilities and
//! its view of the files, so that the tests and the bench run the daemon as systemd does.

use std::{ffi::OsStr, process::Command};

const UNIT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/trove-isolate.service"
));

/// Binds the pairs up to the first `--` (source over target), hides each path up to the second
/// that exists (an empty directory no one may enter, as systemd makes `InaccessiblePaths=`),
/// then execs the rest.
const SCRIPT: &str = r#"set -e
while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift
while [ "$1" != -- ]; do
    if [ -e "$1" ]; then mount -t tmpfs -o mode=000,size=4k none "$1"; fi; shift
done; shift
exec "$@""#;

/// The capabilities the unit leaves the daemon (`CapabilityBoundingSet=`), as `setpriv
/// --bounding-set` spells them. Every daemon the tests start runs with these alone and without
/// new privileges, as systemd runs it: a capability the unit lacks fails the tests, not a guest
/// (the unit once lacked one, and its daemon could not start).
pub fn capabilities() -> String {
    let set = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit names its capabilities");
    set.split_whitespace()
        .map(|cap| {
            let name = cap.strip_prefix("CAP_").expect("a capability name");
            format!("+{}", name.to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The paths the unit hides from the daemon (`InaccessiblePaths=`; a leading `-`, "if it
/// exists", dropped).
pub fn hidden_paths() -> Vec<String> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix("InaccessiblePaths="))
        .flat_map(str::split_whitespace)
        .map(|p| p.trim_start_matches('-').to_owned())
        .collect()
}

/// A command that runs `argv` in a mount namespace of its own, where each of `binds` (source,
/// target) is bind-mounted and each path the unit hides ([`hidden_paths`]) is out of sight. One
/// process throughout (`unshare` and `sh` exec), so the child's PID is `argv`'s. Mounts made
/// after it starts reach it only where the parent's are shared (not on the test machines,
/// whose mounts are private): for namespaces that exist before it starts.
pub fn as_the_unit<S: AsRef<OsStr>>(binds: &[(S, S)], argv: &[S]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .args(binds.iter().flat_map(|(from, to)| [from, to]))
        .arg("--")
        .args(hidden_paths())
        .arg("--")
        .args(argv);
    command
}
