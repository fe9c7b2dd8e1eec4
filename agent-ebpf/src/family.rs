//! The socket layer's per-family maps behind one trait, so that the socket
//! hooks (sock_lb.rs) and the egress guard (guard.rs) are written once and
//! compiled for each family: [`V4`] (the IPv4 maps, also used by a
//! dual-stack socket's IPv4-mapped destinations) and [`V6`].

use agent_common::{
    GuardDest4, GuardDest6, Ip6, SRC_RANGE_PREFIX_BITS, SockGuard4, SockGuard6, SockRev4,
    SockRev4Key, SockRev6, SockRev6Key, SrcRange4, SrcRange6, Svc4Key, Svc6Key, maps::sock_slot,
};
use aya_ebpf::{btf_maps::SkStorage, maps::lpm_trie::Key, programs::SockAddrContext};
use aya_log_ebpf::debug;

use crate::{
    atomic::cmpxchg,
    maps::{
        REV_NAT_V4, REV_NAT_V6, SOCK_GUARD, SOCK_GUARD6, SOCK_REV_V4, SOCK_REV_V6, SOCK_SLOTS_V4,
        SOCK_SLOTS_V6, SRC_RANGE_V4, SRC_RANGE_V6,
    },
    select::Frontend,
};

/// IPv4: `ferry_*4_*` maps and `ferry_guard4_v1`.
pub struct V4;
/// IPv6: `ferry_*6_*` maps and `ferry_guard6_v1`.
pub struct V6;

/// The address type of a family.
pub type Addr<F> = <<F as Family>::Key as Frontend>::Addr;

pub trait Family {
    /// The service map key (and through it the service and backend maps).
    type Key: Frontend;
    /// The egress guard's per-socket record of this family's packets.
    type Guard: Copy + Default + 'static;
    /// Key of the socket reverse-translation map.
    type RevKey: Copy;

    /// The guard records' socket storage.
    fn guard_map() -> &'static SkStorage<Self::Guard>;
    /// The record's [`agent_common::guard_flags`].
    fn guard_flags(g: &mut Self::Guard) -> &mut u8;
    /// Records the source-ranged destination of a connect (`connect`) or of
    /// an unconnected datagram.
    fn guard_set(g: &mut Self::Guard, connect: bool, addr: Addr<Self>, port: u16, rev_nat_id: u16);
    /// The recorded destination of a connect (`connect`) or datagram:
    /// address, port, rev-NAT id.
    fn guard_dest(g: &Self::Guard, connect: bool) -> (Addr<Self>, u16, u16);
    /// True when `saddr` is in the source ranges of frontend `rev_nat_id`.
    fn in_source_ranges(rev_nat_id: u16, saddr: Addr<Self>) -> bool;

    /// The socket reverse-translation key of the socket `cookie`'s backend
    /// `addr`:`port`.
    fn rev_key(cookie: u64, addr: Addr<Self>, port: u16) -> Self::RevKey;
    /// Remembers that the socket's backend `key` stands for the service
    /// `svc` (frontend `rev_nat_id`). False: the map refused.
    fn rev_insert(key: &Self::RevKey, svc: (Addr<Self>, u16), rev_nat_id: u16) -> bool;
    /// The service (address, port, rev-NAT id) the socket's backend `key`
    /// stands for.
    fn rev_lookup(key: &Self::RevKey) -> Option<(Addr<Self>, u16, u16)>;
    fn rev_remove(key: &Self::RevKey);
    /// Takes the socket `cookie`'s slot (free, or already its own) and
    /// writes its backend `addr`:`port` and the service `svc` in it. False:
    /// another socket holds the slot.
    fn slot_claim(
        cookie: u64,
        addr: Addr<Self>,
        port: u16,
        svc: (Addr<Self>, u16),
        rev_nat_id: u16,
    ) -> bool;
    /// The service (address, port, rev-NAT id) the socket `cookie`'s slot
    /// names for its backend `addr`:`port`.
    fn slot_find(cookie: u64, addr: Addr<Self>, port: u16) -> Option<(Addr<Self>, u16, u16)>;
    /// Frees the socket `cookie`'s slot; false when it did not hold it.
    fn slot_free(cookie: u64) -> bool;
    /// The service address and port of rev-NAT id `id`, while it exists.
    fn rev_nat(id: u16) -> Option<(Addr<Self>, u16)>;

    /// Says at debug level that `addr`:`port` has no usable backend.
    fn log_refused(ctx: &SockAddrContext, addr: Addr<Self>, port: u16);
}

macro_rules! family {
    (
        $family:ident, key: $key:ty, addr: $addr:ty, bits: $bits:expr,
        guard: $guard:ty, guard_map: $guard_map:ident, dest: $dest:ident,
        rev_key: $rev_key:ident, rev: $rev:ident, sock_rev: $sock_rev:ident, slots: $slots:ident,
        rev_nat: $rev_nat:ident,
        src_range: $src_range:ident, src_key: $src_key:ident, shown: $shown:expr $(,)?
    ) => {
        impl Family for $family {
            type Key = $key;
            type Guard = $guard;
            type RevKey = $rev_key;

            #[inline(always)]
            fn guard_map() -> &'static SkStorage<$guard> {
                &$guard_map
            }

            #[inline(always)]
            fn guard_flags(g: &mut $guard) -> &mut u8 {
                &mut g.flags
            }

            #[inline(always)]
            fn guard_set(g: &mut $guard, connect: bool, addr: $addr, port: u16, rev_nat_id: u16) {
                let dest = $dest {
                    addr,
                    port,
                    rev_nat_id,
                };
                if connect {
                    g.conn = dest;
                } else {
                    g.msg = dest;
                }
            }

            #[inline(always)]
            fn guard_dest(g: &$guard, connect: bool) -> ($addr, u16, u16) {
                let d = if connect { &g.conn } else { &g.msg };
                (d.addr, d.port, d.rev_nat_id)
            }

            #[inline(always)]
            fn in_source_ranges(rev_nat_id: u16, saddr: $addr) -> bool {
                let key = Key::new(
                    SRC_RANGE_PREFIX_BITS + $bits,
                    $src_key {
                        rev_nat_id,
                        _pad: 0,
                        addr: saddr,
                    },
                );
                $src_range.get(&key).is_some()
            }

            #[inline(always)]
            fn rev_key(cookie: u64, addr: $addr, port: u16) -> $rev_key {
                $rev_key {
                    cookie,
                    addr,
                    port,
                    ..Default::default()
                }
            }

            #[inline(always)]
            fn rev_insert(key: &$rev_key, svc: ($addr, u16), rev_nat_id: u16) -> bool {
                let rev = $rev {
                    addr: svc.0,
                    port: svc.1,
                    rev_nat_id,
                };
                $sock_rev.insert(key, &rev, 0).is_ok()
            }

            #[inline(always)]
            fn rev_lookup(key: &$rev_key) -> Option<($addr, u16, u16)> {
                $sock_rev
                    .get_ptr(key)
                    .map(|p| unsafe { ((*p).addr, (*p).port, (*p).rev_nat_id) })
            }

            #[inline(always)]
            fn rev_remove(key: &$rev_key) {
                let _ = $sock_rev.remove(key);
            }

            #[inline(always)]
            fn slot_claim(
                cookie: u64,
                addr: $addr,
                port: u16,
                svc: ($addr, u16),
                rev_nat_id: u16,
            ) -> bool {
                let Some(s) = $slots.get_ptr_mut(sock_slot(cookie)) else {
                    return false;
                };
                // SAFETY: a value of the array. Only the socket that holds a
                // slot writes more than its cookie word, and a socket's
                // hooks do not run concurrently with its connect.
                unsafe {
                    let owner = core::ptr::read_volatile(&(*s).cookie);
                    if owner != cookie && (owner != 0 || cmpxchg(&mut (*s).cookie, 0, cookie) != 0)
                    {
                        return false;
                    }
                    (*s).backend = addr;
                    (*s).backend_port = port;
                    (*s).addr = svc.0;
                    (*s).port = svc.1;
                    (*s).rev_nat_id = rev_nat_id;
                }
                true
            }

            #[inline(always)]
            fn slot_find(cookie: u64, addr: $addr, port: u16) -> Option<($addr, u16, u16)> {
                let s = $slots.get_ptr(sock_slot(cookie))?;
                // SAFETY: a value of the array.
                let s = unsafe { &*s };
                (s.cookie == cookie && s.backend == addr && s.backend_port == port).then_some((
                    s.addr,
                    s.port,
                    s.rev_nat_id,
                ))
            }

            #[inline(always)]
            fn slot_free(cookie: u64) -> bool {
                let Some(s) = $slots.get_ptr_mut(sock_slot(cookie)) else {
                    return false;
                };
                // SAFETY: a value of the array; while it names this socket no
                // other socket writes it (they claim only a free slot).
                unsafe {
                    if core::ptr::read_volatile(&(*s).cookie) != cookie {
                        return false;
                    }
                    core::ptr::write_volatile(&mut (*s).cookie, 0);
                }
                true
            }

            #[inline(always)]
            fn rev_nat(id: u16) -> Option<($addr, u16)> {
                $rev_nat
                    .get_ptr(&id)
                    .map(|p| unsafe { ((*p).addr, (*p).port) })
            }

            #[inline(always)]
            fn log_refused(ctx: &SockAddrContext, addr: $addr, port: u16) {
                debug!(
                    ctx,
                    "no usable backend for {:i}:{}",
                    $shown(addr),
                    u16::from_be(port)
                );
            }
        }
    };
}

/// An IPv6 address as aya-log shows one (its 16 bytes in order).
#[inline(always)]
fn ip6_bytes(addr: Ip6) -> [u8; 16] {
    // SAFETY: four network-order words are the address's bytes in order.
    unsafe { core::mem::transmute::<Ip6, [u8; 16]>(addr) }
}

family!(
    V4, key: Svc4Key, addr: u32, bits: 32,
    guard: SockGuard4, guard_map: SOCK_GUARD, dest: GuardDest4,
    rev_key: SockRev4Key, rev: SockRev4, sock_rev: SOCK_REV_V4, slots: SOCK_SLOTS_V4,
    rev_nat: REV_NAT_V4,
    src_range: SRC_RANGE_V4, src_key: SrcRange4, shown: u32::from_be,
);

family!(
    V6, key: Svc6Key, addr: Ip6, bits: 128,
    guard: SockGuard6, guard_map: SOCK_GUARD6, dest: GuardDest6,
    rev_key: SockRev6Key, rev: SockRev6, sock_rev: SOCK_REV_V6, slots: SOCK_SLOTS_V6,
    rev_nat: REV_NAT_V6,
    src_range: SRC_RANGE_V6, src_key: SrcRange6, shown: ip6_bytes,
);
