//! The own-address sets (`trove_isolate_common::local::OwnSet`): what they hold, and the order in
//! which the daemon writes them so that no packet reads one half written.
//!
//! An array's value is written in place, and the datapath reads the set of the slot the
//! generation names, with no lock; an address a set does not hold is asked of the trie, which
//! the daemon has written first. So on a change the writer
//! 1. marks the generation `TRIE_ONLY` (one aligned word): from here every check asks the trie,
//!    so the change, a lost address included, is in force at once;
//! 2. waits until every program run that may have read a slot has returned ([`grace`]): no
//!    packet reads one now;
//! 3. writes the next slot, fences, and writes the next generation, which clears the mark (a
//!    packet that reads the new generation reads the slot it names, which depends on it, so it
//!    sees the slot's new content).
//!
//! Maps made anew at this load skip 1 and 2 until their first flip: no packet reads a slot that
//! was never in force. A change costs one grace period, 15 to 25 ms here, during which new flows
//! pay the trie lookup. Where the wait fails the mark stays: every check asks the trie, as before
//! the sets, until a later change waits successfully.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::maps::lpm_trie::Key;
use trove_isolate_common::{
    conntrack::words,
    local::{LocalKey, LocalValue, OwnSet, OWN},
    Role,
};

/// Each role's set (indexed by `Role as usize`) of the own addresses among `entries` (the
/// `LOCAL` map's entries: an own address is a host prefix with the `OWN` flag).
pub fn sets_of(entries: &[(Key<LocalKey>, LocalValue)]) -> [OwnSet; Role::COUNT] {
    Role::ALL.map(|role| {
        OwnSet::of(
            entries
                .iter()
                .filter(|(k, v)| v.flags & OWN != 0 && k.data().role == role as u8)
                .map(|(k, _)| (k.data().family, words(&k.data().addr))),
        )
    })
}

/// Returns once every BPF program run that started before the call has returned.
///
/// The kernel's own guarantee for maps of maps: an update of one returns only after
/// `synchronize_rcu()`, "so that userspace, when we return to it, knows that all non-sleepable
/// programs that could be running use the new map value" (kernel/bpf/syscall.c,
/// `maybe_wait_bpf_programs`, Linux 4.19 on). TC programs are non-sleepable and run inside RCU
/// read-side sections, preemptible ones (PREEMPT_RT) included. So this makes a map of maps that
/// no program uses, and updates it. (`membarrier(MEMBARRIER_CMD_GLOBAL)` skips the wait when one
/// CPU is online, which is unsafe where programs can be preempted, and is refused under
/// `nohz_full`.)
pub fn grace() -> io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
    let inner = create(BPF_MAP_TYPE_ARRAY, 0)?;
    let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner.as_raw_fd() as u32)?;
    let key: u32 = 0;
    let value: u32 = inner.as_raw_fd() as u32;
    let mut attr = Attr::default();
    attr.0[0] = outer.as_raw_fd() as u32;
    // key and value: u64 pointers at bytes 8 and 16; flags (BPF_ANY) at 24.
    let (k, v) = (&key as *const u32 as u64, &value as *const u32 as u64);
    attr.0[2..4].copy_from_slice(&[k as u32, (k >> 32) as u32]);
    attr.0[4..6].copy_from_slice(&[v as u32, (v >> 32) as u32]);
    // SAFETY: the attribute holds the map's fd and pointers to a key and a value that outlive
    // the call.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }?;
    return Ok(());

    /// A map of one 4-byte entry, keyed by 4 bytes.
    fn create(map_type: u32, inner_map_fd: u32) -> io::Result<OwnedFd> {
        let mut attr = Attr::default();
        // map_type, key_size, value_size, max_entries, map_flags, inner_map_fd.
        attr.0[..6].copy_from_slice(&[map_type, 4, 4, 1, 0, inner_map_fd]);
        // SAFETY: BPF_MAP_CREATE reads the attribute and returns a new fd, owned here.
        let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `union bpf_attr`, zeroed past the fields a call sets (the kernel checks that what it does not
/// know is zero).
#[repr(C, align(8))]
#[derive(Default)]
struct Attr([u32; 32]);

unsafe fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i32> {
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

#[cfg(test)]
mod tests {
    use ipnetwork::IpNetwork;
    use trove_isolate_common::{family, local::SET_V4};

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    fn addr(ip: &str) -> [u32; 4] {
        words(&family::key_addr(ip.parse().expect("ip")).1)
    }

    #[test]
    fn a_set_holds_the_own_addresses_of_its_role_and_nothing_on_their_links() {
        let mut entries = crate::local::entries(
            Role::Management,
            &nets(&["192.0.2.1/24", "2001:db8:1::1/64", "fe80::1/64"]),
        );
        entries.extend(crate::local::entries(
            Role::Business,
            &nets(&["198.51.100.2/24"]),
        ));
        let [mgmt, biz] = sets_of(&entries);
        let (v4, v6) = (family::V4, family::V6);
        assert_eq!((mgmt.v4_len, mgmt.v6_len), (1, 2));
        assert!(mgmt.holds(v4, &addr("192.0.2.1")));
        assert!(mgmt.holds(v6, &addr("2001:db8:1::1")));
        assert!(mgmt.holds(v6, &addr("fe80::1")));
        // Its links, the other role's address, another family's word: not its own.
        assert!(!mgmt.holds(v4, &addr("192.0.2.2")));
        assert!(!mgmt.holds(v4, &addr("198.51.100.2")));
        assert!(!mgmt.holds(v6, &addr("2001:db8:1::2")));
        assert!(biz.holds(v4, &addr("198.51.100.2")));
        assert!(!biz.holds(v4, &addr("192.0.2.1")));
        assert_eq!((biz.v4_len, biz.v6_len), (1, 0));
        assert!(!biz.holds(v6, &addr("2001:db8:1::1")));
        // Unused slots are zero, and 0.0.0.0 is no address of a NIC that has one.
        assert!(!biz.holds(v4, &addr("0.0.0.0")));
    }

    /// Root (BPF): the wait makes and updates a map of maps; the kernel waits for a grace period.
    #[test]
    fn the_grace_period_wait_works_on_this_kernel() {
        for _ in 0..3 {
            grace().expect("waiting through a map-of-maps update");
        }
    }

    #[test]
    fn a_set_holds_the_first_addresses_of_a_family_and_the_trie_the_rest() {
        let list: Vec<String> = (1..=SET_V4 + 1)
            .map(|i| format!("192.0.2.{i}/24"))
            .chain(["2001:db8:1::1/64".to_string()])
            .collect();
        let list: Vec<&str> = list.iter().map(String::as_str).collect();
        let [mgmt, _] = sets_of(&crate::local::entries(Role::Management, &nets(&list)));
        assert_eq!(mgmt.v4_len as usize, SET_V4);
        assert!(mgmt.holds(family::V4, &addr("192.0.2.1")));
        assert!(!mgmt.holds(family::V4, &addr(&format!("192.0.2.{}", SET_V4 + 1))));
        assert!(mgmt.holds(family::V6, &addr("2001:db8:1::1")));
    }
}
