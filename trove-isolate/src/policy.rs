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
};

use aya::maps::lpm_trie::Key;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use trove_isolate_common::{
    family,
    policy::{PolicyKey, PolicyValue, MAX_ENTRIES},
    proto, Direction, Mode, Role,
};

use crate::config::{
    AllowConfig, BusinessConfig, Config, ConfigError, DropsConfig, ManagementConfig, MetricsConfig,
    NicConfig, DEFAULT_METRICS_LISTEN, DEFAULT_PIN_PATH,
};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicSelector {
    Name(String),
    Mac([u8; 6]),
}

impl fmt::Display for NicSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl fmt::Display for NicSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.selector)?;
        if let Some(netns) = &self.netns {
            write!(f, " in {}", netns.display())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub direction: Direction,
    pub proto: u8,
    /// 0 for ICMP.
    pub port: u16,
    pub remote: IpNetwork,
    /// The config entry the rule comes from, for `check` and `explain`.
    pub origin: String,
}

impl Rule {
    pub fn key(&self, role: Role) -> Key<PolicyKey> {
        let (fam, addr) = family::key_addr(self.remote.network());
        Key::new(
            PolicyKey::prefix_len(u32::from(self.remote.prefix())),
            PolicyKey {
                role: role as u8,
                direction: self.direction as u8,
                proto: self.proto,
                family: fam,
                port: self.port.to_be_bytes(),
                addr,
            },
        )
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub attach: AttachMode,
    pub pin_path: PathBuf,
    pub metrics: MetricsPolicy,
    pub drops: DropsPolicy,
    /// Management first.
    pub nics: Vec<NicPolicy>,
}

fn any_v4() -> IpNetwork {
    IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("0.0.0.0/0 is valid")
}

fn any_v6() -> IpNetwork {
    IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("::/0 is valid")
}

/// Collects rules for one NIC, numbering them and dropping exact duplicates.
struct RuleSet<'a> {
    role: Role,
    next_id: &'a mut u32,
    seen: HashSet<(Direction, u8, u16, IpNetwork)>,
    rules: Vec<Rule>,
}

impl<'a> RuleSet<'a> {
    fn new(role: Role, next_id: &'a mut u32) -> Self {
        RuleSet {
            role,
            next_id,
            seen: HashSet::new(),
            rules: vec![],
        }
    }

    fn add(
        &mut self,
        direction: Direction,
        proto: u8,
        port: u16,
        remote: IpNetwork,
        origin: String,
    ) {
        let remote = normalise(remote);
        if self.seen.insert((direction, proto, port, remote)) {
            *self.next_id += 1;
            self.rules.push(Rule {
                id: *self.next_id,
                direction,
                proto,
                port,
                remote,
                origin,
            });
        }
    }

    fn tcp(&mut self, direction: Direction, port: u16, remote: IpNetwork, origin: String) {
        self.add(direction, proto::TCP, port, remote, origin);
    }

    fn finish(self, nic: NicSpec, dhcp: bool) -> NicPolicy {
        NicPolicy {
            role: self.role,
            nic,
            rules: self.rules,
            dhcp,
        }
    }
}

/// The network address of a prefix (host bits cleared).
fn normalise(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).expect("same prefix length is valid")
}

/// A configured address or prefix: what the datapath matches, and how a rule's origin shows it.
#[derive(Debug, Clone)]
struct Remote<T> {
    matched: T,
    /// As written (host bits cleared), plus what it is matched as when that differs.
    shown: String,
}

impl<T: fmt::Display> Remote<T> {
    fn plain(matched: T) -> Self {
        let shown = matched.to_string();
        Remote { matched, shown }
    }

    fn mapped(written: impl fmt::Display, matched: T) -> Self {
        let shown = format!("{written} (IPv4-mapped, as {matched})");
        Remote { matched, shown }
    }
}

impl<T> fmt::Display for Remote<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Where an IPv6 prefix lies against the IPv4-mapped range `::ffff:0:0/96`. Mapped addresses
/// never appear on the wire (those hosts send IPv4), so a rule for them must be the IPv4 one.
enum Mapped {
    Outside,
    /// `::ffff:a.b.c.d/(96+n)`: the IPv4 `a.b.c.d/n`.
    Within(Ipv4Network),
    /// Wider than /96 and covering it: IPv6 hosts and IPv4 ones in one prefix, which no rule
    /// expresses. `::/0` is not this: it is "any IPv6 address", written on purpose.
    Covers,
}

fn mapped(net: Ipv6Network) -> Mapped {
    let range_start = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0);
    match net.network().to_ipv4_mapped() {
        Some(v4) if net.prefix() >= 96 => Mapped::Within(
            Ipv4Network::new(v4, net.prefix() - 96).expect("a /96+n mapped prefix is an IPv4 /n"),
        ),
        _ if net.prefix() > 0 && net.prefix() < 96 && net.contains(range_start) => Mapped::Covers,
        _ => Mapped::Outside,
    }
}

/// Validation context: the file and the section, for error messages.
struct Ctx<'a> {
    path: &'a Path,
    section: &'static str,
}

impl Ctx<'_> {
    fn err(&self, key: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
        let key = if self.section.is_empty() {
            key.to_string()
        } else {
            format!("[{}] {key}", self.section)
        };
        ConfigError::invalid(self.path, key, message)
    }

    /// A CIDR (a bare address is a host prefix); host bits are cleared, not refused. An
    /// IPv4-mapped IPv6 prefix is matched as the IPv4 prefix it stands for.
    fn cidr(&self, key: &str, text: &str) -> Result<Remote<IpNetwork>, ConfigError> {
        let net = text
            .parse::<IpNetwork>()
            .map(normalise)
            .map_err(|e| self.err(key, format!("{text:?} is not a CIDR: {e}")))?;
        let IpNetwork::V6(v6) = net else {
            return Ok(Remote::plain(net));
        };
        match mapped(v6) {
            Mapped::Outside => Ok(Remote::plain(net)),
            Mapped::Within(v4) => Ok(Remote::mapped(v6, IpNetwork::V4(v4))),
            Mapped::Covers => Err(self.err(
                key,
                format!(
                    "{text:?} covers the IPv4-mapped range ::ffff:0:0/96, whose hosts send IPv4: \
                     one prefix cannot hold both; list the IPv6 prefixes and the IPv4 CIDRs \
                     separately"
                ),
            )),
        }
    }

    fn cidrs(&self, key: &str, list: &[String]) -> Result<Vec<Remote<IpNetwork>>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, t)| self.cidr(&format!("{key}[{i}]"), t))
            .collect()
    }

    /// `IP:port` or `[IPv6]:port`, an IPv4-mapped IPv6 address matched as the IPv4 one. Names
    /// are not resolved (yet): say so rather than "bad address".
    fn endpoint(&self, key: &str, text: &str) -> Result<Remote<SocketAddr>, ConfigError> {
        const EXPECTED: &str = "(expected IP:port or [IPv6]:port)";
        if let Ok(sa) = text.parse::<SocketAddr>() {
            self.port(key, Some(i64::from(sa.port())))?;
            return Ok(match sa {
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => Remote::mapped(sa, SocketAddr::new(IpAddr::V4(v4), sa.port())),
                    None => Remote::plain(sa),
                },
                SocketAddr::V4(_) => Remote::plain(sa),
            });
        }
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if bare.parse::<IpAddr>().is_ok() {
            return Err(self.err(key, format!("{text:?} has no port {EXPECTED}")));
        }
        // A colon inside the host part means an IPv6 address that needed brackets or was mistyped.
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
                (host, Some(port))
            }
            _ => (text, None),
        };
        let host_is_ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>()
            .is_ok();
        if host_is_ip {
            let port = port.unwrap_or_default();
            return Err(self.err(key, format!("{text:?}: {port:?} is not a port (1..=65535)")));
        }
        if is_host_name(host) {
            return Err(self.err(
                key,
                format!(
                    "{text:?}: {host:?} is a host name; an IP address is needed \
                     (name resolution is not supported yet)"
                ),
            ));
        }
        Err(self.err(key, format!("{text:?} is not an endpoint {EXPECTED}")))
    }

    fn port(&self, key: impl fmt::Display, port: Option<i64>) -> Result<u16, ConfigError> {
        match port {
            None => Err(self.err(key, "a port is required")),
            Some(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(self.err(key, format!("{p} is not a port (1..=65535)"))),
            },
        }
    }

    fn nic(&self, nic: &NicConfig) -> Result<NicSpec, ConfigError> {
        let selector = match (&nic.interface, &nic.mac) {
            (Some(_), Some(_)) => {
                return Err(self.err("interface/mac", "give one of interface or mac, not both"))
            }
            (None, None) => {
                return Err(self.err("interface/mac", "one of interface or mac is required"))
            }
            (Some(name), None) => {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                    return Err(self.err("interface", format!("{name:?} is not an interface name")));
                }
                NicSelector::Name(name.clone())
            }
            (None, Some(mac)) => NicSelector::Mac(parse_mac(mac).ok_or_else(|| {
                self.err(
                    "mac",
                    format!("{mac:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"),
                )
            })?),
        };
        let netns = match &nic.netns {
            Some(p) if !p.starts_with('/') => {
                return Err(self.err(
                    "netns",
                    format!("{p:?} must be an absolute path (e.g. /run/netns/NAME)"),
                ))
            }
            Some(p) => Some(PathBuf::from(p)),
            None => None,
        };
        Ok(NicSpec { selector, netns })
    }
}

/// Something that could be a DNS name, as opposed to a garbled address.
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.chars().any(|c| c.is_ascii_alphabetic())
        && text
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn icmp_for(net: &IpNetwork) -> u8 {
    if net.is_ipv4() {
        proto::ICMP
    } else {
        proto::ICMPV6
    }
}

fn mode(top: &Ctx, mode: Option<&str>) -> Result<Mode, ConfigError> {
    match mode {
        None | Some("enforce") => Ok(Mode::Enforce),
        Some("audit") => Ok(Mode::Audit),
        Some(other) => Err(top.err(
            "mode",
            format!("{other:?}: expected \"enforce\" or \"audit\""),
        )),
    }
}

fn attach(top: &Ctx, attach: Option<&str>) -> Result<AttachMode, ConfigError> {
    match attach {
        None | Some("auto") => Ok(AttachMode::Auto),
        Some("tcx") => Ok(AttachMode::Tcx),
        Some("legacy") => Ok(AttachMode::Legacy),
        Some(other) => Err(top.err(
            "attach",
            format!("{other:?}: expected \"auto\", \"tcx\" or \"legacy\""),
        )),
    }
}

fn pin_path(top: &Ctx, pin_path: Option<&str>) -> Result<PathBuf, ConfigError> {
    let pin_path = PathBuf::from(pin_path.unwrap_or(DEFAULT_PIN_PATH));
    if !pin_path.is_absolute() {
        return Err(top.err(
            "pin_path",
            format!("{} must be an absolute path", pin_path.display()),
        ));
    }
    Ok(pin_path)
}

fn drops(ctx: &Ctx, config: &DropsConfig) -> Result<DropsPolicy, ConfigError> {
    let rate = |key: &str, value: Option<i64>, default: u32| match value {
        None => Ok(default),
        Some(n) if (0..=DropsPolicy::MAX_PER_SECOND).contains(&n) => Ok(n as u32),
        Some(n) => Err(ctx.err(
            key,
            format!(
                "{n} is out of range (0 to {}; 0 turns it off)",
                DropsPolicy::MAX_PER_SECOND
            ),
        )),
    };
    Ok(DropsPolicy {
        events_per_second: rate(
            "events_per_second",
            config.events_per_second,
            DropsPolicy::DEFAULT_EVENTS_PER_SECOND,
        )?,
        log_per_second: rate(
            "log_per_second",
            config.log_per_second,
            DropsPolicy::DEFAULT_LOG_PER_SECOND,
        )?,
    })
}

/// The metrics listener, and the scraper prefixes for the management NIC's rules.
fn metrics(
    m: &Ctx,
    config: &MetricsConfig,
) -> Result<(MetricsPolicy, Vec<Remote<IpNetwork>>), ConfigError> {
    let listen_text = config.listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN);
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| m.err("listen", format!("{listen_text:?} is not an IP:port")))?;
    if listen.port() == 0 {
        return Err(m.err(
            "listen",
            format!("{listen_text:?}: port 0 means any free port; name the port scrapers use"),
        ));
    }
    let allow_from = m.cidrs("allow_from", &config.allow_from)?;
    // The rule opens the port on the management NIC's addresses, where the loopback listener is
    // not: it would only expose whatever else listens on that port.
    if !allow_from.is_empty() && listen.ip().to_canonical().is_loopback() {
        return Err(m.err(
            "allow_from",
            format!(
                "scrapers cannot reach the loopback [metrics] listen {listen}, and the rule \
                 would open port {} on the management NIC to whatever else listens on it; set \
                 [metrics] listen to an address scrapers reach, or leave allow_from empty",
                listen.port()
            ),
        ));
    }
    let policy = MetricsPolicy {
        listen,
        allow_from: allow_from.iter().map(|r| r.matched).collect(),
    };
    Ok((policy, allow_from))
}

/// Outbound to the control plane and named extras; inbound SSH and metrics scrapes.
fn management(
    c: &Ctx,
    mgmt: &ManagementConfig,
    metrics: &MetricsPolicy,
    scrapers: &[Remote<IpNetwork>],
    next_id: &mut u32,
) -> Result<NicPolicy, ConfigError> {
    let nic = c.nic(&mgmt.nic())?;
    let mut set = RuleSet::new(Role::Management, next_id);
    for (key, list) in [("rabbitmq", &mgmt.rabbitmq), ("registry", &mgmt.registry)] {
        for (i, text) in list.iter().enumerate() {
            let ep = c.endpoint(&format!("{key}[{i}]"), text)?;
            let host = IpNetwork::from(ep.matched.ip());
            set.tcp(
                Direction::Egress,
                ep.matched.port(),
                host,
                format!("{key} {ep}"),
            );
        }
    }
    for (i, entry) in mgmt.allow.iter().enumerate() {
        allow(c, i, entry, &mut set)?;
    }
    let ssh_port = c.port("ssh_port", Some(mgmt.ssh_port.unwrap_or(22)))?;
    for net in c.cidrs("ssh_from", &mgmt.ssh_from)? {
        let origin = format!("ssh_from {net}");
        set.tcp(Direction::Ingress, ssh_port, net.matched, origin);
    }
    for net in scrapers {
        let origin = format!("metrics allow_from {net}");
        set.tcp(
            Direction::Ingress,
            metrics.listen.port(),
            net.matched,
            origin,
        );
    }
    // DHCP is no rule: its broadcasts and link-scoped multicasts match no unicast prefix, and
    // the datapath passes it statelessly from this flag.
    Ok(set.finish(nic, mgmt.dhcp.unwrap_or(true)))
}

/// One `[management] allow` entry: an outbound rule.
fn allow(c: &Ctx, i: usize, allow: &AllowConfig, set: &mut RuleSet) -> Result<(), ConfigError> {
    let written = c.cidr(&format!("allow[{i}].to"), &allow.to)?;
    let to = written.matched;
    match allow.proto.as_str() {
        "tcp" | "udp" => {
            let port = c.port(format!("allow[{i}].port"), allow.port)?;
            let p = if allow.proto == "tcp" {
                proto::TCP
            } else {
                proto::UDP
            };
            let origin = format!("allow {} {written} port {port}", allow.proto);
            set.add(Direction::Egress, p, port, to, origin);
        }
        "icmp" => {
            if allow.port.is_some() {
                return Err(c.err(format!("allow[{i}].port"), "icmp has no ports; remove port"));
            }
            set.add(
                Direction::Egress,
                icmp_for(&to),
                0,
                to,
                format!("allow icmp {written}"),
            );
        }
        other => {
            return Err(c.err(
                format!("allow[{i}].proto"),
                format!("{other:?}: expected \"tcp\", \"udp\" or \"icmp\""),
            ))
        }
    }
    Ok(())
}

/// The origin of the rules an empty `[business] clients` compiles to.
const ANY_CLIENTS: &str = "clients (any)";

/// Database traffic only: inbound from clients, outbound to replication peers.
fn business(c: &Ctx, biz: &BusinessConfig, next_id: &mut u32) -> Result<NicPolicy, ConfigError> {
    let nic = c.nic(&biz.nic())?;
    if biz.database_ports.is_empty() {
        return Err(c.err("database_ports", "at least one database port is required"));
    }
    let ports = biz
        .database_ports
        .iter()
        .enumerate()
        .map(|(i, p)| c.port(format!("database_ports[{i}]"), Some(*p)))
        .collect::<Result<Vec<u16>, _>>()?;
    let clients: Vec<(IpNetwork, String)> = if biz.clients.is_empty() {
        let any = || ANY_CLIENTS.to_owned();
        vec![(any_v4(), any()), (any_v6(), any())]
    } else {
        c.cidrs("clients", &biz.clients)?
            .into_iter()
            .map(|net| (net.matched, format!("clients {net}")))
            .collect()
    };
    let peers = c.cidrs("peers", &biz.peers)?;
    let mut set = RuleSet::new(Role::Business, next_id);
    for port in &ports {
        for (net, origin) in &clients {
            set.tcp(Direction::Ingress, *port, *net, origin.clone());
        }
        for net in &peers {
            let origin = format!("peers {net}");
            set.tcp(Direction::Egress, *port, net.matched, origin);
        }
    }
    Ok(set.finish(nic, false))
}

/// The policy map holds [`MAX_ENTRIES`] rules across both roles. A bigger policy would fail
/// partway through writing the map at run time; refused here, `check` sees it too.
fn fits_the_map(top: &Ctx, nics: &[NicPolicy]) -> Result<(), ConfigError> {
    let total: usize = nics.iter().map(|n| n.rules.len()).sum();
    if total <= MAX_ENTRIES as usize {
        return Ok(());
    }
    let per_role: Vec<String> = nics
        .iter()
        .map(|n| format!("{} {}", n.role.name(), n.rules.len()))
        .collect();
    let sections: Vec<String> = nics
        .iter()
        .filter(|n| !n.rules.is_empty())
        .map(|n| format!("[{}]", n.role.name()))
        .collect();
    Err(top.err(
        sections.join("/"),
        format!(
            "the policy compiles to {total} entries ({}), more than the policy map holds \
             ({MAX_ENTRIES}); merge CIDRs into wider prefixes",
            per_role.join(", ")
        ),
    ))
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        Policy::from_config(&Config::load(path)?, path)
    }

    pub fn from_config(config: &Config, path: &Path) -> Result<Policy, ConfigError> {
        let top = Ctx { path, section: "" };
        let section = |section| Ctx { path, section };
        let mode = mode(&top, config.mode.as_deref())?;
        let attach = attach(&top, config.attach.as_deref())?;
        let pin_path = pin_path(&top, config.pin_path.as_deref())?;
        let (metrics, scrapers) = metrics(&section("metrics"), &config.metrics)?;
        let drops = drops(&section("drops"), &config.drops)?;

        let mut next_id = 0;
        let mut nics = Vec::new();
        if let Some(mgmt) = &config.management {
            nics.push(management(
                &section("management"),
                mgmt,
                &metrics,
                &scrapers,
                &mut next_id,
            )?);
        }
        if let Some(biz) = &config.business {
            nics.push(business(&section("business"), biz, &mut next_id)?);
        }
        if config.management.is_none() && !metrics.allow_from.is_empty() {
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
        Ok(Policy {
            mode,
            attach,
            pin_path,
            metrics,
            drops,
            nics,
        })
    }

    pub fn nic(&self, role: Role) -> Option<&NicPolicy> {
        self.nics.iter().find(|n| n.role == role)
    }

    /// The policy map's content: every rule of every role.
    pub fn entries(&self) -> Vec<(Key<PolicyKey>, PolicyValue)> {
        self.nics
            .iter()
            .flat_map(|n| n.rules.iter().map(|r| (r.key(n.role), r.value())))
            .collect()
    }

    /// Where the policy is open to any address, for `check` to say loudly. A valid config may
    /// mean it; a closed one (no `ssh_from`, say) needs no warning: it fails visibly.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for nic in &self.nics {
            if nic.rules.iter().any(|r| r.origin == ANY_CLIENTS) {
                warnings.push(
                    "[business] clients is empty: the database ports accept connections from ANY \
                     address (0.0.0.0/0 and ::/0); list client CIDRs to narrow it"
                        .to_owned(),
                );
            }
            for rule in &nic.rules {
                if rule.remote.prefix() == 0 && rule.origin != ANY_CLIENTS {
                    warnings.push(open_rule_warning(nic.role, rule));
                }
            }
        }
        warnings
    }
}

/// A rule whose remote is a /0: who may reach what, from or to any address of a family.
fn open_rule_warning(role: Role, rule: &Rule) -> String {
    let family = if rule.remote.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    let proto = proto_name(rule.proto);
    let any = format!("ANY {family} address ({})", rule.remote);
    let open = match (rule.direction, rule.port) {
        (Direction::Ingress, port) => {
            format!("{proto} port {port} is open to {any}; narrow it to the sources needed")
        }
        (Direction::Egress, 0) => {
            format!("the guest may reach {any} with {proto}; narrow it to the destinations needed")
        }
        (Direction::Egress, port) => format!(
            "the guest may reach {any} on {proto} port {port}; narrow it to the destinations needed"
        ),
    };
    format!("{} NIC, {}: {open}", role.name(), rule.origin)
}

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::ICMP => "icmp",
        proto::ICMPV6 => "icmpv6",
        _ => "?",
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "mode      {}", self.mode.name())?;
        writeln!(f, "attach    {}", self.attach.name())?;
        writeln!(f, "pin_path  {}", self.pin_path.display())?;
        write!(f, "metrics   http://{}/metrics", self.metrics.listen)?;
        if self.metrics.allow_from.is_empty() {
            writeln!(f)?;
        } else {
            let from: Vec<String> = self
                .metrics
                .allow_from
                .iter()
                .map(|n| n.to_string())
                .collect();
            writeln!(f, " (scrapers from {})", from.join(", "))?;
        }
        writeln!(
            f,
            "drops     {} events/s sampled, {} log lines/s",
            self.drops.events_per_second, self.drops.log_per_second
        )?;
        for role in Role::ALL {
            let Some(nic) = self.nic(role) else {
                writeln!(f, "\n{}: not configured, not protected", role.name())?;
                continue;
            };
            writeln!(
                f,
                "\n{} NIC {} — {} rules (new flows; replies follow conntrack):",
                role.name(),
                nic.nic,
                nic.rules.len()
            )?;
            if nic.role == Role::Management {
                if nic.dhcp {
                    writeln!(
                        f,
                        "  dhcp    DHCPv4 68->67 and DHCPv6 546->547, stateless, \
                         broadcast/link scope only"
                    )?;
                } else {
                    writeln!(f, "  dhcp    off")?;
                }
            }
            for r in &nic.rules {
                let (dir, way) = match r.direction {
                    Direction::Ingress => ("ingress", "from"),
                    Direction::Egress => ("egress", "to"),
                };
                let port = if r.port == 0 {
                    "-".to_owned()
                } else {
                    r.port.to_string()
                };
                writeln!(
                    f,
                    "  #{:<3} {dir:<7} {:<6} {way:<4} {:<24} port {port:<5}  {}",
                    r.id,
                    proto_name(r.proto),
                    r.remote.to_string(),
                    r.origin
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use trove_isolate_common::policy::FIXED_PREFIX_BITS;

    use super::*;

    const PATH: &str = "config.toml";

    const EXAMPLE: &str = r#"
mode = "enforce"
attach = "auto"
pin_path = "/sys/fs/bpf/trove-isolate"
[metrics]
listen = "127.0.0.1:9477"
allow_from = []
[management]
interface = "ens3"
rabbitmq = ["192.0.2.10:5672", "[2001:db8:1::10]:5671"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24"]
allow = [ { to = "192.0.2.30/32", port = 8080, proto = "tcp" } ]
dhcp = true
ssh_port = 22
[business]
interface = "ens4"
database_ports = [3306]
clients = []
peers = ["198.51.100.7/32"]
"#;

    fn compile(text: &str) -> Result<Policy, ConfigError> {
        let path = Path::new(PATH);
        Policy::from_config(&Config::parse(text, path)?, path)
    }

    fn ok(text: &str) -> Policy {
        compile(text).unwrap_or_else(|e| panic!("config refused: {e}\n{text}"))
    }

    /// The error for `text`, checked to name the file and `key`.
    fn refused(text: &str, key: &str) -> String {
        let err = match compile(text) {
            Ok(p) => panic!("config accepted, wanted an error about {key}:\n{text}\n{p}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.starts_with("config.toml: "), "file not named: {msg}");
        assert!(msg.contains(key), "key {key} not named: {msg}");
        msg
    }

    fn business(extra: &str) -> String {
        format!("[business]\ninterface = \"ens4\"\ndatabase_ports = [3306]\n{extra}\n")
    }

    fn management(extra: &str) -> String {
        format!("[management]\ninterface = \"ens3\"\ndhcp = false\n{extra}\n")
    }

    fn find<'a>(p: &'a Policy, role: Role, origin: &str) -> &'a Rule {
        let nic = p
            .nic(role)
            .unwrap_or_else(|| panic!("no {} NIC", role.name()));
        nic.rules
            .iter()
            .find(|r| r.origin == origin)
            .unwrap_or_else(|| panic!("no rule {origin:?} in {:#?}", nic.rules))
    }

    fn summary(p: &Policy) -> Vec<(Role, Direction, u8, u16, String)> {
        p.nics
            .iter()
            .flat_map(|n| {
                n.rules
                    .iter()
                    .map(move |r| (n.role, r.direction, r.proto, r.port, r.remote.to_string()))
            })
            .collect()
    }

    #[test]
    fn example_compiles_to_the_expected_rules() {
        use Direction::{Egress as E, Ingress as I};
        use Role::{Business as B, Management as M};
        let p = ok(EXAMPLE);
        let s = |x: &str| x.to_owned();
        let want = vec![
            (M, E, proto::TCP, 5672, s("192.0.2.10/32")),
            (M, E, proto::TCP, 5671, s("2001:db8:1::10/128")),
            (M, E, proto::TCP, 4000, s("192.0.2.20/32")),
            (M, E, proto::TCP, 8080, s("192.0.2.30/32")),
            (M, I, proto::TCP, 22, s("203.0.113.0/24")),
            (B, I, proto::TCP, 3306, s("0.0.0.0/0")),
            (B, I, proto::TCP, 3306, s("::/0")),
            (B, E, proto::TCP, 3306, s("198.51.100.7/32")),
        ];
        assert_eq!(summary(&p), want);

        let entries = p.entries();
        let ids: Vec<u32> = entries.iter().map(|(_, v)| v.rule_id).collect();
        assert_eq!(ids, (1..=8).collect::<Vec<u32>>(), "ids not 1.. in order");
        assert_eq!(p.nics[0].role, Role::Management, "management not first");
        assert_eq!(
            p.nic(Role::Business).map(|n| n.nic.to_string()).as_deref(),
            Some("ens4")
        );
    }

    #[test]
    fn keys_have_the_map_layout() {
        let p = ok(EXAMPLE);

        let rabbit4 = find(&p, Role::Management, "rabbitmq 192.0.2.10:5672");
        let k = rabbit4.key(Role::Management);
        let d = k.data();
        assert_eq!(k.prefix_len(), FIXED_PREFIX_BITS + 32);
        assert_eq!(k.prefix_len(), 80);
        assert_eq!(d.role, Role::Management as u8);
        assert_eq!(d.direction, Direction::Egress as u8);
        assert_eq!((d.proto, d.family), (proto::TCP, family::V4));
        assert_eq!(d.port, [0x16, 0x28], "5672 in network byte order");
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[192, 0, 2, 10]);
        assert_eq!(d.addr, addr);
        assert_eq!(
            rabbit4.value(),
            PolicyValue {
                rule_id: rabbit4.id
            }
        );

        let rabbit6 = find(&p, Role::Management, "rabbitmq [2001:db8:1::10]:5671");
        let k = rabbit6.key(Role::Management);
        let d = k.data();
        assert_eq!(k.prefix_len(), FIXED_PREFIX_BITS + 128);
        assert_eq!(d.family, family::V6);
        assert_eq!(d.port, 5671u16.to_be_bytes());
        assert_eq!(
            d.addr,
            [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]
        );

        let ssh = find(&p, Role::Management, "ssh_from 203.0.113.0/24");
        let k = ssh.key(Role::Management);
        let d = k.data();
        assert_eq!(k.prefix_len(), FIXED_PREFIX_BITS + 24);
        assert_eq!(d.direction, Direction::Ingress as u8);
        assert_eq!(d.port, [0, 22]);
        assert_eq!(d.addr[..4], [203, 0, 113, 0]);

        let any = find(&p, Role::Business, "clients (any)");
        let k = any.key(Role::Business);
        let d = k.data();
        assert_eq!(k.prefix_len(), FIXED_PREFIX_BITS);
        assert_eq!(d.role, Role::Business as u8);
        assert_eq!(d.direction, Direction::Ingress as u8);
        assert_eq!(d.port, 3306u16.to_be_bytes());
        assert_eq!(d.addr, [0u8; 16]);
    }

    #[test]
    fn defaults() {
        let p = ok(&format!(
            "[management]\ninterface = \"ens3\"\n{}",
            business("")
        ));
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.attach, AttachMode::Auto);
        assert_eq!(p.pin_path, Path::new(DEFAULT_PIN_PATH));
        assert_eq!(
            p.metrics.listen,
            "127.0.0.1:9477".parse::<SocketAddr>().expect("addr")
        );
        assert!(p.metrics.allow_from.is_empty());
        let mgmt = p.nic(Role::Management).expect("management NIC");
        assert!(mgmt.dhcp, "dhcp not on by default");
        assert!(mgmt.rules.is_empty(), "{:#?}", mgmt.rules);
        assert!(mgmt.nic.netns.is_none());
        assert!(!p.nic(Role::Business).expect("business NIC").dhcp);
    }

    #[test]
    fn mode_attach_and_ssh_port_are_read() {
        let p = ok(&format!(
            "mode = \"audit\"\nattach = \"legacy\"\n{}",
            management("ssh_port = 2222\nssh_from = [\"203.0.113.5/32\"]")
        ));
        assert_eq!((p.mode, p.attach), (Mode::Audit, AttachMode::Legacy));
        assert_eq!(
            find(&p, Role::Management, "ssh_from 203.0.113.5/32").port,
            2222
        );
        assert!(p.nic(Role::Business).is_none());
        refused(&format!("mode = \"block\"\n{}", business("")), "mode");
        refused(&format!("attach = \"xdp\"\n{}", business("")), "attach");
        refused(
            &format!("pin_path = \"bpf/x\"\n{}", business("")),
            "pin_path",
        );
    }

    #[test]
    fn metrics_allow_from_opens_the_metrics_port_on_management() {
        let p = ok(&format!(
            "[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_from = [\"192.0.2.0/28\"]\n{}",
            management("")
        ));
        let r = find(&p, Role::Management, "metrics allow_from 192.0.2.0/28");
        assert_eq!(
            (r.direction, r.proto, r.port),
            (Direction::Ingress, proto::TCP, 9100)
        );
        refused(
            &format!("[metrics]\nlisten = \"localhost\"\n{}", management("")),
            "[metrics] listen",
        );
    }

    #[test]
    fn metrics_allow_from_needs_a_reachable_listen_and_a_management_nic() {
        for listen in [
            None,
            Some("127.1.2.3:9100"),
            Some("[::1]:9100"),
            Some("[::ffff:127.0.0.1]:9100"),
        ] {
            let listen = listen.map_or(String::new(), |l| format!("listen = \"{l}\"\n"));
            let msg = refused(
                &format!(
                    "[metrics]\n{listen}allow_from = [\"192.0.2.0/28\"]\n{}",
                    management("")
                ),
                "[metrics] allow_from",
            );
            assert!(msg.contains("[metrics] listen"), "{msg}");
            assert!(msg.contains("loopback"), "{msg}");
        }
        // Loopback without scrapers is the default; any non-loopback address may take them.
        ok(&format!(
            "[metrics]\nlisten = \"[::1]:9100\"\n{}",
            management("")
        ));
        ok(&format!(
            "[metrics]\nlisten = \"[::]:9100\"\nallow_from = [\"2001:db8::/64\"]\n{}",
            management("")
        ));
        ok(&format!(
            "[metrics]\nlisten = \"192.0.2.5:9100\"\nallow_from = [\"192.0.2.0/28\"]\n{}",
            management("")
        ));
        let msg = refused(
            &format!(
                "[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_from = [\"192.0.2.0/28\"]\n{}",
                business("")
            ),
            "[metrics] allow_from",
        );
        assert!(msg.contains("no [management] section"), "{msg}");
    }

    #[test]
    fn port_zero_is_refused_for_every_port_key() {
        for allow_from in ["", "allow_from = [\"192.0.2.0/28\"]\n"] {
            for listen in ["127.0.0.1:0", "0.0.0.0:0", "[::]:0"] {
                let msg = refused(
                    &format!(
                        "[metrics]\nlisten = \"{listen}\"\n{allow_from}{}",
                        management("")
                    ),
                    "[metrics] listen",
                );
                assert!(
                    msg.contains("port 0 means any free port; name the port scrapers use"),
                    "{msg}"
                );
            }
        }
        let cases = [
            (
                management("rabbitmq = [\"192.0.2.10:0\"]"),
                "[management] rabbitmq[0]",
            ),
            (
                management("registry = [\"[2001:db8::20]:0\"]"),
                "[management] registry[0]",
            ),
            (
                management("allow = [ { to = \"192.0.2.30/32\", port = 0, proto = \"tcp\" } ]"),
                "[management] allow[0].port",
            ),
            (
                management("allow = [ { to = \"192.0.2.30/32\", port = 0, proto = \"udp\" } ]"),
                "[management] allow[0].port",
            ),
            (management("ssh_port = 0"), "[management] ssh_port"),
            (
                "[business]\ninterface = \"ens4\"\ndatabase_ports = [3306, 0]\n".to_owned(),
                "[business] database_ports[1]",
            ),
        ];
        for (text, key) in cases {
            let msg = refused(&text, key);
            assert!(msg.contains("1..=65535"), "{msg}");
        }
    }

    /// `n` distinct IPv4 /32s, as a TOML array.
    fn hosts(n: u32) -> String {
        let list: Vec<String> = (0..n)
            .map(|i| format!("\"{}\"", Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        format!("[{}]", list.join(", "))
    }

    #[test]
    fn policy_must_fit_the_policy_map() {
        let limit = MAX_ENTRIES;
        let config = |ssh_from: u32| {
            format!(
                "{}{}",
                management(&format!("ssh_from = {}", hosts(ssh_from))),
                business("clients = [\"198.51.100.0/24\"]")
            )
        };
        let p = ok(&config(limit - 1));
        assert_eq!(p.entries().len(), limit as usize);

        let msg = refused(&config(limit), "[management]/[business]");
        for want in [
            format!("compiles to {} entries", limit + 1),
            format!("management {limit}, business 1"),
            format!("policy map holds ({limit})"),
        ] {
            assert!(msg.contains(&want), "{want:?} not in {msg}");
        }
        let msg = refused(
            &management(&format!("ssh_from = {}", hosts(limit + 1))),
            "[management]",
        );
        assert!(msg.contains(&format!("management {}", limit + 1)), "{msg}");
    }

    #[test]
    fn warnings_name_what_is_open_to_any_address() {
        assert_eq!(
            ok(EXAMPLE).warnings(),
            [
                "[business] clients is empty: the database ports accept connections from ANY \
              address (0.0.0.0/0 and ::/0); list client CIDRs to narrow it"
            ]
        );
        let narrow = ok(&format!(
            "{}{}",
            management("ssh_from = [\"203.0.113.0/24\"]"),
            business("clients = [\"198.51.100.0/24\"]\npeers = [\"2001:db8::/32\"]")
        ));
        assert!(narrow.warnings().is_empty(), "{:?}", narrow.warnings());
        // Closed is not open: no ssh_from, no scrapers, no business NIC.
        assert!(ok(&management("")).warnings().is_empty());

        let p = ok(&format!(
            "[metrics]\nlisten = \"[::]:9100\"\nallow_from = [\"::/0\"]\n{}{}",
            management(
                "ssh_from = [\"0.0.0.0/0\", \"::ffff:0:0/96\", \"2001:db8::/32\"]\n\
                 allow = [\n\
                 { to = \"::/0\", port = 53, proto = \"udp\" },\n\
                 { to = \"0.0.0.0/0\", proto = \"icmp\" },\n\
                 ]"
            ),
            "[business]\ninterface = \"ens4\"\ndatabase_ports = [3306]\n\
             clients = [\"0.0.0.0/0\"]\npeers = [\"::/0\"]\n"
        ));
        assert_eq!(
            p.warnings(),
            [
                "management NIC, allow udp ::/0 port 53: the guest may reach ANY IPv6 address \
                 (::/0) on udp port 53; narrow it to the destinations needed",
                "management NIC, allow icmp 0.0.0.0/0: the guest may reach ANY IPv4 address \
                 (0.0.0.0/0) with icmp; narrow it to the destinations needed",
                "management NIC, ssh_from 0.0.0.0/0: tcp port 22 is open to ANY IPv4 address \
                 (0.0.0.0/0); narrow it to the sources needed",
                "management NIC, metrics allow_from ::/0: tcp port 9100 is open to ANY IPv6 \
                 address (::/0); narrow it to the sources needed",
                "business NIC, clients 0.0.0.0/0: tcp port 3306 is open to ANY IPv4 address \
                 (0.0.0.0/0); narrow it to the sources needed",
                "business NIC, peers ::/0: the guest may reach ANY IPv6 address (::/0) on tcp \
                 port 3306; narrow it to the destinations needed",
            ]
        );
    }

    #[test]
    fn interface_and_mac_are_exclusive() {
        let msg = refused(
            "[management]\ninterface = \"ens3\"\nmac = \"fa:16:3e:00:00:01\"\n",
            "[management] interface/mac",
        );
        assert!(msg.contains("not both"), "{msg}");
        let msg = refused(
            "[business]\ndatabase_ports = [3306]\n",
            "[business] interface/mac",
        );
        assert!(msg.contains("required"), "{msg}");
    }

    #[test]
    fn mac_selects_the_nic() {
        let p = ok("[business]\nmac = \"FA:16:3e:00:00:0a\"\nnetns = \"/run/netns/db\"\ndatabase_ports = [3306]\n");
        let nic = &p.nic(Role::Business).expect("business NIC").nic;
        assert_eq!(
            nic.selector,
            NicSelector::Mac([0xfa, 0x16, 0x3e, 0, 0, 0x0a])
        );
        assert_eq!(nic.to_string(), "fa:16:3e:00:00:0a in /run/netns/db");
    }

    #[test]
    fn bad_mac_and_netns_are_refused() {
        for mac in [
            "fa:16:3e:00:00",
            "fa:16:3e:00:00:01:02",
            "fa-16-3e-00-00-01",
            "zz:16:3e:00:00:01",
        ] {
            let msg = refused(
                &format!("[management]\nmac = \"{mac}\"\n"),
                "[management] mac",
            );
            assert!(msg.contains(mac), "{msg}");
        }
        refused(
            "[management]\ninterface = \"ens3\"\nnetns = \"run/netns/x\"\n",
            "[management] netns",
        );
    }

    #[test]
    fn hostname_endpoint_is_refused_asking_for_an_ip() {
        let msg = refused(
            &management("rabbitmq = [\"192.0.2.10:5672\", \"rabbit.example:5672\"]"),
            "[management] rabbitmq[1]",
        );
        assert!(msg.contains("IP address is needed"), "{msg}");
        let msg = refused(
            &management("registry = [\"registry\"]"),
            "[management] registry[0]",
        );
        assert!(msg.contains("IP address is needed"), "{msg}");
    }

    #[test]
    fn endpoint_without_port_is_refused() {
        let err = compile(&management(
            "rabbitmq = [\"192.0.2.11:5672\", \"192.0.2.10\"]",
        ))
        .expect_err("endpoint without port accepted");
        assert_eq!(
            err.to_string(),
            "config.toml: [management] rabbitmq[1]: \"192.0.2.10\" has no port \
             (expected IP:port or [IPv6]:port)"
        );
        refused(&management("rabbitmq = [\"2001:db8::10\"]"), "rabbitmq[0]");
        refused(
            &management("rabbitmq = [\"[2001:db8::10]\"]"),
            "rabbitmq[0]",
        );
        let msg = refused(&management("registry = [\"192.0.2.20:0\"]"), "registry[0]");
        assert!(msg.contains("1..=65535"), "{msg}");
        refused(
            &management("registry = [\"192.0.2.20:70000\"]"),
            "registry[0]",
        );
    }

    #[test]
    fn bad_cidr_is_refused() {
        let msg = refused(
            &business("peers = [\"198.51.100.300/32\"]"),
            "[business] peers[0]",
        );
        assert!(msg.contains("198.51.100.300/32"), "{msg}");
        refused(
            &business("clients = [\"198.51.100.0/33\"]"),
            "[business] clients[0]",
        );
        refused(
            &management("ssh_from = [\"nonsense\"]"),
            "[management] ssh_from[0]",
        );
        refused(
            &format!(
                "[metrics]\nallow_from = [\"2001:db8::/129\"]\n{}",
                business("")
            ),
            "[metrics] allow_from[0]",
        );
    }

    #[test]
    fn host_bits_are_cleared() {
        let p = ok(&business(
            "peers = [\"198.51.100.7/24\"]\nclients = [\"2001:db8::1/32\"]",
        ));
        let remotes: Vec<String> = p.nics[0]
            .rules
            .iter()
            .map(|r| r.remote.to_string())
            .collect();
        assert_eq!(remotes, ["2001:db8::/32", "198.51.100.0/24"]);
    }

    #[test]
    fn ipv4_mapped_addresses_are_matched_as_ipv4() {
        use Direction::{Egress as E, Ingress as I};
        use Role::{Business as B, Management as M};
        let p = ok(&format!(
            "[metrics]\nlisten = \"0.0.0.0:9100\"\nallow_from = [\"::ffff:192.0.2.0/124\"]\n{}{}",
            management(
                "rabbitmq = [\"[::ffff:192.0.2.10]:5672\"]\n\
                 registry = [\"[::ffff:c000:214]:4000\"]\n\
                 ssh_from = [\"::ffff:203.0.113.9/120\"]\n\
                 allow = [\n\
                 { to = \"::ffff:192.0.2.40\", proto = \"icmp\" },\n\
                 { to = \"::ffff:0:0/96\", port = 53, proto = \"udp\" },\n\
                 ]"
            ),
            business("clients = [\"::ffff:198.51.100.0/120\"]\npeers = [\"::ffff:198.51.100.7\"]"),
        ));
        let want = [
            (
                M,
                "rabbitmq [::ffff:192.0.2.10]:5672 (IPv4-mapped, as 192.0.2.10:5672)",
                (E, proto::TCP, 5672, "192.0.2.10/32"),
            ),
            (
                M,
                "registry [::ffff:192.0.2.20]:4000 (IPv4-mapped, as 192.0.2.20:4000)",
                (E, proto::TCP, 4000, "192.0.2.20/32"),
            ),
            (
                M,
                "allow icmp ::ffff:192.0.2.40/128 (IPv4-mapped, as 192.0.2.40/32)",
                (E, proto::ICMP, 0, "192.0.2.40/32"),
            ),
            (
                M,
                "allow udp ::ffff:0.0.0.0/96 (IPv4-mapped, as 0.0.0.0/0) port 53",
                (E, proto::UDP, 53, "0.0.0.0/0"),
            ),
            (
                M,
                "ssh_from ::ffff:203.0.113.0/120 (IPv4-mapped, as 203.0.113.0/24)",
                (I, proto::TCP, 22, "203.0.113.0/24"),
            ),
            (
                M,
                "metrics allow_from ::ffff:192.0.2.0/124 (IPv4-mapped, as 192.0.2.0/28)",
                (I, proto::TCP, 9100, "192.0.2.0/28"),
            ),
            (
                B,
                "clients ::ffff:198.51.100.0/120 (IPv4-mapped, as 198.51.100.0/24)",
                (I, proto::TCP, 3306, "198.51.100.0/24"),
            ),
            (
                B,
                "peers ::ffff:198.51.100.7/128 (IPv4-mapped, as 198.51.100.7/32)",
                (E, proto::TCP, 3306, "198.51.100.7/32"),
            ),
        ];
        for (role, origin, (direction, pr, port, remote)) in want {
            let r = find(&p, role, origin);
            assert_eq!(
                (r.direction, r.proto, r.port, r.remote.to_string().as_str()),
                (direction, pr, port, remote),
                "{origin}"
            );
            assert_eq!(r.key(role).data().family, family::V4, "{origin}");
        }
        assert_eq!(p.entries().len(), want.len(), "{p}");
        assert_eq!(
            p.metrics.allow_from,
            ["192.0.2.0/28".parse::<IpNetwork>().expect("cidr")]
        );
    }

    #[test]
    fn prefix_covering_the_ipv4_mapped_range_is_refused() {
        let cases = [
            (
                format!("[metrics]\nallow_from = [\"::/64\"]\n{}", management("")),
                "[metrics] allow_from[0]",
            ),
            (
                management("ssh_from = [\"2001:db8::/32\", \"::ffff:0:0/95\"]"),
                "[management] ssh_from[1]",
            ),
            (
                management("allow = [ { to = \"::/8\", port = 53, proto = \"udp\" } ]"),
                "[management] allow[0].to",
            ),
            (business("clients = [\"::/80\"]"), "[business] clients[0]"),
            (business("peers = [\"::/1\"]"), "[business] peers[0]"),
        ];
        for (text, key) in cases {
            let msg = refused(&text, key);
            assert!(msg.contains("IPv4-mapped range"), "{msg}");
        }
        // "Any IPv6 address" covers the range too, but is meant as IPv6; and plain IPv6 stays.
        let p = ok(&business(
            "clients = [\"::/0\", \"::ffff:0:0:0/96\", \"::1\"]",
        ));
        let remotes: Vec<String> = p.nics[0]
            .rules
            .iter()
            .map(|r| r.remote.to_string())
            .collect();
        assert_eq!(remotes, ["::/0", "::ffff:0:0:0/96", "::1/128"]);
    }

    #[test]
    fn unknown_key_is_refused() {
        let msg = refused(&business("client = []"), "client");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn database_ports_must_be_valid_and_present() {
        refused(
            "[business]\ninterface = \"ens4\"\ndatabase_ports = []\n",
            "[business] database_ports",
        );
        refused(
            "[business]\ninterface = \"ens4\"\n",
            "[business] database_ports",
        );
        refused(
            "[business]\ninterface = \"ens4\"\ndatabase_ports = [3306, 65536]\n",
            "[business] database_ports[1]",
        );
        refused(
            "[business]\ninterface = \"ens4\"\ndatabase_ports = [-1]\n",
            "[business] database_ports[0]",
        );
    }

    #[test]
    fn a_section_is_required() {
        refused("mode = \"enforce\"\n", "[management]/[business]");
    }

    #[test]
    fn sections_must_name_different_nics() {
        refused(
            "[management]\ninterface = \"eth0\"\n[business]\ninterface = \"eth0\"\ndatabase_ports = [3306]\n",
            "[business] interface/mac",
        );
        refused(
            "[management]\nmac = \"fa:16:3e:00:00:01\"\n[business]\nmac = \"fa:16:3e:00:00:01\"\nnetns = \"/run/netns/db\"\ndatabase_ports = [3306]\n",
            "[business] interface/mac",
        );
        // The same name in two namespaces is two devices.
        ok("[management]\ninterface = \"eth0\"\n[business]\ninterface = \"eth0\"\nnetns = \"/run/netns/db\"\ndatabase_ports = [3306]\n");
    }

    #[test]
    fn allow_entries() {
        let p = ok(&management(
            "allow = [\n\
             { to = \"192.0.2.40/32\", proto = \"icmp\" },\n\
             { to = \"2001:db8::/48\", proto = \"icmp\" },\n\
             { to = \"198.51.100.0/24\", port = 53, proto = \"udp\" },\n\
             ]",
        ));
        let got: Vec<_> = summary(&p)
            .into_iter()
            .map(|(_, d, pr, po, r)| (d, pr, po, r))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Direction::Egress,
                    proto::ICMP,
                    0,
                    "192.0.2.40/32".to_owned()
                ),
                (
                    Direction::Egress,
                    proto::ICMPV6,
                    0,
                    "2001:db8::/48".to_owned()
                ),
                (
                    Direction::Egress,
                    proto::UDP,
                    53,
                    "198.51.100.0/24".to_owned()
                ),
            ]
        );
        let msg = refused(
            &management("allow = [ { to = \"192.0.2.40/32\", port = 7, proto = \"icmp\" } ]"),
            "[management] allow[0].port",
        );
        assert!(msg.contains("icmp"), "{msg}");
        refused(
            &management("allow = [ { to = \"192.0.2.40/32\", proto = \"tcp\" } ]"),
            "[management] allow[0].port",
        );
        refused(
            &management("allow = [ { to = \"192.0.2.40/32\", port = 1, proto = \"sctp\" } ]"),
            "[management] allow[0].proto",
        );
        refused(
            &management("allow = [ { to = \"192.0.2.400\", port = 1, proto = \"tcp\" } ]"),
            "[management] allow[0].to",
        );
    }

    #[test]
    fn duplicates_keep_the_first_origin() {
        let p = ok(&management(
            "registry = [\"192.0.2.20:4000\"]\n\
             allow = [ { to = \"192.0.2.20/32\", port = 4000, proto = \"tcp\" } ]",
        ));
        let rules = &p.nics[0].rules;
        assert_eq!(rules.len(), 1, "{rules:#?}");
        assert_eq!(rules[0].origin, "registry 192.0.2.20:4000");
        assert_eq!(rules[0].id, 1);
    }

    #[test]
    fn same_cidr_on_both_nics_differs_only_in_role() {
        let p = ok(&format!(
            "{}{}",
            management("allow = [ { to = \"198.51.100.0/24\", port = 3306, proto = \"tcp\" } ]"),
            business("peers = [\"198.51.100.0/24\"]")
        ));
        let m = find(&p, Role::Management, "allow tcp 198.51.100.0/24 port 3306");
        let b = find(&p, Role::Business, "peers 198.51.100.0/24");
        let (km, kb) = (m.key(Role::Management), b.key(Role::Business));
        assert_eq!(km.prefix_len(), kb.prefix_len());
        let (dm, db) = (km.data(), kb.data());
        assert_ne!(dm.role, db.role);
        assert_eq!(
            PolicyKey {
                role: db.role,
                ..dm
            },
            db
        );
        assert_ne!(m.id, b.id, "rule ids collide across roles");
    }

    #[test]
    fn display_lists_every_rule() {
        let p = ok(EXAMPLE);
        let text = p.to_string();
        for want in [
            "mode      enforce",
            "attach    auto",
            "/sys/fs/bpf/trove-isolate",
            "127.0.0.1:9477",
            "management NIC ens3",
            "business NIC ens4",
            "rabbitmq 192.0.2.10:5672",
            "peers 198.51.100.7/32",
        ] {
            assert!(text.contains(want), "check output lacks {want:?}:\n{text}");
        }
        let rule_lines = text.lines().filter(|l| l.starts_with("  #")).count();
        assert_eq!(rule_lines, 8, "{text}");
        let dhcp: Vec<&str> = text.lines().filter(|l| l.starts_with("  dhcp")).collect();
        assert_eq!(
            dhcp,
            ["  dhcp    DHCPv4 68->67 and DHCPv6 546->547, stateless, broadcast/link scope only"],
            "one dhcp line, for management: {text}"
        );
    }

    #[test]
    fn dhcp_is_a_flag_not_rules() {
        let p = ok(&format!(
            "[management]\ninterface = \"ens3\"\ndhcp = false\n{}",
            business("")
        ));
        let mgmt = p.nic(Role::Management).expect("management NIC");
        assert!(!mgmt.dhcp);
        assert!(mgmt.rules.is_empty(), "{:#?}", mgmt.rules);
        let text = p.to_string();
        let dhcp: Vec<&str> = text.lines().filter(|l| l.starts_with("  dhcp")).collect();
        assert_eq!(dhcp, ["  dhcp    off"], "{text}");

        let p = ok(&format!(
            "[management]\ninterface = \"ens3\"\ndhcp = true\n{}",
            business("")
        ));
        let mgmt = p.nic(Role::Management).expect("management NIC");
        assert!(mgmt.dhcp);
        assert!(
            mgmt.rules.is_empty(),
            "dhcp compiled to rules: {:#?}",
            mgmt.rules
        );
        assert!(p
            .entries()
            .iter()
            .all(|(k, _)| k.data().proto != proto::UDP));
    }
}
