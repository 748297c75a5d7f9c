//! Host names in endpoints: resolved when the policy is compiled, and again as their TTLs run
//! out (the daemon recompiles and applies through the reconcile step: new addresses are added
//! before old ones are removed, and flows to an address no longer in the answer are revoked).
//!
//! Lookups ask the hosts file first, then the resolvers the policy allows DNS to (resolv.conf's
//! nameservers), a short name completed with resolv.conf's search list as the agent's resolver
//! completes it ([`candidates`]), with hickory-resolver, never cached here, each on a thread of
//! its own (the resolver runs its own runtime, which cannot nest in the daemon's).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use hickory_resolver::{
    config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts},
    error::{ResolveError, ResolveErrorKind},
    proto::op::ResponseCode,
    Resolver,
};

pub use crate::discover::SearchList;

/// One answer: the addresses and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<IpAddr>,
    pub ttl: Duration,
}

/// Looks up host names.
pub trait Resolve {
    fn lookup(&self, host: &str) -> Result<Answer, String>;
}

/// The floor and the ceiling of re-resolution: a TTL of 0 must not mean a busy loop, and a day
/// is too long to follow a moved RabbitMQ.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// How soon a name that did not resolve is tried again: soon, since at boot the daemon starts
/// before DHCP has given the guest a resolver, and the name's endpoint is refused until then.
pub const UNRESOLVED_RETRY: Duration = Duration::from_secs(5);

/// DNS over UDP (and TCP when truncated) to `servers` on port 53, after a hosts file.
pub struct Dns {
    servers: Vec<IpAddr>,
    port: u16,
    search: SearchList,
    hosts: Option<PathBuf>,
}

/// How soon a name a hosts file answered is read again: a file, not a TTL, says it.
pub const HOSTS_REFRESH: Duration = Duration::from_secs(60);

impl Dns {
    pub fn new(servers: Vec<IpAddr>) -> Dns {
        Dns {
            servers,
            port: 53,
            search: SearchList::default(),
            hosts: None,
        }
    }

    /// Servers on another port (the tests' own responder).
    pub fn with_port(servers: Vec<IpAddr>, port: u16) -> Dns {
        Dns {
            port,
            ..Dns::new(servers)
        }
    }

    /// Short names completed as resolv.conf says ([`candidates`]).
    pub fn searching(self, search: SearchList) -> Dns {
        Dns { search, ..self }
    }

    /// A hosts file asked first, as the agent's resolver asks `/etc/hosts` before DNS.
    pub fn with_hosts_file(self, path: PathBuf) -> Dns {
        Dns {
            hosts: Some(path),
            ..self
        }
    }
}

impl Resolve for Dns {
    fn lookup(&self, host: &str) -> Result<Answer, String> {
        if let Some(addresses) = self.hosts.as_deref().and_then(|f| in_hosts_file(f, host)) {
            return Ok(Answer {
                addresses,
                ttl: HOSTS_REFRESH,
            });
        }
        if self.servers.is_empty() {
            return Err("no nameserver to ask (resolv.conf lists none)".into());
        }
        let names = candidates(&self.search, host);
        let group = NameServerConfigGroup::from_ips_clear(&self.servers, self.port, true);
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // Every answer fresh: a cache would hide the TTL we follow.
        opts.cache_size = 0;
        // Each candidate is asked as the absolute name it is, and no hosts file but the one
        // above (the daemon's own need not be the guest's).
        opts.ndots = 0;
        opts.use_hosts_file = false;
        // Both families: the agent may connect to either.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let resolver =
                        Resolver::new(config, opts).map_err(|e| format!("resolver: {e}"))?;
                    let mut last = String::new();
                    for name in &names {
                        match resolver.lookup_ip(name.as_str()) {
                            Ok(lookup) => {
                                let mut found = answer(&lookup)?;
                                // eventlet asks for a single label as a top-level name too,
                                // and takes both answers.
                                let raw = format!("{host}.");
                                if !host.contains('.') && *name != raw {
                                    if let Ok(more) = resolver.lookup_ip(raw.as_str()) {
                                        let more = answer(&more)?;
                                        found.addresses.extend(more.addresses);
                                        found.addresses.sort();
                                        found.addresses.dedup();
                                        found.ttl = found.ttl.min(more.ttl);
                                    }
                                }
                                return Ok(found);
                            }
                            // The next candidate only where the last has no such name, as
                            // dnspython's search goes on; a resolver that does not answer, or
                            // fails, ends it, or a slow first domain would hand the name to the
                            // next.
                            Err(e) if no_such_name(&e) => last = format!("{name}: {e}"),
                            Err(e) => return Err(format!("{name}: {e}")),
                        }
                    }
                    Err(last)
                })
                .join()
                .unwrap_or_else(|_| Err("the resolver thread panicked".into()))
        })
    }
}

/// The names a lookup of `host` asks for, in order, as the agent's resolver tries them
/// (eventlet's, over dnspython, whose order is glibc's `res_search`'s): a name ending in a dot
/// as it is; one with at least `ndots` dots as it is, then with each search domain; any other
/// with each domain, then as it is.
pub fn candidates(search: &SearchList, host: &str) -> Vec<String> {
    if host.ends_with('.') {
        return vec![host.to_owned()];
    }
    let completed = search.domains.iter().map(|d| format!("{host}.{d}."));
    let raw = format!("{host}.");
    if host.matches('.').count() >= search.ndots {
        std::iter::once(raw).chain(completed).collect()
    } else {
        completed.chain(std::iter::once(raw)).collect()
    }
}

fn no_such_name(e: &ResolveError) -> bool {
    matches!(
        e.kind(),
        ResolveErrorKind::NoRecordsFound { response_code, .. }
            if *response_code == ResponseCode::NXDomain
    )
}

fn answer(lookup: &hickory_resolver::lookup_ip::LookupIp) -> Result<Answer, String> {
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    let mut addresses: Vec<IpAddr> = lookup.iter().collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err("no addresses in the answer".to_owned());
    }
    Ok(Answer { addresses, ttl })
}

/// The addresses a hosts file gives `host` (every line that names it), if any.
fn in_hosts_file(path: &Path, host: &str) -> Option<Vec<IpAddr>> {
    let text = std::fs::read_to_string(path).ok()?;
    let host = host.trim_end_matches('.');
    let mut addresses: Vec<IpAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    (!addresses.is_empty()).then_some(addresses)
}

/// A resolver for policies that name no hosts: any lookup is a bug, said plainly.
pub struct NoNames;

impl Resolve for NoNames {
    fn lookup(&self, _host: &str) -> Result<Answer, String> {
        Err("no resolver in use".into())
    }
}

/// For a start while the boot guard holds the NICs (DNS does not pass it): every name is
/// unresolved, without a query, and looked up once the guard is off.
pub struct Deferred;

impl Resolve for Deferred {
    fn lookup(&self, _host: &str) -> Result<Answer, String> {
        Err("not looked up yet: the boot guard held the NICs at the start".into())
    }
}

/// A start's lookups over a policy in force: a name that does not resolve now (DNS down for a
/// moment, or not yet looked up under the boot guard) keeps the addresses the policy in force
/// reaches it at (the state file's), so that a restart revokes no flow of it, as a failed
/// refresh keeps them. Each such name is noted ([`Recalled::recalled`]) and counts as
/// unresolved: it is looked up again soon.
pub struct Recalled<'a> {
    pub inner: &'a dyn Resolve,
    pub recorded: &'a [crate::state::NameAddresses],
    recalled: std::sync::Mutex<Vec<(String, String)>>,
}

impl<'a> Recalled<'a> {
    pub fn new(inner: &'a dyn Resolve, recorded: &'a [crate::state::NameAddresses]) -> Self {
        Recalled {
            inner,
            recorded,
            recalled: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The names answered from the record, each with why its lookup failed.
    pub fn recalled(self) -> Vec<(String, String)> {
        let mut recalled = self
            .recalled
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        // A name two endpoints share is looked up for each.
        recalled.sort();
        recalled.dedup_by(|a, b| a.0 == b.0);
        recalled
    }
}

impl Resolve for Recalled<'_> {
    fn lookup(&self, host: &str) -> Result<Answer, String> {
        let error = match self.inner.lookup(host) {
            Ok(answer) => return Ok(answer),
            Err(error) => error,
        };
        match self.recorded.iter().find(|n| n.host == host) {
            Some(n) if !n.addresses.is_empty() => {
                self.recalled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((host.to_owned(), error));
                Ok(Answer {
                    addresses: n.addresses.clone(),
                    ttl: UNRESOLVED_RETRY,
                })
            }
            _ => Err(error),
        }
    }
}

/// For what needs the policy's NICs, not its addresses (`status`, `detach`): every name
/// "resolves" to nothing, without a query.
pub struct Offline;

impl Resolve for Offline {
    fn lookup(&self, _host: &str) -> Result<Answer, String> {
        Ok(Answer {
            addresses: Vec::new(),
            ttl: MAX_REFRESH,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NameAddresses;

    /// Answers its one name with one address, fails every other.
    struct Only(&'static str);

    impl Resolve for Only {
        fn lookup(&self, host: &str) -> Result<Answer, String> {
            match host == self.0 {
                true => Ok(Answer {
                    addresses: vec!["192.0.2.1".parse().unwrap()],
                    ttl: MAX_REFRESH,
                }),
                false => Err("timed out".into()),
            }
        }
    }

    /// A name that fails keeps the addresses in force, and is noted; one that answers, or that
    /// has none in force, is what the lookup says.
    #[test]
    fn recalled_names_keep_the_addresses_in_force_only_when_they_fail() {
        let recorded = [
            NameAddresses {
                host: "rabbit".into(),
                addresses: vec!["198.51.100.7".parse().unwrap()],
                rules: Vec::new(),
            },
            NameAddresses {
                host: "up".into(),
                addresses: vec!["198.51.100.8".parse().unwrap()],
                rules: Vec::new(),
            },
        ];
        let r = Recalled::new(&Only("up"), &recorded);
        let rabbit = r.lookup("rabbit").expect("recalled");
        assert_eq!(rabbit.addresses, recorded[0].addresses);
        assert_eq!(rabbit.ttl, UNRESOLVED_RETRY);
        assert_eq!(r.lookup("rabbit").expect("again").addresses.len(), 1);
        let up = r.lookup("up").expect("answered");
        assert_eq!(up.addresses, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.lookup("new").unwrap_err(), "timed out");
        assert_eq!(r.recalled(), vec![("rabbit".into(), "timed out".into())]);
    }
}
