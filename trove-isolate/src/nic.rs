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

use crate::netns::{self, NetnsError};

/// How the config names a NIC: by name (in its namespace) or by MAC (anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicSelector {
    Name(String),
    Mac([u8; 6]),
}

impl std::fmt::Display for NicSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NicSelector::Name(name) => f.write_str(name),
            NicSelector::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
        }
    }
}

/// Which NIC a role protects: the configured identity, not the device found at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub selector: NicSelector,
    pub netns: Option<PathBuf>,
}

impl NicSpec {
    /// Whether this spec names the device our programs were attached to, as recorded (`name`
    /// and `netns` where they were, `mac` if known): the same NIC, not a config that changed.
    pub fn names_recorded(&self, name: &str, netns: Option<&Path>, mac: Option<[u8; 6]>) -> bool {
        match &self.selector {
            NicSelector::Mac(m) => mac == Some(*m),
            NicSelector::Name(n) => n == name && self.netns.as_deref() == netns,
        }
    }

    /// Whether two specs can only mean one device: the same name in the same namespace, or the
    /// same MAC anywhere (a MAC names the device whichever namespace it sits in).
    pub fn same_nic(&self, other: &NicSpec) -> bool {
        match (&self.selector, &other.selector) {
            (NicSelector::Mac(a), NicSelector::Mac(b)) => a == b,
            (NicSelector::Name(a), NicSelector::Name(b)) => a == b && self.netns == other.netns,
            _ => false,
        }
    }
}

impl std::fmt::Display for NicSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.selector)?;
        if let Some(netns) = &self.netns {
            write!(f, " in {}", netns.display())?;
        }
        Ok(())
    }
}

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

    /// Whether the two are one device, however their namespaces are named (a name and a MAC,
    /// or two paths of one namespace, can find the same NIC).
    pub fn same_device(&self, other: &Device) -> bool {
        self.ifindex == other.ifindex
            && same_namespace(self.netns.as_deref(), other.netns.as_deref())
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
    #[error(
        "more than one device has the MAC {spec} ({devices}): refusing to guess which is the NIC"
    )]
    Ambiguous { spec: String, devices: String },
}

impl NicError {
    /// The NIC is nowhere the daemon looks (gone, or in a namespace no file names), as opposed
    /// to found twice or not listable.
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            NicError::NotFound { .. } | NicError::NoSuchMac { .. } | NicError::Netns(_)
        )
    }
}

/// Where named network namespaces live: `ip netns` and docker's sandboxes.
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/docker/netns"];

/// Where a NIC was last seen: its namespace and ifindex there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub ifindex: u32,
    pub netns: Option<PathBuf>,
}

impl From<&Device> for Place {
    fn from(d: &Device) -> Place {
        Place {
            ifindex: d.ifindex,
            netns: d.netns.clone(),
        }
    }
}

/// Finds the NIC of `spec` now; `last`, where it was last seen, wins while it is still there.
///
/// By name: in the configured namespace. By MAC: every device with that MAC in the configured
/// namespace, the daemon's own and every namespace file. The NIC stays where it was while a
/// device with its MAC is still there (a device a container makes with the same MAC cannot
/// lure it away); otherwise the one device with the MAC is where it moved. Two or more, none
/// of them where it was, is refused: guessing could leave the real NIC unfiltered.
pub fn resolve(spec: &NicSpec, last: Option<&Place>) -> Result<Device, NicError> {
    if !matches!(spec.selector, NicSelector::Mac(_)) {
        return resolve_in(spec, spec.netns.as_deref())?
            .into_iter()
            .next()
            .ok_or_else(|| NicError::NoSuchMac {
                spec: spec.to_string(),
            });
    }
    let mut found: Vec<Device> = Vec::new();
    let mut first_error = None;
    let first = match last {
        Some(last) => vec![last.netns.clone(), spec.netns.clone()],
        None => vec![spec.netns.clone()],
    };
    for ns in places(first) {
        match resolve_in(spec, ns.as_deref()) {
            Ok(devices) => {
                // Still where it was: stay, whatever else carries the MAC.
                if let Some(here) = devices
                    .iter()
                    .find(|d| last.is_some_and(|l| Place::from(*d) == *l))
                {
                    return Ok(here.clone());
                }
                found.extend(devices);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match found.len() {
        0 => Err(first_error.unwrap_or_else(|| NicError::NoSuchMac {
            spec: spec.to_string(),
        })),
        1 => Ok(found.remove(0)),
        _ => Err(NicError::Ambiguous {
            spec: spec.to_string(),
            devices: found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// Every device with `mac`, in `netns`, the daemon's own namespace and every namespace file (one
/// that cannot be read is passed over).
pub fn with_mac(mac: [u8; 6], netns: Option<&Path>) -> Vec<Device> {
    let spec = NicSpec {
        selector: NicSelector::Mac(mac),
        netns: None,
    };
    places(vec![netns.map(Path::to_path_buf)])
        .into_iter()
        .filter_map(|ns| resolve_in(&spec, ns.as_deref()).ok())
        .flatten()
        .collect()
}

/// The MAC of the device `name` in the current thread's namespace, if it has one.
pub fn mac_of(name: &str) -> Option<[u8; 6]> {
    getifaddrs()
        .ok()?
        .filter(|ifa| ifa.interface_name == name)
        .find_map(|ifa| ifa.address.as_ref()?.as_link_addr()?.addr())
        .filter(|mac| *mac != [0; 6])
}

/// Where a NIC named by MAC is looked for, each namespace once: `first` (`None`: the daemon's
/// own), then the daemon's own, then every namespace file.
fn places(first: Vec<Option<PathBuf>>) -> Vec<Option<PathBuf>> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let candidates = first
        .into_iter()
        .chain([None])
        .chain(namespace_files().into_iter().map(Some));
    for ns in candidates {
        let id = namespace_id(ns.as_deref());
        if id.is_some() && !seen.contains(&id) {
            seen.push(id);
            out.push(ns);
        }
    }
    out
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

/// Whether two namespace paths (`None`: the daemon's own) name one namespace.
pub fn same_namespace(a: Option<&Path>, b: Option<&Path>) -> bool {
    a == b || {
        let id = namespace_id(a);
        id.is_some() && id == namespace_id(b)
    }
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

/// `spec`'s devices in the namespace `netns` (`None`: the daemon's own): by name, the one so
/// named (an error if there is none); by MAC, every one with it (perhaps none).
fn resolve_in(spec: &NicSpec, netns: Option<&Path>) -> Result<Vec<Device>, NicError> {
    let found = netns::run_in(netns, || {
        let mut out = Vec::new();
        for (name, up) in find(spec)? {
            let ifindex = if_nametoindex(name.as_str()).map_err(|source| NicError::NotFound {
                spec: spec.to_string(),
                source,
            })?;
            out.push((name, ifindex, up));
        }
        Ok::<_, NicError>(out)
    })??;
    Ok(found
        .into_iter()
        .map(|(name, ifindex, up)| Device {
            name,
            ifindex,
            netns: netns.map(Path::to_path_buf),
            up,
        })
        .collect())
}

/// The interface names for `spec` in the current thread's namespace, and whether each is up.
fn find(spec: &NicSpec) -> Result<Vec<(String, bool)>, NicError> {
    let addrs = getifaddrs().map_err(|source| NicError::List {
        spec: spec.to_string(),
        source,
    })?;
    let entries: Vec<(String, Option<[u8; 6]>, bool)> = addrs
        .map(|ifa| {
            let mac = ifa.address.as_ref().and_then(|a| a.as_link_addr()?.addr());
            let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            (ifa.interface_name, mac, up)
        })
        .collect();
    match &spec.selector {
        // A name not listed (no such device) is reported by if_nametoindex.
        NicSelector::Name(name) => Ok(vec![(
            name.clone(),
            entries.iter().any(|(n, _, up)| n == name && *up),
        )]),
        NicSelector::Mac(mac) => {
            let mut out: Vec<(String, bool)> = Vec::new();
            for (name, m, up) in entries {
                if m == Some(*mac) && !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, up));
                }
            }
            Ok(out)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A start keeps a NIC it cannot find only when the config names the device the record
    /// holds: another name, namespace or MAC is a config that changed (a typo), refused.
    #[test]
    fn a_spec_names_the_recorded_nic_by_its_identity_alone() {
        let mac = [0xfa, 0x16, 0x3e, 0, 0, 1];
        let by_mac = NicSpec {
            selector: NicSelector::Mac(mac),
            netns: None,
        };
        assert!(by_mac.names_recorded("eth0", Some(Path::new("/run/netns/db")), Some(mac)));
        assert!(!by_mac.names_recorded("eth1", None, Some([0xfa, 0x16, 0x3e, 0, 0, 2])));
        assert!(!by_mac.names_recorded("eth1", None, None));
        let by_name = NicSpec {
            selector: NicSelector::Name("eth1".into()),
            netns: Some(PathBuf::from("/run/netns/db")),
        };
        assert!(by_name.names_recorded("eth1", Some(Path::new("/run/netns/db")), None));
        assert!(!by_name.names_recorded("eth2", Some(Path::new("/run/netns/db")), None));
        assert!(!by_name.names_recorded("eth1", None, Some(mac)));
    }
}
