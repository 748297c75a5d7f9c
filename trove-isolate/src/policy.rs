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
use ipnetwork::IpNetwork;
use trove_isolate_common::{
    family,
    policy::{PolicyKey, PolicyValue},
    proto, Direction, Mode, Role,
};

use crate::config::{Config, ConfigError, NicConfig, DEFAULT_METRICS_LISTEN, DEFAULT_PIN_PATH};

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
                "mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
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
        let mut addr = [0u8; 16];
        let fam = match self.remote.network() {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                family::V4
            }
            IpAddr::V6(v6) => {
                addr = v6.octets();
                family::V6
            }
        };
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPolicy {
    pub listen: SocketAddr,
    pub allow_from: Vec<IpNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub attach: AttachMode,
    pub pin_path: PathBuf,
    pub metrics: MetricsPolicy,
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

impl RuleSet<'_> {
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

    fn finish(self, nic: NicSpec) -> NicPolicy {
        NicPolicy {
            role: self.role,
            nic,
            rules: self.rules,
        }
    }
}

/// The network address of a prefix (host bits cleared).
fn normalise(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).expect("same prefix length is valid")
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

    fn cidr(&self, key: &str, i: usize, text: &str) -> Result<IpNetwork, ConfigError> {
        text.parse::<IpNetwork>().map_err(|e| {
            self.err(
                format!("{key}[{i}]"),
                format!("{text:?} is not a CIDR: {e}"),
            )
        })
    }

    fn cidrs(&self, key: &str, list: &[String]) -> Result<Vec<IpNetwork>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, t)| self.cidr(key, i, t))
            .collect()
    }

    /// `IP:port` or `[IPv6]:port`; names are not resolved (yet): say so.
    fn endpoint(&self, key: &str, i: usize, text: &str) -> Result<SocketAddr, ConfigError> {
        let at = || format!("{key}[{i}]");
        if let Ok(sa) = text.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(self.err(at(), format!("{text:?}: port 0 is not a port")));
            }
            return Ok(sa);
        }
        if text.parse::<IpAddr>().is_ok()
            || text
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<Ipv6Addr>()
                .is_ok()
        {
            return Err(self.err(
                at(),
                format!("{text:?} has no port (expected IP:port or [IPv6]:port)"),
            ));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => Err(self.err(
                at(),
                format!("{text:?}: {host:?} is a host name; give an IP address (names are not resolved yet)"),
            )),
            _ => Err(self.err(at(), format!("{text:?} is not an endpoint (expected IP:port or [IPv6]:port)"))),
        }
    }

    fn port(&self, key: impl fmt::Display, port: Option<u16>) -> Result<u16, ConfigError> {
        match port {
            Some(0) => Err(self.err(key, "port 0 is not a port (1..=65535)")),
            Some(p) => Ok(p),
            None => Err(self.err(key, "a port is required")),
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

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        Policy::from_config(&Config::load(path)?, path)
    }

    pub fn from_config(config: &Config, path: &Path) -> Result<Policy, ConfigError> {
        let top = Ctx { path, section: "" };
        let mode = match config.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("audit") => Mode::Audit,
            Some(other) => {
                return Err(top.err(
                    "mode",
                    format!("{other:?}: expected \"enforce\" or \"audit\""),
                ))
            }
        };
        let attach = match config.attach.as_deref() {
            None | Some("auto") => AttachMode::Auto,
            Some("tcx") => AttachMode::Tcx,
            Some("legacy") => AttachMode::Legacy,
            Some(other) => {
                return Err(top.err(
                    "attach",
                    format!("{other:?}: expected \"auto\", \"tcx\" or \"legacy\""),
                ))
            }
        };
        let pin_path = PathBuf::from(config.pin_path.as_deref().unwrap_or(DEFAULT_PIN_PATH));
        if !pin_path.is_absolute() {
            return Err(top.err(
                "pin_path",
                format!("{} must be an absolute path", pin_path.display()),
            ));
        }

        let m = Ctx {
            path,
            section: "metrics",
        };
        let listen_text = config
            .metrics
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_LISTEN);
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| m.err("listen", format!("{listen_text:?} is not an IP:port")))?;
        let metrics = MetricsPolicy {
            listen,
            allow_from: m.cidrs("allow_from", &config.metrics.allow_from)?,
        };

        let mut next_id = 0;
        let mut nics = Vec::new();
        if let Some(mgmt) = &config.management {
            let c = Ctx {
                path,
                section: "management",
            };
            let nic = c.nic(&mgmt.nic())?;
            let mut set = RuleSet {
                role: Role::Management,
                next_id: &mut next_id,
                seen: HashSet::new(),
                rules: vec![],
            };
            for (key, list) in [("rabbitmq", &mgmt.rabbitmq), ("registry", &mgmt.registry)] {
                for (i, text) in list.iter().enumerate() {
                    let ep = c.endpoint(key, i, text)?;
                    let host = IpNetwork::from(ep.ip());
                    set.tcp(Direction::Egress, ep.port(), host, format!("{key} {ep}"));
                }
            }
            for (i, allow) in mgmt.allow.iter().enumerate() {
                let to = c
                    .cidr(&format!("allow[{i}].to"), 0, &allow.to)
                    .map_err(|_| {
                        c.err(
                            format!("allow[{i}].to"),
                            format!("{:?} is not a CIDR", allow.to),
                        )
                    })?;
                let origin = format!(
                    "allow {} {} {}",
                    allow.proto,
                    allow.to,
                    allow.port.map(|p| p.to_string()).unwrap_or_default()
                );
                let origin = origin.trim_end().to_owned();
                match allow.proto.as_str() {
                    "tcp" | "udp" => {
                        let port = c.port(format!("allow[{i}].port"), allow.port)?;
                        let p = if allow.proto == "tcp" {
                            proto::TCP
                        } else {
                            proto::UDP
                        };
                        set.add(Direction::Egress, p, port, to, origin);
                    }
                    "icmp" => {
                        if allow.port.is_some() {
                            return Err(c.err(
                                format!("allow[{i}].port"),
                                "icmp has no ports; remove port",
                            ));
                        }
                        set.add(Direction::Egress, icmp_for(&to), 0, to, origin);
                    }
                    other => {
                        return Err(c.err(
                            format!("allow[{i}].proto"),
                            format!("{other:?}: expected \"tcp\", \"udp\" or \"icmp\""),
                        ))
                    }
                }
            }
            let ssh_port = c.port("ssh_port", Some(mgmt.ssh_port.unwrap_or(22)))?;
            for net in c.cidrs("ssh_from", &mgmt.ssh_from)? {
                set.tcp(Direction::Ingress, ssh_port, net, format!("ssh_from {net}"));
            }
            for net in &metrics.allow_from {
                set.tcp(
                    Direction::Ingress,
                    metrics.listen.port(),
                    *net,
                    format!("metrics allow_from {net}"),
                );
            }
            if mgmt.dhcp.unwrap_or(true) {
                set.add(Direction::Egress, proto::UDP, 67, any_v4(), "dhcp".into());
                set.add(Direction::Ingress, proto::UDP, 68, any_v4(), "dhcp".into());
                set.add(
                    Direction::Egress,
                    proto::UDP,
                    547,
                    any_v6(),
                    "dhcpv6".into(),
                );
                set.add(
                    Direction::Ingress,
                    proto::UDP,
                    546,
                    any_v6(),
                    "dhcpv6".into(),
                );
            }
            nics.push(set.finish(nic));
        }
        if let Some(biz) = &config.business {
            let c = Ctx {
                path,
                section: "business",
            };
            let nic = c.nic(&biz.nic())?;
            if biz.database_ports.is_empty() {
                return Err(c.err("database_ports", "at least one database port is required"));
            }
            if let Some(i) = biz.database_ports.iter().position(|p| *p == 0) {
                return Err(c.err(
                    format!("database_ports[{i}]"),
                    "port 0 is not a port (1..=65535)",
                ));
            }
            let mut clients = c.cidrs("clients", &biz.clients)?;
            let any_client = clients.is_empty();
            if any_client {
                clients = vec![any_v4(), any_v6()];
            }
            let peers = c.cidrs("peers", &biz.peers)?;
            let mut set = RuleSet {
                role: Role::Business,
                next_id: &mut next_id,
                seen: HashSet::new(),
                rules: vec![],
            };
            for port in &biz.database_ports {
                for net in &clients {
                    let origin = if any_client {
                        "clients (any)".to_owned()
                    } else {
                        format!("clients {net}")
                    };
                    set.tcp(Direction::Ingress, *port, *net, origin);
                }
                for net in &peers {
                    set.tcp(Direction::Egress, *port, *net, format!("peers {net}"));
                }
            }
            nics.push(set.finish(nic));
        }
        if nics.is_empty() {
            return Err(top.err(
                "[management]/[business]",
                "at least one of the two sections is required",
            ));
        }
        if let [a, b] = &nics[..] {
            if a.nic == b.nic {
                return Err(ConfigError::invalid(
                    path,
                    "[business] interface/mac",
                    format!("names the same NIC as [management] ({})", a.nic),
                ));
            }
        }
        Ok(Policy {
            mode,
            attach,
            pin_path,
            metrics,
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
        writeln!(f, "metrics   http://{}/metrics", self.metrics.listen)?;
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
