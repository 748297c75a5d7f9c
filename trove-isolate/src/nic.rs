//! Finding a NIC: by name or MAC, inside its network namespace.
//!
//! Identity (what the config names) is kept apart from the device found now (name and ifindex in
//! that namespace), because docker-hostnic renames and moves the business NIC: resolution is
//! something that can run again at any time. A NIC named by MAC is looked for in every network
//! namespace that has a file (the daemon's own, `/run/netns/*`, `/var/run/docker/netns/*`), so
//! it is found wherever docker-hostnic put it last; a NIC named by name is looked for in its
//! configured namespace only (a name means nothing across namespaces).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::{ifaddrs::getifaddrs, net::if_::if_nametoindex};

use crate::{
    netns::{self, NetnsError},
    policy::{NicSelector, NicSpec},
};

/// A NIC as found in its namespace at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub ifindex: u32,
    pub netns: Option<PathBuf>,
    /// IFF_UP when it was found.
    pub up: bool,
}

impl Device {
    /// The same device in the same place (its name may have changed; its filters did not).
    pub fn same_place(&self, other: &Device) -> bool {
        self.ifindex == other.ifindex && self.netns == other.netns
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (ifindex {})", self.name, self.ifindex)?;
        match &self.netns {
            Some(ns) => write!(f, " in {}", ns.display()),
            None => write!(f, " in the host namespace"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("no interface {spec}")]
    NotFound { spec: String, source: nix::Error },
    #[error("no interface with MAC {spec}")]
    NoSuchMac { spec: String },
    #[error("listing interfaces for {spec}")]
    List { spec: String, source: nix::Error },
}

/// Where named network namespaces live: `ip netns` and docker's sandboxes.
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/docker/netns"];

/// Finds the NIC of `spec` now. By MAC: in the configured namespace first, then the daemon's
/// own, then every namespace file, newest first (docker-hostnic's latest sandbox); by name: in
/// the configured namespace.
pub fn resolve(spec: &NicSpec) -> Result<Device, NicError> {
    if !matches!(spec.selector, NicSelector::Mac(_)) {
        return resolve_in(spec, spec.netns.as_deref());
    }
    let first = resolve_in(spec, spec.netns.as_deref());
    if first.is_ok() {
        return first;
    }
    let mut seen = Vec::new();
    for ns in std::iter::once(None).chain(namespace_files().into_iter().map(Some)) {
        let id = namespace_id(ns.as_deref());
        if id.is_none() || seen.contains(&id) {
            continue;
        }
        seen.push(id);
        if ns.as_deref() == spec.netns.as_deref() {
            continue; // tried first
        }
        if let Ok(device) = resolve_in(spec, ns.as_deref()) {
            return Ok(device);
        }
    }
    first
}

/// Every file naming a network namespace, newest first. Files of our own namespace are left
/// out (the daemon's own is searched as `None`), as are duplicates of one namespace.
pub fn namespace_files() -> Vec<PathBuf> {
    let own = namespace_id(None);
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = NETNS_DIRS
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let meta = std::fs::metadata(&path).ok()?;
            Some((meta.modified().ok()?, path))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut seen = vec![own];
    let mut out = Vec::new();
    for (_, path) in files {
        let id = namespace_id(Some(&path));
        if id.is_some() && !seen.contains(&id) {
            seen.push(id);
            out.push(path);
        }
    }
    out
}

/// The identity of a network namespace (nsfs device and inode), `None` for a file that is not
/// one (an `ip netns` file whose mount went away).
pub fn namespace_id(netns: Option<&Path>) -> Option<(u64, u64)> {
    let path = netns.unwrap_or(Path::new("/proc/self/ns/net"));
    let meta = std::fs::metadata(path).ok()?;
    // An unmounted netns file is a plain empty file on tmpfs, not nsfs.
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    (meta.dev() == own.dev()).then_some((meta.dev(), meta.ino()))
}

/// Finds `spec`'s device in the namespace `netns` (`None`: the daemon's own).
fn resolve_in(spec: &NicSpec, netns: Option<&Path>) -> Result<Device, NicError> {
    let (name, ifindex, up) = netns::run_in(netns, || {
        let (name, up) = find(spec)?;
        let ifindex = if_nametoindex(name.as_str()).map_err(|source| NicError::NotFound {
            spec: spec.to_string(),
            source,
        })?;
        Ok::<_, NicError>((name, ifindex, up))
    })??;
    Ok(Device {
        name,
        ifindex,
        netns: netns.map(Path::to_path_buf),
        up,
    })
}

/// The interface name for `spec` in the current thread's namespace, and whether it is up.
fn find(spec: &NicSpec) -> Result<(String, bool), NicError> {
    let addrs = getifaddrs().map_err(|source| NicError::List {
        spec: spec.to_string(),
        source,
    })?;
    let mut entries = addrs.map(|ifa| {
        let mac = ifa.address.as_ref().and_then(|a| a.as_link_addr()?.addr());
        let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        (ifa.interface_name, mac, up)
    });
    match &spec.selector {
        // A name not listed (no such device) is reported by if_nametoindex.
        NicSelector::Name(name) => Ok((name.clone(), entries.any(|(n, _, up)| n == *name && up))),
        NicSelector::Mac(mac) => entries
            .find(|(_, m, _)| *m == Some(*mac))
            .map(|(name, _, up)| (name, up))
            .ok_or_else(|| NicError::NoSuchMac {
                spec: spec.to_string(),
            }),
    }
}

/// A device's state at one instant, for measuring the window of a re-attachment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub up: bool,
    pub rx_packets: u64,
}

/// `ifindex`'s state in the current thread's namespace (RTM_GETLINK); `None` if it is not
/// there.
pub fn snapshot(ifindex: u32) -> Option<Snapshot> {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::{
        link::{LinkAttribute, LinkFlags, LinkMessage},
        RouteNetlinkMessage,
    };
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

    let mut socket = Socket::new(NETLINK_ROUTE).ok()?;
    socket.bind_auto().ok()?;
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetLink(request));
    message.header.flags = NLM_F_REQUEST;
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0).ok()?;
    let mut answer = vec![0u8; 16 * 1024];
    let n = socket.recv(&mut &mut answer[..], 0).ok()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..n]).ok()?;
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = reply.payload else {
        return None;
    };
    let rx_packets = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Stats64(s) => Some(s.rx_packets),
        _ => None,
    });
    Some(Snapshot {
        up: link.header.flags.contains(LinkFlags::Up),
        rx_packets: rx_packets.unwrap_or(0),
    })
}

/// The daemon's namespace's Ethernet NICs (not loopback, not virtual pairs' host ends), as
/// (name, MAC `aa:bb:cc:dd:ee:ff`).
pub fn host_nics() -> Result<Vec<(String, String)>, nix::Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    for ifa in getifaddrs()? {
        let Some(mac) = ifa.address.as_ref().and_then(|a| a.as_link_addr()?.addr()) else {
            continue;
        };
        if ifa
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
            || mac == [0; 6]
        {
            continue;
        }
        // Physical (or paravirtual) NICs have a device link in sysfs; veth, bridges do not.
        if !Path::new(&format!("/sys/class/net/{}/device", ifa.interface_name)).exists() {
            continue;
        }
        let text = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        if !out.iter().any(|(n, _)| *n == ifa.interface_name) {
            out.push((ifa.interface_name, text));
        }
    }
    Ok(out)
}
