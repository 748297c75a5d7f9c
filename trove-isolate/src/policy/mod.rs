//! The validated policy: what each NIC may do, as rules the datapath can look up.
//!
//! Built from a [`Config`] in one pass that checks every value and names the key of every error.
//! A rule is (role, direction, protocol, port, remote prefix): the remote is the destination for
//! egress rules and the source for ingress rules, the port is always the destination port. Only
//! new flows consult rules; replies ride connection tracking. [`Policy::entries`] is the policy
//! map's content; [`fmt::Display`] is what `trove-isolate check` prints.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use trove_isolate_common::{
    family,
    policy::{self, PolicyKey, PolicyValue, MAX_ENTRIES, MAX_LENGTHS},
    proto, Direction, Mode, Role,
};

use crate::{
    config::{
        AllowConfig, BusinessConfig, Config, ConfigError, ConntrackConfig, DropsConfig,
        ManagementConfig, MetricsConfig, NicConfig, TroveConfig, DEFAULT_METRICS_LISTEN,
        DEFAULT_PIN_PATH,
    },
    discover::{self, Discovered, TroveFiles},
    pins::Pins,
    resolve::{self, Resolve},
};

mod compile;
pub mod expand;
mod print;
#[cfg(test)]
mod tests;

use compile::*;
use print::open_rule_warning;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Auto,
    Tcx,
    Legacy,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Tcx => "tcx",
            AttachMode::Legacy => "legacy",
        }
    }
}

/// The NIC identity types live with the code that finds NICs.
pub use crate::nic::{NicSelector, NicSpec};
pub use compile::attach_mode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub direction: Direction,
    pub proto: u8,
    /// 0 for ICMP.
    pub port: u16,
    pub remote: IpNetwork,
    /// The config entry the rule comes from, for `check` and `explain`: see [`Rule::origin`].
    pub origin: Origin,
    /// The host name whose address `remote` is, for rules of a name (refreshed with its TTL).
    /// Shared: every rule of a name holds it, and a policy may hold 100,000 rules.
    pub host: Option<Arc<str>>,
}

// The daemon keeps every rule of the policy in force (100,000 and more): BENCHMARKS.md
// section 4 measures its memory with rules of this size.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Rule>() == 64);

/// The prefix-length class of a key.
pub fn class_of(k: &PolicyKey) -> u32 {
    let role = Role::from_u8(k.role).unwrap_or(Role::Management);
    let direction = Direction::from_u8(k.direction).unwrap_or(Direction::Ingress);
    policy::class(role, direction, k.family)
}

/// How messages name a prefix-length class: "the business NIC's ingress IPv4 rules".
pub fn class_name(class: u32) -> String {
    let role = Role::from_u8((class / 4) as u8).map_or("?", |r| r.name());
    let direction = Direction::from_u8((class / 2 % 2) as u8).map_or("?", |d| d.name());
    let family = if class % 2 == 1 { "IPv6" } else { "IPv4" };
    format!("the {role} NIC's {direction} {family} rules")
}

/// Where a rule comes from. The daemon keeps every rule for its whole life, 100,000 client
/// prefixes and more: an entry of a list costs no allocation of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Said in full: an endpoint, what discovery found and where, a name.
    Text(Box<str>),
    /// An entry of a list key (`clients`, `ssh_from`, ...) written as the rule's remote:
    /// shown as "<key> <remote>". One pointer, so that an `Origin` is two words (a policy may
    /// hold 100,000 rules).
    Entry(&'static &'static str),
}

impl From<String> for Origin {
    fn from(text: String) -> Origin {
        Origin::Text(text.into_boxed_str())
    }
}

impl Rule {
    /// The config entry the rule comes from, as `check` and `explain` show it.
    pub fn origin(&self) -> std::borrow::Cow<'_, str> {
        match &self.origin {
            Origin::Text(text) => std::borrow::Cow::Borrowed(text),
            Origin::Entry(key) => std::borrow::Cow::Owned(format!("{} {}", *key, self.remote)),
        }
    }

    /// Whether the rule's origin is `text`, said in full: no list entry's ("<key> <remote>") is
    /// made to compare (a policy of 100,000 prefixes would format every one of them).
    pub fn origin_is(&self, text: &str) -> bool {
        matches!(&self.origin, Origin::Text(t) if **t == *text)
    }

    /// The rule's key in the policy map (the remote's network address: host bits zero).
    pub fn key(&self, role: Role) -> PolicyKey {
        let (fam, addr) = family::key_addr(self.remote.network());
        PolicyKey {
            role: role as u8,
            direction: self.direction as u8,
            proto: self.proto,
            family: fam,
            port: self.port.to_be_bytes(),
            prefix: self.remote.prefix(),
            _pad: 0,
            addr,
        }
    }

    pub fn value(&self) -> PolicyValue {
        PolicyValue { rule_id: self.id }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPolicy {
    pub role: Role,
    pub nic: NicSpec,
    pub rules: Vec<Rule>,
    /// Pass DHCP client traffic: the datapath lets DHCPv4 68->67 and DHCPv6 546->547 (and the
    /// replies) through statelessly, broadcast/link scope only, outside the policy map. Only the
    /// management NIC may have it: the business network has fixed addresses.
    pub dhcp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPolicy {
    pub listen: SocketAddr,
    pub allow_from: Vec<IpNetwork>,
}

/// Sampled drop events (`[drops]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropsPolicy {
    /// Events the datapath sends per second, over all CPUs (0: none).
    pub events_per_second: u32,
    /// Drop lines the daemon logs per second; the rest are counted as suppressed.
    pub log_per_second: u32,
}

impl DropsPolicy {
    pub const DEFAULT_EVENTS_PER_SECOND: u32 = 100;
    pub const DEFAULT_LOG_PER_SECOND: u32 = 10;
    const MAX_PER_SECOND: i64 = 1_000_000;

    /// The per-CPU budget the datapath enforces: the total shared out, at least one each.
    pub fn events_per_cpu_second(&self, cpus: usize) -> u32 {
        match self.events_per_second {
            0 => 0,
            n => n.div_ceil(cpus.max(1) as u32),
        }
    }
}

/// The connection-tracking tables' sizes per NIC and keying (`[conntrack]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackPolicy {
    /// Established flows (a hash that never evicts: a full table refuses new flows).
    pub established_entries: u32,
    /// Flows not yet established (an LRU: a flood evicts only other new flows).
    pub new_entries: u32,
}

impl ConntrackPolicy {
    pub const DEFAULT: ConntrackPolicy = ConntrackPolicy {
        established_entries: trove_isolate_common::conntrack::EST_MAX_ENTRIES,
        new_entries: trove_isolate_common::conntrack::NEW_MAX_ENTRIES,
    };
    /// Below this a busy database host would refuse clients; above it the tables alone would
    /// take gigabytes.
    pub const MIN_ENTRIES: i64 = 1024;
    pub const MAX_ENTRIES: i64 = 1 << 24;
}

/// How many entries the policy maps hold ([`Policy::entry_counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryCounts {
    /// Per map, in the order of `policy::map_index`.
    pub maps: [usize; policy::MAPS],
    /// Per configured role.
    pub roles: Vec<(Role, usize)>,
}

/// A host name an endpoint named, as resolved when the policy was compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecord {
    pub host: String,
    /// rabbitmq, registry, service.
    pub kind: &'static str,
    pub origin: String,
    pub addresses: Vec<IpAddr>,
    pub ttl: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub attach: AttachMode,
    pub pin_path: PathBuf,
    pub metrics: MetricsPolicy,
    pub drops: DropsPolicy,
    pub conntrack: ConntrackPolicy,
    /// Whether shorter prefixes are written as a longer length their class uses ([`expand`]).
    pub prefix_expansion: bool,
    /// Host names resolved into the rules, and those that did not resolve (allowed only while
    /// another endpoint of their kind does).
    pub names: Vec<NameRecord>,
    pub unresolved: Vec<String>,
    pub unresolved_hosts: Vec<String>,
    /// Names a start could not resolve that keep the addresses in force ([`resolve::Recalled`]):
    /// unresolved too, but reached.
    pub recalled: Vec<String>,
    /// What discovery found that no rule reaches (images on Docker Hub, or behind a CDN; the
    /// database of an instance without a user port), for `check` and the log to say.
    pub unreached: Vec<String>,
    /// Management first.
    pub nics: Vec<NicPolicy>,
}

/// What a policy is compiled from: the config, and what discovery read from the guest's files.
/// The daemon keeps the one in force, so that looking its host names up again compiles the same
/// inputs: an edit of either file takes effect at a reload, never at a name refresh.
#[derive(Debug, Clone)]
pub struct Source {
    /// The config file's text as read. The daemon keeps this alone ([`Source::compact`]) and
    /// parses it again for each compile: parsed, a config of 100,000 prefixes holds each as a
    /// `String`, about three times the text, for the daemon's whole life.
    text: Arc<str>,
    /// As parsed at the load, for the compile that follows it.
    parsed: Option<Arc<Config>>,
    trove: Option<TroveConfig>,
    boot_netns: Option<PathBuf>,
    discovered: Option<Discovered>,
}

impl Source {
    pub fn load(path: &Path) -> Result<Source, ConfigError> {
        let text = Config::read(path)?;
        let config = Config::parse(&text, path)?;
        let discovered = discovery(&config, path)?;
        Ok(Source {
            text: text.into(),
            trove: config.trove.clone(),
            boot_netns: config.boot.netns.as_ref().map(PathBuf::from),
            parsed: Some(Arc::new(config)),
            discovered,
        })
    }

    /// The config, as parsed at the load or parsed again from its text (never the file:
    /// `path` only names it in errors).
    pub fn config(&self, path: &Path) -> Result<Arc<Config>, ConfigError> {
        match &self.parsed {
            Some(config) => Ok(config.clone()),
            None => Config::parse(&self.text, path).map(Arc::new),
        }
    }

    /// `[boot] netns`.
    pub fn boot_netns(&self) -> Option<&Path> {
        self.boot_netns.as_deref()
    }

    /// Keeps the config's text alone, for a source kept while a policy is in force.
    pub fn compact(&mut self) {
        self.parsed = None;
    }

    /// What discovery read, with the nameservers as they are now: DHCP rewrites resolv.conf
    /// (and systemd-resolved's upstream list), and the DNS rules follow it.
    fn discovered_now(&self) -> Option<Discovered> {
        let mut discovered = self.discovered.clone()?;
        if let Some(trove) = &self.trove {
            let root = trove_files(trove).root;
            if let Ok(now) = discover::nameservers(&root) {
                discovered.resolvers = now;
            }
            if let Ok(now) = discover::search_list(&root) {
                discovered.search = now;
            }
        }
        Some(discovered)
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        Policy::from_config(&Config::load(path)?, path)
    }

    /// Compiles `source` (read from `path`), looking its host names up now.
    pub fn from_source(source: &Source, path: &Path) -> Result<Policy, ConfigError> {
        Policy::compile_source(source, path, false, &[])
    }

    /// A start's compile: [`Policy::from_source`], or with no name looked up
    /// ([`resolve::Deferred`]) when the boot guard holds the NICs, whose lookups would only
    /// time out. A name that does not resolve keeps the addresses `in_force` has for it (the
    /// state file's: [`resolve::Recalled`]), noted in [`Policy::recalled`].
    pub fn for_start(
        source: &Source,
        path: &Path,
        deferred: bool,
        in_force: &[crate::state::NameAddresses],
    ) -> Result<Policy, ConfigError> {
        Policy::compile_source(source, path, deferred, in_force)
    }

    fn compile_source(
        source: &Source,
        path: &Path,
        deferred: bool,
        in_force: &[crate::state::NameAddresses],
    ) -> Result<Policy, ConfigError> {
        let discovered = source.discovered_now();
        let looked_up;
        let inner: &dyn Resolve = match deferred {
            true => &resolve::Deferred,
            false => {
                looked_up = resolver(discovered.as_ref());
                &looked_up
            }
        };
        let resolver = resolve::Recalled::new(inner, in_force);
        let mut policy =
            Policy::compile(&*source.config(path)?, path, discovered.as_ref(), &resolver)?;
        let recalled = resolver.recalled();
        // A recalled name reaches its addresses only where the policy in force did: a config
        // edited since names it elsewhere fails closed there, as a name new to it does.
        for nic in &mut policy.nics {
            let role = nic.role;
            nic.rules.retain(|r| {
                let Some(host) = r.host.as_deref() else {
                    return true;
                };
                if !recalled.iter().any(|(h, _)| h == host) {
                    return true;
                }
                in_force.iter().filter(|n| n.host == host).any(|n| {
                    n.rules.contains(&crate::state::NameRule {
                        role,
                        direction: r.direction,
                        proto: r.proto,
                        port: r.port,
                    })
                })
            });
        }
        for (host, error) in recalled {
            let addresses: Vec<String> = policy
                .names
                .iter()
                .find(|n| n.host == host)
                .map(|n| n.addresses.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            policy.recalled.push(format!(
                "{host} does not resolve ({error}); the addresses in force stay: {} (in the rules \
                 that reached them)",
                addresses.join(", ")
            ));
        }
        Ok(policy)
    }

    /// Compiles `config`, resolving host names with the nameservers of resolv.conf (the Trove
    /// root's when discovery is on).
    pub fn from_config(config: &Config, path: &Path) -> Result<Policy, ConfigError> {
        let discovered = discovery(config, path)?;
        Policy::compile(
            config,
            path,
            discovered.as_ref(),
            &resolver(discovered.as_ref()),
        )
    }

    /// The policy of the config at `path` without looking any name up: for what needs its NICs
    /// and settings, not the addresses of its names.
    pub fn load_offline(path: &Path) -> Result<Policy, ConfigError> {
        Policy::from_config_with(&Config::load(path)?, path, &resolve::Offline)
    }

    /// What can be checked of `config` off the guest (an image build): every key that needs
    /// no guest (mode, attach, pin_path, [metrics], [drops], [conntrack], [boot]); without
    /// `[trove]`, the whole config, its names not looked up. With it, the sections wait for
    /// the guest's files, which Trove writes at its first boot.
    pub fn check_offline(config: &Config, path: &Path) -> Result<(), ConfigError> {
        if config.trove.is_none() {
            return Policy::from_config_with(config, path, &resolve::Offline).map(drop);
        }
        let top = Ctx { path, section: "" };
        let section = |section| Ctx { path, section };
        mode(&top, config.mode.as_deref())?;
        attach(&top, config.attach.as_deref())?;
        pin_path(&top, config.pin_path.as_deref())?;
        metrics(&section("metrics"), &config.metrics)?;
        drops(&section("drops"), &config.drops)?;
        conntrack(&section("conntrack"), &config.conntrack)?;
        crate::boot_guard::Settings::of(config, path)?;
        Ok(())
    }

    /// [`Policy::from_config`] with the resolver given (tests).
    pub fn from_config_with(
        config: &Config,
        path: &Path,
        resolver: &dyn Resolve,
    ) -> Result<Policy, ConfigError> {
        let discovered = discovery(config, path)?;
        Policy::compile(config, path, discovered.as_ref(), resolver)
    }

    fn compile(
        config: &Config,
        path: &Path,
        discovered: Option<&Discovered>,
        resolver: &dyn Resolve,
    ) -> Result<Policy, ConfigError> {
        let top = Ctx { path, section: "" };
        let section = |section| Ctx { path, section };
        let mode = mode(&top, config.mode.as_deref())?;
        let attach = attach(&top, config.attach.as_deref())?;
        let pin_path = pin_path(&top, config.pin_path.as_deref())?;
        let (metrics, scrapers) = metrics(&section("metrics"), &config.metrics)?;
        let drops = drops(&section("drops"), &config.drops)?;
        let conntrack = conntrack(&section("conntrack"), &config.conntrack)?;
        // Read only when Trove's files are missing, checked whenever the config is.
        crate::boot_guard::Settings::of(config, path)?;

        // With discovery on, both sections exist whether or not the file has them: the NICs
        // and what they carry come from the guest's files, and explicit keys add to that.
        let management_config = match &config.management {
            // Keys without the NIC: Trove never names the management NIC either.
            Some(m) if m.interface.is_none() && m.mac.is_none() && discovered.is_some() => {
                Some(ManagementConfig {
                    mac: implied_management(&top, discovered)?.mac,
                    ..m.clone()
                })
            }
            Some(m) => Some(m.clone()),
            None if discovered.is_some() => Some(implied_management(&top, discovered)?),
            None => None,
        };
        // Trove names no business NIC of an instance without a user port: its one NIC is the
        // management NIC, and the agent publishes the database on it through docker's bridge.
        // The section's keys (a shipped config's `clients`) then have no NIC to hold.
        let no_user_port = discovered.is_some_and(|d| d.business_mac.is_none());
        let business_config = match &config.business {
            Some(b) if no_user_port && b.interface.is_none() && b.mac.is_none() => None,
            Some(b) => Some(b.clone()),
            None if discovered.is_some_and(|d| d.business_mac.is_some()) => {
                Some(BusinessConfig::default())
            }
            None => None,
        };
        let mut sources = Sources {
            discovered,
            resolver,
            names: Vec::new(),
            unresolved: Vec::new(),
        };
        let mut next_id = 0;
        let mut nics = Vec::new();
        if let Some(mgmt) = &management_config {
            nics.push(management(
                &section("management"),
                mgmt,
                &metrics,
                &scrapers,
                &mut next_id,
                &mut sources,
            )?);
        }
        if let Some(biz) = &business_config {
            nics.push(business(
                &section("business"),
                biz,
                &mut next_id,
                discovered,
            )?);
        }
        if management_config.is_none() && !metrics.allow_from.is_empty() {
            return Err(ConfigError::invalid(
                path,
                "[metrics] allow_from",
                "opens the metrics port on the management NIC, but there is no [management] section",
            ));
        }
        if nics.is_empty() {
            return Err(top.err(
                "[management]/[business]",
                "at least one of the two sections is required",
            ));
        }
        if let [a, b] = &nics[..] {
            if a.nic.same_nic(&b.nic) {
                return Err(ConfigError::invalid(
                    path,
                    "[business] interface/mac",
                    format!("names the same NIC as [management] ({})", a.nic),
                ));
            }
        }
        fits_the_map(&top, &nics)?;
        few_enough_lengths(&top, &nics)?;
        let allows = management_config.iter().flat_map(|m| &m.allow);
        let mut unreached = images_unreached(discovered, allows);
        if no_user_port && business_config.is_none() {
            unreached.push(
                "no business NIC: Trove names none (no eth1.json: the instance has no user \
                 port), so the guest's one NIC is the management NIC, and the database docker \
                 publishes on it is refused to clients"
                    .to_owned(),
            );
        }
        Ok(Policy {
            mode,
            attach,
            pin_path,
            metrics,
            drops,
            conntrack,
            prefix_expansion: config.prefix_expansion.unwrap_or(true),
            names: sources.names,
            unresolved: sources
                .unresolved
                .iter()
                .map(|u| format!("{}: {} does not resolve ({})", u.origin, u.host, u.error))
                .collect(),
            unresolved_hosts: sources.unresolved.iter().map(|u| u.host.clone()).collect(),
            recalled: Vec::new(),
            unreached,
            nics,
        })
    }

    /// This policy with the rules of its host names taken from `fresh` (the same config
    /// compiled again with new lookups): a name `fresh` could not resolve keeps its addresses
    /// in force, and nothing else changes (other edits of the file wait for a reload).
    pub fn with_names_from(&self, fresh: &Policy) -> Policy {
        let mut failed: HashSet<&str> = fresh.unresolved_hosts.iter().map(String::as_str).collect();
        // The resolvers as resolv.conf lists them now; none listed (a file being rewritten)
        // keeps those in force, as a name that failed keeps its addresses.
        let resolvers = |p: &Policy| {
            p.nics
                .iter()
                .any(|n| n.rules.iter().any(|r| r.host.as_deref() == Some(RESOLVERS)))
        };
        if !resolvers(fresh) {
            failed.insert(RESOLVERS);
        }
        let known: HashSet<&str> = self
            .names
            .iter()
            .map(|n| n.host.as_str())
            .chain(self.unresolved_hosts.iter().map(String::as_str))
            .chain([RESOLVERS])
            .collect();
        let refreshed = |host: &Option<Arc<str>>| {
            host.as_deref()
                .is_some_and(|h| known.contains(h) && !failed.contains(h))
        };
        let mut next = self.clone();
        let mut id = self
            .nics
            .iter()
            .flat_map(|n| n.rules.iter().map(|r| r.id))
            .max()
            .unwrap_or(0);
        for nic in &mut next.nics {
            // A name's rule that its new answers keep keeps its id (`explain` names it, and
            // an unchanged answer changes nothing in the map).
            let identity = |r: &Rule| (r.direction, r.proto, r.port, r.remote, r.host.clone());
            let kept: std::collections::HashMap<_, u32> = nic
                .rules
                .iter()
                .filter(|r| refreshed(&r.host))
                .map(|r| (identity(r), r.id))
                .collect();
            nic.rules.retain(|r| !refreshed(&r.host));
            let Some(fresh_nic) = fresh.nic(nic.role) else {
                continue;
            };
            for rule in fresh_nic.rules.iter().filter(|r| refreshed(&r.host)) {
                let duplicate = nic.rules.iter().any(|r| {
                    (r.direction, r.proto, r.port, r.remote)
                        == (rule.direction, rule.proto, rule.port, rule.remote)
                });
                if !duplicate {
                    let id = match kept.get(&identity(rule)) {
                        Some(&kept) => kept,
                        None => {
                            id += 1;
                            id
                        }
                    };
                    nic.rules.push(Rule { id, ..rule.clone() });
                }
            }
        }
        next.names = self
            .names
            .iter()
            .filter(|n| failed.contains(n.host.as_str()))
            .cloned()
            .chain(
                fresh
                    .names
                    .iter()
                    .filter(|n| known.contains(n.host.as_str()))
                    .cloned(),
            )
            .collect();
        next.unresolved = fresh.unresolved.clone();
        next.recalled.clear();
        next.unresolved_hosts = fresh.unresolved_hosts.clone();
        next
    }

    /// When the names in the policy should be looked up again: the shortest TTL, within
    /// [`resolve::MIN_REFRESH`] and [`resolve::MAX_REFRESH`]; soon when a name did not resolve.
    /// `None` when the policy names no hosts.
    pub fn refresh_in(&self) -> Option<std::time::Duration> {
        let shortest = self.names.iter().map(|n| n.ttl).min();
        let shortest = match (shortest, self.unresolved_count() == 0) {
            (s, true) => s?,
            (Some(s), false) => s.min(resolve::UNRESOLVED_RETRY),
            (None, false) => resolve::UNRESOLVED_RETRY,
        };
        Some(shortest.clamp(resolve::MIN_REFRESH, resolve::MAX_REFRESH))
    }

    /// The host names that did not resolve at the last lookup, whether or not they kept the
    /// addresses in force (`trove_isolate_unresolved_names`).
    pub fn unresolved_count(&self) -> usize {
        self.unresolved.len() + self.recalled.len()
    }

    pub fn nic(&self, role: Role) -> Option<&NicPolicy> {
        self.nics.iter().find(|n| n.role == role)
    }

    /// How many rules the roles have (before prefix expansion).
    pub fn rule_count(&self) -> usize {
        self.nics.iter().map(|n| n.rules.len()).sum()
    }

    /// Every rule of every role, as its key and value.
    pub fn rules(&self) -> Vec<(PolicyKey, PolicyValue)> {
        let mut out = Vec::with_capacity(self.rule_count());
        out.extend(self.rule_entries());
        out
    }

    fn rule_entries(&self) -> impl Iterator<Item = (PolicyKey, PolicyValue)> + '_ {
        self.nics
            .iter()
            .flat_map(|n| n.rules.iter().map(|r| (r.key(n.role), r.value())))
    }

    /// Which of the rules' prefix lengths are written as longer ones ([`expand`]).
    ///
    /// Planned on the rules the config writes out. A host name's addresses come and go with
    /// its lookups; they are written at their own length (a host's, which no plan expands), so
    /// a refresh of the names never changes the plan, and with it thousands of entries.
    pub fn expansion(&self) -> expand::Plan {
        if !self.prefix_expansion {
            return expand::Plan::none();
        }
        expand::Plan::new(self.classes_and_lengths(|r| r.host.is_none()))
    }

    /// The (class, prefix length) of each rule `pick` picks: what expansion plans on, read
    /// without making the rules' keys.
    fn classes_and_lengths<'a>(
        &'a self,
        pick: impl Fn(&Rule) -> bool + Copy + 'a,
    ) -> impl Iterator<Item = (u32, u8)> + 'a {
        self.nics.iter().flat_map(move |n| {
            n.rules.iter().filter(move |r| pick(r)).map(move |r| {
                let fam = match r.remote {
                    IpNetwork::V4(_) => family::V4,
                    IpNetwork::V6(_) => family::V6,
                };
                (policy::class(n.role, r.direction, fam), r.remote.prefix())
            })
        })
    }

    /// The policy maps' content: the rules, with the prefix lengths [`Policy::expansion`]
    /// expands written as the longer ones.
    pub fn entries(&self) -> Vec<(PolicyKey, PolicyValue)> {
        self.expansion().entries(self.rules())
    }

    /// Calls `f` with each of the policy maps' entries, without gathering them.
    pub fn for_each_entry(&self, f: impl FnMut(&PolicyKey, PolicyValue)) {
        self.expansion().for_each(self.rule_entries(), f);
    }

    /// How many entries the policy maps hold, counted in one pass.
    pub fn entry_counts(&self) -> EntryCounts {
        let mut counts = EntryCounts {
            maps: [0; policy::MAPS],
            roles: Vec::new(),
        };
        let mut roles = [0; Role::COUNT];
        self.for_each_entry(|k, _| {
            counts.maps[policy::map_index(k)] += 1;
            roles[usize::from(k.role) % Role::COUNT] += 1;
        });
        counts.roles = self
            .nics
            .iter()
            .map(|n| (n.role, roles[n.role as usize]))
            .collect();
        counts
    }

    /// The prefix lengths the entries of each (role, direction, family) use, longest first,
    /// indexed by [`policy::class`].
    pub fn prefix_lengths(&self) -> Vec<Vec<u8>> {
        self.expansion().lengths(self.classes_and_lengths(|_| true))
    }

    /// [`Policy::entries`] and [`Policy::prefix_lengths`], planned once.
    pub fn entries_and_lengths(&self) -> (Vec<(PolicyKey, PolicyValue)>, Vec<Vec<u8>>) {
        let plan = self.expansion();
        let lengths = plan.lengths(self.classes_and_lengths(|_| true));
        (plan.entries(self.rules()), lengths)
    }

    /// Where the policy is open to any address, for `check` to say loudly. A valid config may
    /// mean it; a closed one (no `ssh_from`, say) needs no warning: it fails visibly.
    pub fn warnings(&self) -> Vec<String> {
        let retry = crate::resolve::UNRESOLVED_RETRY.as_secs();
        let mut warnings: Vec<String> = self
            .unresolved
            .iter()
            .map(|u| {
                format!("{u}; nothing reaches it until it does (looked up again every {retry} s)")
            })
            .chain(
                self.recalled
                    .iter()
                    .map(|u| format!("{u} (looked up again every {retry} s)")),
            )
            .chain(self.unreached.iter().cloned())
            .collect();
        for nic in &self.nics {
            if nic.rules.iter().any(|r| r.origin_is(ANY_CLIENTS)) {
                warnings.push(
                    "[business] clients is empty: the database ports accept connections from ANY \
                     address (0.0.0.0/0 and ::/0); list client CIDRs to narrow it"
                        .to_owned(),
                );
            }
            for rule in &nic.rules {
                if rule.remote.prefix() == 0 && !rule.origin_is(ANY_CLIENTS) {
                    warnings.push(open_rule_warning(nic.role, rule));
                }
            }
        }
        warnings
    }
}

/// Runs Trove discovery when the config has a `[trove]` section.
fn discovery(config: &Config, path: &Path) -> Result<Option<Discovered>, ConfigError> {
    let Some(trove) = &config.trove else {
        return Ok(None);
    };
    let files = trove_files(trove);
    let mut discovered = discover::discover(&files).map_err(|e| match e {
        discover::DiscoverError::NotWritten { .. } => ConfigError::TroveFilesMissing {
            path: path.to_owned(),
            message: format!("discovery: {e}"),
        },
        e => ConfigError::invalid(path, "[trove]", format!("discovery: {e}")),
    })?;
    discovered.host_nics = crate::nic::host_nics().ok();
    let business_named = config
        .business
        .as_ref()
        .is_some_and(|b| b.interface.is_some() || b.mac.is_some());
    if let (Some(eth1), false) = (&discovered.eth1_missing, business_named) {
        // The NICs beside the management NIC, in its namespace.
        let netns = config.management.as_ref().and_then(|m| m.netns.as_deref());
        let nics = crate::netns::run_in(netns.map(Path::new), crate::inspect::guest_nics)
            .ok()
            .flatten();
        let pins = Pins::new(config.pin_path.as_deref().unwrap_or(DEFAULT_PIN_PATH));
        let business_pinned = matches!(
            crate::state::State::read(&pins.state_file()),
            Ok(Some(state)) if state.attached(Role::Business).next().is_some()
        );
        if let Some(why) = user_port_pending(nics.as_deref(), business_pinned) {
            return Err(ConfigError::TroveFilesMissing {
                path: path.to_owned(),
                message: format!(
                    "discovery: {eth1}, and {why}: the business NIC is unknown until Trove's \
                     eth1.json names it (or [business] interface or mac does)"
                ),
            });
        }
    }
    Ok(Some(discovered))
}

/// Why a missing eth1.json is not yet written rather than an instance without a user port,
/// whose guest has one NIC and runs the database on docker's bridge: `None` when it is that
/// instance. Trove writes eth1.json in the same cloud-init
/// step as the agent's config, so a second NIC beside the management NIC is the user port
/// whose file is still to come, and a business NIC attached before is one the file named (the
/// file gone is no reason to open it).
fn user_port_pending(nics: Option<&[String]>, business_pinned: bool) -> Option<String> {
    match nics {
        None => Some("the management NIC's namespace could not be listed".to_owned()),
        Some(nics) if nics.len() > 1 => Some(format!(
            "the management NIC's namespace has {} NICs ({})",
            nics.len(),
            nics.join(", ")
        )),
        Some(_) if business_pinned => Some("a business NIC is attached from before".to_owned()),
        Some(_) => None,
    }
}

fn trove_files(trove: &TroveConfig) -> TroveFiles {
    let or = |v: &Option<String>, d: &str| PathBuf::from(v.as_deref().unwrap_or(d));
    TroveFiles {
        root: or(&trove.root, TroveFiles::DEFAULT_ROOT),
        conf_dir: or(&trove.conf_dir, TroveFiles::DEFAULT_CONF_DIR),
        eth1_json: or(&trove.eth1_json, TroveFiles::DEFAULT_ETH1_JSON),
        docker_daemon_json: or(
            &trove.docker_daemon_json,
            TroveFiles::DEFAULT_DOCKER_DAEMON_JSON,
        ),
    }
}

/// The management NIC of a Trove guest when the config does not name it: Trove never does; it
/// is the host namespace's other NIC (not loopback, not the business NIC of eth1.json).
fn implied_management(
    top: &Ctx,
    discovered: Option<&Discovered>,
) -> Result<ManagementConfig, ConfigError> {
    let business = discovered
        .and_then(|d| d.business_mac.as_ref())
        .map(|m| m.value.clone());
    let listed = discovered.and_then(|d| d.host_nics.clone());
    let candidates = match listed {
        Some(nics) => nics,
        None => crate::nic::host_nics()
            .map_err(|e| top.err("[management]", format!("listing the host's NICs: {e}")))?,
    };
    let others: Vec<(String, String)> = candidates
        .into_iter()
        .filter(|(_, mac)| Some(mac) != business.as_ref())
        .collect();
    match others.as_slice() {
        [(_, mac)] => Ok(ManagementConfig {
            mac: Some(mac.clone()),
            ..ManagementConfig::default()
        }),
        [] => Err(top.err(
            "[management]",
            "no NIC besides the business NIC in the host namespace: name it with interface or mac",
        )),
        many => Err(top.err(
            "[management]",
            format!(
                "{} NICs could be the management NIC ({}): name it with interface or mac",
                many.len(),
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
