//! The config file as written: raw serde types, nothing validated beyond TOML syntax and key
//! names (unknown keys are errors, so a typo never silently widens or narrows the policy).
//! [`crate::policy`] turns this into a validated policy, naming the key of every error; ports are
//! read as plain integers for that reason, so `70000` gets a message about the key rather than a
//! type error from the TOML layer.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/trove-isolate/config.toml";
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/trove-isolate";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mode: Option<String>,
    pub attach: Option<String>,
    pub pin_path: Option<String>,
    /// Write shorter prefixes as a longer length a class uses, to save lookups (default true).
    pub prefix_expansion: Option<bool>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub drops: DropsConfig,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// Trove discovery: the policy of a Trove guest from the guest's own files.
    pub trove: Option<TroveConfig>,
    /// The boot guard, while no start can enforce (with `[trove]` only).
    #[serde(default)]
    pub boot: BootConfig,
    pub management: Option<ManagementConfig>,
    pub business: Option<BusinessConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<String>,
    #[serde(default)]
    pub allow_from: Vec<String>,
}

/// `[trove]`: where the guest's files are (relative paths are under `root`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TroveConfig {
    pub root: Option<String>,
    pub conf_dir: Option<String>,
    pub eth1_json: Option<String>,
    pub docker_daemon_json: Option<String>,
}

/// `[boot]`: the boot guard (`crate::boot_guard`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Hold every NIC closed while no start can enforce (default true).
    pub guard: Option<bool>,
    /// The NICs to hold (default: every physical NIC in the host namespace).
    pub interfaces: Option<Vec<String>>,
    /// Where they are (default: the daemon's own namespace).
    pub netns: Option<String>,
    /// The metadata service's TCP endpoints (`address:port`), which stay reachable.
    pub metadata: Option<Vec<String>>,
}

/// Sampled drop events: how many the datapath sends and how many the daemon logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropsConfig {
    pub events_per_second: Option<i64>,
    pub log_per_second: Option<i64>,
}

/// The connection-tracking tables' sizes, per NIC (both are allocated in full at load).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackConfig {
    pub established_entries: Option<i64>,
    pub new_entries: Option<i64>,
}

/// How a section names its NIC.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub netns: Option<String>,
}

// The NIC keys repeat in each section rather than `#[serde(flatten)]` a `NicConfig`: serde
// cannot combine `flatten` with `deny_unknown_fields`, and a misspelt key must be an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementConfig {
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub netns: Option<String>,
    #[serde(default)]
    pub rabbitmq: Vec<String>,
    #[serde(default)]
    pub registry: Vec<String>,
    #[serde(default)]
    pub ssh_from: Vec<String>,
    #[serde(default)]
    pub allow: Vec<AllowConfig>,
    pub dhcp: Option<bool>,
    pub ssh_port: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    pub to: String,
    pub port: Option<i64>,
    pub proto: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessConfig {
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub netns: Option<String>,
    /// Required and non-empty; checked by the policy so that the error names the key.
    #[serde(default)]
    pub database_ports: Vec<i64>,
    #[serde(default)]
    pub clients: Vec<String>,
    #[serde(default)]
    pub peers: Vec<String>,
}

impl ManagementConfig {
    pub fn nic(&self) -> NicConfig {
        NicConfig {
            interface: self.interface.clone(),
            mac: self.mac.clone(),
            netns: self.netns.clone(),
        }
    }
}

impl BusinessConfig {
    pub fn nic(&self) -> NicConfig {
        NicConfig {
            interface: self.interface.clone(),
            mac: self.mac.clone(),
            netns: self.netns.clone(),
        }
    }
}

/// A config that cannot be used. Always names the file; names the key when one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// Trove's files are not there yet: an instance's first boot, before cloud-init writes them
    /// (`crate::boot_guard` holds the NICs closed meanwhile).
    #[error("{path}: [trove]: {message}")]
    TroveFilesMissing { path: PathBuf, message: String },
}

impl ConfigError {
    /// The key at fault, for an invalid value.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    pub fn invalid(path: &Path, key: impl fmt::Display, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&Config::read(path)?, path)
    }

    /// The config file's text.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            // toml's message carries the line, the column and the offending key.
            message: e.to_string().trim_end().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "config.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(PATH))
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
mode = "audit"
attach = "tcx"
pin_path = "/sys/fs/bpf/x"
[metrics]
listen = "127.0.0.1:9477"
allow_from = ["203.0.113.0/24"]
[management]
interface = "ens3"
rabbitmq = ["192.0.2.10:5672", "[2001:db8:1::10]:5671"]
registry = ["192.0.2.20:4000"]
ssh_from = ["203.0.113.0/24"]
allow = [ { to = "192.0.2.30/32", port = 8080, proto = "tcp" } ]
dhcp = false
ssh_port = 2222
[business]
mac = "fa:16:3e:00:00:01"
netns = "/run/netns/db"
database_ports = [3306]
clients = []
peers = ["198.51.100.7/32"]
"#;
        let c = parse(text).unwrap_or_else(|e| panic!("example refused: {e}"));
        assert_eq!(c.mode.as_deref(), Some("audit"));
        assert_eq!(c.attach.as_deref(), Some("tcx"));
        let m = c.management.expect("[management] parsed");
        assert_eq!(m.rabbitmq.len(), 2);
        assert_eq!(m.allow[0].port, Some(8080));
        assert_eq!(m.dhcp, Some(false));
        assert_eq!(m.ssh_port, Some(2222));
        let b = c.business.expect("[business] parsed");
        assert_eq!(b.mac.as_deref(), Some("fa:16:3e:00:00:01"));
        assert_eq!(b.database_ports, vec![3306]);
    }

    #[test]
    fn omitted_keys_are_none_or_empty() {
        let c = parse("[business]\ninterface = \"ens4\"\ndatabase_ports = [5432]\n")
            .unwrap_or_else(|e| panic!("minimal config refused: {e}"));
        assert!(c.mode.is_none() && c.attach.is_none() && c.pin_path.is_none());
        assert!(c.metrics.listen.is_none() && c.metrics.allow_from.is_empty());
        assert!(c.management.is_none());
        let b = c.business.expect("[business] parsed");
        assert!(b.clients.is_empty() && b.peers.is_empty() && b.mac.is_none());
    }

    #[test]
    fn unknown_key_is_a_syntax_error_with_position() {
        let err = parse("[business]\ninterface = \"ens4\"\nclient = []\n")
            .expect_err("unknown key accepted");
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(text.starts_with("config.toml: "), "no file in {text}");
        assert!(text.contains("client"), "key not named in {text}");
        assert!(text.contains("line 3"), "no line in {text}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let err = parse("[managment]\ninterface = \"ens3\"\n").expect_err("typo accepted");
        assert!(err.to_string().contains("managment"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = Path::new("/nonexistent/trove-isolate-test/config.toml");
        let err = Config::load(path).expect_err("missing file loaded");
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains(path.to_str().expect("utf-8")),
            "{err}"
        );
    }

    #[test]
    fn invalid_error_formats_file_key_message() {
        let err = ConfigError::invalid(Path::new(PATH), "[management] rabbitmq[1]", "bad");
        assert_eq!(
            err.to_string(),
            "config.toml: [management] rabbitmq[1]: bad"
        );
        assert_eq!(err.key(), Some("[management] rabbitmq[1]"));
    }
}
