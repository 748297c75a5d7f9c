//! Gives the programs the conversion from jiffies to the coarse clock
//! (`trove_isolate_common::clock`), once two readings of both clocks some seconds apart have
//! shown the kernel's tick, and checks it against the clock itself at every sweep.
//!
//! Nothing depends on it but the cost of a packet: until it is set, and wherever it cannot be,
//! the programs call the coarse clock's helper, which reads the same time.

use trove_isolate_common::clock::{Conversion, OFF};

/// Both clocks, read by `clock_sync` one after the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub jiffies: u64,
    pub coarse_ns: u64,
}

/// The HZ Linux offers on x86-64 and arm64 (Kconfig `HZ_100` to `HZ_1000`).
const HZ: [u64; 4] = [100, 250, 300, 1000];

/// Jiffies between two readings before the tick is measured from them: each reading may be a
/// jiffy off the coarse clock (a tick between its two loads), 0.8 % at most of 250.
pub const MIN_JIFFIES: u64 = 250;

/// How far, in parts per thousand, the measured tick may be from a Linux HZ's: HZ of other
/// architectures (256, 1024) are 2.4 % from 250 and 1000, and would drift off at that rate.
const TOLERANCE_PER_MILLE: u128 = 10;

/// How far the conversion may read from the coarse clock before it is measured again: a tick
/// or two is the rounding of its base and a reading's jiffy.
pub const DRIFT_NS: u64 = 50_000_000;

/// The conversion is measured again after it drifts this many times, then left off.
const DRIFTS_TOLERATED: u32 = 3;

/// The kernel's ns per jiffy at `hz` (`TICK_NSEC`).
pub const fn tick_ns(hz: u64) -> u64 {
    (1_000_000_000 + hz / 2) / hz
}

/// What a reading asks of the programs' clock.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Keep,
    /// Write this word ([`OFF`] or a [`Conversion`]), then say so with
    /// [`Calibration::applied`].
    Set(u64),
}

/// The state of the measurement, one per loaded datapath (its programs start with [`OFF`]).
#[derive(Debug, Default)]
pub struct Calibration {
    first: Option<Sample>,
    /// What the programs read, as last written.
    in_force: Option<Conversion>,
    /// The last measurement matched no HZ, or gave a base the word cannot hold.
    unmatched: bool,
    /// That was said (once).
    unmatched_said: bool,
    /// Reading or writing the clock failed, and has not worked since.
    failing: bool,
    /// Times the conversion drifted; an [`OFF`] asked for and not yet written.
    drifts: u32,
    turning_off: bool,
}

impl Calibration {
    /// The conversion the programs read, if one is set.
    pub fn in_force(&self) -> Option<Conversion> {
        self.in_force
    }

    /// Set, or not to be measured again before the sweep's next check: no HZ matched, the
    /// conversion drifted too often, or reading the clock fails.
    pub fn settled(&self) -> bool {
        self.in_force.is_some() || self.unmatched || self.failing || self.given_up()
    }

    fn given_up(&self) -> bool {
        self.drifts >= DRIFTS_TOLERATED
    }

    /// `word` is what the programs read now.
    pub fn applied(&mut self, word: u64) {
        self.in_force = (word != OFF).then_some(Conversion(word));
        self.turning_off = false;
        if let Some(conversion) = self.in_force {
            self.unmatched = false;
            let hz = (1_000_000_000 + conversion.tick_ns() / 2) / conversion.tick_ns();
            log::info!("the datapath reads its clock off jiffies (HZ={hz})");
        }
    }

    /// Whether a failure to read or write the clock is the first since it last worked.
    pub fn failed(&mut self) -> bool {
        !std::mem::replace(&mut self.failing, true)
    }

    pub fn worked(&mut self) {
        self.failing = false;
    }

    /// Takes a reading: the first is kept, a later one at least [`MIN_JIFFIES`] on measures the
    /// tick and asks for the conversion; with one in force, a reading further than [`DRIFT_NS`]
    /// from it asks for [`OFF`] and starts over ([`DRIFTS_TOLERATED`] times).
    pub fn observe(&mut self, now: Sample) -> Step {
        if let Some(conversion) = self.in_force {
            let off = conversion.now_ns(now.jiffies).wrapping_sub(now.coarse_ns) as i64;
            if off.unsigned_abs() <= DRIFT_NS {
                return Step::Keep;
            }
            // Asked for already (its write failed): the same drift, asked for again.
            if std::mem::replace(&mut self.turning_off, true) {
                return Step::Set(OFF);
            }
            self.drifts += 1;
            let next = if self.given_up() {
                "left off"
            } else {
                "measured again"
            };
            log::warn!(
                "the datapath's clock read {:.3} s off the coarse clock: back to the coarse \
                 clock's helper, the tick {next}",
                off as f64 / 1e9
            );
            // Measured from the next reading: this one is the drift's.
            self.first = None;
            return Step::Set(OFF);
        }
        if self.given_up() {
            return Step::Keep;
        }
        let Some(first) = self.first else {
            self.first = Some(now);
            return Step::Keep;
        };
        let jiffies = now.jiffies.wrapping_sub(first.jiffies);
        let ns = now.coarse_ns.wrapping_sub(first.coarse_ns);
        if jiffies > u32::MAX as u64 || ns > i64::MAX as u64 {
            // Not forward in time: start over.
            self.first = Some(now);
            return Step::Keep;
        }
        if jiffies < MIN_JIFFIES {
            return Step::Keep;
        }
        self.first = Some(now);
        let matched = HZ.into_iter().find(|&hz| {
            let expected = tick_ns(hz) as u128 * jiffies as u128;
            (ns as u128).abs_diff(expected) * 1000 <= expected * TOLERANCE_PER_MILLE
        });
        self.unmatched = matched.is_none();
        let Some(hz) = matched else {
            self.said(&format!(
                "the kernel ticked {jiffies} jiffies in {:.3} s, at no HZ of {HZ:?}",
                ns as f64 / 1e9
            ));
            return Step::Keep;
        };
        let tick = tick_ns(hz);
        let base = now.jiffies.wrapping_sub((now.coarse_ns + tick / 2) / tick);
        match Conversion::new(tick, base) {
            Some(conversion) => Step::Set(conversion.0),
            None => {
                self.unmatched = true;
                self.said(&format!(
                    "jiffies ({}) and the coarse clock ({} ns) are too far apart for the \
                     conversion's word",
                    now.jiffies, now.coarse_ns
                ));
                Step::Keep
            }
        }
    }

    fn said(&mut self, what: &str) {
        if !std::mem::replace(&mut self.unmatched_said, true) {
            log::warn!("{what}: the datapath keeps the coarse clock's helper");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings of a kernel at `hz` that booted with jiffies at Linux's initial value: a jiffy
    /// each `TICK_NSEC` of the monotonic clock (`tick_do_update_jiffies64`).
    fn at(hz: u64, ms: u64) -> Sample {
        let initial = (1u64 << 32) - 300 * hz;
        Sample {
            jiffies: initial + ms * 1_000_000 / tick_ns(hz),
            coarse_ns: ms * 1_000_000,
        }
    }

    /// `observe` and, where it asks, the write.
    fn step(c: &mut Calibration, s: Sample) -> Step {
        let step = c.observe(s);
        if let Step::Set(word) = step {
            c.applied(word);
        }
        step
    }

    #[test]
    fn each_hz_is_measured_and_read_within_a_tick() {
        for hz in HZ {
            let mut c = Calibration::default();
            assert_eq!(step(&mut c, at(hz, 20_000)), Step::Keep);
            let Step::Set(word) = step(&mut c, at(hz, 30_000)) else {
                panic!("HZ={hz}: not set");
            };
            let conversion = Conversion(word);
            assert_eq!(c.in_force(), Some(conversion));
            assert_eq!(conversion.tick_ns(), tick_ns(hz));
            for ms in [30_000, 40_000, 86_400_000, 400 * 86_400_000] {
                let s = at(hz, ms);
                let off = conversion.now_ns(s.jiffies).abs_diff(s.coarse_ns);
                assert!(off <= tick_ns(hz), "HZ={hz} at {ms} ms: {off} ns off");
                assert_eq!(step(&mut c, s), Step::Keep);
            }
        }
    }

    #[test]
    fn readings_a_jiffy_off_still_match() {
        for hz in HZ {
            let mut c = Calibration::default();
            let mut first = at(hz, 5_000);
            first.jiffies += 1;
            let mut last = at(hz, 5_000 + (MIN_JIFFIES + 2) * 1000 / hz);
            last.jiffies -= 1;
            step(&mut c, first);
            assert!(matches!(step(&mut c, last), Step::Set(_)), "HZ={hz}");
            let off = c
                .in_force()
                .expect("set")
                .now_ns(last.jiffies)
                .abs_diff(last.coarse_ns);
            assert!(off <= 2 * tick_ns(hz), "HZ={hz}: {off} ns off");
        }
    }

    #[test]
    fn too_few_jiffies_wait() {
        let mut c = Calibration::default();
        step(&mut c, at(100, 1_000));
        assert_eq!(step(&mut c, at(100, 3_000)), Step::Keep, "200 jiffies");
        assert!(!c.settled());
        assert!(
            matches!(step(&mut c, at(100, 3_600)), Step::Set(_)),
            "260 jiffies"
        );
    }

    #[test]
    fn a_tick_of_no_linux_hz_keeps_the_helper() {
        // HZ=1024 (some architectures): 2.4 % from 1000's tick.
        let mut c = Calibration::default();
        let s = |ms: u64| Sample {
            jiffies: 1_000 + ms * 1_000_000 / 976_563,
            coarse_ns: ms * 1_000_000,
        };
        step(&mut c, s(0));
        assert_eq!(step(&mut c, s(10_000)), Step::Keep);
        assert_eq!(c.in_force(), None);
        assert!(c.settled());
    }

    #[test]
    fn the_conversion_is_in_force_once_written() {
        let mut c = Calibration::default();
        c.observe(at(250, 10_000));
        assert!(matches!(c.observe(at(250, 20_000)), Step::Set(_)));
        // The write failed: nothing is in force, and the next reading asks again.
        assert_eq!(c.in_force(), None);
        assert!(matches!(c.observe(at(250, 30_000)), Step::Set(_)));
    }

    #[test]
    fn a_conversion_that_drifts_is_turned_off_measured_again_then_left_off() {
        let mut c = Calibration::default();
        let mut ms = 10_000;
        step(&mut c, at(250, ms));
        for drift in 1..=DRIFTS_TOLERATED {
            ms += 10_000;
            assert!(matches!(step(&mut c, at(250, ms)), Step::Set(w) if w != OFF));
            ms += 10_000;
            let mut late = at(250, ms);
            late.coarse_ns += 2 * DRIFT_NS;
            assert_eq!(c.observe(late), Step::Set(OFF), "drift {drift}");
            assert!(c.in_force().is_some(), "in force until the off is written");
            // The write failed: asked again, the same drift.
            assert_eq!(c.observe(late), Step::Set(OFF), "drift {drift}, again");
            c.applied(OFF);
            assert_eq!(c.in_force(), None);
            // The tick measured again from the next reading, not the drifted one.
            ms += 1_000;
            assert_eq!(step(&mut c, at(250, ms)), Step::Keep);
        }
        assert!(c.settled());
        assert_eq!(step(&mut c, at(250, ms + 10_000)), Step::Keep, "left off");
    }

    #[test]
    fn a_clock_going_back_starts_over() {
        let mut c = Calibration::default();
        step(&mut c, at(1000, 10_000));
        assert_eq!(step(&mut c, at(1000, 5_000)), Step::Keep);
        assert!(matches!(step(&mut c, at(1000, 6_000)), Step::Set(_)));
    }
}
