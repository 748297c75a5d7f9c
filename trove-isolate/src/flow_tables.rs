//! The flow tables as the daemon reads and writes them: arrays of buckets
//! (`trove_isolate_common::flow_table` says how flows lie in them). It reads and frees slots
//! through a mapping of the table (`BPF_F_MMAPABLE`), each slot read between two reads of its
//! tag and freed with the programs' compare-and-exchange, and sets up a table just made: its
//! header, with a seed drawn at random.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, Map, MapData},
    Pod,
};
use trove_isolate_common::flow_table::{tag, FlowBucket, Header, SLOTS};

/// The array behind a flow table's [`Map`].
fn data(map: &Map) -> anyhow::Result<&MapData> {
    match map {
        Map::Array(data) => Ok(data),
        _ => bail!("not an array"),
    }
}

/// The header of `table` (element 0).
pub fn header<B: FlowBucket + Pod>(table: &Map) -> anyhow::Result<Header> {
    let array: Array<&MapData, B> = Array::try_from(table)?;
    let mut head = array
        .get(&0, 0)
        .context("reading the flow table's header")?;
    Ok(Header::of(&mut head))
}

/// Sets up `table` if it was just made (its header unset): the buckets after the header, and a
/// seed drawn at random. Whether it was.
pub fn set_up<B: FlowBucket + Pod>(table: &mut Map) -> anyhow::Result<bool> {
    if header::<B>(table)?.buckets != 0 {
        return Ok(false);
    }
    let entries = data(table)?.info()?.max_entries();
    let mut seed = [0u8; 8];
    // SAFETY: a buffer of 8 bytes.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if got != seed.len() as isize {
        return Err(io::Error::last_os_error()).context("drawing a flow table's seed");
    }
    let header = Header {
        buckets: entries.saturating_sub(1),
        seed: u64::from_ne_bytes(seed),
    };
    let mut head = B::default();
    header.write(&mut head);
    let mut array: Array<&mut MapData, B> = Array::try_from(table)?;
    array
        .set(0, head, 0)
        .context("writing the flow table's header")?;
    Ok(true)
}

/// Every live flow of `table`, as its slot holds it (a flow that is over but not yet freed
/// included: the caller judges). Each slot is read between two reads of its tag, and kept only
/// where both say the same live version: never a key half written by a program.
pub fn live<B: FlowBucket + Pod>(table: &Map) -> anyhow::Result<Vec<(B::Key, B::Entry)>> {
    let header = header::<B>(table)?;
    let mut flows = Vec::new();
    // A window of the table mapped at a time: a mapping's pages count in the daemon's RSS.
    for first in (0..header.buckets).step_by(WINDOW as usize) {
        let count = WINDOW.min(header.buckets - first);
        let Some(mapped) = Mapped::<B>::window(table, header, first, count)? else {
            break;
        };
        for i in first..first + count {
            for slot in 0..SLOTS {
                if let Some((_, mut bucket)) = mapped.read_slot(i, slot) {
                    flows.push((*bucket.key(slot), *bucket.entry(slot)));
                }
            }
        }
    }
    Ok(flows)
}

/// The buckets [`live`] maps at a time (about 230 kB of TCP over IPv4's).
const WINDOW: u32 = 1024;

/// Frees the slots of `keys` in `table` whose flow `stale` condemns when it is read just before,
/// each with one compare-and-exchange of its tag: a slot the programs freed or took for another
/// flow meanwhile is left as it is. How many were freed.
pub fn remove<B: FlowBucket + Pod>(
    table: &Map,
    keys: &[B::Key],
    stale: impl Fn(&B::Key, &B::Entry) -> bool,
) -> anyhow::Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let header = header::<B>(table)?;
    let Some(mapped) = Mapped::<B>::window(table, header, 0, header.buckets)? else {
        return Ok(0);
    };
    let mut removed = 0;
    for key in keys {
        let (a, b) = B::buckets(key, mapped.header.seed, mapped.header.buckets);
        for i in if a == b { vec![a] } else { vec![a, b] } {
            for slot in 0..SLOTS {
                let Some((t, mut bucket)) = mapped.read_slot(i, slot) else {
                    continue;
                };
                if tag::is_live(t) && bucket.key(slot) == key && stale(key, bucket.entry(slot)) {
                    removed += usize::from(mapped.cas_tag(i, slot, t, tag::free(t)));
                }
            }
        }
    }
    Ok(removed)
}

/// Writes over the entry of `key`'s live flow in `table` in place, as the programs do (a tool's
/// or a test's: the daemon itself only frees slots). Whether the table holds the flow.
pub fn update<B: FlowBucket + Pod>(
    table: &Map,
    key: &B::Key,
    f: impl FnOnce(&mut B::Entry),
) -> anyhow::Result<bool> {
    let header = header::<B>(table)?;
    let Some(mapped) = Mapped::<B>::window(table, header, 0, header.buckets)? else {
        return Ok(false);
    };
    let (a, b) = B::buckets(key, mapped.header.seed, mapped.header.buckets);
    for i in [a, b] {
        for slot in 0..SLOTS {
            if let Some((t, bucket)) = mapped.read_slot(i, slot) {
                if tag::is_live(t) && bucket.key(slot) == key {
                    mapped.update_entry(i, slot, f);
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Places `key`'s flow in a table being filled by the daemon alone (the buckets of a table just
/// made, before any program uses it), as the programs would: in the emptier of its buckets.
/// Whether it found room.
pub fn place<B: FlowBucket>(buckets: &mut [B], seed: u64, key: B::Key, entry: B::Entry) -> bool {
    let (a, b) = B::buckets(&key, seed, buckets.len() as u32);
    // Read while the programs ran, a flow may have been met twice (moved between its buckets
    // meanwhile): the copy seen last is kept where it says the flow was seen later.
    for i in [a, b] {
        let bucket = &mut buckets[i as usize];
        if let Some(slot) = (0..SLOTS).find(|&s| bucket.holds(s, &key)) {
            let (seen, kept) = (
                B::flow(&entry).last_seen,
                B::flow(bucket.entry(slot)).last_seen,
            );
            if seen.wrapping_sub(kept) as i32 > 0 {
                *bucket.entry(slot) = entry;
            }
            return true;
        }
    }
    let free = |bucket: &mut B| (0..SLOTS).filter(|&s| *bucket.tag(s) == tag::FREE).count();
    let at = if free(&mut buckets[a as usize]) >= free(&mut buckets[b as usize]) {
        a
    } else {
        b
    };
    let bucket = &mut buckets[at as usize];
    let Some(slot) = (0..SLOTS).find(|&s| *bucket.tag(s) == tag::FREE) else {
        return false;
    };
    bucket.set_key(slot, key);
    *bucket.entry(slot) = entry;
    *bucket.tag(slot) = tag::live(tag::claim(tag::FREE));
    true
}

/// Buckets of a flow table, mapped: `count` of them from bucket `first`.
struct Mapped<B> {
    base: *mut u8,
    len: usize,
    /// The mapping's offset in the array's values.
    offset: usize,
    header: Header,
    first: u32,
    count: u32,
    /// Where each slot's tag lies in a bucket.
    tags: [usize; SLOTS],
    _bucket: std::marker::PhantomData<B>,
}

impl<B: FlowBucket> Mapped<B> {
    /// Buckets `first..first + count` of `table`, whose header is `header`, mapped; `None` for
    /// a table not set up (which holds nothing).
    fn window(
        table: &Map,
        header: Header,
        first: u32,
        count: u32,
    ) -> anyhow::Result<Option<Mapped<B>>> {
        if header.buckets == 0 {
            return Ok(None);
        }
        let data = data(table)?;
        let entries = data.info()?.max_entries() as usize;
        if (header.buckets as usize) >= entries {
            bail!(
                "a flow table's header says {} buckets where the table has {entries} elements",
                header.buckets
            );
        }
        anyhow::ensure!(
            first
                .checked_add(count)
                .is_some_and(|end| end <= header.buckets),
            "buckets {first} and {count} more of a table of {}",
            header.buckets
        );
        // The array's values lie one after another from offset 0 of its mapping, each rounded
        // up to 8 bytes (which the buckets are); a mapping starts at a page.
        let size = std::mem::size_of::<B>();
        let start = (first as usize + 1) * size;
        let end = (first as usize + 1 + count as usize) * size;
        let offset = start / page_size() * page_size();
        let len = end.div_ceil(page_size()) * page_size() - offset;
        // SAFETY: a new shared mapping of the map's pages; nothing else aliases it in Rust.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mapping a flow table");
        }
        Ok(Some(Mapped {
            base: base.cast(),
            len,
            offset,
            header,
            first,
            count,
            tags: std::array::from_fn(|slot| Self::offset(|b| b.tag(slot) as *mut u64)),
            _bucket: std::marker::PhantomData,
        }))
    }

    /// Bucket `i` (element `i + 1`), one of the window's.
    fn bucket(&self, i: u32) -> *mut B {
        assert!(i >= self.first && i - self.first < self.count);
        let at = (i as usize + 1) * std::mem::size_of::<B>() - self.offset;
        // SAFETY: element `i + 1` lies inside the mapping (`window` mapped its pages).
        unsafe { self.base.add(at) }.cast()
    }

    /// Where in a bucket a field lies, found on a copy.
    fn offset<T>(field: impl FnOnce(&mut B) -> *mut T) -> usize {
        let mut copy = B::default();
        field(&mut copy) as usize - (&raw mut copy as usize)
    }

    /// The tag word of slot `slot` of bucket `i`.
    fn tag(&self, i: u32, slot: usize) -> &AtomicU64 {
        let offset = self.tags[slot];
        // SAFETY: an aligned u64 inside the mapping, which lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.bucket(i).cast::<u8>().add(offset).cast()) }
    }

    /// Slot `slot` of bucket `i`, if live: its tag and a copy of its bucket, read between two
    /// reads of the tag that agree (`None` while a program is changing the slot). A slot not
    /// live costs one read (a walk of an idle table reads a word a slot).
    fn read_slot(&self, i: u32, slot: usize) -> Option<(u64, B)> {
        let tag = self.tag(i, slot);
        let before = tag.load(Ordering::Acquire);
        if !tag::is_live(before) {
            return None;
        }
        // SAFETY: mapped, aligned (8), and read as bytes however the programs write it.
        let copy = unsafe { std::ptr::read_volatile(self.bucket(i)) };
        std::sync::atomic::fence(Ordering::Acquire);
        (tag.load(Ordering::Relaxed) == before).then_some((before, copy))
    }

    /// Compare-and-exchange of a slot's tag, as the programs do theirs.
    fn cas_tag(&self, i: u32, slot: usize, old: u64, new: u64) -> bool {
        self.tag(i, slot)
            .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Applies `f` to a slot's entry in the mapping.
    fn update_entry(&self, i: u32, slot: usize, f: impl FnOnce(&mut B::Entry)) {
        let offset = Self::offset(|b| b.entry(slot) as *mut B::Entry);
        // SAFETY: the entry lies inside the mapped bucket, aligned as in a copy.
        let entry = unsafe { self.bucket(i).cast::<u8>().add(offset).cast::<B::Entry>() };
        let mut value = unsafe { std::ptr::read_volatile(entry) };
        f(&mut value);
        unsafe { std::ptr::write_volatile(entry, value) };
    }
}

impl<B> Drop for Mapped<B> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Mapped::table`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: no arguments to get wrong.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use trove_isolate_common::{
        conntrack::{FlowKey4, FlowValue},
        flow_table::{tag, Bucket4},
    };

    use super::place;

    /// A flow met twice while the programs moved it is placed once, the later copy kept.
    #[test]
    fn a_flow_met_twice_is_placed_once() {
        let mut buckets = vec![Bucket4::default(); 8];
        let key = FlowKey4 {
            local: 1,
            remote: 2,
            local_port: 3306,
            remote_port: 40_000,
        };
        let seen = |last_seen| FlowValue {
            last_seen,
            ..FlowValue::default()
        };
        assert!(place(&mut buckets, 7, key, seen(10)));
        assert!(place(&mut buckets, 7, key, seen(20)));
        assert!(place(&mut buckets, 7, key, seen(15)));
        let held: Vec<_> = buckets
            .iter()
            .flat_map(|b| b.slots.iter())
            .filter(|s| tag::is_live(s.tag))
            .map(|s| (s.key, s.entry.last_seen))
            .collect();
        assert_eq!(held, vec![(key, 20)]);
    }
}
