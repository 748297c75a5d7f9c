//! Reading a whole hash map in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): one syscall per few
//! thousand entries, where walking it key by key costs two per entry. The daemon reads every
//! flow table every sweep; at a few hundred thousand flows the walk alone took a good part of a
//! CPU. aya 0.14 has no batch operations, hence this one syscall by hand.

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

/// Every entry of the hash map `fd` (keys `K`, values `V`). `Ok(None)` when the kernel has no
/// batch operations for it (the caller walks the map instead).
pub fn entries<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<(K, V)>>> {
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
        // SAFETY: `attr` points at buffers of `room` keys and values and at `token`, all alive
        // across the call; the kernel writes at most `count` of each and the count back.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
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
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if first => return Ok(None),
            _ => return Err(error.unwrap_or_else(|| io::Error::other("batch lookup"))),
        }
    }
}
