//! The config file as written: raw serde types, nothing validated beyond TOML syntax and key
//! names. [`crate::policy`] turns this into a validated policy, naming the key of every error.

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
    #[serde(default)]
    pub metrics: MetricsConfig,
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

/// How a section names its NIC.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub netns: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
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
    pub ssh_port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    pub to: String,
    pub port: Option<u16>,
    pub proto: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessConfig {
    pub interface: Option<String>,
    pub mac: Option<String>,
    pub netns: Option<String>,
    #[serde(default)]
    pub database_ports: Vec<u16>,
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
    #[error("{path}: {source}")]
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
}

impl ConfigError {
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            // toml's message carries the line, the column and the offending key.
            message: e.to_string().trim_end().to_owned(),
        })
    }
}
