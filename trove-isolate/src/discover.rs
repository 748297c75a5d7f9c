//! Trove discovery: a guest's policy from the files Trove puts on it, the compiler's second
//! front end (the config file is the first).
//!
//! From `[trove] root` (default `/`), it reads:
//! - `conf_dir` (`etc/trove/conf.d`), every `*.conf` in name order as oslo.config does with
//!   `--config-dir` (a later value wins): RabbitMQ from `[DEFAULT] transport_url` and
//!   `[oslo_messaging_notifications] transport_url` (every host; 5672 unless a port is
//!   given), registries from `[guest_agent] container_registry` and the
//!   datastore's `docker_image` / `backup_docker_image`, Swift from `[DEFAULT] swift_url`, the
//!   database ports from `[DEFAULT] datastore_manager`;
//! - `docker_daemon_json` (`etc/docker/daemon.json`): `insecure-registries`, `registry-mirrors`;
//! - `eth1_json` (`etc/trove/eth1.json`): the business NIC's `mac_address`;
//! - what any guest needs at boot: the metadata service, the resolvers of `etc/resolv.conf`
//!   (when an endpoint is a name), the NTP servers of chrony's or timesyncd's config.
//!
//! Every finding carries its origin (file, section, key) for `check`. Passwords in transport
//! URLs are never kept, logged or printed.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use ini::{Ini, ParseOption};

/// Where discovery reads, relative to `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TroveFiles {
    pub root: PathBuf,
    pub conf_dir: PathBuf,
    pub eth1_json: PathBuf,
    pub docker_daemon_json: PathBuf,
}

impl TroveFiles {
    pub const DEFAULT_ROOT: &str = "/";
    pub const DEFAULT_CONF_DIR: &str = "etc/trove/conf.d";
    pub const DEFAULT_ETH1_JSON: &str = "etc/trove/eth1.json";
    pub const DEFAULT_DOCKER_DAEMON_JSON: &str = "etc/docker/daemon.json";

    fn at(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    fn at_str(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

/// A protocol an endpoint is reached with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One thing found, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<T> {
    pub value: T,
    pub origin: String,
}

/// A host (name or address literal) and port the management NIC must reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What a Trove guest's files say the policy is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub rabbitmq: Vec<Found<Endpoint>>,
    pub registries: Vec<Found<Endpoint>>,
    /// The datastore's images on Docker Hub (naming no registry, or naming it), when daemon.json
    /// names no mirror to pull them through: no rule of discovery's reaches them.
    pub hub_images: Vec<Found<String>>,
    /// `[guest_agent] container_registry` when it is Docker Hub, which dockerd logs in to past
    /// any mirror at the agent's start.
    pub hub_login: Option<Found<String>>,
    /// The datastore's images on a public registry that serves their layers from a CDN's
    /// addresses (quay.io, ghcr.io, ...): the registry is reached, its CDN is not.
    pub cdn_images: Vec<Found<String>>,
    /// Other outbound endpoints a guest needs (metadata, NTP).
    pub services: Vec<Found<Endpoint>>,
    pub database_ports: Vec<Found<u16>>,
    pub business_mac: Option<Found<String>>,
    /// Where Trove wrote no eth1.json, what is missing (its path, and whether the agent's config
    /// isolates the business NIC): an instance without a user port (Trove writes eth1.json only
    /// for one, and its guest has one NIC), or cloud-init half way through. The NICs tell which
    /// (`policy::user_port_pending`).
    pub eth1_missing: Option<String>,
    /// The nameservers of resolv.conf: reached on port 53 when any endpoint is a name.
    pub resolvers: Vec<Found<std::net::IpAddr>>,
    /// How resolv.conf has short names completed: a name the agent's config gives as `rabbit`
    /// must be looked up as the agent's own resolver looks it up.
    pub search: SearchList,
    /// The guest's hosts file, which its resolver asks before DNS.
    pub hosts_file: PathBuf,
    /// The host namespace's NICs as (name, MAC) when the files were read, of which the
    /// management NIC is the one not the business NIC: a refresh of the names compiles the NICs
    /// the start or reload did (`None`: listed at the compile).
    pub host_nics: Option<Vec<(String, String)>>,
}

/// resolv.conf's completion of names, as the agent's resolver (dnspython, under eventlet) reads
/// it: the domains of the last `search` line, else of the last `domain` line, else the host
/// name's domain; and `options ndots:N` (a name with fewer dots is tried with each domain before
/// it is tried as it is; 1 unless the file says otherwise, at most 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchList {
    pub domains: Vec<String>,
    pub ndots: usize,
}

impl Default for SearchList {
    fn default() -> SearchList {
        SearchList {
            domains: Vec::new(),
            ndots: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// The guest agent's config is not there (yet): no transport URL in any of its files.
    #[error("{path}: {message}")]
    NotWritten { path: String, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> DiscoverError {
    DiscoverError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The guest agent's `[<datastore>] docker_image` when its config sets none (Trove's
/// `trove/common/cfg.py`): Docker Hub's official images.
fn default_docker_image(manager: &str) -> Option<&'static str> {
    match manager {
        "mysql" => Some("mysql"),
        "mariadb" => Some("mariadb"),
        "postgresql" => Some("postgres"),
        _ => None,
    }
}

/// The metadata service cloud-init reads at first boot.
pub const METADATA: &str = "169.254.169.254";

/// The database ports of each datastore Trove's guest agent runs.
pub fn datastore_ports(manager: &str) -> Option<&'static [u16]> {
    // Trove's `tcp_ports` defaults (trove/common/cfg.py).
    Some(match manager {
        "mysql" | "percona" => &[3306],
        "mariadb" => &[3306, 4444, 4567, 4568],
        "postgresql" => &[5432],
        "redis" => &[6379, 16379],
        "mongodb" => &[2500, 27017, 27019],
        "cassandra" => &[7000, 7001, 7199, 9042, 9160],
        "couchdb" => &[5984],
        _ => return None,
    })
}

/// The most ports a `tcp_ports` list may come to: a wider range is a typo more likely than a
/// database's.
const MAX_LISTED_PORTS: usize = 1024;

/// An oslo.config list of ports and inclusive ranges (`3306, 4444-4445`), as `tcp_ports` is.
fn port_list(text: &str) -> Result<Vec<u16>, String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{:?} is not a port (1 to 65535)", p.trim())),
    };
    let mut ports = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(item)?, port(item)?),
        };
        if first > last {
            return Err(format!("{item:?}: the range runs backwards"));
        }
        ports.extend(first..=last);
        if ports.len() > MAX_LISTED_PORTS {
            return Err(format!(
                "more than {MAX_LISTED_PORTS} ports; name the database's in [business] \
                 database_ports"
            ));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        return Err("no port".into());
    }
    Ok(ports)
}

/// Reads the guest's files under `files.root`.
pub fn discover(files: &TroveFiles) -> Result<Discovered, DiscoverError> {
    let mut found = Discovered::default();
    let conf = OsloConf::load_dir(&files.at(&files.conf_dir))?;

    // RabbitMQ: both transport URLs, every host. Notifications may go to Kafka instead
    // (oslo.messaging's kafka driver carries notifications only): its brokers are services.
    for section in ["DEFAULT", "oslo_messaging_notifications"] {
        if let Some(url) = conf.get(section, "transport_url") {
            // A continuation line (the next host on its own line) joins with a newline.
            let joined: String = url.value.split_whitespace().collect();
            let (hosts, into) = match kafka_hosts(&joined) {
                Some(kafka) if section != "DEFAULT" => (kafka, &mut found.services),
                _ => (transport_hosts(&joined), &mut found.rabbitmq),
            };
            let hosts = hosts.map_err(|m| {
                invalid(
                    Path::new(&url.file),
                    format!("[{section}] transport_url: {m}"),
                )
            })?;
            for endpoint in hosts {
                push(into, endpoint, &url.origin(section, "transport_url"));
            }
        }
    }
    if found.rabbitmq.is_empty() {
        return Err(DiscoverError::NotWritten {
            path: files.at(&files.conf_dir).display().to_string(),
            message: "no [DEFAULT] transport_url in any *.conf: the guest agent's RabbitMQ is \
                      unknown (cloud-init writes Trove's files at an instance's first boot and \
                      after a rebuild)"
                .into(),
        });
    }

    // Registries: the configured one, the datastore's images, daemon.json's insecure ones and
    // mirrors.
    let docker = DockerDaemon::load(&files.at(&files.docker_daemon_json))?;
    let manager = conf.get("DEFAULT", "datastore_manager");
    if let Some(registry) = conf.get("guest_agent", "container_registry") {
        let origin = registry.origin("guest_agent", "container_registry");
        match host_port(&registry.value) {
            // Docker Hub (cfg.py's own example, https://index.docker.io/v1/): no one address,
            // and dockerd logs in to it past any mirror.
            Some((host, _)) if is_docker_hub(&host) => {
                found.hub_login = Some(Found {
                    value: registry.value.trim().to_owned(),
                    origin,
                })
            }
            // dockerd logs in over HTTPS whatever the scheme says.
            Some((host, port)) => docker.registry(&mut found.registries, host, port, &origin),
            None => {}
        }
    }
    if let Some(manager) = &manager {
        for key in ["docker_image", "backup_docker_image"] {
            let (value, origin) = match conf.get(&manager.value, key) {
                Some(image) => (image.value.clone(), image.origin(&manager.value, key)),
                None => match (key, default_docker_image(&manager.value)) {
                    ("docker_image", Some(image)) => (
                        image.to_owned(),
                        format!("Trove's default for [{}] docker_image", manager.value),
                    ),
                    _ => continue,
                },
            };
            match image_host_port(&value) {
                Some((host, port)) => {
                    if let Some(cdn) = layers_elsewhere(&host) {
                        found.cdn_images.push(Found {
                            value: format!("{} (its layers come from {cdn})", value.trim()),
                            origin: origin.clone(),
                        });
                    }
                    docker.registry(&mut found.registries, host, port, &origin)
                }
                None => found.hub_images.push(Found {
                    value: value.trim().to_owned(),
                    origin,
                }),
            }
        }
    }
    for (text, origin) in &docker.insecure {
        if let Some((host, port)) = host_port(text) {
            docker.registry(&mut found.registries, host, port, origin);
        }
    }
    for (text, origin) in &docker.mirrors {
        if let Some(endpoint) = http_endpoint(text) {
            push(&mut found.registries, endpoint, origin);
            // dockerd pulls Docker Hub's images through its mirrors (not its logins).
            found.hub_images.clear();
        }
    }

    // The database: its ports (the datastore's `tcp_ports`, which the agent publishes the
    // container's ports from, else Trove's default for the datastore), and the business NIC
    // Trove told the guest about.
    if let Some(manager) = &manager {
        // An empty list publishes nothing, but the database listens all the same: its default.
        let listed = conf
            .get(&manager.value, "tcp_ports")
            .filter(|l| !l.value.trim().is_empty());
        let (ports, origin) = match listed {
            Some(listed) => (
                port_list(&listed.value).map_err(|m| {
                    invalid(
                        Path::new(&listed.file),
                        format!("[{}] tcp_ports: {m}", manager.value),
                    )
                })?,
                listed.origin(&manager.value, "tcp_ports"),
            ),
            None => (
                datastore_ports(&manager.value)
                    .ok_or_else(|| {
                        invalid(
                            Path::new(&manager.file),
                            format!(
                                "[DEFAULT] datastore_manager = {:?}: no known database ports; \
                                 name them in [business] database_ports",
                                manager.value
                            ),
                        )
                    })?
                    .to_vec(),
                manager.origin("DEFAULT", "datastore_manager"),
            ),
        };
        for port in ports {
            found.database_ports.push(Found {
                value: port,
                origin: origin.clone(),
            });
        }
    }
    let eth1 = files.at(&files.eth1_json);
    let eth1_text = read_optional(&eth1)?;
    // Trove writes eth1.json with the agent's config when the instance has a user port (and
    // the agent isolates it when network_isolation is on); without one, the agent runs the
    // database on docker's bridge.
    let isolated = conf
        .get("DEFAULT", "network_isolation")
        .is_some_and(|v| oslo_true(&v.value));
    if eth1_text.is_none() {
        found.eth1_missing = Some(format!(
            "{}: no such file{}",
            eth1.display(),
            if isolated {
                ", and [DEFAULT] network_isolation is on"
            } else {
                ""
            }
        ));
    }
    if let Some(text) = eth1_text {
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(&eth1, format!("not JSON: {e}")))?;
        let mac = json["mac_address"]
            .as_str()
            .ok_or_else(|| invalid(&eth1, "no mac_address"))?;
        found.business_mac = Some(Found {
            value: mac.to_ascii_lowercase(),
            origin: format!("{} mac_address", eth1.display()),
        });
    }

    // Swift, when the agent's config names it: where its guest logs are published (backups
    // and restores go to the Swift URL each request carries, which only an `allow` can name).
    if let Some(url) = conf.get("DEFAULT", "swift_url") {
        if let Some(endpoint) = http_endpoint(&url.value) {
            push(
                &mut found.services,
                endpoint,
                &url.origin("DEFAULT", "swift_url"),
            );
        }
    }

    // A dev-mode guest (devstack's image): the agent's unit copies Trove's source from the
    // controller over SSH before it starts, and publishes the guest's logs there.
    let controller = files.at_str("etc/trove/controller.conf");
    if let Some(text) = read_optional(&controller)? {
        if let Some(host) = controller_address(&text) {
            push(
                &mut found.services,
                Endpoint {
                    host,
                    port: 22,
                    proto: Proto::Tcp,
                },
                &format!(
                    "{} CONTROLLER (the dev-mode agent's SSH)",
                    controller.display()
                ),
            );
        }
    }

    // What every guest needs at boot.
    push(
        &mut found.services,
        Endpoint {
            host: METADATA.into(),
            port: 80,
            proto: Proto::Tcp,
        },
        "the metadata service (cloud-init)",
    );
    for (file, servers) in ntp_servers(files)? {
        for host in servers {
            let endpoint = Endpoint {
                host,
                port: 123,
                proto: Proto::Udp,
            };
            push(
                &mut found.services,
                endpoint,
                &format!("{} (NTP)", file.display()),
            );
        }
    }
    found.resolvers = nameservers(&files.root)?;
    found.search = search_list(&files.root)?;
    found.hosts_file = files.root.join("etc/hosts");
    Ok(found)
}

/// The search list of `etc/resolv.conf` under `root` ([`SearchList`]); the default when there
/// is no such file. With systemd-resolved's stub, that file carries the link's domains too.
pub fn search_list(root: &Path) -> Result<SearchList, DiscoverError> {
    let mut list = SearchList::default();
    let text = read_optional(&root.join("etc/resolv.conf"))?.unwrap_or_default();
    let (mut search, mut domain) = (None, None);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        // The root domain completes nothing.
        let domain_name =
            |w: &str| (w != ".").then(|| w.trim_end_matches('.').to_ascii_lowercase());
        match words.next() {
            Some("search") => {
                search = Some(
                    words
                        .take_while(|w| !w.starts_with(['#', ';']))
                        .filter_map(domain_name)
                        .collect::<Vec<_>>(),
                )
            }
            Some("domain") => domain = Some(words.next().and_then(domain_name)),
            Some("options") => {
                for option in words {
                    if let Some(n) = option.strip_prefix("ndots:") {
                        if let Ok(n) = n.parse::<usize>() {
                            list.ndots = n.min(15);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    list.domains = match (search, domain) {
        (Some(search), _) if !search.is_empty() => search,
        (_, Some(domain)) => domain.into_iter().collect(),
        // Neither: the host name's domain, if it has one.
        _ => read_optional(&root.join("etc/hostname"))?
            .unwrap_or_default()
            .trim()
            .split_once('.')
            .map(|(_, d)| vec![d.trim_end_matches('.').to_ascii_lowercase()])
            .unwrap_or_default(),
    };
    Ok(list)
}

/// The nameservers under `root`: resolv.conf's, and when that names a local stub (Ubuntu's
/// systemd-resolved at 127.0.0.53), the upstream servers the stub forwards to, which are what
/// the management NIC must reach.
pub fn nameservers(root: &Path) -> Result<Vec<Found<std::net::IpAddr>>, DiscoverError> {
    let mut out: Vec<Found<std::net::IpAddr>> = Vec::new();
    let read = |path: PathBuf, out: &mut Vec<Found<std::net::IpAddr>>| {
        let Some(text) = read_optional(&path)? else {
            return Ok::<_, DiscoverError>(());
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                continue;
            }
            if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                if !out.iter().any(|r| r.value == ip) {
                    out.push(Found {
                        value: ip,
                        origin: format!("{} nameserver", path.display()),
                    });
                }
            }
        }
        Ok(())
    };
    read(root.join("etc/resolv.conf"), &mut out)?;
    if out.iter().any(|r| r.value.is_loopback()) {
        read(root.join("run/systemd/resolve/resolv.conf"), &mut out)?;
    }
    Ok(out)
}

/// `CONTROLLER=` of controller.conf (a systemd environment file Trove writes), unquoted.
fn controller_address(text: &str) -> Option<String> {
    let value = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("CONTROLLER="))?
        .trim()
        .trim_matches(['"', '\''])
        .trim_start_matches('[')
        .trim_end_matches(']');
    (!value.is_empty()).then(|| value.to_owned())
}

fn push(list: &mut Vec<Found<Endpoint>>, endpoint: Endpoint, origin: &str) {
    if !list.iter().any(|f| f.value == endpoint) {
        list.push(Found {
            value: endpoint,
            origin: origin.to_owned(),
        });
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, DiscoverError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiscoverError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// An oslo.config boolean that is true (`true`, `yes`, `on`, `1`, any case).
fn oslo_true(value: &str) -> bool {
    matches!(
        unquoted(value.trim()).to_ascii_lowercase().as_str(),
        "true" | "yes" | "on" | "1"
    )
}

/// A value without the one pair of matching quotes around it that oslo.config strips.
fn unquoted(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

/// A value and where it was read.
#[derive(Debug, Clone)]
struct Value {
    value: String,
    file: String,
}

impl Value {
    fn origin(&self, section: &str, key: &str) -> String {
        let file = Path::new(&self.file)
            .file_name()
            .map_or_else(|| self.file.clone(), |n| n.to_string_lossy().into_owned());
        format!("{file} [{section}] {key}")
    }
}

/// oslo.config INI files, merged as the guest agent sees them: sections repeat and merge, a
/// later value of a key wins (in a file, and across files in name order).
struct OsloConf {
    values: BTreeMap<(String, String), Value>,
}

impl OsloConf {
    fn load_dir(dir: &Path) -> Result<OsloConf, DiscoverError> {
        let entries = std::fs::read_dir(dir).map_err(|source| match source.kind() {
            // Not made yet: cloud-init makes it at an instance's first boot.
            std::io::ErrorKind::NotFound => DiscoverError::NotWritten {
                path: dir.display().to_string(),
                message: "no such directory: the guest agent's config is not there \
                          (cloud-init writes Trove's files at an instance's first boot and after \
                          a rebuild)"
                    .into(),
            },
            _ => DiscoverError::Read {
                path: dir.display().to_string(),
                source,
            },
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        files.sort();
        let mut conf = OsloConf {
            values: BTreeMap::new(),
        };
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| DiscoverError::Read {
                path: file.display().to_string(),
                source,
            })?;
            conf.merge(&file, &text)?;
        }
        Ok(conf)
    }

    fn merge(&mut self, file: &Path, text: &str) -> Result<(), DiscoverError> {
        let options = ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            enabled_indented_mutiline_value: true,
            ..ParseOption::default()
        };
        let ini = Ini::load_from_str_opt(text, options)
            .map_err(|e| invalid(file, format!("not an oslo.config INI file: {e}")))?;
        for (section, properties) in ini.iter() {
            let section = section.unwrap_or("DEFAULT");
            for (key, value) in properties.iter() {
                self.values.insert(
                    (section.to_owned(), key.trim().to_owned()),
                    Value {
                        value: unquoted(value.trim()).to_owned(),
                        file: file.display().to_string(),
                    },
                );
            }
        }
        Ok(())
    }

    fn get(&self, section: &str, key: &str) -> Option<Value> {
        self.values
            .get(&(section.to_owned(), key.to_owned()))
            .filter(|v| !v.value.is_empty())
            .cloned()
    }
}

/// The hosts of an oslo.messaging transport URL:
/// `rabbit://user:pass@host1:5672,user2:pass2@[2001:db8::1]:5671/vhost?query`. A host without
/// a port gets 5672, over TLS too: the rabbit driver writes `host.port or 5672` into the URL
/// it hands kombu, whatever `[oslo_messaging_rabbit] ssl` says (a TLS broker on 5671 is named
/// with its port). Empty entries (a trailing comma) are skipped, as oslo.messaging skips them.
/// Errors never quote the URL: it holds passwords.
pub fn transport_hosts(url: &str) -> Result<Vec<Endpoint>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("not a URL (expected rabbit://user:pass@host:port/vhost)")?;
    if !scheme.starts_with("rabbit") && scheme != "amqp" && scheme != "kombu" {
        return Err(format!(
            "scheme {scheme:?}: only RabbitMQ transports are understood (Kafka for \
             notifications only)"
        ));
    }
    url_hosts(rest, 5672)
}

/// The brokers of a `kafka://host1:9092,host2/` transport URL (a host without a port gets
/// Kafka's 9092, as the kafka driver gives it); `None` if the URL is not Kafka's. Only the
/// brokers the URL names: others the cluster advertises need an `allow`.
fn kafka_hosts(url: &str) -> Option<Result<Vec<Endpoint>, String>> {
    let rest = url.strip_prefix("kafka://")?;
    Some(url_hosts(rest, 9092))
}

/// The hosts of a transport URL's part after the scheme, `default_port` where none is given.
fn url_hosts(rest: &str, default_port: u16) -> Result<Vec<Endpoint>, String> {
    let netloc = rest.split(['/', '?']).next().unwrap_or_default();
    let mut hosts = Vec::new();
    for (i, part) in netloc.split(',').enumerate().filter(|(_, p)| !p.is_empty()) {
        // Parsed one at a time, as oslo.messaging does; the credentials are dropped here.
        let parsed = url::Url::parse(&format!("rabbit://{part}/"))
            .map_err(|e| format!("host {} of the URL: {e}", i + 1))?;
        let host = match parsed.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Domain(d)) => d.to_owned(),
            None => return Err(format!("host {} of the URL has no host", i + 1)),
        };
        let endpoint = Endpoint {
            host,
            port: parsed.port().unwrap_or(default_port),
            proto: Proto::Tcp,
        };
        if !hosts.contains(&endpoint) {
            hosts.push(endpoint);
        }
    }
    Ok(hosts)
}

/// What daemon.json says of registries: the insecure ones (with where each was read; a CIDR
/// names a range of them) and the mirrors.
#[derive(Default)]
struct DockerDaemon {
    insecure: Vec<(String, String)>,
    insecure_ranges: Vec<ipnetwork::IpNetwork>,
    mirrors: Vec<(String, String)>,
}

impl DockerDaemon {
    fn load(path: &Path) -> Result<DockerDaemon, DiscoverError> {
        let mut docker = DockerDaemon::default();
        let Some(text) = read_optional(path)? else {
            return Ok(docker);
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(path, format!("not JSON: {e}")))?;
        let strings = |key: &str| -> Vec<(String, String)> {
            json[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .map(|v| (v.trim().to_owned(), format!("{} {key}", path.display())))
                .collect()
        };
        for (text, origin) in strings("insecure-registries") {
            match text.parse::<ipnetwork::IpNetwork>() {
                Ok(range) if text.contains('/') => docker.insecure_ranges.push(range),
                _ => docker.insecure.push((text, origin)),
            }
        }
        docker.mirrors = strings("registry-mirrors");
        Ok(docker)
    }

    /// Whether dockerd takes the registry at `host` (no port given) as insecure: it then falls
    /// back to plain HTTP, on 80.
    fn insecure(&self, host: &str) -> bool {
        self.insecure
            .iter()
            .any(|(text, _)| host_port(text).is_some_and(|(h, p)| p.is_none() && h == host))
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| self.insecure_ranges.iter().any(|range| range.contains(ip)))
    }

    /// A registry dockerd pulls from: over HTTPS on its port (443 unless given), and when it is
    /// insecure and gives no port, over plain HTTP on 80 too.
    fn registry(
        &self,
        list: &mut Vec<Found<Endpoint>>,
        host: String,
        port: Option<u16>,
        origin: &str,
    ) {
        if port.is_none() && self.insecure(&host) {
            let http = Endpoint {
                host: host.clone(),
                port: 80,
                proto: Proto::Tcp,
            };
            push(list, tcp(host, 443), origin);
            push(list, http, origin);
        } else {
            push(list, tcp(host, port.unwrap_or(443)), origin);
        }
    }
}

fn tcp(host: String, port: u16) -> Endpoint {
    Endpoint {
        host,
        port,
        proto: Proto::Tcp,
    }
}

/// The host and, when given, the port of `[scheme://]host[:port][/path]`, the way docker names
/// a registry or a URL names its server.
fn host_port(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let hostport = rest.split('/').next().filter(|h| !h.is_empty())?;
    let port = match hostport.rsplit_once(']') {
        Some((_, after)) => after.strip_prefix(':'),
        None => hostport.rsplit_once(':').map(|(_, port)| port),
    };
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    let parsed = url::Url::parse(&format!("https://{hostport}/")).ok()?;
    let host = match parsed.host()? {
        url::Host::Ipv6(a) => a.to_string(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Domain(d) => d.to_owned(),
    };
    Some((host, port))
}

/// A URL's server (a mirror's, Swift's): its port, else its scheme's (80 for `http://`, 443).
pub fn http_endpoint(text: &str) -> Option<Endpoint> {
    let default = if text.trim().starts_with("http://") {
        80
    } else {
        443
    };
    host_port(text).map(|(host, port)| tcp(host, port.unwrap_or(default)))
}

/// The registry of an image reference, if it names one other than Docker Hub
/// (`registry:4000/trove/mysql:8.0`): its host and port, if given. A first component counts as
/// a registry when it has a dot or a port, or is `localhost`, as in docker's reference grammar;
/// otherwise the image is on Docker Hub.
fn image_host_port(image: &str) -> Option<(String, Option<u16>)> {
    let (first, rest) = image.trim().split_once('/')?;
    if rest.is_empty() {
        return None;
    }
    let is_registry = first.contains(['.', ':']) || first == "localhost" || first.starts_with('[');
    is_registry
        .then(|| host_port(first))
        .flatten()
        .filter(|(host, _)| !is_docker_hub(host))
}

/// Where a public registry at `host` sends dockerd for an image's layers (a redirect to a CDN,
/// whose addresses no rule can follow), if it is one that does.
fn layers_elsewhere(host: &str) -> Option<&'static str> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    Some(if under("quay.io") {
        "cdn*.quay.io"
    } else if under("ghcr.io") {
        "pkg-containers.githubusercontent.com"
    } else if under("gcr.io") || host.ends_with("-docker.pkg.dev") {
        "storage.googleapis.com"
    } else if under("registry.k8s.io") {
        "a cloud provider's storage"
    } else if under("public.ecr.aws") {
        "cloudfront.net"
    } else {
        return None;
    })
}

/// Whether `host` is Docker Hub's (`docker.io/library/mysql`, `index.docker.io`,
/// `registry-1.docker.io`, its CDN): pulls from it go to a CDN's addresses, which no rule of
/// discovery's can follow.
pub fn is_docker_hub(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "docker.io" || host.ends_with(".docker.io") || host.ends_with(".docker.com")
}

/// NTP servers named by chrony's or timesyncd's config, if present.
fn ntp_servers(files: &TroveFiles) -> Result<Vec<(PathBuf, Vec<String>)>, DiscoverError> {
    let mut out = chrony_servers(files)?;
    out.extend(timesyncd_servers(files)?);
    Ok(out)
}

/// chrony's `server`, `pool` and `peer` lines: in chrony.conf, the `.conf` files of its
/// `confdir`s and the `.sources` files of its `sourcedir`s (Ubuntu's chrony.conf keeps its
/// pools in the first and reads the others from both).
fn chrony_servers(files: &TroveFiles) -> Result<Vec<(PathBuf, Vec<String>)>, DiscoverError> {
    let main = files.at_str("etc/chrony/chrony.conf");
    let Some(text) = read_optional(&main)? else {
        return Ok(Vec::new());
    };
    let mut sources = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let suffix = match words.next() {
            Some("confdir") => ".conf",
            Some("sourcedir") => ".sources",
            _ => continue,
        };
        for dir in words {
            for path in files_in(&files.at_str(dir.trim_start_matches('/')), suffix)? {
                if let Some(text) = read_optional(&path)? {
                    sources.push((path, text));
                }
            }
        }
    }
    sources.insert(0, (main, text));
    let servers = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                matches!(w.next(), Some("server" | "pool" | "peer"))
                    .then(|| w.next().map(str::to_owned))
                    .flatten()
            })
            .collect()
    };
    Ok(sources
        .into_iter()
        .map(|(path, text)| (path, servers(&text)))
        .filter(|(_, servers)| !servers.is_empty())
        .collect())
}

/// systemd-timesyncd's servers: `NTP=` of timesyncd.conf and its drop-ins (an empty assignment
/// clears the list), and only when that names none, `FallbackNTP=`, or where nothing sets it,
/// the default the distribution compiled in, which systemd's shipped file gives as a comment
/// (Ubuntu's `#FallbackNTP=ntp.ubuntu.com`, which a stock guest uses).
fn timesyncd_servers(files: &TroveFiles) -> Result<Vec<(PathBuf, Vec<String>)>, DiscoverError> {
    let main = files.at_str("etc/systemd/timesyncd.conf");
    let mut paths = vec![main.clone()];
    paths.extend(files_in(
        &files.at_str("etc/systemd/timesyncd.conf.d"),
        ".conf",
    )?);
    let mut ntp: Option<(PathBuf, Vec<String>)> = None;
    let mut fallback: Option<(PathBuf, Vec<String>)> = None;
    let mut default: Option<(PathBuf, Vec<String>)> = None;
    let mut any = false;
    for path in paths {
        let Some(text) = read_optional(&path)? else {
            continue;
        };
        any = true;
        for line in text.lines().map(str::trim) {
            let (slot, value) = if let Some(v) = line.strip_prefix("NTP=") {
                (&mut ntp, v)
            } else if let Some(v) = line.strip_prefix("FallbackNTP=") {
                (&mut fallback, v)
            } else if let Some(v) = line.strip_prefix("#FallbackNTP=") {
                (&mut default, v)
            } else {
                continue;
            };
            let servers: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
            match slot {
                // An empty assignment resets the list; others add to it.
                Some((_, list)) if !servers.is_empty() => list.extend(servers),
                _ => *slot = Some((path.clone(), servers)),
            }
        }
    }
    if !any {
        return Ok(Vec::new());
    }
    let chosen = match (ntp, fallback) {
        (Some(ntp), _) if !ntp.1.is_empty() => ntp,
        (_, Some(fallback)) => fallback,
        _ => default.unwrap_or_default(),
    };
    Ok(if chosen.1.is_empty() {
        Vec::new()
    } else {
        vec![chosen]
    })
}

/// The files in `dir` whose names end with `suffix`, sorted (none if `dir` does not exist).
fn files_in(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, DiscoverError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DiscoverError::Read {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `host[:port][/path]` as docker names a registry; 443 when no port is given, whatever a
    /// scheme says (dockerd reaches a registry over HTTPS).
    fn registry_endpoint(text: &str) -> Option<Endpoint> {
        host_port(text).map(|(host, port)| tcp(host, port.unwrap_or(443)))
    }

    /// The registry endpoint of an image reference ([`image_host_port`]; 443 unless given).
    fn image_registry(image: &str) -> Option<Endpoint> {
        image_host_port(image).map(|(host, port)| tcp(host, port.unwrap_or(443)))
    }

    /// Trove's files under a temporary root, removed when it drops.
    struct Tree(TroveFiles);

    impl std::ops::Deref for Tree {
        type Target = TroveFiles;
        fn deref(&self) -> &TroveFiles {
            &self.0
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0.root);
        }
    }

    /// A root of the given files (path, text) in a fresh temporary directory.
    fn tree(files: &[(&str, &str)]) -> Tree {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("ti-discover-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
            std::fs::write(&path, text).expect("write");
        }
        Tree(TroveFiles {
            conf_dir: root.join("etc/trove/conf.d"),
            eth1_json: root.join("etc/trove/eth1.json"),
            docker_daemon_json: root.join("etc/docker/daemon.json"),
            root,
        })
    }

    /// What cloud-init has not written yet is told apart from what is wrong: no conf dir or no
    /// transport URL. eth1.json missing where the agent's config says the business NIC is
    /// isolated is said, for the NICs to tell (an instance without a user port has none).
    #[test]
    fn files_not_written_yet_are_told_apart() {
        const URL: &str = "[DEFAULT]\ntransport_url = rabbit://u:p@192.0.2.10:5672/\n";
        let not_written = |files: &[(&str, &str)]| {
            matches!(
                discover(&tree(files)),
                Err(DiscoverError::NotWritten { .. })
            )
        };
        assert!(not_written(&[]));
        assert!(not_written(&[(
            "etc/trove/conf.d/guest_info.conf",
            "[DEFAULT]\n"
        )]));
        let eth1_missing = |files: &[(&str, &str)]| discover(&tree(files)).unwrap().eth1_missing;
        for on in ["True", "yes", "'on'", "1"] {
            let info = format!("[DEFAULT]\nnetwork_isolation = {on}\n");
            let missing = eth1_missing(&[
                ("etc/trove/conf.d/guest_info.conf", &info),
                ("etc/trove/conf.d/trove-guestagent.conf", URL),
            ]);
            assert!(
                missing.is_some_and(|m| m.ends_with(
                    "etc/trove/eth1.json: no such file, and [DEFAULT] network_isolation is on"
                )),
                "{on}"
            );
        }
        let info = "[DEFAULT]\nnetwork_isolation = True\n";
        let eth1 = "{\"mac_address\": \"fa:16:3e:00:00:02\"}";
        // Without isolation (or the key) eth1.json missing is said all the same: the NICs
        // tell whether a user port's file is still to come.
        for (written, missing) in [
            (&[("etc/trove/conf.d/trove-guestagent.conf", URL)][..], true),
            (
                &[
                    (
                        "etc/trove/conf.d/guest_info.conf",
                        "[DEFAULT]\nnetwork_isolation = false\n",
                    ),
                    ("etc/trove/conf.d/trove-guestagent.conf", URL),
                ],
                true,
            ),
            (
                &[
                    ("etc/trove/conf.d/guest_info.conf", info),
                    ("etc/trove/conf.d/trove-guestagent.conf", URL),
                    ("etc/trove/eth1.json", eth1),
                ],
                false,
            ),
        ] {
            let said = eth1_missing(written);
            assert_eq!(said.is_some(), missing, "{written:?}");
            assert!(!said.is_some_and(|m| m.contains("network_isolation")));
        }
        // Written but wrong is not "not written".
        assert!(matches!(
            discover(&tree(&[(
                "etc/trove/conf.d/trove-guestagent.conf",
                "[DEFAULT]\ntransport_url = http://x\n"
            )])),
            Err(DiscoverError::Invalid { .. })
        ));
    }

    fn ntp(files: &[(&str, &str)]) -> Vec<String> {
        let t = tree(files);
        let found = ntp_servers(&t).expect("reads");
        found.into_iter().flat_map(|(_, s)| s).collect()
    }

    #[test]
    fn ntp_servers_follow_what_the_clients_read() {
        // Ubuntu's stock timesyncd.conf: everything commented, the compiled-in fallback used.
        let stock = "[Time]\n#NTP=\n#FallbackNTP=ntp.ubuntu.com\n#RootDistanceMaxSec=5\n";
        let at = "etc/systemd/timesyncd.conf";
        assert_eq!(ntp(&[(at, stock)]), ["ntp.ubuntu.com"]);
        // NTP= wins over any fallback; a drop-in adds to it, an empty assignment clears it.
        let set = "[Time]\nNTP=192.0.2.123\n#FallbackNTP=ntp.ubuntu.com\n";
        assert_eq!(ntp(&[(at, set)]), ["192.0.2.123"]);
        let drop_in = "etc/systemd/timesyncd.conf.d/50-site.conf";
        assert_eq!(
            ntp(&[(at, set), (drop_in, "[Time]\nNTP=\nNTP=ntp.example\n")]),
            ["ntp.example"]
        );
        assert_eq!(
            ntp(&[(at, stock), (drop_in, "[Time]\nFallbackNTP=\n")]),
            Vec::<String>::new()
        );
        // chrony: its confdir's and sourcedir's files too.
        let chrony = "confdir /etc/chrony/conf.d\npool ntp.ubuntu.com iburst maxsources 4\n\
                      sourcedir /run/chrony-dhcp\nsourcedir /etc/chrony/sources.d\n";
        assert_eq!(
            ntp(&[
                ("etc/chrony/chrony.conf", chrony),
                ("etc/chrony/conf.d/site.conf", "server 192.0.2.124 iburst\n"),
                (
                    "run/chrony-dhcp/ens3.sources",
                    "server 192.0.2.125 iburst\n"
                ),
                ("etc/chrony/sources.d/x.sources", "pool pool.example\n"),
                ("etc/chrony/sources.d/ignored.txt", "server 192.0.2.99\n"),
            ]),
            [
                "ntp.ubuntu.com",
                "192.0.2.124",
                "192.0.2.125",
                "pool.example"
            ]
        );
    }

    #[test]
    fn images_without_a_registry_come_from_docker_hub_or_its_mirror() {
        let hub = |files: &[(&str, &str)]| {
            let t = tree(files);
            let found = discover(&t).expect("discovers");
            let hub: Vec<String> = found
                .hub_images
                .iter()
                .map(|f| format!("{} = {}", f.origin, f.value))
                .collect();
            let registries: Vec<String> = found
                .registries
                .iter()
                .map(|f| f.value.to_string())
                .collect();
            (hub, registries)
        };
        let agent = "etc/trove/conf.d/trove-guestagent.conf";
        let url =
            "[DEFAULT]\ntransport_url = rabbit://u:p@192.0.2.10/\ndatastore_manager = mysql\n";
        // No docker_image: the agent pulls Trove's default, mysql, from Docker Hub.
        assert_eq!(
            hub(&[(agent, url)]),
            (
                vec!["Trove's default for [mysql] docker_image = mysql".to_owned()],
                vec![]
            )
        );
        let images =
            format!("{url}[mysql]\nbackup_docker_image = openstacktrove/db-backup-mysql\n");
        assert_eq!(hub(&[(agent, &images)]).0.len(), 2);
        // Swift for the guest's logs.
        let swift = format!("{url}swift_url = http://192.0.2.40:8080/v1/AUTH_\n");
        let t = tree(&[(agent, &swift)]);
        let found = discover(&t).expect("discovers");
        assert!(
            found
                .services
                .iter()
                .any(|f| f.value.to_string() == "192.0.2.40:8080"
                    && f.origin == "trove-guestagent.conf [DEFAULT] swift_url"),
            "{:?}",
            found.services
        );
        // A public registry that sends layers to a CDN: reached, and said.
        let quay = format!("{url}[mysql]\ndocker_image = quay.io/openstack.trove/mysql\n");
        let t = tree(&[(agent, &quay)]);
        let found = discover(&t).expect("discovers");
        assert_eq!(found.cdn_images.len(), 1, "{:?}", found.cdn_images);
        assert!(found.cdn_images[0].value.contains("cdn*.quay.io"));
        assert!(found
            .registries
            .iter()
            .any(|f| f.value.to_string() == "quay.io:443"));
        // Docker Hub as the registry to log in to (cfg.py's example) is no registry rule, and
        // a mirror does not stand in for it (dockerd logs in past mirrors).
        let login =
            format!("{url}[guest_agent]\ncontainer_registry = https://index.docker.io/v1/\n");
        let mirror_only = r#"{"registry-mirrors": ["https://mirror.example"]}"#;
        let t = tree(&[(agent, &login), ("etc/docker/daemon.json", mirror_only)]);
        let found = discover(&t).expect("discovers");
        assert_eq!(
            found.hub_login.map(|f| format!("{} = {}", f.origin, f.value)),
            Some(
                "trove-guestagent.conf [guest_agent] container_registry = https://index.docker.io/v1/"
                    .to_owned()
            )
        );
        let registries: Vec<String> = found
            .registries
            .iter()
            .map(|f| f.value.to_string())
            .collect();
        assert_eq!(registries, ["mirror.example:443"]);
        // A registry to log in to over http:// is still reached over HTTPS, as dockerd logs in.
        let http = format!("{url}[guest_agent]\ncontainer_registry = http://192.0.2.25\n");
        assert_eq!(hub(&[(agent, &http)]).1, ["192.0.2.25:443"]);
        // An image's registry inside an insecure range, with no port: 80 too.
        let ranged = format!("{url}[mysql]\ndocker_image = 198.51.100.20/trove/mysql\n");
        let range = r#"{"insecure-registries": ["198.51.100.0/24"]}"#;
        assert_eq!(
            hub(&[(agent, &ranged), ("etc/docker/daemon.json", range)]).1,
            ["198.51.100.20:443", "198.51.100.20:80"]
        );
        // An insecure registry without a port: 443, then plain HTTP on 80; a CIDR: none.
        let insecure = r#"{"insecure-registries": ["192.0.2.23", "192.0.2.24:4000", "198.51.100.0/24", "[2001:db8::23]"]}"#;
        assert_eq!(
            hub(&[(agent, url), ("etc/docker/daemon.json", insecure)]).1,
            [
                "192.0.2.23:443",
                "192.0.2.23:80",
                "192.0.2.24:4000",
                "[2001:db8::23]:443",
                "[2001:db8::23]:80"
            ]
        );
        // Pulled through daemon.json's mirror, which is a registry of the policy.
        let mirror = r#"{"registry-mirrors": ["http://192.0.2.22", "https://mirror.example:5000", "http://mirror.example:443"]}"#;
        assert_eq!(
            hub(&[(agent, &images), ("etc/docker/daemon.json", mirror)]),
            (
                vec![],
                vec![
                    "192.0.2.22:80".to_owned(),
                    "mirror.example:5000".to_owned(),
                    "mirror.example:443".to_owned()
                ]
            )
        );
    }

    #[test]
    fn the_database_ports_are_the_datastores_tcp_ports() {
        let ports = |conf: &str| {
            let t = tree(&[("etc/trove/conf.d/trove-guestagent.conf", conf)]);
            let found = discover(&t);
            found.map(|f| {
                f.database_ports
                    .iter()
                    .map(|p| (p.value, p.origin.clone()))
                    .collect::<Vec<_>>()
            })
        };
        let url =
            "[DEFAULT]\ntransport_url = rabbit://u:p@192.0.2.10/\ndatastore_manager = mariadb\n";
        let trove = |p| {
            (
                p,
                "trove-guestagent.conf [DEFAULT] datastore_manager".to_owned(),
            )
        };
        assert_eq!(
            ports(url).expect("discovers"),
            [trove(3306), trove(4444), trove(4567), trove(4568)]
        );
        let listed = |p| (p, "trove-guestagent.conf [mariadb] tcp_ports".to_owned());
        assert_eq!(
            ports(&format!("{url}[mariadb]\ntcp_ports = 3307, 4567-4568\n")).expect("discovers"),
            [listed(3307), listed(4567), listed(4568)]
        );
        // An empty list: the datastore's default.
        assert_eq!(
            ports(&format!("{url}[mariadb]\ntcp_ports =\n"))
                .expect("discovers")
                .len(),
            4
        );
        for bad in ["0", "3306-3300", "x", "1-2000", ","] {
            let err = ports(&format!("{url}[mariadb]\ntcp_ports = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("[mariadb] tcp_ports"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_search_list_is_read_as_the_agents_resolver_reads_it() {
        let search = |text: &str| {
            let t = tree(&[("etc/resolv.conf", text)]);
            let found = search_list(&t.root).expect("reads");
            (found.domains, found.ndots)
        };
        let none: Vec<String> = Vec::new();
        assert_eq!(search("nameserver 192.0.2.53\n"), (none.clone(), 1));
        // systemd-resolved's stub file, with the root domain among its domains.
        assert_eq!(
            search("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch Cloud.Example. .\n"),
            (vec!["cloud.example".to_owned()], 1)
        );
        // A search line wins over a domain line, wherever each is.
        assert_eq!(
            search("search a.example b.example # a comment\ndomain c.example d.example\n"),
            (vec!["a.example".to_owned(), "b.example".to_owned()], 1)
        );
        assert_eq!(
            search("domain c.example d.example\n"),
            (vec!["c.example".to_owned()], 1)
        );
        // No search line: the host name's domain.
        let t = tree(&[
            ("etc/resolv.conf", "nameserver 192.0.2.53\n"),
            ("etc/hostname", "db-1.guests.example\n"),
        ]);
        assert_eq!(
            search_list(&t.root).expect("reads").domains,
            ["guests.example"]
        );
        assert_eq!(
            search("domain c.example\nsearch a.example b.example\noptions ndots:2 attempts:3\n"),
            (vec!["a.example".to_owned(), "b.example".to_owned()], 2)
        );
        assert_eq!(search("options ndots:40\n"), (none.clone(), 15));
        let t = tree(&[]);
        assert_eq!(
            search_list(&t.root).expect("no file"),
            SearchList::default()
        );
    }

    #[test]
    fn transport_urls_give_every_host_and_never_a_password() {
        let hosts = transport_hosts(
            "rabbit://guest:s3cr3t@rabbit-1.example:5672,other:p%40ss@[2001:db8::10]:5671,x:y@192.0.2.10,/trove?ha=1",
        )
        .expect("parses");
        let shown: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "rabbit-1.example:5672",
                "[2001:db8::10]:5671",
                "192.0.2.10:5672"
            ]
        );
        // TLS or not, a host without a port is 5672 (what oslo.messaging hands kombu).
        let tls = transport_hosts("rabbit://u:p@192.0.2.10/?ssl=1").expect("parses");
        assert_eq!(tls[0].port, 5672);
        let err = transport_hosts("rabbit://u:hunter2@[::1/x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = transport_hosts("kafka://u:hunter2@h:1/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// A dev-mode guest reaches its controller's SSH, which its agent's unit copies Trove from.
    #[test]
    fn a_dev_mode_guest_reaches_its_controller_over_ssh() {
        const RPC: &str = "[DEFAULT]\ntransport_url = rabbit://u:p@192.0.2.10:5672/\n";
        let d = discover(&tree(&[
            ("etc/trove/conf.d/trove-guestagent.conf", RPC),
            ("etc/trove/controller.conf", "CONTROLLER=192.0.2.50"),
        ]))
        .expect("discovers");
        let ssh: Vec<String> = d
            .services
            .iter()
            .filter(|f| f.origin.contains("controller.conf CONTROLLER"))
            .map(|f| f.value.to_string())
            .collect();
        assert_eq!(ssh, ["192.0.2.50:22"]);
        assert_eq!(
            controller_address("CONTROLLER=\"2001:db8::5\"\n").as_deref(),
            Some("2001:db8::5")
        );
        assert_eq!(controller_address("CONTROLLER=\n"), None);
        assert_eq!(controller_address("# none\n"), None);
    }

    /// Notifications sent to Kafka: its brokers are services the management NIC reaches (9092
    /// where no port is given); RPC over Kafka is refused, as oslo.messaging refuses it.
    #[test]
    fn notifications_over_kafka_reach_its_brokers() {
        const RPC: &str = "[DEFAULT]\ntransport_url = rabbit://u:p@192.0.2.10:5672/\n";
        let d = discover(&tree(&[(
            "etc/trove/conf.d/trove-guestagent.conf",
            &format!(
                "{RPC}[oslo_messaging_notifications]\ntransport_url = \
                 kafka://u:s3cr3t@192.0.2.40,192.0.2.41:9093/\n"
            ),
        )]))
        .expect("discovers");
        let rabbit: Vec<String> = d.rabbitmq.iter().map(|f| f.value.to_string()).collect();
        assert_eq!(rabbit, ["192.0.2.10:5672"]);
        let kafka: Vec<(String, String)> = d
            .services
            .iter()
            .filter(|f| f.origin.contains("oslo_messaging_notifications"))
            .map(|f| (f.value.to_string(), f.origin.clone()))
            .collect();
        assert_eq!(kafka.len(), 2, "{kafka:?}");
        assert_eq!(kafka[0].0, "192.0.2.40:9092");
        assert_eq!(kafka[1].0, "192.0.2.41:9093");
        assert!(!format!("{d:?}").contains("s3cr3t"));
        let rpc = discover(&tree(&[(
            "etc/trove/conf.d/trove-guestagent.conf",
            "[DEFAULT]\ntransport_url = kafka://u:p@192.0.2.40/\n",
        )]));
        assert!(
            matches!(rpc, Err(DiscoverError::Invalid { ref message, .. }) if message.contains("[DEFAULT] transport_url")),
            "{:?}",
            rpc.err()
        );
    }

    #[test]
    fn image_references_name_their_registry_or_docker_hub() {
        let r = |s| image_registry(s).map(|e| e.to_string());
        assert_eq!(
            r("192.0.2.20:4000/trove/mysql:8.0"),
            Some("192.0.2.20:4000".into())
        );
        assert_eq!(
            r("registry.example/trove/mysql"),
            Some("registry.example:443".into())
        );
        assert_eq!(r("localhost/mysql"), Some("localhost:443".into()));
        assert_eq!(r("mysql:8.0"), None);
        assert_eq!(r("library/mysql"), None);
        // Docker Hub named in full is Docker Hub all the same.
        assert_eq!(r("docker.io/library/mysql:8.0"), None);
        assert_eq!(r("index.docker.io/openstacktrove/db-backup-mysql"), None);
        assert_eq!(
            registry_endpoint("https://[2001:db8::20]:5000").map(|e| e.to_string()),
            Some("[2001:db8::20]:5000".into())
        );
        assert_eq!(
            http_endpoint("http://mirror.example").map(|e| e.to_string()),
            Some("mirror.example:80".into())
        );
        assert_eq!(
            registry_endpoint("http://registry.example").map(|e| e.to_string()),
            Some("registry.example:443".into())
        );
    }

    #[test]
    fn oslo_ini_repeats_comments_and_continuations() {
        let mut conf = OsloConf {
            values: BTreeMap::new(),
        };
        let text = "\
# a comment
; another
[DEFAULT]
transport_url = rabbit://a:b@192.0.2.10:5672/
datastore_manager = \"mysql\"

[guest_agent]
# oslo.config takes `:` for `=` too, and strips one pair of matching quotes
container_registry: '192.0.2.20:4000'

[DEFAULT]
# the repeated section merges; the later value wins
transport_url = rabbit://a:b@192.0.2.11:5672,
    a:b@192.0.2.12:5672/
";
        conf.merge(Path::new("/x/trove-guestagent.conf"), text)
            .expect("parses");
        let url = conf.get("DEFAULT", "transport_url").expect("url");
        let hosts: Vec<String> = transport_hosts(&url.value.replace(['\n', ' '], ""))
            .expect("hosts")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(hosts, ["192.0.2.11:5672", "192.0.2.12:5672"]);
        assert_eq!(
            conf.get("DEFAULT", "datastore_manager").map(|v| v.value),
            Some("mysql".into())
        );
        assert_eq!(
            conf.get("guest_agent", "container_registry")
                .map(|v| v.origin("guest_agent", "container_registry")),
            Some("trove-guestagent.conf [guest_agent] container_registry".into())
        );
        assert_eq!(
            conf.get("guest_agent", "container_registry")
                .map(|v| v.value),
            Some("192.0.2.20:4000".into())
        );
    }
}
