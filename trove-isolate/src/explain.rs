//! `trove-isolate explain`: would a new flow pass, and what decides it, asked of the pinned maps
//! the programs use (not of a config file, which may have changed since).
//!
//! The questions are the datapath's own for the first packet of a flow, in its order: which
//! policy entry, if any, matches (the same lookups), and is its local end an address of the NIC.
//! DHCP client traffic, which the programs pass before the rules, is not asked about. The entry
//! of the daemon's config that allows the flow is named from the file as it compiles now.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use anyhow::Context as _;
use aya::maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData};
use trove_isolate_common::{
    family,
    local::{LocalKey, LocalValue, OWN},
    maps,
    policy::{self, PolicyKey, PolicyKey4, PolicyKey6, PrefixLengths},
    proto,
    rule_table::{Bucket, Bucket12, BucketLong, Region},
    Direction, Mode, Role,
};

use crate::{datapath::PinnedMaps, pins::Pins, policy::Policy, rule_table, state::State};

/// A flow to explain: `ADDR:PORT/PROTO`, `[IPv6]:PORT/PROTO` or `ADDR/icmp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    /// 0 for ICMP.
    pub port: u16,
    pub proto: u8,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Endpoint, String> {
        let (where_, proto) = text.rsplit_once('/').ok_or_else(|| {
            format!("{text:?}: expected ADDR:PORT/tcp, ADDR:PORT/udp or ADDR/icmp")
        })?;
        match proto {
            "tcp" | "udp" => {
                let sa: SocketAddr = where_
                    .parse()
                    .map_err(|_| format!("{where_:?} is not ADDR:PORT or [IPv6]:PORT"))?;
                if sa.port() == 0 {
                    return Err(format!("{where_:?}: port 0"));
                }
                let proto = if proto == "tcp" {
                    proto::TCP
                } else {
                    proto::UDP
                };
                Ok(Endpoint {
                    addr: sa.ip(),
                    port: sa.port(),
                    proto,
                })
            }
            "icmp" => {
                let addr: IpAddr = where_
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| format!("{where_:?} is not an address"))?;
                let proto = if addr.is_ipv4() {
                    proto::ICMP
                } else {
                    proto::ICMPV6
                };
                Ok(Endpoint {
                    addr,
                    port: 0,
                    proto,
                })
            }
            other => Err(format!("{other:?}: expected tcp, udp or icmp")),
        }
    }
}

/// What the datapath would do with the first packet of a flow between `remote` and the NIC of
/// `role`, opened in `direction` (egress: to `remote`; ingress: from `remote` to the local port
/// `remote.port`), optionally from/to `local`.
pub fn explain(
    pins: &Pins,
    role: Role,
    direction: Direction,
    remote: &Endpoint,
    local: Option<IpAddr>,
) -> anyhow::Result<String> {
    let state = State::read(&pins.state_file())?
        .with_context(|| format!("nothing is enforced under {}", pins.root().display()))?;
    let mut out = String::new();
    let way = match direction {
        Direction::Egress => format!("to {}", show(remote)),
        Direction::Ingress => format!("from {} to local port {}", remote.addr, show_port(remote)),
    };
    writeln!(
        out,
        "a new {} flow {way} on the {} NIC:",
        proto_name(remote.proto),
        role.name()
    )?;
    if state.attached(role).next().is_none() {
        writeln!(
            out,
            "  pass (unprotected): no {} NIC is enforced",
            role.name()
        )?;
        return Ok(out);
    }
    let fam = if remote.addr.is_ipv4() {
        family::V4
    } else {
        family::V6
    };
    // The datapath's order: the rules, then the own-address check.
    let entry = lookup_policy(pins, role, direction, fam, remote)?;
    let mode = PinnedMaps::open(pins)?.mode(role)?;
    let dropped = if mode == Mode::Audit {
        "audit (would drop)"
    } else {
        "drop"
    };
    let Some(rule_id) = entry else {
        writeln!(
            out,
            "  {dropped} (policy): no rule of the {} NIC allows it",
            role.name()
        )?;
        return Ok(out);
    };
    let rule = format!(
        "rule #{rule_id}{}",
        rule_name(&state, role, direction, remote)
    );
    let Some(local) = local else {
        writeln!(out, "  pass (allowed): {rule}")?;
        writeln!(
            out,
            "  (the {} end must be an address of the NIC, else not_local)",
            match direction {
                Direction::Egress => "sending",
                Direction::Ingress => "receiving",
            }
        )?;
        return Ok(out);
    };
    if !lookup_local(pins, role, fam, local)? {
        writeln!(out, "  {rule} allows it")?;
        writeln!(
            out,
            "  {dropped} (not_local): {local} is not an address of the {} NIC",
            role.name()
        )?;
        return Ok(out);
    }
    writeln!(out, "  {local} is an address of the NIC")?;
    writeln!(out, "  pass (allowed): {rule}")?;
    Ok(out)
}

fn lookup_local(pins: &Pins, role: Role, fam: u8, addr: IpAddr) -> anyhow::Result<bool> {
    let trie: LpmTrie<MapData, LocalKey, LocalValue> = LpmTrie::try_from(open(pins, maps::LOCAL)?)?;
    let bits = if fam == family::V4 { 32 } else { 128 };
    let key = Key::new(
        LocalKey::prefix_len(bits),
        LocalKey {
            role: role as u8,
            family: fam,
            _pad: [0; 2],
            addr: addr16(addr),
        },
    );
    Ok(trie.get(&key, 0).is_ok_and(|v| v.flags & OWN != 0))
}

/// The datapath's lookup, on the pinned maps: the rule of the longest prefix that matches.
fn lookup_policy(
    pins: &Pins,
    role: Role,
    direction: Direction,
    fam: u8,
    remote: &Endpoint,
) -> anyhow::Result<Option<u32>> {
    let generation: Array<MapData, u32> = Array::try_from(open(pins, maps::POLICY_GENERATION)?)?;
    let generation = generation.get(&0, 0)?;
    let rules4: Array<MapData, Bucket12> = Array::try_from(open(pins, maps::POLICY4)?)?;
    let rules6: Array<MapData, Bucket12> = Array::try_from(open(pins, maps::POLICY6)?)?;
    let rules6_long: Array<MapData, BucketLong> = Array::try_from(open(pins, maps::POLICY6_LONG)?)?;
    let lengths: Array<MapData, PrefixLengths> =
        Array::try_from(open(pins, maps::POLICY_LENGTHS)?)?;
    let set = lengths.get(
        &policy::lengths_index(generation, policy::class(role, direction, fam)),
        0,
    )?;
    let mut prefixes: Vec<u8> = set.prefixes().collect();
    // Longest first: the rule the datapath's match stands for.
    prefixes.sort_unstable_by(|a, b| b.cmp(a));
    let addr = addr16(remote.addr);
    for prefix in prefixes {
        let key = PolicyKey {
            role: role as u8,
            direction: direction as u8,
            proto: remote.proto,
            family: fam,
            port: remote.port.to_be_bytes(),
            prefix,
            _pad: 0,
            addr: policy::masked(&addr, prefix),
        };
        // As the datapath looks: the two buckets of the region in force.
        let [short, long] = set.regions;
        let found = match (PolicyKey4::narrow(&key), PolicyKey6::narrow(&key)) {
            (Some(key4), _) => in_region(&rules4, short, &key4.words()),
            (None, Some(key6)) => in_region(&rules6, short, &key6.words()),
            (None, None) => in_region(&rules6_long, long, &key.words()),
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The rule id `key` has in `region` of `table`.
fn in_region<B: Bucket + aya::Pod>(
    table: &Array<MapData, B>,
    region: Region,
    key: &B::Key,
) -> Option<u32> {
    rule_table::find(key, region.seed, region.mask, |i| {
        table.get(&region.base.wrapping_add(i), 0).ok()
    })
}

fn open(pins: &Pins, name: &str) -> anyhow::Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// " (ORIGIN, from CONFIG)": the entry of the daemon's config whose rule allows the flow (of
/// the longest prefix, as the datapath matches), as the file compiles now. Found by the flow,
/// not by the entry's rule number: a compile numbers rules in the file's order, and a host
/// name's answer grown by an address since the daemon's start shifts every number after it.
fn rule_name(state: &State, role: Role, direction: Direction, remote: &Endpoint) -> String {
    let Some(config) = &state.config else {
        return String::new();
    };
    // Host names only when the config has some: a resolver that does not answer costs seconds
    // a name.
    let policy = match Policy::load_offline(config) {
        Ok(offline) if offline.names.is_empty() => Ok(offline),
        _ => Policy::load(config),
    };
    let Ok(policy) = policy else {
        return format!(" ({} no longer compiles)", config.display());
    };
    let allows = policy
        .nics
        .iter()
        .filter(|n| n.role == role)
        .flat_map(|n| &n.rules)
        .filter(|r| {
            r.direction == direction
                && r.proto == remote.proto
                && r.port == remote.port
                && r.remote.contains(remote.addr)
        })
        .max_by_key(|r| r.remote.prefix());
    match allows {
        Some(r) => format!(" ({}, from {})", r.origin(), config.display()),
        None => format!(
            " ({} allows it no more: edited, or a host name answers otherwise, since the \
             daemon read it)",
            config.display()
        ),
    }
}

fn addr16(addr: IpAddr) -> [u8; 16] {
    family::key_addr(addr).1
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        _ => "icmp",
    }
}

fn show(e: &Endpoint) -> String {
    match (e.port, e.addr) {
        (0, addr) => addr.to_string(),
        (port, addr) => SocketAddr::new(addr, port).to_string(),
    }
}

fn show_port(e: &Endpoint) -> String {
    if e.port == 0 {
        "-".into()
    } else {
        e.port.to_string()
    }
}

/// Parses a `--role` value.
pub fn role(text: &str) -> Result<Role, String> {
    Role::ALL
        .into_iter()
        .find(|r| r.name() == text)
        .ok_or_else(|| format!("{text:?}: expected management or business"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e: Endpoint = "192.0.2.10:5672/tcp".parse().expect("tcp");
        assert_eq!((e.port, e.proto), (5672, proto::TCP));
        let e: Endpoint = "[2001:db8::1]:53/udp".parse().expect("udp");
        assert_eq!((e.addr.is_ipv6(), e.proto), (true, proto::UDP));
        let e: Endpoint = "2001:db8::1/icmp".parse().expect("icmp");
        assert_eq!((e.port, e.proto), (0, proto::ICMPV6));
        for bad in [
            "192.0.2.10:5672",
            "192.0.2.10/tcp",
            "192.0.2.10:0/tcp",
            "x:1/tcp",
            "192.0.2.10:1/sctp",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} accepted");
        }
    }
}
