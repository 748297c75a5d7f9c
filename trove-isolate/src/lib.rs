//! trove-isolate: per-interface network isolation for OpenStack Trove database guests.
//!
//! The loader compiles a validated [`policy::Policy`] into the datapath's maps, attaches one TC
//! program per (role, direction) to the management and business NICs (each in its own network
//! namespace), pins everything so enforcement outlives the process, and serves metrics.

/// The compiled TC programs (`trove-isolate-ebpf`), embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trove-isolate-ebpf"));

pub mod attach;
pub mod boot_guard;
pub mod capacity;
pub mod clock;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod datapath;
pub mod discover;
pub mod drops;
pub mod explain;
pub mod flow_tables;
pub mod inspect;
pub mod linkwatch;
pub mod local;
pub mod map_batch;
pub mod metrics;
pub mod model;
pub mod multicast;
pub mod netns;
pub mod nic;
pub mod ops;
pub mod own_sets;
pub mod pin_lock;
pub mod pins;
pub mod policy;
pub mod rawsock;
pub mod reconcile;
pub mod resolve;
pub mod rule_table;
pub mod serve;
pub mod state;
pub mod status;
