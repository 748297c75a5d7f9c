//! What the kernel has attached to a device, asked of the kernel (not of our record): TCX
//! programs (BPF_PROG_QUERY) and clsact filters (an RTM_GETTFILTER dump), in the device's
//! namespace. `status` compares this with the state record; `detach` uses it to find our
//! filters wherever the NIC is now.

use aya::programs::SchedClassifier;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    tc::{TcAttribute, TcHandle, TcMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use serde::Serialize;
use trove_isolate_common::{program_name, Direction, Role};

use crate::{attach, netns, nic::Device};

/// One program or filter on one direction of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hooked {
    pub direction: Direction,
    /// `tcx` or `legacy`.
    pub kind: &'static str,
    /// What it is: `program mgmt_ingress (id 45)`, `filter pref 1 handle 0x7001 bpf`.
    pub what: String,
    /// Ours, for this role and direction.
    pub ours: bool,
}

/// Everything on `device`'s ingress and egress hooks, in its namespace. A kernel without TCX
/// lists no TCX programs; a device without clsact lists no filters. An error, not an empty
/// list, when the device cannot be asked right now (gone, or renamed under the query).
pub fn hooks(device: &Device, role: Role) -> anyhow::Result<Vec<Hooked>> {
    let tcx_kernel = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    let found = netns::run_in(device.netns.as_deref(), || {
        // By ifindex: the name may have changed since it was found (docker-hostnic renames).
        let name = nix::net::if_::if_indextoname(device.ifindex)
            .map_err(|e| anyhow::anyhow!("no device with ifindex {}: {e}", device.ifindex))?
            .to_string_lossy()
            .into_owned();
        let mut found = Vec::new();
        for direction in Direction::ALL {
            if tcx_kernel {
                found.extend(tcx(&name, role, direction)?);
            }
            found.extend(filters(device.ifindex, direction));
        }
        Ok::<_, anyhow::Error>(found)
    })??;
    Ok(found)
}

fn tcx(name: &str, role: Role, direction: Direction) -> anyhow::Result<Vec<Hooked>> {
    let (_, programs) = SchedClassifier::query_tcx(name, attach::tc_attach_type(direction))
        .map_err(|e| anyhow::anyhow!("querying the TCX programs of {name}: {e}"))?;
    Ok(programs
        .iter()
        .map(|p| {
            let program = p.name_as_str().unwrap_or("?").to_owned();
            Hooked {
                direction,
                kind: "tcx",
                ours: program == program_name(role, direction),
                what: format!("program {program} (id {})", p.id()),
            }
        })
        .collect())
}

/// The clsact filters of one direction.
fn filters(ifindex: u32, direction: Direction) -> Vec<Hooked> {
    filter_places(ifindex, direction)
        .into_iter()
        .map(|(priority, handle, kind)| Hooked {
            direction,
            kind: "legacy",
            ours: attach::is_our_filter(priority, handle) && kind == "bpf",
            what: format!("filter pref {priority} handle {handle:#x} {kind}"),
        })
        .collect()
}

/// The clsact filters of one direction of the device `ifindex` in this thread's namespace, as
/// (priority, handle, kind): an RTM_GETTFILTER dump under ffff:fff2 / ffff:fff3.
pub fn filter_places(ifindex: u32, direction: Direction) -> Vec<(u16, u32, String)> {
    let parent = match direction {
        Direction::Ingress => TcHandle::MIN_INGRESS,
        Direction::Egress => TcHandle::MIN_EGRESS,
    };
    let mut request = TcMessage::default();
    request.header.index = ifindex as i32;
    request.header.parent = TcHandle {
        major: 0xffff,
        minor: parent,
    };
    let Some(messages) = dump(RouteNetlinkMessage::GetTrafficFilter(request)) else {
        return Vec::new();
    };
    messages
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => Some(f),
            _ => None,
        })
        // A dump lists each filter's chain head too (no handle): only actual filters count.
        .filter(|f| f.header.handle != TcHandle::UNSPEC)
        .map(|f| {
            let priority = (f.header.info >> 16) as u16;
            let handle =
                (u32::from(f.header.handle.major) << 16) | u32::from(f.header.handle.minor);
            let kind = f
                .attributes
                .iter()
                .find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            (priority, handle, kind)
        })
        .collect()
}

/// The current thread's namespace's devices that may be a guest's NIC: Ethernet, not
/// loopback, and of no virtual kind (a physical or paravirtual NIC), or a veth pair's end that
/// no bridge holds (a guest simulated in namespaces). Bridges, their ports (docker's bridge and
/// its containers' pairs), VLANs and other virtual kinds (ifb, dummy, tunnels) are not. `None`
/// if the kernel could not be asked.
pub fn guest_nics() -> Option<Vec<String>> {
    use netlink_packet_route::link::{
        InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
    };
    let links = dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Some(
        links
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .filter(|link| {
                link.header.link_layer_type == LinkLayerType::Ether
                    && !link.header.flags.contains(LinkFlags::Loopback)
            })
            .filter_map(|link| {
                let mut name = None;
                let mut kind = None;
                let mut held = false;
                for attribute in link.attributes {
                    match attribute {
                        LinkAttribute::IfName(n) => name = Some(n),
                        LinkAttribute::Controller(_) => held = true,
                        LinkAttribute::LinkInfo(infos) => {
                            kind = infos.into_iter().find_map(|i| match i {
                                LinkInfo::Kind(k) => Some(k),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
                match kind {
                    None => name,
                    Some(InfoKind::Veth) if !held => name,
                    Some(_) => None,
                }
            })
            .collect(),
    )
}

/// Sends a dump request in the current thread's namespace and collects the answers.
fn dump(request: RouteNetlinkMessage) -> Option<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE).ok()?;
    socket.bind_auto().ok()?;
    let mut message = NetlinkMessage::from(request);
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0).ok()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0).ok()?;
        let mut offset = 0;
        while offset < n {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..n]).ok()?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Some(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Some(out),
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                return Some(out);
            }
            offset += len.next_multiple_of(4);
        }
    }
}

/// Whether our programs hold both directions of `role`'s device.
pub fn enforced(hooks: &[Hooked]) -> bool {
    Direction::ALL
        .iter()
        .all(|d| hooks.iter().any(|h| h.direction == *d && h.ours))
}
