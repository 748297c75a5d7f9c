//! Section 4's first table: what the kernel's verifier costs the daemon's start, most of its
//! wait. Each of the four programs is loaded alone, one after another (a start verifies them
//! side by side, a thread each), [`LOADS`] times, each time into a datapath of its own; a row is
//! the median load (the BPF_PROG_LOAD syscall, which runs the verifier and then the JIT on the
//! calling thread: time on one core) and the instructions the verifier processed, as the
//! kernel reports them (Linux 5.16 and later).

use std::time::Instant;

use anyhow::Context as _;
use trove_isolate::{capacity::Capacity, datapath::Datapath};
use trove_isolate_common::{program_name, Direction, Role};

pub const LOADS: usize = 5;

pub struct Program {
    pub name: &'static str,
    pub load_seconds: f64,
    pub instructions: Option<u32>,
}

pub fn run() -> anyhow::Result<Vec<Program>> {
    let programs: Vec<(Role, Direction)> = Role::ALL
        .into_iter()
        .flat_map(|role| Direction::ALL.into_iter().map(move |d| (role, d)))
        .collect();
    let mut loads = vec![Vec::new(); programs.len()];
    let mut counts = vec![None; programs.len()];
    for round in 0..LOADS {
        let mut dp = Datapath::open(None, false, &Capacity::DEFAULT)
            .context("opening a datapath (root, BPF)")?;
        // Each round starts with the next program: the first load of a round shares the CPU
        // with what opening the datapath left running (the loader's BTF freed on a thread).
        for k in 0..programs.len() {
            let i = (round + k) % programs.len();
            let (role, direction) = programs[i];
            let program = dp.program(role, direction);
            let start = Instant::now();
            program
                .load()
                .with_context(|| format!("loading {}", program_name(role, direction)))?;
            loads[i].push(start.elapsed().as_secs_f64());
            counts[i] = program
                .info()
                .with_context(|| format!("bpf_prog_info of {}", program_name(role, direction)))?
                .verified_instruction_count();
        }
    }
    Ok(programs
        .iter()
        .zip(loads)
        .zip(counts)
        .map(|((&(role, direction), loads), instructions)| Program {
            name: program_name(role, direction),
            load_seconds: crate::median(loads),
            instructions,
        })
        .collect())
}
