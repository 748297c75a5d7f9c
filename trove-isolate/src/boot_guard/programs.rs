//! The guard's programs, loaded on small maps, and their counters.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{tc::SchedClassifier, Program},
    EbpfLoader,
};
use serde::Serialize;
use trove_isolate_common::{
    counters::Counter,
    family,
    guard::{self, Endpoint, Endpoints, MAX_ENDPOINTS},
    maps, Direction, Reason, Verdict,
};

use crate::{capacity::Capacity, pins::Pins};

/// The guard's programs, loaded (the verifier passed them), and their maps.
pub struct Programs {
    ebpf: aya::Ebpf,
}

impl Programs {
    /// Loads the eBPF object with its maps made small (the guard uses two of them), the guard's
    /// counters bound to their pin under `pins` (fresh and unpinned without: packet tests), the
    /// metadata endpoints written, and the guard's programs (both pairs) through the verifier.
    pub fn load(pins: Option<&Pins>, metadata: &[SocketAddr]) -> anyhow::Result<Programs> {
        if crate::EBPF_OBJECT.is_empty() {
            anyhow::bail!("this binary was built with AYA_BUILD_SKIP: it carries no eBPF programs");
        }
        if metadata.len() > MAX_ENDPOINTS {
            anyhow::bail!("at most {MAX_ENDPOINTS} metadata endpoints");
        }
        let small = Capacity {
            policy: [1; trove_isolate_common::policy::MAPS],
            policy_rules: Capacity::NO_RULES,
            ct_established: 64,
            ct_new: 63,
        };
        let mut loader = EbpfLoader::new();
        for (name, size) in small.sized() {
            loader.map_max_entries(name, size);
        }
        if let Some(pins) = pins {
            fs::create_dir_all(pins.root())
                .with_context(|| format!("creating pin directory {}", pins.root().display()))?;
            loader.map_pin_path(maps::GUARD_COUNTERS, pins.map(maps::GUARD_COUNTERS));
        }
        let mut ebpf = loader
            .load(crate::EBPF_OBJECT)
            .context("loading the eBPF object for the boot guard")?;
        let mut endpoints = Endpoints::default();
        for (slot, addr) in endpoints.entries.iter_mut().zip(metadata) {
            *slot = endpoint(addr);
        }
        let mut map: Array<_, Endpoints> = Array::try_from(
            ebpf.map_mut(maps::GUARD_ENDPOINTS)
                .context("guard endpoint map missing")?,
        )?;
        map.set(0, endpoints, 0)
            .context("writing the metadata endpoints")?;
        let mut programs = Programs { ebpf };
        for shut in [false, true] {
            for direction in Direction::ALL {
                let name = guard::program_name(direction, shut);
                programs
                    .program(direction, shut)?
                    .load()
                    .with_context(|| format!("loading {name} (verifier)"))?;
            }
        }
        Ok(programs)
    }

    /// The guard's program of `direction`, of the shut pair or the open one
    /// ([`guard::program_name`]).
    pub fn program(
        &mut self,
        direction: Direction,
        shut: bool,
    ) -> anyhow::Result<&mut SchedClassifier> {
        let name = guard::program_name(direction, shut);
        match self.ebpf.program_mut(name) {
            Some(Program::SchedClassifier(p)) => Ok(p),
            _ => anyhow::bail!("program {name} missing from the eBPF object"),
        }
    }

    /// Every counter of these programs that moved.
    pub fn counts(&self) -> anyhow::Result<Vec<GuardCount>> {
        let map = self
            .ebpf
            .map(maps::GUARD_COUNTERS)
            .context("guard counters missing")?;
        read_counts(&PerCpuArray::try_from(map)?)
    }
}

/// `addr` as the guard's programs compare it.
pub fn endpoint(addr: &SocketAddr) -> Endpoint {
    let mut out = Endpoint {
        port: addr.port().to_be(),
        ..Endpoint::default()
    };
    match addr.ip() {
        IpAddr::V4(v4) => {
            out.family = family::V4;
            out.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.family = family::V6;
            out.addr = v6.octets();
        }
    }
    out
}

/// One of the guard's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuardCount {
    pub direction: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// What the guard has passed and dropped since the guest booted (its counters are pinned, and
/// kept after it is released); none if it never held a NIC.
pub fn counts(pins: &Pins) -> anyhow::Result<Vec<GuardCount>> {
    let path = pins.map(maps::GUARD_COUNTERS);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    read_counts(&PerCpuArray::try_from(Map::PerCpuArray(data))?)
}

fn read_counts<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, Counter>,
) -> anyhow::Result<Vec<GuardCount>> {
    let mut out = Vec::new();
    for direction in Direction::ALL {
        for verdict in Verdict::ALL {
            for reason in Reason::ALL {
                let (packets, bytes) = map
                    .get(&guard::counter_index(direction, verdict, reason), 0)?
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                if packets > 0 {
                    out.push(GuardCount {
                        direction: direction.name(),
                        verdict: verdict.name(),
                        reason: reason.name(),
                        packets,
                        bytes,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_held_as_the_parser_holds_packets() {
        let e = endpoint(&"192.0.2.254:80".parse().expect("addr"));
        assert_eq!(e.family, family::V4);
        assert_eq!(&e.addr[..4], &[192, 0, 2, 254]);
        assert_eq!(e.addr[4..], [0; 12]);
        assert_eq!(e.port, 80u16.to_be());
        let e = endpoint(&"[fe80::a9fe:a9fe]:80".parse().expect("addr"));
        assert_eq!(e.family, family::V6);
        assert_eq!(e.addr[0], 0xfe);
        assert_eq!(e.addr[15], 0xfe);
    }
}
