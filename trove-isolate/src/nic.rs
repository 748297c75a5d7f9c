//! Finding a NIC: by name or MAC, inside its network namespace.
//!
//! Identity (what the config names) is kept apart from the device found now (name and ifindex in
//! that namespace), because docker-hostnic renames and moves the business NIC: resolution is
//! something that can run again at any time.

use std::path::PathBuf;

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

pub fn resolve(spec: &NicSpec) -> Result<Device, NicError> {
    let (name, ifindex) = netns::run_in(spec.netns.as_deref(), || {
        let name = find(spec)?;
        let ifindex = if_nametoindex(name.as_str()).map_err(|source| NicError::NotFound {
            spec: spec.to_string(),
            source,
        })?;
        Ok::<_, NicError>((name, ifindex))
    })??;
    Ok(Device {
        name,
        ifindex,
        netns: spec.netns.clone(),
    })
}

/// The interface name for `spec`, in the current thread's namespace.
fn find(spec: &NicSpec) -> Result<String, NicError> {
    match &spec.selector {
        NicSelector::Name(name) => Ok(name.clone()),
        NicSelector::Mac(mac) => {
            let addrs = getifaddrs().map_err(|source| NicError::List {
                spec: spec.to_string(),
                source,
            })?;
            addrs
                .filter_map(|ifa| {
                    let link = ifa.address.as_ref()?.as_link_addr()?.addr()?;
                    (link == *mac).then_some(ifa.interface_name)
                })
                .next()
                .ok_or_else(|| NicError::NoSuchMac {
                    spec: spec.to_string(),
                })
        }
    }
}
