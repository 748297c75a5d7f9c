//! The loaded datapath: the eBPF object with its maps bound to their pins, and the one place that
//! writes and reads those maps.
//!
//! Maps are reused from their pins when present (`EbpfLoader::map_pin_path`), so a restarted or
//! upgraded loader brings new programs to the same policy, connection-tracking and counter state.
//! A policy update writes the generation not in force whole, then turns the generation over
//! (`rule_table`): a packet is judged by the old rules or the new, never by a mix or by none.

use std::{
    borrow::Borrow,
    fmt, fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    Ebpf, EbpfLoader,
};
use trove_isolate_common::{
    clock::{self, Frame},
    conntrack::{FlowKey, FlowKey4, FlowValue, Keying, WideKey, WideValue},
    counters::{self, Counter},
    events::Budget,
    family,
    flow_table::{Bucket4, FlowBucket, Header},
    local::{LocalKey, LocalValue, OwnSet, TRIE_ONLY},
    maps,
    policy::{self, PolicyKey, PolicyKey4, PolicyKey6, PolicyValue, PrefixLengths},
    program_name,
    rule_table::{Bucket, Bucket12, BucketLong, Region},
    settings::Settings,
    Direction, Mode, Reason, Role, Verdict, PLACE_PROGRAM,
};

use crate::{
    capacity::Capacity,
    clock::{Calibration, Sample, Step},
    flow_tables, map_batch, own_sets,
    pins::Pins,
    policy::Policy,
    rule_table,
};

pub struct Datapath {
    ebpf: Ebpf,
    /// Maps made anew because their pinned size no longer served: pinned in place of the old
    /// ones by [`Datapath::pin_resized`] once the programs that use them are attached.
    resized: Vec<Resized>,
    /// The entries of each map [`Capacity`] sizes, as loaded (kept pins keep their size).
    sizes: Vec<(&'static str, u32)>,
    /// Whether the programs keep their debug records.
    log: bool,
    /// The own-address sets were made at this load and never written: no packet has read them,
    /// so the first write needs no wait (see [`own_sets`]).
    own_fresh: bool,
    /// The policy's maps were made at this load and never written: no program has read them,
    /// so the first write needs no wait.
    policy_fresh: bool,
    /// The flow tables were made at this load (no pin held any of them): no program has seen
    /// them, so they hold no flow to revoke ([`Datapath::take_flows_fresh`]).
    flows_fresh: bool,
    /// The wait for the programs that read the policy's old generation failed: owed before
    /// that generation is written again.
    policy_grace_owed: bool,
    /// A digest of the rules and lengths this datapath last put in force: the same again (a
    /// NIC's move, a reload that changes no rule) is not written again.
    policy_in_force: Option<u64>,
    /// The programs' clock ([`crate::clock`]).
    clock: Calibration,
}

/// The policy maps' content: the rules, and each class's prefix lengths.
pub type PolicyContent = (Vec<(PolicyKey, PolicyValue)>, Vec<Vec<u8>>);

/// A map whose pinned size no longer served.
#[derive(Debug, Clone)]
pub struct Resized {
    pub map: &'static str,
    pub pin: PathBuf,
    pub from: u32,
    pub to: u32,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(e) = self.release_clock() {
            log::warn!("putting the datapath back on the coarse clock's helper: {e:#}");
        }
    }
}

impl Datapath {
    /// Loads the programs (verifier included) with every map bound to its pin under `pins`, or
    /// with fresh unpinned maps when `pins` is `None` (packet tests, benchmarks). Maps are sized
    /// by `capacity`; a pinned one that no longer serves it is made anew, see [`Capacity`]. `log` keeps the programs' debug records on (they cost
    /// ~20 ns per denied packet).
    pub fn load(pins: Option<&Pins>, log: bool, capacity: &Capacity) -> anyhow::Result<Datapath> {
        let mut datapath = Datapath::open(pins, log, capacity)?;
        let programs = datapath.programs()?;
        let started = Instant::now();
        let done = std::thread::scope(|scope| {
            let pending: Vec<_> = programs
                .into_iter()
                .map(|(role, pair)| (role, spawn_loads(scope, pair)))
                .collect();
            pending.into_iter().try_fold(started, |done, (role, pair)| {
                Ok::<_, anyhow::Error>(done.max(join_loads(role, pair)?.1))
            })
        })?;
        log_verified(started, done);
        Ok(datapath)
    }

    /// [`Datapath::load`] without the verifier: the maps are made (or bound to their pins) and
    /// may be written, and [`Datapath::verify_attaching`] loads the programs. For a first start,
    /// where no program of ours reads the maps yet.
    pub fn open(pins: Option<&Pins>, log: bool, capacity: &Capacity) -> anyhow::Result<Datapath> {
        if crate::EBPF_OBJECT.is_empty() {
            bail!("this binary was built with AYA_BUILD_SKIP: it carries no eBPF programs");
        }
        let paths: Vec<_> = match pins {
            Some(pins) => {
                fs::create_dir_all(pins.root())
                    .with_context(|| format!("creating pin directory {}", pins.root().display()))?;
                maps::ALL
                    .iter()
                    .map(|name| (*name, pins.map(name)))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut resized = Vec::new();
        let mut sizes = Vec::from(capacity.sized());
        // The policy's maps go together: a generation word and prefix lengths shared by the old
        // programs (attached until the swap) and the new ones would name regions of tables that
        // are not the same for both.
        let mut renew_policy = false;
        for (name, path) in &paths {
            let Some(&(map, to)) = capacity.sized().iter().find(|(n, _)| n == name) else {
                continue;
            };
            match pinned_max_entries(path)? {
                Some(from) if !capacity.keeps(map, from) => {
                    renew_policy |= maps::is_policy(map);
                    resized.push(Resized {
                        map,
                        pin: path.clone(),
                        from,
                        to,
                    });
                }
                Some(from) => {
                    sizes.retain(|(n, _)| *n != map);
                    sizes.push((map, from));
                }
                None => {}
            }
        }
        // So do pins that are not one set: a swap of pins that stopped part-way.
        if renew_policy || policy_set_mixed(&paths) {
            for (name, path) in &paths {
                let already = resized.iter().any(|r| r.map == *name);
                if !maps::is_policy_state(name) || already {
                    continue;
                }
                // Made anew at the size it has (a table kept by its size is in `sizes` so).
                if let Some(from) = pinned_max_entries(path)? {
                    resized.push(Resized {
                        map: name,
                        pin: path.clone(),
                        from,
                        to: from,
                    });
                }
            }
        }
        // The generation map is pinned last: it names the maps of its set
        // (`Datapath::sync_policy`), so a swap that stops before it is found by the next load.
        resized.sort_by_key(|r| r.map == maps::POLICY_GENERATION);
        // A map made anew is pinned in the old one's place once its programs are attached
        // (`pin_resized`).
        let mut loader = EbpfLoader::new();
        for (name, wanted) in &sizes {
            loader.map_max_entries(name, *wanted);
        }
        for (name, path) in &paths {
            if !resized.iter().any(|r| r.map == *name) {
                loader.map_pin_path(name, path.clone());
            }
        }
        // Pinned sets may be read by programs attached already; sets made anew are not.
        let own_fresh = !paths
            .iter()
            .any(|(name, path)| *name == maps::OWN_GENERATION && path.exists());
        let policy_fresh = resized.iter().any(|r| r.map == maps::POLICY_GENERATION)
            || !paths
                .iter()
                .any(|(name, path)| *name == maps::POLICY_GENERATION && path.exists());
        let flows_fresh = !paths
            .iter()
            .any(|(name, path)| Table::is_flow_table(name) && path.exists());
        let level: &'static u8 = if log { &0xff } else { &0 };
        loader.override_global(aya_log::LEVEL, level, true);
        let mut ebpf = loader
            .load(crate::EBPF_OBJECT)
            .context("loading the eBPF object (maps bound to their pins)")?;
        set_up_flow_tables(&mut ebpf)?;
        // The kernel's BTF the loader parsed (for CO-RE relocations) takes milliseconds to free:
        // off the start's path, when a thread can be had (else here, as the spawn fails).
        let _ = std::thread::Builder::new()
            .name("loader-drop".into())
            .spawn(move || drop(loader));
        Ok(Datapath {
            ebpf,
            resized,
            sizes,
            log,
            own_fresh,
            policy_fresh,
            flows_fresh,
            policy_grace_owed: false,
            policy_in_force: None,
            clock: Calibration::default(),
        })
    }

    /// Whether the maps pinned under `pins` are this datapath's own (not removed by `detach`, not
    /// made anew by another process since).
    pub fn holds_pins(&self, pins: &Pins) -> bool {
        maps::ALL.iter().all(|name| {
            let pinned = MapData::from_pin(pins.map(name)).and_then(|m| m.info());
            let loaded = self.ebpf.map(name).and_then(map_data).map(MapData::info);
            matches!((pinned, loaded), (Ok(p), Some(Ok(l))) if p.id() == l.id())
        })
    }

    /// The kernel's id of the map `name`.
    pub fn map_id(&self, name: &str) -> Option<u32> {
        let info = self.ebpf.map(name).and_then(map_data)?.info().ok()?;
        Some(info.id())
    }

    /// Whether these loaded programs and maps serve `capacity` as a fresh [`Datapath::load`]
    /// would, so a reload can keep them and skip
    /// the verifier: no map would be resized, and the debug records are as wanted.
    pub fn serves(&self, capacity: &Capacity, log: bool) -> bool {
        self.log == log
            && self.resized.is_empty()
            && self
                .sizes
                .iter()
                .all(|&(map, entries)| capacity.keeps(map, entries))
    }

    /// Whether the flow tables were made at this load, asked once: true only for the first
    /// asker, before any program of this datapath is attached. Such tables hold no flow, and a
    /// walk of them costs a first start 10 to 30 ms (BENCHMARKS.md, section 4).
    pub fn take_flows_fresh(&mut self) -> bool {
        std::mem::take(&mut self.flows_fresh)
    }

    /// The maps made anew at load because their pinned size no longer served.
    pub fn resized(&self) -> &[Resized] {
        &self.resized
    }

    /// Copies the flows of resized flow tables' old pins into the new tables, so the swap to the
    /// new programs loses no tracked flow that existed before it (see [`carry`]).
    pub fn carry_flows(&mut self) -> anyhow::Result<usize> {
        let mut carried = 0;
        for r in self.resized.clone() {
            if maps::is_policy_state(r.map) {
                continue;
            }
            let old = MapData::from_pin(&r.pin)
                .with_context(|| format!("opening pinned map {}", r.pin.display()))?;
            let old = Map::from_map_data(old)?;
            let map = self
                .ebpf
                .map_mut(r.map)
                .with_context(|| format!("map {} missing", r.map))?;
            carried += if Table::is_tcp4(r.map) {
                carry::<Bucket4>(&old, map)?
            } else {
                carry_hash::<WideKey, WideValue>(old, map)?
            };
        }
        Ok(carried)
    }

    /// Pins each resized map in place of the old one (once the programs that use it are
    /// attached: the old map goes when the last program holding it does).
    pub fn pin_resized(&mut self) -> anyhow::Result<()> {
        for r in std::mem::take(&mut self.resized) {
            let map = self
                .ebpf
                .map(r.map)
                .with_context(|| format!("map {} missing", r.map))?;
            fs::remove_file(&r.pin)
                .with_context(|| format!("removing the old pin {}", r.pin.display()))?;
            map.pin(&r.pin)
                .with_context(|| format!("pinning {} at {}", r.map, r.pin.display()))?;
            let name = r.map.to_ascii_lowercase();
            if r.from == r.to {
                log::info!("map {name} made anew with the policy's resized tables");
            } else {
                log::info!("map {name} resized from {} to {} entries", r.from, r.to);
            }
        }
        Ok(())
    }

    /// Whether the four programs are loaded (verified); after [`Datapath::open`] they are not
    /// until [`Datapath::verify_attaching`].
    pub fn programs_loaded(&mut self) -> bool {
        self.programs().is_ok_and(|programs| {
            programs
                .iter()
                .all(|(_, pair)| pair.iter().all(|p| p.fd().is_ok()))
        })
    }

    pub fn program(&mut self, role: Role, direction: Direction) -> &mut SchedClassifier {
        let name = program_name(role, direction);
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| unreachable!("{name} is one of the object's programs"))
    }

    /// A role's two programs, ingress then egress.
    pub fn role_programs(&mut self, role: Role) -> Pair<'_> {
        let mut programs = self.programs().unwrap_or_else(|e| unreachable!("{e:#}"));
        let at = programs.iter().position(|(r, _)| *r == role);
        programs
            .swap_remove(at.unwrap_or_else(|| unreachable!("{role} has programs")))
            .1
    }

    /// Each role's two programs, ingress then egress.
    fn programs(&mut self) -> anyhow::Result<Vec<(Role, Pair<'_>)>> {
        Ok(self.programs_and_place()?.0)
    }

    /// [`Datapath::programs`], and the placeholder ([`PLACE_PROGRAM`]) beside them.
    #[allow(clippy::type_complexity)]
    fn programs_and_place(
        &mut self,
    ) -> anyhow::Result<(Vec<(Role, Pair<'_>)>, &mut SchedClassifier)> {
        let roles = Role::ALL.map(|r| Direction::ALL.map(|d| program_name(r, d)));
        let mut found: Vec<(&str, &mut SchedClassifier)> = Vec::new();
        for (name, program) in self.ebpf.programs_mut() {
            if name == PLACE_PROGRAM || roles.iter().flatten().any(|n| *n == name) {
                let program = program
                    .try_into()
                    .with_context(|| format!("program {name} is not a classifier"))?;
                found.push((name, program));
            }
        }
        let mut take = |name: &str| {
            let at = found.iter().position(|(n, _)| *n == name);
            at.map(|at| found.swap_remove(at).1)
                .with_context(|| format!("program {name} missing from the eBPF object"))
        };
        let programs = Role::ALL
            .into_iter()
            .map(|role| {
                let ingress = take(program_name(role, Direction::Ingress))?;
                let egress = take(program_name(role, Direction::Egress))?;
                Ok((role, [ingress, egress]))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((programs, take(PLACE_PROGRAM)?))
    }

    /// Verifies the four programs side by side, a thread each as [`Datapath::load`] does, and
    /// hands each role's pair to `attach` once its two programs are verified, `first`'s first.
    ///
    /// Not one role's pair after the other's: the kernel runs the verifier on the loading
    /// thread, and its time for a program varies from load to load by a third or more (and
    /// with the core it runs on), so a core that finished one of a pair would wait for the
    /// other. With all four under way, a core is idle only while the last one finishes.
    ///
    /// A TCX attach waits for an RCU grace period (8 to 18 ms a hook, under the rtnl lock); a
    /// link updated in place waits for none. So while the programs are verified, `hold` is
    /// handed the placeholder ([`PLACE_PROGRAM`], loaded) to take the hooks with, for `attach`
    /// to replace in place. A placeholder the verifier refuses leaves the hooks to `attach`.
    pub fn verify_attaching(
        &mut self,
        first: Role,
        hold: impl FnOnce(&mut SchedClassifier) + Send,
        mut attach: impl FnMut(Role, Pair<'_>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let (mut programs, place) = self.programs_and_place()?;
        programs.sort_by_key(|(role, _)| *role != first);
        let mut programs = programs.into_iter();
        let (Some((r1, p1)), Some((r2, p2))) = (programs.next(), programs.next()) else {
            unreachable!("two roles");
        };
        let started = Instant::now();
        std::thread::scope(|scope| {
            let p1 = spawn_loads(scope, p1);
            let p2 = spawn_loads(scope, p2);
            // A thread of its own: the verifier does not wait for the hooks.
            let holding = scope.spawn(move || match place.load() {
                // The links it holds keep it in the kernel until the programs replace it.
                Ok(()) => {
                    hold(place);
                    let _ = place.unload();
                }
                Err(e) => log::debug!("loading {PLACE_PROGRAM}: {e}"),
            });
            let (p1, done) = join_loads(r1, p1)?;
            holding
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            let attached = attach(r1, p1);
            let p2 = join_loads(r2, p2);
            attached?;
            let (p2, last) = p2?;
            log_verified(started, done.max(last));
            attach(r2, p2)
        })
    }

    /// One of the object's benchmark programs (`bench_empty`, `bench_parse`, ...), loaded.
    /// They are never attached, and loaded only here.
    pub fn bench_program(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("{name} is not a classifier"))?;
        if program.fd().is_err() {
            program
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
        }
        Ok(program)
    }

    /// Runs `clock_sync`: stores `set` as the programs' clock unless it is [`Frame::KEEP`], and
    /// reads both clocks.
    pub fn clock_sync(&mut self, set: u64) -> anyhow::Result<Sample> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(clock::SYNC_PROGRAM)
            .context("clock_sync missing from the eBPF object")?
            .try_into()?;
        if program.fd().is_err() {
            program.load().context("loading clock_sync (verifier)")?;
        }
        let mut frame = [0u8; Frame::LEN];
        frame[Frame::SET..Frame::SET + 8].copy_from_slice(&set.to_le_bytes());
        let mut out = [0u8; Frame::LEN];
        let run = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .context("running clock_sync (BPF_PROG_TEST_RUN)")?;
        anyhow::ensure!(
            run.return_value == trove_isolate_common::action::PASS as u32,
            "clock_sync refused its frame"
        );
        let word = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().expect("8 bytes"));
        Ok(Sample {
            jiffies: word(Frame::JIFFIES),
            coarse_ns: word(Frame::COARSE_NS),
        })
    }

    /// Reads the clocks and moves the programs' clock on ([`Calibration::observe`]): the
    /// daemon's every second until [`Datapath::clock_settled`], then every sweep. A failure leaves the programs on the clock they read (the coarse
    /// clock's helper, or a conversion checked at the last sweep), said once until it works.
    pub fn tend_clock(&mut self) {
        match self.step_clock() {
            Ok(()) => self.clock.worked(),
            Err(e) => {
                if self.clock.failed() {
                    log::warn!(
                        "the datapath's clock: {e:#} (the programs keep the clock they read)"
                    );
                }
            }
        }
    }

    /// Whether the programs' clock needs no reading before the sweep's next check.
    pub fn clock_settled(&self) -> bool {
        self.clock.settled()
    }

    /// Puts the programs back on the coarse clock's helper: nothing checks the conversion once
    /// the datapath is dropped (the daemon stops, by any way out of its loop).
    fn release_clock(&mut self) -> anyhow::Result<()> {
        if self.clock.in_force().is_some() {
            self.clock_sync(clock::OFF)?;
            self.clock.applied(clock::OFF);
        }
        Ok(())
    }

    /// Measures the tick (up to `within`) and sets the programs' clock, for tests and
    /// benchmarks; the conversion set, if one was.
    pub fn calibrate_clock(
        &mut self,
        within: std::time::Duration,
    ) -> anyhow::Result<Option<clock::Conversion>> {
        let start = std::time::Instant::now();
        loop {
            self.step_clock()?;
            if self.clock.settled() || start.elapsed() > within {
                return Ok(self.clock.in_force());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn step_clock(&mut self) -> anyhow::Result<()> {
        let now = self.clock_sync(Frame::KEEP)?;
        if let Step::Set(word) = self.clock.observe(now) {
            self.clock_sync(word)?;
            self.clock.applied(word);
        }
        Ok(())
    }

    /// Starts forwarding the programs' debug records to the `log` crate.
    pub fn take_logger(&mut self) -> anyhow::Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("initialising aya-log")
    }

    /// Makes `policy`'s rules and prefix lengths the ones in force: written whole as the
    /// generation not in force (`rule_table`), which the generation word then names.
    ///
    /// No window: a packet reads the generation word once and is judged by that generation's
    /// lengths and rules alone, each written before the word named it. Before returning, this
    /// waits until no program run that read the old generation is left, so the next call may
    /// write it. A call that fails leaves the generation in force as it was. The rules and
    /// lengths this datapath last put in force are not written again (a NIC's move reconciles
    /// with the same policy).
    pub fn sync_policy(&mut self, policy: &Policy) -> anyhow::Result<()> {
        let (entries, wanted) = policy.entries_and_lengths();
        let digest = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for (key, value) in &entries {
                key.hash(&mut h);
                value.rule_id.hash(&mut h);
            }
            wanted.hash(&mut h);
            h.finish()
        };
        if self.policy_in_force == Some(digest) {
            return Ok(());
        }
        // Checked when the config is compiled; a host name's new address may still bring a
        // length more (a refresh). Refused before anything is written.
        if let Some(c) = wanted.iter().position(|w| w.len() > policy::MAX_LENGTHS) {
            anyhow::bail!(
                "{} would use {} prefix lengths, more than {}",
                crate::policy::class_name(c as u32),
                wanted[c].len(),
                policy::MAX_LENGTHS
            );
        }
        let (mut v4, mut v6, mut long) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in &entries {
            match (PolicyKey4::narrow(key), PolicyKey6::narrow(key)) {
                (Some(k), _) => v4.push((k.words(), value.rule_id)),
                (None, Some(k)) => v6.push((k.words(), value.rule_id)),
                (None, None) => long.push((key.words(), value.rule_id)),
            }
        }
        drop(entries);
        if self.policy_grace_owed {
            own_sets::grace()
                .context("waiting for running BPF programs to leave the policy's old generation")?;
            self.policy_grace_owed = false;
        }
        let next = self.policy_generation()? ^ 1;
        let r4 = self.write_region::<Bucket12>(maps::POLICY4, next, &v4)?;
        let r6 = self.write_region::<Bucket12>(maps::POLICY6, next, &v6)?;
        let long = self.write_region::<BucketLong>(maps::POLICY6_LONG, next, &long)?;
        let mut lengths = self.array_mut::<PrefixLengths>(maps::POLICY_LENGTHS)?;
        for (c, prefixes) in wanted.iter().enumerate() {
            let c = c as u32;
            let regions = match policy::class_is_v6(c) {
                true => [r6, long],
                false => [r4, Region::default()],
            };
            let set = PrefixLengths::new(prefixes, regions).context("too many prefix lengths")?;
            lengths
                .set(policy::lengths_index(next, c), set, 0)
                .context("writing the policy's prefix lengths")?;
        }
        // The maps of this set, by id, for the next load to check (`policy_set_mixed`).
        let ids = maps::POLICY_SET.map(|name| self.map_id(name));
        let mut generation = self.array_mut::<u32>(maps::POLICY_GENERATION)?;
        for (i, id) in ids.into_iter().enumerate() {
            let id = id.with_context(|| format!("the id of map {}", maps::POLICY_SET[i]))?;
            generation
                .set(i as u32 + 1, id, 0)
                .context("recording the policy's maps")?;
        }
        // The regions and lengths before the word, seen so from every CPU.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        generation
            .set(0, next, 0)
            .context("putting the new policy in force")?;
        self.policy_in_force = Some(digest);
        if std::mem::take(&mut self.policy_fresh) {
            return Ok(());
        }
        if let Err(e) = own_sets::grace() {
            log::warn!("waiting for running BPF programs to leave the old policy: {e}");
            self.policy_grace_owed = true;
        }
        Ok(())
    }

    /// The generation of the rules in force (0 in maps made anew, whose both generations are
    /// empty).
    fn policy_generation(&self) -> anyhow::Result<u32> {
        let map = self
            .ebpf
            .map(maps::POLICY_GENERATION)
            .context("map POLICY_GENERATION missing")?;
        let generation: Array<&MapData, u32> = Array::try_from(map)?;
        Ok(generation.get(&0, 0)? & 1)
    }

    /// Places `rules` in the region of the table `name` that belongs to `generation`, and
    /// writes it.
    fn write_region<B>(
        &mut self,
        name: &str,
        generation: u32,
        rules: &[(B::Key, u32)],
    ) -> anyhow::Result<Region>
    where
        B: Bucket + aya::Pod + Sync,
    {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))?;
        // Checks the value size.
        Array::<&MapData, B>::try_from(map)
            .with_context(|| format!("map {name}: not an array of these buckets"))?;
        let data = map_data(map).with_context(|| format!("map {name}: no map data"))?;
        let room = data.info()?.max_entries() / 2;
        let placed = rule_table::place::<B>(rules, room)
            .with_context(|| format!("the policy map {name}"))?;
        let base = (generation & 1) * room;
        let region = Region {
            base,
            mask: placed.mask(),
            seed: placed.seed,
        };
        let indices: Vec<u32> = (base..base + placed.buckets.len() as u32).collect();
        // SAFETY: the value size is checked above; an array's key is a u32.
        match unsafe { map_batch::update(data.fd().as_fd(), &indices, &placed.buckets) } {
            Ok(true) => return Ok(region),
            Ok(false) => {}
            Err(s) => {
                return Err(anyhow::Error::new(s.error).context(format!(
                    "writing the rules into {name}: {} of {} buckets written",
                    s.done,
                    indices.len()
                )))
            }
        }
        // A kernel without batch operations: one at a time.
        let mut table = self.array_mut::<B>(name)?;
        for (i, bucket) in indices.iter().zip(&placed.buckets) {
            table
                .set(*i, bucket, 0)
                .with_context(|| format!("writing bucket {i} of {name}"))?;
        }
        Ok(region)
    }

    /// The array map `name`, its values checked to be `V`s, to write.
    fn array_mut<V: aya::Pod>(&mut self, name: &str) -> anyhow::Result<Array<&mut MapData, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))?;
        Array::try_from(map).with_context(|| format!("map {name}: not an array of these values"))
    }

    /// Every rule in force (widened to `PolicyKey`), and the prefix lengths of each class
    /// (longest first).
    pub fn policy_map(&self) -> anyhow::Result<PolicyContent> {
        let slots = self.prefix_length_slots()?;
        // Every class of a family names the same regions (`sync_policy`): any one class's do.
        let region = |c: u32, i: usize| slots[c as usize].regions[i];
        let (v4, v6) = (
            policy::class(Role::Management, Direction::Ingress, family::V4),
            policy::class(Role::Management, Direction::Ingress, family::V6),
        );
        let mut rules: Vec<(PolicyKey, PolicyValue)> = Vec::new();
        let value = |rule_id| PolicyValue { rule_id };
        for (k, r) in self.region_rules::<Bucket12>(maps::POLICY4, region(v4, 0))? {
            rules.push((PolicyKey4::from_words(&k).widen(), value(r)));
        }
        for (k, r) in self.region_rules::<Bucket12>(maps::POLICY6, region(v6, 0))? {
            rules.push((PolicyKey6::from_words(&k).widen(), value(r)));
        }
        for (k, r) in self.region_rules::<BucketLong>(maps::POLICY6_LONG, region(v6, 1))? {
            rules.push((PolicyKey::from_words(&k), value(r)));
        }
        let mut classes = Vec::new();
        for set in slots {
            let mut prefixes: Vec<u8> = set.prefixes().collect();
            prefixes.sort_unstable_by(|a, b| b.cmp(a));
            classes.push(prefixes);
        }
        Ok((rules, classes))
    }

    /// The rules a region of the table `name` holds.
    fn region_rules<B: Bucket + aya::Pod>(
        &self,
        name: &str,
        region: Region,
    ) -> anyhow::Result<Vec<(B::Key, u32)>> {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))?;
        let table: Array<&MapData, B> = Array::try_from(map)?;
        let buckets = (region.base..=region.base + region.mask)
            .map(|i| table.get(&i, 0))
            .collect::<Result<Vec<B>, _>>()
            .with_context(|| format!("reading {name}"))?;
        Ok(rule_table::rules_of(&buckets))
    }

    /// Each class's prefix lengths and regions in the generation in force.
    pub fn prefix_length_slots(&self) -> anyhow::Result<Vec<PrefixLengths>> {
        let generation = self.policy_generation()?;
        let map = self
            .ebpf
            .map(maps::POLICY_LENGTHS)
            .context("prefix lengths map missing")?;
        let lengths: Array<&MapData, PrefixLengths> = Array::try_from(map)?;
        (0..policy::CLASSES)
            .map(|c| Ok(lengths.get(&policy::lengths_index(generation, c), 0)?))
            .collect()
    }

    /// Makes the local-address map hold exactly `entries` (the NICs' addresses and links), then
    /// the own-address sets the own addresses among them. The trie first: it answers for what
    /// the set in force does not hold, so an address gained is the NIC's own at once.
    pub fn sync_local(&mut self, entries: &[(Key<LocalKey>, LocalValue)]) -> anyhow::Result<()> {
        self.sync_local_trie(entries)?;
        self.sync_own_sets(&own_sets::sets_of(entries))
            .context("writing the own-address sets")
    }

    /// The first step of [`Datapath::sync_local`] alone: the trie, not the sets (what a packet
    /// meets while the sets wait for a grace period; the tests' way to get there).
    pub fn sync_local_trie(
        &mut self,
        entries: &[(Key<LocalKey>, LocalValue)],
    ) -> anyhow::Result<()> {
        self.sync_trie(maps::LOCAL, entries)
            .context("writing the local address map")
    }

    /// The local-address map's entries of `roles` as they are: what a NIC not found now keeps
    /// (its programs still judge its ARP, neighbour discovery and new flows by them).
    pub fn local_entries_of(
        &self,
        roles: &[Role],
    ) -> anyhow::Result<Vec<(Key<LocalKey>, LocalValue)>> {
        if roles.is_empty() {
            return Ok(Vec::new());
        }
        let map = self
            .ebpf
            .map(maps::LOCAL)
            .with_context(|| format!("map {} missing", maps::LOCAL))?;
        let trie: LpmTrie<&MapData, LocalKey, LocalValue> = LpmTrie::try_from(map)?;
        let mut kept = Vec::new();
        for entry in trie.iter() {
            let (key, value) = entry.context("reading the local address map")?;
            if roles.iter().any(|r| *r as u8 == key.data().role) {
                kept.push((key, value));
            }
        }
        Ok(kept)
    }

    /// Puts `sets` in force, in the order [`own_sets`] gives; nothing when they are already.
    fn sync_own_sets(&mut self, sets: &[OwnSet; Role::COUNT]) -> anyhow::Result<()> {
        let generation = self.own_generation()?;
        let trie_only = generation & TRIE_ONLY != 0;
        let mut in_force = [OwnSet::default(); Role::COUNT];
        {
            let slots = self.array_mut::<OwnSet>(maps::OWN_SETS)?;
            for role in Role::ALL {
                in_force[role as usize] = slots.get(&OwnSet::slot(role, generation), 0)?;
            }
        }
        if in_force == *sets && !trie_only {
            return Ok(());
        }
        if !self.own_fresh {
            // The trie answers every check from this word on, so the change is in force at once;
            // once the programs running now have returned, no packet reads a slot.
            if !trie_only {
                self.set_own_generation(generation | TRIE_ONLY)?;
            }
            if let Err(e) = own_sets::grace() {
                if !trie_only {
                    log::warn!(
                        "waiting for running BPF programs (a map-of-maps update): {e}; the NICs' \
                         own addresses are checked in the trie until a wait succeeds (about 12 \
                         ns more per new flow)"
                    );
                }
                return Ok(());
            }
        }
        let next = generation.wrapping_add(1) & !TRIE_ONLY;
        let mut slots = self.array_mut::<OwnSet>(maps::OWN_SETS)?;
        for role in Role::ALL {
            slots.set(OwnSet::slot(role, next), sets[role as usize], 0)?;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.set_own_generation(next)?;
        self.own_fresh = false;
        Ok(())
    }

    /// Leaves every own-address check to the trie until the addresses next change (the tests' way
    /// to check the trie the sets stand in for; the daemon's where a wait for running programs
    /// fails).
    pub fn own_sets_off(&mut self) -> anyhow::Result<()> {
        let generation = self.own_generation()?;
        self.set_own_generation(generation | TRIE_ONLY)
    }

    /// Whether an own-address set is in force (else the trie answers every check).
    pub fn own_sets_on(&self) -> anyhow::Result<bool> {
        Ok(self.own_generation()? & TRIE_ONLY == 0)
    }

    fn own_generation(&self) -> anyhow::Result<u32> {
        let map = self
            .ebpf
            .map(maps::OWN_GENERATION)
            .context("own-address generation map missing")?;
        Ok(Array::<&MapData, u32>::try_from(map)?.get(&0, 0)?)
    }

    fn set_own_generation(&mut self, generation: u32) -> anyhow::Result<()> {
        self.array_mut::<u32>(maps::OWN_GENERATION)?
            .set(0, generation, 0)?;
        Ok(())
    }

    /// Add before remove: an entry in both the old and the new content is never missing.
    fn sync_trie<K, V>(&mut self, name: &str, entries: &[(Key<K>, V)]) -> anyhow::Result<()>
    where
        K: aya::Pod + Eq + std::hash::Hash + fmt::Debug,
        V: aya::Pod,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))?;
        let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map)?;
        for (i, (key, value)) in entries.iter().enumerate() {
            trie.insert(key, value, 0).map_err(|e| match e {
                MapError::SyscallError(ref s) if s.io_error.raw_os_error() == Some(28) => {
                    anyhow::anyhow!(
                        "map {name} is full after {i} of {} entries (ENOSPC)",
                        entries.len()
                    )
                }
                e => anyhow::Error::new(e).context(format!("inserting entry {i} of {name}")),
            })?;
        }
        let wanted: foldhash::HashSet<(u32, K)> = entries
            .iter()
            .map(|(k, _)| (k.prefix_len(), k.data()))
            .collect();
        let stale: Vec<Key<K>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale {
            trie.remove(&key)
                .with_context(|| format!("removing a stale entry of {name}"))?;
        }
        Ok(())
    }

    /// Every flow of one of `role`'s flow tables, both keyings (TCP over IPv4 widened), as
    /// its slot holds it (one that is over but not yet freed included).
    pub fn flows(&self, role: Role, table: Table) -> anyhow::Result<Vec<(FlowKey, FlowValue)>> {
        let tcp4 = flow_tables::live::<Bucket4>(self.map(table.map_name(role, Keying::Tcp4))?)?;
        let mut flows: Vec<(FlowKey, FlowValue)> =
            tcp4.into_iter().map(|(k, v)| (k.widen(role), v)).collect();
        let wide: Vec<(WideKey, WideValue)> = self.entries(table.map_name(role, Keying::Wide))?;
        flows.extend(wide.into_iter().map(|(k, v)| (k.widen(role, &v), v.flow)));
        Ok(flows)
    }

    /// The header of `role`'s TCP over IPv4 `table`: its buckets and its hash's seed (which
    /// nothing the daemon prints or serves shows; the packet tests place flows by it).
    pub fn tcp4_header(&self, role: Role, table: Table) -> anyhow::Result<Header> {
        flow_tables::header::<Bucket4>(self.map(table.map_name(role, Keying::Tcp4))?)
    }

    /// Every entry of the hash map `name`, read in batches where the kernel can.
    fn entries<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> anyhow::Result<Vec<(K, V)>> {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))?;
        // Checks the key and value sizes.
        let typed: HashMap<&MapData, K, V> = HashMap::try_from(map)?;
        let data = match map {
            Map::HashMap(data) | Map::LruHashMap(data) => data,
            _ => bail!("map {name} is not a hash map"),
        };
        // SAFETY: `typed` checked the map's key and value sizes against `K` and `V`.
        match unsafe { map_batch::entries::<K, V>(data.fd().as_fd()) } {
            Ok(Some(entries)) => return Ok(entries),
            Ok(None) => {}
            Err(e) => log::warn!("reading map {name} in batches: {e}; walking it instead"),
        }
        // A flow deleted by the datapath while we walk ends the walk early at worst; the next
        // sweep sees the rest.
        Ok(typed.iter().filter_map(Result::ok).collect())
    }

    fn map(&self, name: &str) -> anyhow::Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))
    }

    /// Removes the flows under `keys` from one of `role`'s flow tables (each from its keying's)
    /// whose entry `stale` still condemns when it is read again, just before its removal:
    /// between the walk that chose them and this, the datapath may have put another flow under
    /// a key (a SYN on the tuple of an expired one), or moved the flow on. An entry of a wide
    /// table holding another local address under the key's fold is another flow, and is kept.
    /// Returns how many were removed.
    pub fn remove_flows(
        &mut self,
        role: Role,
        table: Table,
        keys: &[FlowKey],
        stale: impl Fn(&FlowKey, &FlowValue) -> bool,
    ) -> anyhow::Result<usize> {
        let tcp4: Vec<FlowKey4> = keys.iter().filter_map(FlowKey4::narrow).collect();
        let name = table.map_name(role, Keying::Tcp4);
        let mut removed =
            flow_tables::remove::<Bucket4>(self.map(name)?, &tcp4, |k, v| stale(&k.widen(role), v))
                .with_context(|| format!("removing flows from {name}"))?;
        let wide: Vec<(WideKey, [u32; 4])> = keys.iter().filter_map(WideKey::narrow).collect();
        if wide.is_empty() {
            return Ok(removed);
        }
        let locals: std::collections::HashMap<WideKey, [u32; 4]> = wide.iter().copied().collect();
        let keys: Vec<WideKey> = wide.into_iter().map(|(k, _)| k).collect();
        removed += self.remove_keys::<WideKey, WideValue>(
            table.map_name(role, Keying::Wide),
            &keys,
            |k, v| locals.get(k) == Some(&v.local) && stale(&k.widen(role, v), &v.flow),
        )?;
        Ok(removed)
    }

    /// Removes each of `keys` from the hash map `name` whose entry, read just before, `stale`
    /// condemns; a key already gone is skipped.
    fn remove_keys<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
        keys: &[K],
        stale: impl Fn(&K, &V) -> bool,
    ) -> anyhow::Result<usize> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))?;
        let mut flows: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
        let gone = |e: &MapError| match e {
            MapError::KeyNotFound => true,
            MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(2),
            _ => false,
        };
        let mut removed = 0;
        for key in keys {
            match flows.get(key, 0) {
                Ok(value) if stale(key, &value) => {}
                Ok(_) => continue,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading a flow of {name}")),
            }
            match flows.remove(key) {
                Ok(()) => removed += 1,
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e).with_context(|| format!("removing a flow from {name}")),
            }
        }
        Ok(removed)
    }

    /// Every non-zero counter.
    pub fn counts(&self) -> anyhow::Result<Vec<Count>> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .context("counters map missing")?;
        read_counts(&PerCpuArray::try_from(map)?)
    }

    pub fn set_mode(&mut self, role: Role, mode: Mode) -> anyhow::Result<()> {
        self.update_settings(role, |s| s.mode = mode as u8)
            .with_context(|| format!("setting {} mode", role.name()))
    }

    /// Whether the NIC of `role` passes DHCP client traffic (statelessly, in link scope).
    pub fn set_dhcp(&mut self, role: Role, on: bool) -> anyhow::Result<()> {
        self.update_settings(role, |s| s.dhcp = u8::from(on))
            .with_context(|| format!("setting {} dhcp", role.name()))
    }

    /// How many drop events each CPU may send per second for `role`'s NIC (0: none).
    pub fn set_events(&mut self, role: Role, per_cpu_second: u32) -> anyhow::Result<()> {
        self.update_settings(role, |s| s.events_per_cpu_second = per_cpu_second)
            .with_context(|| format!("setting {} drop events", role.name()))
    }

    /// The drop-event ring buffer (packet tests read it directly).
    pub fn drop_events(&mut self) -> anyhow::Result<RingBuf<&mut MapData>> {
        let map = self
            .ebpf
            .map_mut(maps::DROP_EVENTS)
            .context("drop events map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Events the datapath did not send (over budget or ring full), summed over CPUs.
    pub fn events_suppressed(&self) -> anyhow::Result<u64> {
        let map = self
            .ebpf
            .map(maps::EVENT_BUDGET)
            .context("event budget map missing")?;
        read_suppressed(&PerCpuArray::try_from(map)?)
    }

    fn update_settings(
        &mut self,
        role: Role,
        change: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<()> {
        let mut settings = self.array_mut::<Settings>(maps::SETTINGS)?;
        let mut value = settings.get(&(role as u32), 0)?;
        change(&mut value);
        settings.set(role as u32, value, 0)?;
        Ok(())
    }
}

/// The two connection-tracking tables of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Not yet established (LRU, short timeouts).
    New,
    /// Established (never evicted; swept by the daemon).
    Established,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::New, Table::Established];

    /// The map of this table for `role` and flows keyed as `keying`.
    pub fn map_name(self, role: Role, keying: Keying) -> &'static str {
        match self {
            Table::New => maps::ct_new(role, keying),
            Table::Established => maps::ct_est(role, keying),
        }
    }

    /// Both roles' tables of flows keyed as any of `keyings`.
    fn maps_of(keyings: &[Keying]) -> impl Iterator<Item = &'static str> + '_ {
        Role::ALL.into_iter().flat_map(move |r| {
            Table::ALL
                .into_iter()
                .flat_map(move |t| keyings.iter().map(move |&k| t.map_name(r, k)))
        })
    }

    /// Whether `map` is a table of TCP over IPv4 (keyed by `FlowKey4`).
    fn is_tcp4(map: &str) -> bool {
        Table::maps_of(&[Keying::Tcp4]).any(|name| name == map)
    }

    /// Whether `map` is one of the flow tables.
    fn is_flow_table(map: &str) -> bool {
        Table::maps_of(&Keying::ALL).any(|name| name == map)
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::New => "new",
            Table::Established => "established",
        }
    }
}

/// A role's two programs, ingress then egress ([`Direction`] as index).
pub type Pair<'a> = [&'a mut SchedClassifier; 2];

/// Each program loaded, and when its load ended.
type Verifying<'scope, 'a> =
    [std::thread::ScopedJoinHandle<'scope, anyhow::Result<(&'a mut SchedClassifier, Instant)>>; 2];

/// Starts loading a role's two programs, a thread each: the kernel verifies programs side by
/// side (on the loading thread), and the verifier takes most of a start.
fn spawn_loads<'scope, 'a: 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    pair: Pair<'a>,
) -> Verifying<'scope, 'a> {
    pair.map(|program| {
        scope.spawn(move || {
            if program.fd().is_err() {
                program.load()?;
            }
            Ok((program, Instant::now()))
        })
    })
}

/// The pair [`spawn_loads`] started, once both are loaded, and when the later load ended.
fn join_loads<'a>(role: Role, pending: Verifying<'_, 'a>) -> anyhow::Result<(Pair<'a>, Instant)> {
    let [ingress, egress] =
        pending.map(|p| p.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
    let name = |d| program_name(role, d);
    let (ingress, i) = ingress
        .with_context(|| format!("loading program {} (verifier)", name(Direction::Ingress)))?;
    let (egress, e) = egress
        .with_context(|| format!("loading program {} (verifier)", name(Direction::Egress)))?;
    Ok(([ingress, egress], i.max(e)))
}

/// The start of the line [`log_verified`] logs, before the milliseconds (the bench reads it).
pub const VERIFIED_IN: &str = "the kernel verified the four programs in ";

/// How long the kernel took over the four programs, most of a start's wait: an operator's
/// answer to a slow start, which varies with the kernel and the CPU (BENCHMARKS.md, section 4).
fn log_verified(started: Instant, done: Instant) {
    log::info!(
        "{VERIFIED_IN}{} ms (side by side)",
        done.duration_since(started).as_millis()
    );
}

/// Sets up the flow tables of TCP over IPv4 made at this load (a pinned one has its header
/// already).
fn set_up_flow_tables(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for role in Role::ALL {
        for table in Table::ALL {
            let name = table.map_name(role, Keying::Tcp4);
            let map = ebpf
                .map_mut(name)
                .with_context(|| format!("map {name} missing"))?;
            flow_tables::set_up::<Bucket4>(map)
                .with_context(|| format!("setting up the flow table {name}"))?;
        }
    }
    Ok(())
}

/// The map behind any of the kinds the object has.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::LpmTrie(m)
        | Map::PerCpuArray(m)
        | Map::RingBuf(m) => Some(m),
        _ => None,
    }
}

/// Whether the policy maps pinned under `paths` are not one set: some pinned and others not, or
/// a generation map that names other maps than those pinned beside it. (An error reading them
/// says so too: they are made anew.)
fn policy_set_mixed(paths: &[(&str, PathBuf)]) -> bool {
    let set: Vec<&PathBuf> = paths
        .iter()
        .filter(|(name, _)| maps::is_policy_state(name))
        .map(|(_, path)| path)
        .collect();
    match set.iter().filter(|p| p.exists()).count() {
        0 => return false,
        n if n < set.len() => return true,
        _ => {}
    }
    let path = |name: &str| paths.iter().find(|(n, _)| *n == name).map(|(_, p)| p);
    let named = || -> anyhow::Result<bool> {
        let generation = path(maps::POLICY_GENERATION).context("no generation map")?;
        let generation: Array<MapData, u32> =
            Array::try_from(Map::from_map_data(MapData::from_pin(generation)?)?)?;
        for (i, name) in maps::POLICY_SET.iter().enumerate() {
            let pin = path(name).context("a map of the set")?;
            let id = MapData::from_pin(pin)?.info()?.id();
            if generation.get(&(i as u32 + 1), 0)? != id {
                return Ok(false);
            }
        }
        Ok(true)
    };
    !named().unwrap_or(false)
}

/// Copies the live flows of `old` into `new` (a resized table of the same buckets, just made
/// and set up, which no program uses yet) as far as they fit: flows that do not fit a smaller
/// table are left out (and picked up again mid-flow as the policy allows).
fn carry<B: FlowBucket + aya::Pod + Sync>(old: &Map, new: &mut Map) -> anyhow::Result<usize> {
    let flows = flow_tables::live::<B>(old)?;
    let header = flow_tables::header::<B>(new)?;
    let mut buckets = vec![B::default(); header.buckets as usize];
    let mut carried = 0;
    for (key, entry) in flows {
        carried += usize::from(flow_tables::place(&mut buckets, header.seed, key, entry));
    }
    let Map::Array(data) = new else {
        bail!("a flow table that is not an array");
    };
    let indices: Vec<u32> = (1..=header.buckets).collect();
    // SAFETY: the array's keys are u32 and its values `B`.
    let batched = unsafe { map_batch::update::<u32, B>(data.fd().as_fd(), &indices, &buckets) }
        .map_err(|e| anyhow::anyhow!("writing carried flows: {}", e.error))?;
    if !batched {
        let mut array: Array<&mut MapData, B> = Array::try_from(new)?;
        for (i, bucket) in indices.iter().zip(&buckets) {
            array.set(*i, *bucket, 0)?;
        }
    }
    Ok(carried)
}

/// Copies the flows of `old` into `new` (a resized table of the same key) until it is full:
/// flows that do not fit a smaller table are left out (and picked up again mid-flow as the
/// policy allows).
fn carry_hash<K: aya::Pod, V: aya::Pod>(old: Map, new: &mut Map) -> anyhow::Result<usize> {
    let old: HashMap<MapData, K, V> = HashMap::try_from(old)?;
    let mut new: HashMap<&mut MapData, K, V> = HashMap::try_from(new)?;
    let mut carried = 0;
    for (key, value) in old.iter().filter_map(Result::ok) {
        if new.insert(key, value, 0).is_err() {
            break;
        }
        carried += 1;
    }
    Ok(carried)
}

/// The size of the map pinned at `path`, if one is.
fn pinned_max_entries(path: &Path) -> anyhow::Result<Option<u32>> {
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let info = data
        .info()
        .with_context(|| format!("reading the size of {}", path.display()))?;
    Ok(Some(info.max_entries()))
}

/// Reads the pinned maps of a running or past daemon (for `status`, `metrics`).
pub struct PinnedMaps {
    counters: PerCpuArray<MapData, Counter>,
    settings: Array<MapData, Settings>,
    budget: PerCpuArray<MapData, Budget>,
}

/// One counter slot, summed over CPUs.
#[derive(Debug, Clone, Copy)]
pub struct Count {
    pub role: Role,
    pub direction: Direction,
    pub verdict: Verdict,
    pub reason: Reason,
    pub counter: Counter,
}

impl PinnedMaps {
    pub fn open(pins: &Pins) -> anyhow::Result<PinnedMaps> {
        let open = |name: &str| -> anyhow::Result<Map> {
            let path = pins.map(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(PinnedMaps {
            counters: PerCpuArray::try_from(open(maps::COUNTERS)?)?,
            settings: Array::try_from(open(maps::SETTINGS)?)?,
            budget: PerCpuArray::try_from(open(maps::EVENT_BUDGET)?)?,
        })
    }

    /// Drop events the datapath did not send (over budget or ring full), summed over CPUs.
    pub fn events_suppressed(&self) -> anyhow::Result<u64> {
        read_suppressed(&self.budget)
    }

    /// Every non-zero counter.
    pub fn counts(&self) -> anyhow::Result<Vec<Count>> {
        read_counts(&self.counters)
    }

    pub fn mode(&self, role: Role) -> anyhow::Result<Mode> {
        let settings = self.settings.get(&(role as u32), 0)?;
        Mode::from_u8(settings.mode).context("unknown mode in the settings map")
    }
}

fn read_suppressed<T: Borrow<MapData>>(map: &PerCpuArray<T, Budget>) -> anyhow::Result<u64> {
    let mut total = 0;
    for role in Role::ALL {
        total += map
            .get(&(role as u32), 0)?
            .iter()
            .map(|b| b.suppressed)
            .sum::<u64>();
    }
    Ok(total)
}

/// The pinned drop-event ring buffer, for a reader of its own (the daemon, or `drops` when no
/// daemon runs).
pub fn open_drop_events(pins: &Pins) -> anyhow::Result<RingBuf<MapData>> {
    let path = pins.map(maps::DROP_EVENTS);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(RingBuf::try_from(Map::from_map_data(data)?)?)
}

/// Every non-zero slot of a counters map, summed over CPUs.
fn read_counts<T: Borrow<MapData>>(map: &PerCpuArray<T, Counter>) -> anyhow::Result<Vec<Count>> {
    let mut out = Vec::new();
    for role in Role::ALL {
        for direction in Direction::ALL {
            for verdict in Verdict::ALL {
                for reason in Reason::ALL {
                    let index = counters::index(role, direction, verdict, reason);
                    let counter = map
                        .get(&index, 0)?
                        .iter()
                        .fold(Counter::default(), |acc, c| Counter {
                            packets: acc.packets + c.packets,
                            bytes: acc.bytes + c.bytes,
                        });
                    if counter.packets > 0 {
                        out.push(Count {
                            role,
                            direction,
                            verdict,
                            reason,
                            counter,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}
