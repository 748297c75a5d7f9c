//! The config loader on arbitrary input: it never panics, every refusal names the file (and,
//! for a bad value, the key), and every accepted config prints and yields map entries.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use trove_isolate::{
    config::{Config, ConfigError},
    policy::Policy,
};

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(FILE);
    let refused = match Config::parse(text, path) {
        Ok(config) => match Policy::from_config(&config, path) {
            Ok(policy) => {
                let _ = policy.to_string();
                let _ = policy.warnings();
                let _ = policy.entries();
                return;
            }
            Err(e) => e,
        },
        Err(e) => e,
    };
    let message = refused.to_string();
    assert!(message.starts_with(FILE), "error without the file: {message}");
    if let ConfigError::Invalid { key, .. } = &refused {
        assert!(!key.is_empty(), "invalid value without a key: {message}");
    }
    assert!(!message.contains('\n') || matches!(refused, ConfigError::Syntax { .. }));
});
