//! A map's entries read, written and removed in batches (`BPF_MAP_*_BATCH`, Linux 5.6): one
//! syscall per few thousand entries, where one entry at a time costs a syscall each (two to read).
//! The daemon reads every flow table every sweep (at a few hundred thousand flows the walk alone
//! took a good part of a CPU), and writes a generation of the policy's buckets at each reload
//! (replacing 100,000 rules one at a time took 200,000 syscalls). aya 0.14 has no batch
//! operations, hence these syscalls by hand.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

/// Entries asked for per call. A hash map's batch ends on a bucket boundary, so a call returns
/// at most this many (a bucket with more fails with ENOSPC: retried with room for it).
const BATCH: usize = 4096;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's own "not supported" (ENOTSUPP, not in libc), for a map without batch operations.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls the bpf syscall `cmd` on `attr`.
///
/// # Safety
/// The buffers `attr` points at must be alive across the call and hold `count` keys and values
/// of the map's sizes (and the token, for a lookup).
unsafe fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A batch write that stopped short: the entries done before `error`.
#[derive(Debug)]
pub struct Stopped {
    pub done: usize,
    pub error: io::Error,
}

/// The entries a batch call got through: all of them when it succeeds; when it fails, the count
/// the kernel wrote back, which it writes only once it has started (an unknown command, a map
/// without batch operations, a bad descriptor leave ours, `n`, in place: none were done).
fn handled(ok: bool, count: u32, n: usize) -> usize {
    match count as usize {
        _ if ok => n,
        c if c < n => c,
        _ => 0,
    }
}

/// Whether an error means the kernel has no batch operations for the map.
fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Writes at least this many entries on two threads.
const PARALLEL: usize = 4 * BATCH;

/// Writes `values[i]` under `keys[i]` into the hash map or array `fd` (`BPF_ANY`). `Ok(false)`
/// when the kernel has no batch operations for the map and nothing was written (the caller
/// writes one at a time instead). A big write goes on two threads: the kernel's work (for a
/// hash map, an allocation and a bucket per entry) is most of its time, and a map takes writers
/// side by side (a hash map has a lock per bucket).
///
/// # Safety
/// `fd` must be a map whose keys are `size_of::<K>()` bytes and values `size_of::<V>()`: the
/// kernel reads that many from each slice per entry.
pub unsafe fn update<K: Pod + Sync, V: Pod + Sync>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<bool, Stopped> {
    assert_eq!(keys.len(), values.len());
    // SAFETY: as this function's, which the caller keeps.
    in_halves(keys.len(), |at| unsafe {
        write_from(
            BPF_MAP_UPDATE_BATCH,
            fd,
            &keys[at.clone()],
            Some(&values[at]),
        )
    })
}

/// Runs `write` over `0..len`, on two threads (each half of the range) when `len` is big; the
/// entries done add up across the halves.
fn in_halves(
    len: usize,
    write: impl Fn(std::ops::Range<usize>) -> Result<bool, Stopped> + Sync,
) -> Result<bool, Stopped> {
    if len < PARALLEL {
        return write(0..len);
    }
    let half = len / 2;
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| write(half..len));
        let first = write(0..half);
        (
            first,
            second.join().expect("a batch write's thread panicked"),
        )
    });
    let done = |part: &Result<bool, Stopped>, len: usize| match part {
        Ok(true) => len,
        Ok(false) => 0,
        Err(s) => s.done,
    };
    let total = done(&first, half) + done(&second, len - half);
    match (first, second) {
        (Ok(a), Ok(b)) => Ok(a && b),
        (Err(error), _) | (_, Err(error)) => Err(Stopped {
            done: total,
            error: error.error,
        }),
    }
}

/// Removes `keys` from the hash map `fd`; keys it does not hold count as removed. `Ok(false)` as
/// for [`update`], and on two threads as it.
///
/// # Safety
/// As for [`update`], for the keys.
pub unsafe fn delete<K: Pod + Sync>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<bool, Stopped> {
    // SAFETY: as this function's, which the caller keeps.
    in_halves(keys.len(), |at| unsafe {
        write_from::<K, u8>(BPF_MAP_DELETE_BATCH, fd, &keys[at], None)
    })
}

/// Runs the batch write `cmd` over `keys` (and `values`, for an update) in calls of up to
/// [`BATCH`] entries. A delete passes over a key the map does not hold (the kernel stops there).
///
/// # Safety
/// As for [`update`].
unsafe fn write_from<K: Pod, V: Pod>(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<bool, Stopped> {
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(BATCH);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values.map_or(0, |v| v[done..].as_ptr() as u64),
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `n` keys (and values) from `done` on, of the map's sizes (the caller's word).
        let result = unsafe { bpf(cmd, &mut attr) };
        let handled = handled(result.is_ok(), attr.count, n);
        match result {
            Ok(()) => done += n,
            Err(e)
                if cmd == BPF_MAP_DELETE_BATCH
                    && e.raw_os_error() == Some(libc::ENOENT)
                    && handled < n =>
            {
                done += handled + 1
            }
            Err(e) if done == 0 && handled == 0 && unsupported(&e) => return Ok(false),
            Err(error) => {
                return Err(Stopped {
                    done: done + handled,
                    error,
                })
            }
        }
    }
    Ok(true)
}

/// Every entry of the hash map `fd` (keys `K`, values `V`). `Ok(None)` when the kernel has no
/// batch operations for it (the caller walks the map instead).
///
/// # Safety
/// As for [`update`]: the kernel writes that many bytes per entry into our buffers.
pub unsafe fn entries<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<(K, V)>>> {
    let mut all = Vec::new();
    // The position the kernel hands back: a bucket index for hash maps (4 bytes; room to spare).
    let mut token = [0u64; 2];
    let token = token.as_mut_ptr() as u64;
    let mut first = true;
    let mut room = BATCH;
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(room);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(room);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token },
            out_batch: token,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: room as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: room for `room` keys and values, and the token, all alive across the call.
        let error = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        let got = (attr.count as usize).min(room);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                // SAFETY: the kernel filled the first `got` keys and values.
                unsafe {
                    keys.set_len(got);
                    values.set_len(got);
                }
                all.extend(
                    keys.into_iter()
                        .zip(values)
                        .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
                );
                if error.is_some() {
                    // ENOENT: that was the last of the map.
                    return Ok(Some(all));
                }
                first = false;
                room = BATCH;
            }
            // A bucket bigger than the room: again from the same place with more.
            Some(libc::ENOSPC) if room < 1 << 20 => room *= 4,
            _ if first && error.as_ref().is_some_and(unsupported) => return Ok(None),
            _ => return Err(error.unwrap_or_else(|| io::Error::other("batch lookup"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_refused_before_it_started_handled_nothing() {
        assert_eq!(handled(true, 4096, 4096), 4096);
        // Stopped at entry 17: the kernel wrote its count back.
        assert_eq!(handled(false, 17, 4096), 17);
        // Refused before the first entry (an unknown command, no batch operations): our count.
        assert_eq!(handled(false, 4096, 4096), 0);
        assert_eq!(handled(false, 0, 4096), 0);
    }
}
