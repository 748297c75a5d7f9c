//! Host names in endpoints: resolved when the policy is compiled, and again as their TTLs run
//! out (the daemon recompiles and applies through the reconcile step: new addresses are added
//! before old ones are removed, and flows to an address no longer in the answer are revoked).
//!
//! Lookups go to the resolvers the policy allows DNS to (resolv.conf's nameservers), short names
//! completed with resolv.conf's search list as the agent's resolver completes them, with
//! hickory-resolver, never cached here, each on a thread of its own (the resolver runs its own
//! runtime, which cannot nest in the daemon's).

use std::{net::IpAddr, str::FromStr as _, time::Duration};

use hickory_resolver::{
    config::{NameServerConfigGroup, ResolverConfig, ResolverOpts},
    Name, Resolver,
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

/// DNS over UDP (and TCP when truncated) to `servers` on port 53.
pub struct Dns {
    servers: Vec<IpAddr>,
    port: u16,
    search: SearchList,
}

impl Dns {
    pub fn new(servers: Vec<IpAddr>) -> Dns {
        Dns {
            servers,
            port: 53,
            search: SearchList::default(),
        }
    }

    /// Servers on another port (the tests' own responder).
    pub fn with_port(servers: Vec<IpAddr>, port: u16) -> Dns {
        Dns {
            port,
            ..Dns::new(servers)
        }
    }

    /// Short names completed as resolv.conf says, as glibc completes them for the agent: a name
    /// with fewer than `ndots` dots is tried with each search domain, then as it is; any other
    /// name as it is, then with each domain. A name ending in a dot is never completed.
    pub fn searching(self, search: SearchList) -> Dns {
        Dns { search, ..self }
    }
}

impl Resolve for Dns {
    fn lookup(&self, host: &str) -> Result<Answer, String> {
        if self.servers.is_empty() {
            return Err("no nameserver to ask (resolv.conf lists none)".into());
        }
        let group = NameServerConfigGroup::from_ips_clear(&self.servers, self.port, true);
        let domains = self
            .search
            .domains
            .iter()
            .filter_map(|d| Name::from_str(&format!("{d}.")).ok())
            .collect();
        let config = ResolverConfig::from_parts(None, domains, group);
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        // Every answer fresh: a cache would hide the TTL we follow.
        opts.cache_size = 0;
        opts.ndots = self.search.ndots;
        let name = Name::from_str(host).map_err(|e| format!("not a host name: {e}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let resolver =
                        Resolver::new(config, opts).map_err(|e| format!("resolver: {e}"))?;
                    let lookup = resolver.lookup_ip(name).map_err(|e| e.to_string())?;
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
                })
                .join()
                .unwrap_or_else(|_| Err("the resolver thread panicked".into()))
        })
    }
}

/// A resolver for policies that name no hosts: any lookup is a bug, said plainly.
pub struct NoNames;

impl Resolve for NoNames {
    fn lookup(&self, _host: &str) -> Result<Answer, String> {
        Err("no resolver in use".into())
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
