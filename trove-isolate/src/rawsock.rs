//! Who could bypass TC in a namespace: processes holding CAP_NET_RAW there.
//!
//! A packet socket sees frames before TC ingress and, with `PACKET_QDISC_BYPASS`, sends past TC
//! egress; no cgroup socket hook covers packet sockets on the kernels Trove guests run. So the
//! database container must not have CAP_NET_RAW (Docker grants it by default), and `status`
//! names every process in the business NIC's namespace that has it.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// `CAP_NET_RAW` in the capability bit sets of /proc/PID/status.
const CAP_NET_RAW: u32 = 13;

/// A process that holds CAP_NET_RAW in its effective set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCapable {
    pub pid: u32,
    pub command: String,
}

/// The processes in the network namespace at `netns` (the caller's own when `None`) with
/// CAP_NET_RAW effective. Processes that vanish while we look are skipped.
pub fn holders(netns: Option<&Path>) -> std::io::Result<Vec<RawCapable>> {
    let target = match netns {
        Some(path) => fs::metadata(path)?,
        None => fs::metadata("/proc/self/ns/net")?,
    };
    let target = (target.dev(), target.ino());
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")?.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let proc_dir = PathBuf::from("/proc").join(pid.to_string());
        let Ok(ns) = fs::metadata(proc_dir.join("ns/net")) else {
            continue;
        };
        if (ns.dev(), ns.ino()) != target {
            continue;
        }
        let Ok(status) = fs::read_to_string(proc_dir.join("status")) else {
            continue;
        };
        if has_net_raw(&status) {
            let command = fs::read_to_string(proc_dir.join("comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default();
            out.push(RawCapable { pid, command });
        }
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

/// Whether a /proc/PID/status text shows CAP_NET_RAW in `CapEff`.
fn has_net_raw(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_RAW) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_bit_13_is_net_raw() {
        assert!(has_net_raw("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(has_net_raw("CapEff:\t0000000000002000\n"));
        assert!(!has_net_raw("CapEff:\t00000000a80405fb\n"));
        assert!(!has_net_raw("CapEff:\t0000000000000000\n"));
        assert!(!has_net_raw("CapPrm:\t0000000000002000\n"));
    }

    #[test]
    fn this_process_is_found_in_its_own_namespace_when_it_has_the_capability() {
        let me = std::process::id();
        let found = holders(None).expect("reading /proc");
        let status = fs::read_to_string("/proc/self/status").expect("own status");
        assert_eq!(
            found.iter().any(|p| p.pid == me),
            has_net_raw(&status),
            "{found:?}"
        );
    }
}
