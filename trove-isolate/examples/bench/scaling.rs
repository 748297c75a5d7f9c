//! Section 2: the same paths with policies of 1 to 1,000,000 entries, IPv4 and IPv6 mixed, host
//! addresses and shorter prefixes, each in a datapath of its own sized for it.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use ipnetwork::IpNetwork;
use trove_isolate::policy::{Origin, Policy, Rule};
use trove_isolate_common::{family, policy::class, proto, Direction, Role};

use crate::{
    per_packet::{self, Probe, PROBED},
    Options, Row,
};

/// The paths whose cost could grow with the policy: the established one (which must not look at
/// it) and those that decide a new flow.
const PATHS: [&str; 4] = [
    "business: established, in",
    "business: new flow allowed (a SYN; repeats find it in the new table)",
    "business: new flow denied (SYN, no rule)",
    "business: IPv6 SYN denied, no extension headers",
];

/// A small deterministic generator (xorshift64*): the same policies on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The prefix lengths generated, per family.
const V4_LENGTHS: [u8; 4] = [32, 28, 24, 16];
const V6_LENGTHS: [u8; 3] = [128, 64, 48];

/// `count` distinct client prefixes: half IPv4 (/32 mostly, some /28, /24, /16), half IPv6 (/128
/// mostly, some /64, /48), none covering an address the cases probe. The first seven use each
/// length once, so that every policy of 11 entries or more uses the same lengths: the lookup's
/// cost follows the lengths in use, and the sizes then differ in their number of rules only.
pub fn prefixes(count: usize, seed: u64) -> Vec<IpNetwork> {
    let probed: Vec<IpAddr> = PROBED.iter().map(|a| a.parse().expect("address")).collect();
    let mut rng = Rng(seed | 1);
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let r = rng.next();
        let first = out.len() < V4_LENGTHS.len() + V6_LENGTHS.len();
        let v4 = if first {
            out.len() < V4_LENGTHS.len()
        } else {
            r & 1 == 0
        };
        let net = if v4 {
            let prefix = if first {
                V4_LENGTHS[out.len()]
            } else {
                [32, 32, 32, 28, 24, 16][(r >> 1) as usize % 6]
            };
            let addr = Ipv4Addr::from((r >> 32) as u32);
            IpNetwork::new(IpAddr::V4(addr), prefix).expect("prefix")
        } else {
            let prefix = if first {
                V6_LENGTHS[out.len() - V4_LENGTHS.len()]
            } else {
                [128, 128, 64, 48][(r >> 1) as usize % 4]
            };
            // Global unicast (2000::/3), like real clients.
            let high = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let addr = Ipv6Addr::from((high >> 3) | (1u128 << 125));
            IpNetwork::new(IpAddr::V6(addr), prefix).expect("prefix")
        };
        let net = IpNetwork::new(net.network(), net.prefix()).expect("prefix");
        if probed.iter().any(|p| net.contains(*p)) || !seen.insert(net) {
            continue;
        }
        out.push(net);
    }
    out
}

/// `base` with rules added to the business NIC until it holds `total` entries in all.
pub fn grown(base: &Policy, total: usize, seed: u64) -> Policy {
    let mut policy = base.clone();
    let have: usize = policy.nics.iter().map(|n| n.rules.len()).sum();
    let next_id = policy
        .nics
        .iter()
        .flat_map(|n| n.rules.iter().map(|r| r.id + 1))
        .max()
        .unwrap_or(0);
    let nic = policy
        .nics
        .iter_mut()
        .find(|n| n.role == Role::Business)
        .expect("the base policy has a business NIC");
    for (id, net) in (next_id..).zip(prefixes(total.saturating_sub(have), seed)) {
        nic.rules.push(Rule {
            id,
            direction: Direction::Ingress,
            proto: proto::TCP,
            port: 3306,
            remote: net,
            origin: Origin::Entry(&"bench"),
            host: None,
        });
    }
    policy
}

pub struct Scaled {
    pub rules: usize,
    /// The policy maps' entries: the rules, expanded unless `expansion` is off.
    pub entries: usize,
    pub expansion: bool,
    /// Lookups per new flow of the business NIC's ingress rules (its prefix lengths): IPv4,
    /// IPv6.
    pub lookups: [usize; 2],
    /// Writing the policy map, seconds.
    pub load_seconds: f64,
    pub rows: Vec<Row>,
}

pub fn run(base: &Policy, sizes: &[usize], o: &Options) -> anyhow::Result<Vec<Scaled>> {
    let cases: Vec<_> = per_packet::cases()
        .into_iter()
        .filter(|c| PATHS.contains(&c.name))
        .collect();
    let mut out = Vec::new();
    for &size in sizes {
        let policy = grown(base, size, 0x7472_6f76_6521);
        out.push(measure(&policy, &cases, o)?);
        // Where expansion writes the policy at fewer lengths, the same rules at their own
        // lengths too: what the policy's size alone costs.
        let as_written = Policy {
            prefix_expansion: false,
            ..policy
        };
        if as_written.entries().len() != out[out.len() - 1].entries {
            out.push(measure(&as_written, &cases, o)?);
        }
    }
    Ok(out)
}

fn measure(policy: &Policy, cases: &[per_packet::Case], o: &Options) -> anyhow::Result<Scaled> {
    let rules = policy.rules().len();
    let entries = policy.entries().len();
    let expansion = policy.prefix_expansion;
    let lengths = policy.prefix_lengths();
    let lookups = [family::V4, family::V6]
        .map(|fam| lengths[class(Role::Business, Direction::Ingress, fam) as usize].len());
    eprintln!(
        "bench: scaling, {rules} rules in {entries} policy entries (prefix_expansion {expansion})"
    );
    let started = Instant::now();
    let mut dp = per_packet::prepare(policy)?;
    let load_seconds = started.elapsed().as_secs_f64();
    per_packet::set_clock(&mut dp)?;
    let mut probes = vec![Probe::empty("empty TC program"), per_packet::decision()];
    probes.extend(cases.iter().map(per_packet::Case::probe));
    let rows = per_packet::measure(&mut dp, &probes, o)?;
    Ok(Scaled {
        rules,
        entries,
        expansion,
        lookups,
        load_seconds,
        rows,
    })
}
