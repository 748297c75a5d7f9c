//! The compile step, one function per config section: each checks its values, names the key of
//! every error, and turns what it allows into rules.

use std::collections::hash_map::Entry as Seen;

use super::*;

pub(super) fn any_v4() -> IpNetwork {
    IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("0.0.0.0/0 is valid")
}

pub(super) fn any_v6() -> IpNetwork {
    IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("::/0 is valid")
}

/// Collects rules for one NIC, numbering them and dropping exact duplicates.
pub(super) struct RuleSet<'a> {
    role: Role,
    next_id: &'a mut u32,
    /// Each rule's index in `rules`, by what it matches: a duplicate is found in one lookup,
    /// not a scan (a list of 100,000 entries may repeat some).
    seen: foldhash::HashMap<(Direction, u8, u16, IpNetwork), u32>,
    pub(super) rules: Vec<Rule>,
    /// The host name the rules being added are addresses of.
    naming: Option<Arc<str>>,
}

impl<'a> RuleSet<'a> {
    pub(super) fn new(role: Role, next_id: &'a mut u32) -> Self {
        RuleSet {
            role,
            next_id,
            seen: foldhash::HashMap::default(),
            rules: vec![],
            naming: None,
        }
    }

    pub(super) fn add(
        &mut self,
        direction: Direction,
        proto: u8,
        port: u16,
        remote: IpNetwork,
        origin: impl Into<Origin>,
    ) {
        let remote = normalise(remote);
        match self.seen.entry((direction, proto, port, remote)) {
            // Written in the config and also a name's address: the config's rule stays when
            // the name's answers change.
            Seen::Occupied(seen) => {
                let rule = &mut self.rules[*seen.get() as usize];
                if self.naming.is_none() && rule.host.is_some() {
                    rule.host = None;
                    rule.origin = origin.into();
                }
            }
            Seen::Vacant(slot) => {
                slot.insert(self.rules.len() as u32);
                *self.next_id += 1;
                self.rules.push(Rule {
                    id: *self.next_id,
                    direction,
                    proto,
                    port,
                    remote,
                    origin: origin.into(),
                    host: self.naming.clone(),
                });
            }
        }
    }

    pub(super) fn tcp(
        &mut self,
        direction: Direction,
        port: u16,
        remote: IpNetwork,
        origin: impl Into<Origin>,
    ) {
        self.add(direction, proto::TCP, port, remote, origin);
    }

    pub(super) fn finish(mut self, nic: NicSpec, dhcp: bool) -> NicPolicy {
        // The daemon keeps the rules for its whole life: no growth slack (a third of the
        // memory of a 100,000-rule policy).
        self.rules.shrink_to_fit();
        NicPolicy {
            role: self.role,
            nic,
            rules: self.rules,
            dhcp,
        }
    }
}

/// The network address of a prefix (host bits cleared).
pub(super) fn normalise(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).expect("same prefix length is valid")
}

/// A configured address or prefix: what the datapath matches, and how a rule's origin shows it.
#[derive(Debug, Clone)]
pub(super) struct Remote<T> {
    matched: T,
    /// As written (host bits cleared) and what it is matched as, where that differs; else shown
    /// as matched (made when shown: a policy may list 1,000,000 prefixes).
    written: Option<String>,
}

impl<T: fmt::Display> Remote<T> {
    fn plain(matched: T) -> Self {
        Remote {
            matched,
            written: None,
        }
    }

    fn mapped(written: impl fmt::Display, matched: T) -> Self {
        let written = Some(format!("{written} (IPv4-mapped, as {matched})"));
        Remote { matched, written }
    }

    /// The origin of a rule for this entry of list `key`.
    fn origin(&self, key: &'static &'static str) -> Origin {
        match &self.written {
            None => Origin::Entry(key),
            Some(written) => format!("{} {written}", *key).into(),
        }
    }
}

impl<T: fmt::Display> fmt::Display for Remote<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.written {
            Some(written) => f.write_str(written),
            None => self.matched.fmt(f),
        }
    }
}

/// The key of a list's entry in an error message, `key[i]`, made only if one is shown.
struct Entry<'a>(&'a str, usize);

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

/// Where an IPv6 prefix lies against the IPv4-mapped range `::ffff:0:0/96`. Mapped addresses
/// never appear on the wire (those hosts send IPv4), so a rule for them must be the IPv4 one.
pub(super) enum Mapped {
    Outside,
    /// `::ffff:a.b.c.d/(96+n)`: the IPv4 `a.b.c.d/n`.
    Within(Ipv4Network),
    /// Wider than /96 and covering it: IPv6 hosts and IPv4 ones in one prefix, which no rule
    /// expresses. `::/0` is not this: it is "any IPv6 address", written on purpose.
    Covers,
}

pub(super) fn mapped(net: Ipv6Network) -> Mapped {
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
pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) section: &'static str,
}

impl Ctx<'_> {
    pub(super) fn err(&self, key: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
        let key = if self.section.is_empty() {
            key.to_string()
        } else {
            format!("[{}] {key}", self.section)
        };
        ConfigError::invalid(self.path, key, message)
    }

    /// A CIDR (a bare address is a host prefix); host bits are cleared, not refused. An
    /// IPv4-mapped IPv6 prefix is matched as the IPv4 prefix it stands for.
    pub(super) fn cidr(
        &self,
        key: impl fmt::Display,
        text: &str,
    ) -> Result<Remote<IpNetwork>, ConfigError> {
        let net = text
            .parse::<IpNetwork>()
            .map(normalise)
            .map_err(|e| self.err(&key, format!("{text:?} is not a CIDR: {e}")))?;
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

    pub(super) fn cidrs(
        &self,
        key: &str,
        list: &[String],
    ) -> Result<Vec<Remote<IpNetwork>>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, t)| self.cidr(Entry(key, i), t))
            .collect()
    }

    /// `IP:port`, `[IPv6]:port` (an IPv4-mapped IPv6 address matched as the IPv4 one) or
    /// `name:port`.
    pub(super) fn endpoint(&self, key: &str, text: &str) -> Result<Target, ConfigError> {
        const EXPECTED: &str = "(expected IP:port, [IPv6]:port or name:port)";
        if let Ok(sa) = text.parse::<SocketAddr>() {
            self.port(key, Some(i64::from(sa.port())))?;
            return Ok(Target::Address(match sa {
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => Remote::mapped(sa, SocketAddr::new(IpAddr::V4(v4), sa.port())),
                    None => Remote::plain(sa),
                },
                SocketAddr::V4(_) => Remote::plain(sa),
            }));
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
            let Some(port) = port else {
                return Err(self.err(key, format!("{text:?} has no port {EXPECTED}")));
            };
            let port = port.parse::<i64>().map_err(|_| {
                self.err(key, format!("{text:?}: {port:?} is not a port (1..=65535)"))
            })?;
            let port = self.port(key, Some(port))?;
            return Ok(Target::Name(host.to_ascii_lowercase(), port));
        }
        Err(self.err(key, format!("{text:?} is not an endpoint {EXPECTED}")))
    }

    pub(super) fn port(
        &self,
        key: impl fmt::Display,
        port: Option<i64>,
    ) -> Result<u16, ConfigError> {
        match port {
            None => Err(self.err(key, "a port is required")),
            Some(p) => match u16::try_from(p) {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(self.err(key, format!("{p} is not a port (1..=65535)"))),
            },
        }
    }

    pub(super) fn nic(&self, nic: &NicConfig) -> Result<NicSpec, ConfigError> {
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
pub(super) fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.chars().any(|c| c.is_ascii_alphabetic())
        && text
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

pub(super) fn parse_mac(text: &str) -> Option<[u8; 6]> {
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

pub(super) fn icmp_for(net: &IpNetwork) -> u8 {
    if net.is_ipv4() {
        proto::ICMP
    } else {
        proto::ICMPV6
    }
}

/// An endpoint as written: an address, or a host name to resolve.
pub(super) enum Target {
    Address(Remote<SocketAddr>),
    Name(String, u16),
}

/// What the sections compile from besides their own keys: what Trove discovery found, how to
/// look up host names, and what the lookups found.
pub(super) struct Sources<'a> {
    pub(super) discovered: Option<&'a Discovered>,
    pub(super) resolver: &'a dyn Resolve,
    pub(super) names: Vec<NameRecord>,
    pub(super) unresolved: Vec<Unresolved>,
}

/// A name that did not resolve.
pub(super) struct Unresolved {
    pub(super) host: String,
    pub(super) origin: String,
    pub(super) error: String,
}

/// Rules to each address of one endpoint (`kind`: rabbitmq, registry, ...), written at `key`
/// or found at `origin` by discovery.
#[allow(clippy::too_many_arguments)]
pub(super) fn endpoint_rules(
    c: &Ctx,
    key: &str,
    text: &str,
    kind: &'static str,
    found_at: Option<&str>,
    proto_number: u8,
    set: &mut RuleSet,
    sources: &mut Sources,
) -> Result<(), ConfigError> {
    let from = found_at.map(|o| format!(" (from {o})")).unwrap_or_default();
    match c.endpoint(key, text)? {
        Target::Address(ep) => {
            let host = IpNetwork::from(ep.matched.ip());
            let origin = format!("{kind} {ep}{from}");
            set.add(
                Direction::Egress,
                proto_number,
                ep.matched.port(),
                host,
                origin,
            );
        }
        Target::Name(host, port) => {
            let origin = format!("{kind} {host}:{port}{from}");
            match sources.resolver.lookup(&host) {
                Ok(answer) => {
                    set.naming = Some(host.as_str().into());
                    for address in &answer.addresses {
                        // An IPv4-mapped answer is matched as the IPv4 address it stands for.
                        let matched = match address {
                            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*address, IpAddr::V4),
                            IpAddr::V4(_) => *address,
                        };
                        set.add(
                            Direction::Egress,
                            proto_number,
                            port,
                            IpNetwork::from(matched),
                            format!("{origin} = {matched}"),
                        );
                    }
                    set.naming = None;
                    sources.names.push(NameRecord {
                        host,
                        kind,
                        origin,
                        addresses: answer.addresses,
                        ttl: answer.ttl,
                    });
                }
                Err(error) => sources.unresolved.push(Unresolved {
                    host,
                    origin,
                    error,
                }),
            }
        }
    }
    Ok(())
}

pub(super) fn mode(top: &Ctx, mode: Option<&str>) -> Result<Mode, ConfigError> {
    match mode {
        None | Some("enforce") => Ok(Mode::Enforce),
        Some("audit") => Ok(Mode::Audit),
        Some(other) => Err(top.err(
            "mode",
            format!("{other:?}: expected \"enforce\" or \"audit\""),
        )),
    }
}

pub(super) fn attach(top: &Ctx, attach: Option<&str>) -> Result<AttachMode, ConfigError> {
    attach_mode(attach).map_err(|m| top.err("attach", m))
}

/// The `attach` key's value.
pub fn attach_mode(attach: Option<&str>) -> Result<AttachMode, String> {
    match attach {
        None | Some("auto") => Ok(AttachMode::Auto),
        Some("tcx") => Ok(AttachMode::Tcx),
        Some("legacy") => Ok(AttachMode::Legacy),
        Some(other) => Err(format!(
            "{other:?}: expected \"auto\", \"tcx\" or \"legacy\""
        )),
    }
}

pub(super) fn pin_path(top: &Ctx, pin_path: Option<&str>) -> Result<PathBuf, ConfigError> {
    let pin_path = PathBuf::from(pin_path.unwrap_or(DEFAULT_PIN_PATH));
    if !pin_path.is_absolute() {
        return Err(top.err("pin_path", format!("{pin_path:?} must be an absolute path")));
    }
    Ok(pin_path)
}

pub(super) fn conntrack(
    ctx: &Ctx,
    config: &ConntrackConfig,
) -> Result<ConntrackPolicy, ConfigError> {
    let size = |key: &str, value: Option<i64>, default: u32| match value {
        None => Ok(default),
        Some(n) if (ConntrackPolicy::MIN_ENTRIES..=ConntrackPolicy::MAX_ENTRIES).contains(&n) => {
            Ok(n as u32)
        }
        Some(n) => Err(ctx.err(
            key,
            format!(
                "{n} is out of range ({} to {} flows per NIC)",
                ConntrackPolicy::MIN_ENTRIES,
                ConntrackPolicy::MAX_ENTRIES
            ),
        )),
    };
    Ok(ConntrackPolicy {
        established_entries: size(
            "established_entries",
            config.established_entries,
            ConntrackPolicy::DEFAULT.established_entries,
        )?,
        new_entries: size(
            "new_entries",
            config.new_entries,
            ConntrackPolicy::DEFAULT.new_entries,
        )?,
    })
}

pub(super) fn drops(ctx: &Ctx, config: &DropsConfig) -> Result<DropsPolicy, ConfigError> {
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
pub(super) fn metrics(
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
pub(super) fn management(
    c: &Ctx,
    mgmt: &ManagementConfig,
    metrics: &MetricsPolicy,
    scrapers: &[Remote<IpNetwork>],
    next_id: &mut u32,
    sources: &mut Sources,
) -> Result<NicPolicy, ConfigError> {
    let nic = c.nic(&mgmt.nic())?;
    let mut set = RuleSet::new(Role::Management, next_id);
    for (key, kind, list) in [
        ("rabbitmq", "rabbitmq", &mgmt.rabbitmq),
        ("registry", "registry", &mgmt.registry),
    ] {
        for (i, text) in list.iter().enumerate() {
            let key = format!("{key}[{i}]");
            endpoint_rules(c, &key, text, kind, None, proto::TCP, &mut set, sources)?;
        }
    }
    if let Some(found) = sources.discovered {
        let lists = [
            ("rabbitmq", &found.rabbitmq),
            ("registry", &found.registries),
            ("service", &found.services),
        ];
        for (kind, list) in lists {
            for f in list {
                let p = match f.value.proto {
                    discover::Proto::Tcp => proto::TCP,
                    discover::Proto::Udp => proto::UDP,
                };
                let text = f.value.to_string();
                endpoint_rules(
                    c,
                    &f.origin,
                    &text,
                    kind,
                    Some(&f.origin),
                    p,
                    &mut set,
                    sources,
                )?;
            }
        }
    }
    for (i, entry) in mgmt.allow.iter().enumerate() {
        allow(c, i, entry, &mut set, sources)?;
    }
    let ssh_port = c.port("ssh_port", Some(mgmt.ssh_port.unwrap_or(22)))?;
    for net in c.cidrs("ssh_from", &mgmt.ssh_from)? {
        set.tcp(
            Direction::Ingress,
            ssh_port,
            net.matched,
            net.origin(&"ssh_from"),
        );
    }
    for net in scrapers {
        set.tcp(
            Direction::Ingress,
            metrics.listen.port(),
            net.matched,
            net.origin(&"metrics allow_from"),
        );
    }
    dns(&mut set, sources);
    // DHCP is no rule: its broadcasts and link-scoped multicasts match no unicast prefix, and
    // the datapath passes it statelessly from this flag.
    Ok(set.finish(nic, mgmt.dhcp.unwrap_or(true)))
}

/// DNS to the resolvers, when an endpoint is a name: UDP and TCP port 53 to each. Marked as
/// the rules of [`RESOLVERS`], so that they follow resolv.conf as a name's follow its answers.
fn dns(set: &mut RuleSet, sources: &Sources) {
    if sources.names.is_empty() && sources.unresolved.is_empty() {
        return;
    }
    set.naming = Some(RESOLVERS.into());
    for (resolver, origin) in resolvers(sources.discovered) {
        let net = IpNetwork::from(resolver);
        let origin = format!("dns {resolver}:53 (from {origin}; endpoints are host names)");
        set.add(Direction::Egress, proto::UDP, 53, net, origin.clone());
        set.add(Direction::Egress, proto::TCP, 53, net, origin);
    }
    set.naming = None;
}

/// What the rules to the resolvers are "the rules of" ([`Rule::host`]): not a host name (it
/// cannot be one: no name holds parentheses), but refreshed like one, from resolv.conf, which
/// DHCP rewrites.
pub const RESOLVERS: &str = "(resolvers)";

/// The nameservers host names are resolved with: the Trove root's resolv.conf when discovery
/// is on, the system's otherwise.
pub(super) fn resolvers(discovered: Option<&Discovered>) -> Vec<(IpAddr, String)> {
    match discovered {
        Some(d) => d
            .resolvers
            .iter()
            .map(|r| (r.value, r.origin.clone()))
            .collect(),
        None => discover::nameservers(Path::new("/"))
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.value, r.origin))
            .collect(),
    }
}

/// The resolver host names are looked up with: the hosts file, then resolv.conf's nameservers
/// and search list (the Trove root's when discovery is on, the system's otherwise), so that a
/// name resolves as it does for the agent.
pub(super) fn resolver(discovered: Option<&Discovered>) -> resolve::Dns {
    let servers = resolvers(discovered)
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    let (search, hosts) = match discovered {
        Some(d) => (d.search.clone(), d.hosts_file.clone()),
        None => (
            discover::search_list(Path::new("/")).unwrap_or_default(),
            PathBuf::from("/etc/hosts"),
        ),
    };
    resolve::Dns::new(servers)
        .searching(search)
        .with_hosts_file(hosts)
}

/// The registries the guest needs that nothing reaches. Discovery allows no Docker Hub host
/// (its addresses are a CDN's, which a guest's lookup and dockerd's need not agree on), so unless
/// an `allow` entry names its registry (`registry-1.docker.io`, tcp 443), the datastore's images
/// there cannot be pulled (the agent pulls the database's image each time it creates its
/// container, the backup image at each backup and restore), and a `container_registry` there
/// cannot be logged in to (the agent logs in as it starts). A public registry that sends the
/// layers to a CDN is reached, its CDN is not. Said, not refused: a refused config would leave
/// the guest with no enforcement.
pub(super) fn images_unreached<'a>(
    discovered: Option<&Discovered>,
    mut allows: impl Iterator<Item = &'a AllowConfig>,
) -> Vec<String> {
    let Some(d) = discovered else {
        return Vec::new();
    };
    let reaches_hub = |a: &AllowConfig| {
        a.to.trim_end_matches('.')
            .eq_ignore_ascii_case("registry-1.docker.io")
            && a.proto == "tcp"
            && a.port.is_none_or(|p| p == 443)
    };
    let hub_reached = allows.any(reaches_hub);
    let allow = "Name another registry, a mirror in daemon.json's registry-mirrors (images only), \
                 or allow registry-1.docker.io, auth.docker.io and production.cloudflare.docker.com \
                 (tcp 443)";
    let when = |origin: &str| {
        if origin.ends_with("backup_docker_image") {
            "at each backup and restore"
        } else {
            "each time the agent creates the database's container"
        }
    };
    let hub_images = d.hub_images.iter().filter(|_| !hub_reached).map(|image| {
        format!(
            "{} = {} is on Docker Hub, which no rule reaches: pulling it ({}) is refused. {allow}",
            image.origin,
            image.value,
            when(&image.origin)
        )
    });
    let hub_login = d.hub_login.iter().filter(|_| !hub_reached).map(|login| {
        format!(
            "{} = {} is Docker Hub, which no rule reaches: the agent's login to it as it starts \
             is refused. {allow}",
            login.origin, login.value
        )
    });
    let cdn = d.cdn_images.iter().map(|image| {
        format!(
            "{} = {}: a CDN no rule reaches, so pulling it is refused. Name a registry of your \
             own, or allow that CDN's addresses",
            image.origin, image.value
        )
    });
    hub_images.chain(hub_login).chain(cdn).collect()
}

/// One `[management] allow` entry: an outbound rule.
pub(super) fn allow(
    c: &Ctx,
    i: usize,
    allow: &AllowConfig,
    set: &mut RuleSet,
    sources: &mut Sources,
) -> Result<(), ConfigError> {
    // A host name (an object store's, say): its addresses, followed as its answers change.
    if is_host_name(&allow.to) {
        let p = match allow.proto.as_str() {
            "tcp" => proto::TCP,
            "udp" => proto::UDP,
            _ => {
                return Err(c.err(
                    format!("allow[{i}].to"),
                    format!(
                        "{:?} is a host name: allowed for proto \"tcp\" or \"udp\" with a \
                         port; icmp takes a CIDR",
                        allow.to
                    ),
                ))
            }
        };
        let port = c.port(format!("allow[{i}].port"), allow.port)?;
        let text = format!("{}:{port}", allow.to);
        let key = format!("allow[{i}].to");
        return endpoint_rules(c, &key, &text, "allow", None, p, set, sources);
    }
    let written = c.cidr(format!("allow[{i}].to"), &allow.to)?;
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
pub(super) const ANY_CLIENTS: &str = "clients (any)";

/// Database traffic only: inbound from clients, outbound to replication peers.
pub(super) fn business(
    c: &Ctx,
    biz: &BusinessConfig,
    next_id: &mut u32,
    discovered: Option<&Discovered>,
) -> Result<NicPolicy, ConfigError> {
    let mut nic_config = biz.nic();
    if nic_config.interface.is_none() && nic_config.mac.is_none() {
        // Trove tells the guest its business NIC in eth1.json.
        nic_config.mac = discovered
            .and_then(|d| d.business_mac.as_ref())
            .map(|m| m.value.clone());
    }
    let nic = c.nic(&nic_config)?;
    let mut ports = biz
        .database_ports
        .iter()
        .enumerate()
        .map(|(i, p)| c.port(format!("database_ports[{i}]"), Some(*p)))
        .collect::<Result<Vec<u16>, _>>()?;
    for found in discovered
        .map(|d| d.database_ports.as_slice())
        .unwrap_or_default()
    {
        if !ports.contains(&found.value) {
            ports.push(found.value);
        }
    }
    if ports.is_empty() {
        // Trove's files name the datastore whenever they are all there: guest_info.conf is one
        // of those cloud-init writes.
        if discovered.is_some() {
            return Err(ConfigError::TroveFilesMissing {
                path: c.path.to_owned(),
                message: "discovery: no [DEFAULT] datastore_manager in any *.conf (Trove writes \
                          it in conf.d/guest_info.conf), and [business] database_ports names \
                          none: the database's ports are unknown"
                    .into(),
            });
        }
        return Err(c.err("database_ports", "at least one database port is required"));
    }
    let clients: Vec<(IpNetwork, Origin)> = if biz.clients.is_empty() {
        let any = || Origin::from(ANY_CLIENTS.to_owned());
        vec![(any_v4(), any()), (any_v6(), any())]
    } else {
        c.cidrs("clients", &biz.clients)?
            .into_iter()
            .map(|net| (net.matched, net.origin(&"clients")))
            .collect()
    };
    let peers = c.cidrs("peers", &biz.peers)?;
    let mut set = RuleSet::new(Role::Business, next_id);
    for port in &ports {
        for (net, origin) in &clients {
            set.tcp(Direction::Ingress, *port, *net, origin.clone());
        }
        for net in &peers {
            set.tcp(Direction::Egress, *port, net.matched, net.origin(&"peers"));
        }
    }
    Ok(set.finish(nic, false))
}

/// A policy holds at most [`MAX_ENTRIES`] rules across both roles (the map is sized from the
/// policy at load). Refused here, so `check` sees it too.
pub(super) fn fits_the_map(top: &Ctx, nics: &[NicPolicy]) -> Result<(), ConfigError> {
    fits_within(top, nics, MAX_ENTRIES as usize)
}

pub(super) fn fits_within(top: &Ctx, nics: &[NicPolicy], limit: usize) -> Result<(), ConfigError> {
    let total: usize = nics.iter().map(|n| n.rules.len()).sum();
    if total <= limit {
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
            "the policy compiles to {total} entries ({}), more than a policy may hold \
             ({limit}); merge CIDRs into wider prefixes",
            per_role.join(", ")
        ),
    ))
}

/// The datapath looks a new flow up once per prefix length its (role, direction, family) uses,
/// at most [`MAX_LENGTHS`] of them. Counted on the rules as written: expansion only lowers it.
pub(super) fn few_enough_lengths(top: &Ctx, nics: &[NicPolicy]) -> Result<(), ConfigError> {
    for nic in nics {
        for direction in Direction::ALL {
            for (fam, name) in [(family::V4, "IPv4"), (family::V6, "IPv6")] {
                let mut lengths: Vec<u8> = nic
                    .rules
                    .iter()
                    .map(|r| r.key(nic.role))
                    .filter(|k| k.direction == direction as u8 && k.family == fam)
                    .map(|k| k.prefix)
                    .collect();
                lengths.sort_unstable_by(|a, b| b.cmp(a));
                lengths.dedup();
                if lengths.len() > MAX_LENGTHS {
                    let shown: Vec<String> = lengths.iter().map(|l| format!("/{l}")).collect();
                    return Err(top.err(
                        format!("[{}]", nic.role.name()),
                        format!(
                            "the {} NIC's {} {name} rules use {} prefix lengths ({}), more than \
                             {MAX_LENGTHS}; merge prefixes into fewer lengths",
                            nic.role.name(),
                            direction.name(),
                            lengths.len(),
                            shown.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
