//! `[boot]`: which NICs the guard holds, and the metadata service it lets through.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use trove_isolate_common::guard::MAX_ENDPOINTS;

use crate::{
    config::{Config, ConfigError},
    policy::AttachMode,
};

/// What cloud-init reads at first boot: OpenStack's metadata service, over IPv4 and IPv6.
pub const DEFAULT_METADATA: [&str; 2] = ["169.254.169.254:80", "[fe80::a9fe:a9fe]:80"];

/// `[boot]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The NICs to hold; `None`: every physical NIC in `netns`.
    pub interfaces: Option<Vec<String>>,
    pub netns: Option<PathBuf>,
    pub metadata: Vec<SocketAddr>,
    pub attach: AttachMode,
}

impl Settings {
    /// The guard `config` asks for: none without Trove discovery (a config that names its NICs
    /// needs no guard) or with `guard = false`.
    pub fn of(config: &Config, path: &Path) -> Result<Option<Settings>, ConfigError> {
        let boot = &config.boot;
        if config.trove.is_none() || boot.guard == Some(false) {
            return Ok(None);
        }
        let invalid = |key: &str, message: String| ConfigError::invalid(path, key, message);
        let texts: Vec<String> = match &boot.metadata {
            Some(list) => list.clone(),
            None => DEFAULT_METADATA.iter().map(|s| s.to_string()).collect(),
        };
        if texts.len() > MAX_ENDPOINTS {
            return Err(invalid(
                "[boot] metadata",
                format!("at most {MAX_ENDPOINTS} endpoints"),
            ));
        }
        let metadata = texts
            .iter()
            .map(|text| match text.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => Ok(addr),
                _ => Err(invalid(
                    "[boot] metadata",
                    format!("{text:?} is not address:port (IPv6 as [address]:port)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(list) = &boot.interfaces {
            if list.is_empty() || list.iter().any(|n| n.is_empty()) {
                return Err(invalid(
                    "[boot] interfaces",
                    "name at least one NIC, or leave the key out for every physical NIC".into(),
                ));
            }
        }
        // sysfs, which tells a physical NIC, is the host's whatever namespace is entered.
        if boot.netns.is_some() && boot.interfaces.is_none() {
            return Err(invalid(
                "[boot] netns",
                "name the NICs there with interfaces (physical NICs are found in the host \
                 namespace only)"
                    .into(),
            ));
        }
        let attach = crate::policy::attach_mode(config.attach.as_deref())
            .map_err(|m| invalid("attach", m))?;
        Ok(Some(Settings {
            interfaces: boot.interfaces.clone(),
            netns: boot.netns.as_ref().map(PathBuf::from),
            metadata,
            attach,
        }))
    }

    /// For a config whose `[boot]` is wrong: the NICs it names if that part is sound (a mistake
    /// in another key must not send the guard to other NICs than those), else every physical
    /// NIC; OpenStack's metadata service.
    pub fn fallback(config: &Config) -> Settings {
        let boot = &config.boot;
        let named = boot
            .interfaces
            .as_ref()
            .filter(|list| !list.is_empty() && list.iter().all(|n| !n.is_empty()));
        Settings {
            interfaces: named.cloned(),
            netns: named.and(boot.netns.as_ref()).map(PathBuf::from),
            attach: crate::policy::attach_mode(config.attach.as_deref())
                .unwrap_or(AttachMode::Auto),
            ..Settings::defaults()
        }
    }

    /// Every physical NIC of the host's namespace, OpenStack's metadata service, the attach mode
    /// the kernel suits.
    pub fn defaults() -> Settings {
        Settings {
            interfaces: None,
            netns: None,
            metadata: DEFAULT_METADATA
                .iter()
                .filter_map(|text| text.parse().ok())
                .collect(),
            attach: AttachMode::Auto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Option<Settings>, ConfigError> {
        let path = Path::new("boot.toml");
        Settings::of(&Config::parse(text, path).expect("parses"), path)
    }

    #[test]
    fn the_guard_is_on_with_trove_discovery_unless_turned_off() {
        let on = settings("[trove]\n").expect("valid").expect("guarded");
        assert_eq!(on.interfaces, None);
        assert_eq!(
            on.metadata,
            vec![
                "169.254.169.254:80".parse::<SocketAddr>().expect("addr"),
                "[fe80::a9fe:a9fe]:80".parse().expect("addr"),
            ]
        );
        assert_eq!(
            settings("[trove]\n[boot]\nguard = false\n").expect("valid"),
            None
        );
        // A config that names its NICs and rules is whole without Trove's files.
        assert_eq!(settings("[boot]\nguard = true\n").expect("valid"), None);
    }

    #[test]
    fn bad_boot_keys_are_refused_by_name() {
        for (text, key) in [
            (
                "[trove]\n[boot]\nmetadata = [\"169.254.169.254\"]\n",
                "[boot] metadata",
            ),
            (
                "[trove]\n[boot]\nmetadata = [\"fe80::1:80\"]\n",
                "[boot] metadata",
            ),
            (
                "[trove]\n[boot]\nmetadata = [\"192.0.2.1:0\"]\n",
                "[boot] metadata",
            ),
            (
                "[trove]\n[boot]\nmetadata = [\"192.0.2.1:1\", \"192.0.2.1:2\", \"192.0.2.1:3\", \
                 \"192.0.2.1:4\", \"192.0.2.1:5\"]\n",
                "[boot] metadata",
            ),
            ("[trove]\n[boot]\ninterfaces = []\n", "[boot] interfaces"),
            (
                "[trove]\n[boot]\nnetns = \"/run/netns/x\"\n",
                "[boot] netns",
            ),
            ("attach = \"xdp\"\n[trove]\n", "attach"),
        ] {
            let err = match settings(text) {
                Err(e) => e,
                Ok(s) => panic!("{text:?} accepted: {s:?}"),
            };
            assert_eq!(err.key(), Some(key), "{text:?}: {err}");
        }
    }

    /// The NICs `[boot]` names stay held when another of its keys is wrong.
    #[test]
    fn a_bad_boot_key_leaves_the_named_nics_held() {
        let fallback =
            |text: &str| Settings::fallback(&Config::parse(text, Path::new("b")).unwrap());
        let named = fallback(
            "[trove]\n[boot]\ninterfaces = [\"ens3\", \"ens4\"]\nnetns = \"/run/netns/g\"\n\
             metadata = [\"169.254.169.254\"]\n",
        );
        assert_eq!(named.interfaces, Some(vec!["ens3".into(), "ens4".into()]));
        assert_eq!(named.netns, Some(PathBuf::from("/run/netns/g")));
        assert_eq!(named.metadata.len(), DEFAULT_METADATA.len());
        // Named wrong: every physical NIC of the host's namespace.
        let every = fallback("[trove]\n[boot]\ninterfaces = []\nnetns = \"/run/netns/g\"\n");
        assert_eq!((every.interfaces, every.netns), (None, None));
    }
}
