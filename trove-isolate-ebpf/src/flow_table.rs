//! The flow tables' lookups and writes: arrays of buckets (`trove_isolate_common::flow_table`
//! says how flows lie in them and who may write a slot when). Every lookup of a bucket is an
//! array lookup, which the verifier inlines: no helper is called.
//!
//! A lookup and a claim are global functions, one per table ([`Locate`]), which the verifier
//! checks once each, alone: inlined at the tables' sites they made a program too long for its
//! jumps, and took the verifier past its million instructions. One site inlines its lookup
//! ([`Store::get_inline`]): the established table's, first on every tracked packet's way. The
//! claim's bit logic is inline assembly ([`crate::bits`]), out of LLVM's reach: LLVM turns it back
//! into branches, each of which the verifier follows both ways. The wide tables stay the
//! kernel's hash maps ([`Store`]).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_map_lookup_elem,
    maps::{Array, HashMap, LruHashMap},
};
use trove_isolate_common::{
    conntrack::{ticks, AHEAD_TICKS},
    flow_table::{tag, FlowBucket, Header, SLOTS},
};

use crate::bits::{is_zero, max};

/// `-EEXIST`: the key has an entry already.
pub const EEXIST: i32 = -17;
/// `-E2BIG`: both of the key's buckets are full (a table that does not evict).
pub const E2BIG: i32 = -7;
/// `-EBUSY`: another CPU holds one of the key's buckets or its slot, for the instant of its own
/// insert.
pub const EBUSY: i32 = -16;
/// `-ENOENT`: the table is not set up.
pub const ENOENT: i32 = -2;

/// Where a keying's flows are kept: a [`Table`] of buckets, or a kernel hash map (the wide
/// tables').
pub trait Store<K, V> {
    /// The entry of `key`'s flow, if the table holds it.
    fn get_ptr_mut(&self, key: &K) -> Option<*mut V>;
    /// [`Store::get_ptr_mut`], with a [`Table`]'s lookup inline rather than a call of its
    /// global function: for the one lookup every established packet makes, where the call and
    /// its return cost about 9 ns (of about 75 for the whole packet) on a CPU whose returns go
    /// through SRSO's thunk. The verifier checks the lookup again at each site that inlines it
    /// (about 5,000 more instructions a program for the one site), so no other does.
    #[inline(always)]
    fn get_inline(&self, key: &K) -> Option<*mut V> {
        self.get_ptr_mut(key)
    }
    /// Removes `key`'s flow, if the table holds it.
    fn remove(&self, key: &K);
    /// Adds `key`'s flow as `value` (see [`Insert`]): an error as the kernel's hash maps give
    /// one ([`EEXIST`], [`E2BIG`] for a full table that does not evict).
    fn insert(&self, key: &K, value: V, how: Insert, now_ns: u64) -> Result<(), i32>;
}

impl<B: Locate> Store<B::Key, B::Entry> for Table<B> {
    #[inline(always)]
    fn get_ptr_mut(&self, key: &B::Key) -> Option<*mut B::Entry> {
        Table::get_ptr_mut(self, key)
    }

    #[inline(always)]
    fn get_inline(&self, key: &B::Key) -> Option<*mut B::Entry> {
        let found = self.found(self.locate(key))?;
        Some(unsafe { (*found.bucket).entry(found.slot) as *mut B::Entry })
    }

    #[inline(always)]
    fn remove(&self, key: &B::Key) {
        Table::remove(self, key)
    }

    #[inline(always)]
    fn insert(&self, key: &B::Key, value: B::Entry, how: Insert, now_ns: u64) -> Result<(), i32> {
        Table::insert(self, key, value, how, now_ns)
    }
}

/// The kernel's `BPF_NOEXIST` for [`Insert::New`], `BPF_ANY` for [`Insert::Any`].
#[inline(always)]
fn flags(how: Insert) -> u64 {
    match how {
        Insert::New => 1,
        Insert::Any => 0,
    }
}

impl<K, V> Store<K, V> for &'static HashMap<K, V> {
    #[inline(always)]
    fn get_ptr_mut(&self, key: &K) -> Option<*mut V> {
        HashMap::get_ptr_mut(self, key)
    }

    #[inline(always)]
    fn remove(&self, key: &K) {
        let _ = HashMap::remove(self, key);
    }

    #[inline(always)]
    fn insert(&self, key: &K, value: V, how: Insert, _: u64) -> Result<(), i32> {
        // The helper's `long` (64 bits on BPF) as the tables' error.
        #[allow(clippy::unnecessary_cast)]
        HashMap::insert(self, key, &value, flags(how)).map_err(|e| e as i32)
    }
}

impl<K, V> Store<K, V> for &'static LruHashMap<K, V> {
    #[inline(always)]
    fn get_ptr_mut(&self, key: &K) -> Option<*mut V> {
        LruHashMap::get_ptr_mut(self, key)
    }

    #[inline(always)]
    fn remove(&self, key: &K) {
        let _ = LruHashMap::remove(self, key);
    }

    #[inline(always)]
    fn insert(&self, key: &K, value: V, how: Insert, _: u64) -> Result<(), i32> {
        // The helper's `long` (64 bits on BPF) as the tables' error.
        #[allow(clippy::unnecessary_cast)]
        LruHashMap::insert(self, key, &value, flags(how)).map_err(|e| e as i32)
    }
}

/// How an insert treats a key that has an entry.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Insert {
    /// Refuse it ([`EEXIST`]).
    New = 0,
    /// Write over its entry.
    Any = 1,
}

/// What a claim is asked, in one word: how it treats a key that has an entry, and the clock in
/// ticks (for an eviction). The claim keeps it across its calls, and each value kept across a
/// call takes a slot of its frame, which Linux 5.15 counts, rounded up to 32 bytes, into the
/// 512 bytes a program's chain of calls may use.
#[derive(Clone, Copy)]
pub struct Ask(u64);

impl Ask {
    #[inline(always)]
    pub fn new(how: Insert, now_ns: u64) -> Self {
        Ask(((how as u64) << 32) | u64::from(ticks(now_ns)))
    }

    #[inline(always)]
    fn how(self) -> Insert {
        if self.0 >> 32 == Insert::Any as u64 {
            Insert::Any
        } else {
            Insert::New
        }
    }

    #[inline(always)]
    fn ticks(self) -> u32 {
        self.0 as u32
    }
}

/// One flow table: an array whose element 0 is its header, the buckets after it. `evicts`: a
/// full pair of buckets gives up the least recently seen of its eight flows to a new one (the
/// new tables); otherwise the insert is refused ([`E2BIG`]).
pub struct Table<B: 'static> {
    pub map: &'static Array<B>,
    pub evicts: bool,
    /// The table's number for [`trove_isolate_find4`]: `2 * role + established`.
    pub id: u32,
}

/// Where a key's flow lies: its bucket and slot.
pub struct Found<B> {
    bucket: *mut B,
    slot: usize,
}

impl<B: Locate> Table<B> {
    /// The entry of `key`'s flow, if the table holds it.
    #[inline(always)]
    pub fn get_ptr_mut(&self, key: &B::Key) -> Option<*mut B::Entry> {
        let found = self.find(key)?;
        Some(unsafe { (*found.bucket).entry(found.slot) as *mut B::Entry })
    }

    /// Frees the slot of `key`'s flow. A slot freed or taken again meanwhile (by another CPU
    /// or the daemon) is left as it is: its tag is read atomically, then its key checked again,
    /// and it is freed only from that tag.
    #[inline(always)]
    pub fn remove(&self, key: &B::Key) {
        if let Some(found) = self.find(key) {
            let bucket = unsafe { &mut *found.bucket };
            let t = read_tag(bucket.tag(found.slot));
            if tag::is_live(t) && bucket.key_diff(found.slot, key) == 0 {
                cas(bucket.tag(found.slot), t, tag::free(t));
            }
        }
    }

    /// Adds `key`'s flow as `entry` (see [`Insert`]). With both of the key's buckets held, a
    /// slot is claimed and the key written in it; then the locks go, the entry is written and
    /// the slot published. (A flow that is over keeps its slot until the daemon's sweep frees
    /// it, or the programs meet it.)
    #[inline(always)]
    pub fn insert(
        &self,
        key: &B::Key,
        entry: B::Entry,
        how: Insert,
        now_ns: u64,
    ) -> Result<(), i32> {
        let ask = Ask::new(how, now_ns);
        let mut claimed = B::claim(self.id, key, ask);
        if claimed == EBUSY as i64 {
            // Another CPU's claim in one of the key's buckets: nanoseconds. Once more.
            claimed = B::claim(self.id, key, ask);
        }
        if claimed < 0 {
            return Err(claimed as i32);
        }
        let mut index = 0u32;
        let Some(bucket) = lookup(self.map, &mut index, (claimed >> 2) as u32) else {
            return Err(ENOENT);
        };
        let bucket = unsafe { &mut *bucket };
        let slot = (claimed & 3) as usize;
        *bucket.entry(slot) = entry;
        let word = bucket.tag(slot);
        let busy = *word;
        cas(word, busy, tag::live(busy));
        Ok(())
    }

    /// [`Locate::claim`]'s work, with the key's two buckets held: the slot claimed (busy, its
    /// key written) as `element << 2 | slot`, or an error.
    #[inline(always)]
    fn claim_here(&self, key: &B::Key, ask: Ask) -> i64 {
        let mut at = 0u32;
        let Some(header) = self.header(&mut at) else {
            return ENOENT as i64;
        };
        let (a, b) = B::buckets(key, header.seed, header.buckets);
        let Some(first) = self.bucket(&mut at, a) else {
            return ENOENT as i64;
        };
        let Some(second) = self.bucket(&mut at, b) else {
            return ENOENT as i64;
        };
        // Both locks, the lower bucket's first, or none.
        let (low, high) = if a <= b {
            (first, second)
        } else {
            (second, first)
        };
        if !lock(low) {
            return EBUSY as i64;
        }
        if a != b && !lock(high) {
            unlock(low);
            return EBUSY as i64;
        }
        let claimed = claim((first, second), (a, b), key, ask, self.evicts);
        if a != b {
            unlock(high);
        }
        unlock(low);
        claimed
    }

    /// Where `key`'s flow lies, if the table holds it: found by a global function
    /// ([`Locate`]), which the verifier checks once, and answers a number.
    #[inline(always)]
    fn find(&self, key: &B::Key) -> Option<Found<B>> {
        self.found(B::locate(self.id, key))
    }

    /// The slot a [`Table::locate`] answered, if it found one.
    #[inline(always)]
    fn found(&self, at: i64) -> Option<Found<B>> {
        if at < 0 {
            return None;
        }
        let mut index = 0u32;
        let bucket = lookup(self.map, &mut index, (at >> 2) as u32)?;
        Some(Found {
            bucket,
            slot: (at & 3) as usize,
        })
    }

    /// [`Locate::locate`]'s work: `element << 2 | slot`, or -1.
    #[inline(always)]
    fn locate(&self, key: &B::Key) -> i64 {
        let mut at = 0u32;
        let Some(header) = self.header(&mut at) else {
            return -1;
        };
        let (a, b) = B::buckets(key, header.seed, header.buckets);
        // Branches that return at the first match and read no key of a slot that is not live:
        // written with fewer (every slot's key read, and one branch a slot or none), a miss
        // cost 10 to 15 ns more, and a hit no less (BENCHMARKS.md, section 1).
        for i in [a, b] {
            let Some(bucket) = self.bucket(&mut at, i) else {
                return -1;
            };
            let bucket = unsafe { &mut *bucket };
            let mut slot = 0;
            while slot < SLOTS {
                // The tag before and after the key: a slot claimed again meanwhile (its key
                // rewritten under another version) is not taken for this flow.
                let before = read_volatile(bucket.tag(slot));
                barrier();
                if tag::is_live(before) && bucket.key_diff(slot, key) == 0 {
                    barrier();
                    if read_volatile(bucket.tag(slot)) == before {
                        return ((i as i64 + 1) << 2) | slot as i64;
                    }
                }
                slot += 1;
            }
        }
        -1
    }

    #[inline(always)]
    fn header(&self, at: &mut u32) -> Option<Header> {
        let head = lookup(self.map, at, 0)?;
        let header = Header::of(unsafe { &mut *head });
        if header.buckets == 0 {
            return None;
        }
        Some(header)
    }

    /// Bucket `i` (element `i + 1`).
    #[inline(always)]
    fn bucket(&self, at: &mut u32, i: u32) -> Option<*mut B> {
        lookup(self.map, at, i.wrapping_add(1))
    }
}

/// [`Table::claim_here`]'s choice of a slot, with both buckets (`first` is bucket `a`, `second`
/// bucket `b`) held: as [`location`], or an error.
#[inline(always)]
fn claim<B: FlowBucket>(
    (first, second): (*mut B, *mut B),
    (a, b): (u32, u32),
    key: &B::Key,
    ask: Ask,
    evicts: bool,
) -> i64 {
    // The two may be one bucket (`a == b`): each is borrowed only for the one use.
    let bucket = |p: *mut B| unsafe { &mut *p };
    let (of_first, of_second) = (slots(bucket(first), key), slots(bucket(second), key));
    // A slot under the key: the flow, or the same flow being added by another CPU that let
    // go of the locks before publishing it.
    let (in_first, in_second) = (of_first & HELD, of_second & HELD);
    if in_first | in_second != 0 {
        let (held, i, mask) = if in_first != 0 {
            (bucket(first), a, in_first)
        } else {
            (bucket(second), b, in_second)
        };
        let slot = index(lowest(mask));
        if !tag::is_live(*held.tag(slot)) {
            return EBUSY as i64;
        }
        return match ask.how() {
            Insert::New => EEXIST as i64,
            // Claimed again, busy, under the locks: written over while no other writer can
            // take the slot (an evicting one would give it to another flow).
            Insert::Any => take(held, i, slot, key),
        };
    }
    // A free slot of the emptier bucket: of two choices, the emptier keeps the buckets even,
    // and a pair of full ones is rare until the table is full.
    let (free_first, free_second) = (of_first >> SLOTS, of_second >> SLOTS);
    if free_first | free_second != 0 {
        return if count(free_first) >= count(free_second) {
            take(bucket(first), a, index(lowest(free_first)), key)
        } else {
            take(bucket(second), b, index(lowest(free_second)), key)
        };
    }
    if !evicts {
        return E2BIG as i64;
    }
    // The least recently seen of the eight: a flow keeps its place while its buckets hold an
    // older one. (The older of two slots picked by the clock let a flow lose its place to one
    // as young as itself: BENCHMARKS.md's connection tests lost a close in a quarter of their
    // rounds.)
    let oldest = oldest(first, second, ask.ticks());
    let slot = (oldest & 3) as usize;
    if oldest & 4 == 0 {
        take(bucket(first), a, slot, key)
    } else {
        take(bucket(second), b, slot, key)
    }
}

/// The slot of the least recently seen flow of two full buckets: `slot` of `first` or
/// `4 + slot` of `second`, in the low three bits of the largest of the slots' ranks (a flow's
/// age in ticks above those bits; ties to the later slot). A busy slot (a writer's, its flow
/// not yet published) ranks as a flow just seen. Without a branch ([`max`]): a branch a slot
/// made the verifier follow each of 2^8 ways. Out of line, as [`slots`].
#[inline(never)]
fn oldest<B: FlowBucket>(first: *mut B, second: *mut B, now: u32) -> u64 {
    let mut best = 0;
    let mut i = 0;
    while i < SLOTS {
        best = max(best, rank(first, i, now, i));
        best = max(best, rank(second, i, now, SLOTS + i));
        i += 1;
    }
    best
}

/// Slot `i`'s rank for [`oldest`], `at` its place among the eight.
#[inline(always)]
fn rank<B: FlowBucket>(bucket: *mut B, i: usize, now: u32, at: usize) -> u64 {
    // The two buckets may be one: borrowed for the one read.
    let bucket = unsafe { &mut *bucket };
    let live = is_zero((bucket.tag_of(i) & tag::STATE) ^ tag::LIVE);
    let age = u64::from(now.wrapping_sub(B::flow(bucket.entry(i)).last_seen));
    // A stamp ahead of `now` (another CPU's clock read after this one's) is a flow just seen,
    // as `conntrack::age` takes it.
    let behind = is_zero((age + u64::from(AHEAD_TICKS)) >> 32);
    ((age * (live & behind)) << 3) | at as u64
}

/// A claim's answer: the element of bucket `i`, and the slot.
#[inline(always)]
fn location(i: u32, slot: usize) -> i64 {
    ((i as i64 + 1) << 2) | slot as i64
}

/// Claims `slot` of bucket `i` for `key`: the next version, busy, by compare-and-exchange (the
/// daemon may free a slot under the locks: it takes none), then the key. A slot another writer
/// holds is not taken.
#[inline(always)]
fn take<B: FlowBucket>(bucket: &mut B, i: u32, slot: usize, key: &B::Key) -> i64 {
    let word = bucket.tag(slot);
    let t = *word;
    let busy = tag::claim(t);
    if t & tag::STATE == tag::BUSY || !cas(word, t, busy) {
        return EBUSY as i64;
    }
    bucket.set_key(slot, *key);
    location(i, slot)
}

/// The slots of `bucket` as two masks: bit `i` set where slot `i` is not free and its key is
/// `key` ([`HELD`]), bit `SLOTS + i` where slot `i` is free. Out of line (a static function,
/// within the claim's global one): its own frame, so that the claim's fits beside the
/// programs' (512 bytes for the frames of a call chain). One call a bucket: each value the
/// claim keeps across a call takes a slot of its frame.
#[inline(never)]
fn slots<B: FlowBucket>(bucket: &B, key: &B::Key) -> u64 {
    let mut mask = 0;
    let mut i = 0;
    while i < SLOTS {
        let free = is_zero(bucket.tag_of(i) & tag::STATE);
        mask |= is_zero(u64::from(bucket.key_diff(i, key)) | free) << i;
        mask |= free << (SLOTS + i);
        i += 1;
    }
    mask
}

/// [`slots`]'s mask of the slots that hold the key.
const HELD: u64 = (1 << SLOTS) - 1;

/// The bits set in a mask of the four slots.
#[inline(always)]
fn count(mask: u64) -> u64 {
    (mask & 1) + ((mask >> 1) & 1) + ((mask >> 2) & 1) + ((mask >> 3) & 1)
}

/// The lowest bit set in `mask`.
#[inline(always)]
fn lowest(mask: u64) -> u64 {
    mask & mask.wrapping_neg()
}

/// The index of the one bit set in a mask of the four slots (1, 2, 4, 8: 0 to 3), as a number
/// the verifier knows to be below 4.
#[inline(always)]
fn index(bit: u64) -> usize {
    (((bit >> 1).wrapping_sub(bit >> 3)) & 3) as usize
}

/// A slot's tag, read atomically (a compare-and-exchange that changes nothing): no read of the
/// slot's key moves before it.
#[inline(always)]
fn read_tag(word: *mut u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{atomic_cxchg, AtomicOrdering::SeqCst};
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(word, 0, 0).0 }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
        unsafe { AtomicU64::from_ptr(word) }.load(SeqCst)
    }
}

/// A word read as it is in memory now (a tag another CPU may change under the reader).
#[inline(always)]
fn read_volatile(word: &u64) -> u64 {
    unsafe { core::ptr::read_volatile(word) }
}

/// Keeps the compiler from moving reads of memory across it (x86 keeps loads in order).
#[inline(always)]
fn barrier() {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::arch::asm!("", options(nostack, preserves_flags));
    }
}

/// Tries a bucket's writers' lock once.
#[inline(always)]
fn lock<B: FlowBucket>(bucket: *mut B) -> bool {
    cas(unsafe { (*bucket).head() }, 0, 1)
}

#[inline(always)]
fn unlock<B: FlowBucket>(bucket: *mut B) {
    cas(unsafe { (*bucket).head() }, 1, 0);
}

/// Element `i` of `map`. The lookup's key goes through `at`, one stack slot for every lookup of
/// an operation (as the policy's probes do: `Array::get` makes a slot per call).
#[inline(always)]
fn lookup<B>(map: &Array<B>, at: &mut u32, i: u32) -> Option<*mut B> {
    *at = i;
    let map = map as *const Array<B> as *mut c_void;
    let value = unsafe { bpf_map_lookup_elem(map, at as *const u32 as *const c_void) };
    if value.is_null() {
        None
    } else {
        Some(value as *mut B)
    }
}

/// Compare-and-exchange of a word of a map's value: whether it held `old` (and now holds
/// `new`).
#[inline(always)]
fn cas(word: *mut u64, old: u64, new: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{atomic_cxchg, AtomicOrdering::SeqCst};
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(word, old, new).1 }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
        unsafe { AtomicU64::from_ptr(word) }
            .compare_exchange(old, new, SeqCst, SeqCst)
            .is_ok()
    }
}

/// A lookup and a claim out of line, in global functions per keying, which the verifier checks
/// once each.
pub trait Locate: FlowBucket {
    /// Where in table `id` the flow of `key` lies (`element << 2 | slot`), or -1.
    fn locate(id: u32, key: &Self::Key) -> i64;
    /// [`Table::claim_here`] in table `id`.
    fn claim(id: u32, key: &Self::Key, ask: Ask) -> i64;
}

impl Locate for trove_isolate_common::flow_table::Bucket4 {
    #[inline(always)]
    fn locate(id: u32, key: &trove_isolate_common::conntrack::FlowKey4) -> i64 {
        let ports = u32::from(key.local_port) | (u32::from(key.remote_port) << 16);
        let find = match id {
            0 => trove_isolate_find4_mgmt_new,
            1 => trove_isolate_find4_mgmt_est,
            2 => trove_isolate_find4_biz_new,
            _ => trove_isolate_find4_biz_est,
        };
        find(key.local, key.remote, ports)
    }

    #[inline(always)]
    fn claim(id: u32, key: &trove_isolate_common::conntrack::FlowKey4, ask: Ask) -> i64 {
        let ports = u32::from(key.local_port) | (u32::from(key.remote_port) << 16);
        let claim = match id {
            0 => trove_isolate_claim4_mgmt_new,
            1 => trove_isolate_claim4_mgmt_est,
            2 => trove_isolate_claim4_biz_new,
            _ => trove_isolate_claim4_biz_est,
        };
        claim(key.local, key.remote, ports, ask.0)
    }
}

/// [`Locate`] for TCP over IPv4, one global function per table: with the map a constant the
/// verifier inlines its lookups, where a map chosen at run time (one function for the four
/// tables) left them helper calls, 77 ns a lookup on the EPYC machine. `ports` the local port,
/// then the remote one.
macro_rules! find4 {
    ($name:ident, $id:expr) => {
        #[no_mangle]
        #[inline(never)]
        pub extern "C" fn $name(local: u32, remote: u32, ports: u32) -> i64 {
            let key = trove_isolate_common::conntrack::FlowKey4 {
                local,
                remote,
                local_port: ports as u16,
                remote_port: (ports >> 16) as u16,
            };
            match crate::maps::tcp4_table($id) {
                Some(table) => table.locate(&key),
                None => -1,
            }
        }
    };
}

find4!(trove_isolate_find4_mgmt_new, 0);
find4!(trove_isolate_find4_mgmt_est, 1);
find4!(trove_isolate_find4_biz_new, 2);
find4!(trove_isolate_find4_biz_est, 3);

/// [`Locate::claim`] for TCP over IPv4, one global function per table, so that each has its map
/// (and whether it evicts) as a constant (arguments as [`trove_isolate_find4`]'s; `ask` an
/// [`Ask`]).
macro_rules! claim4 {
    ($name:ident, $id:expr) => {
        #[no_mangle]
        #[inline(never)]
        pub extern "C" fn $name(local: u32, remote: u32, ports: u32, ask: u64) -> i64 {
            claim4($id, local, remote, ports, Ask(ask))
        }
    };
}

claim4!(trove_isolate_claim4_mgmt_new, 0);
claim4!(trove_isolate_claim4_mgmt_est, 1);
claim4!(trove_isolate_claim4_biz_new, 2);
claim4!(trove_isolate_claim4_biz_est, 3);

#[inline(always)]
fn claim4(id: u32, local: u32, remote: u32, ports: u32, ask: Ask) -> i64 {
    // Read whatever the table: a table that never evicts has no use for the clock, and LLVM
    // then left the argument's register unset at the calls, which the kernel refuses.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::arch::asm!("{0} = {0}", in(reg) ask.0, options(nomem, nostack, preserves_flags));
    }
    let key = trove_isolate_common::conntrack::FlowKey4 {
        local,
        remote,
        local_port: ports as u16,
        remote_port: (ports >> 16) as u16,
    };
    match crate::maps::tcp4_table(id) {
        Some(table) => table.claim_here(&key, ask),
        None => ENOENT as i64,
    }
}
