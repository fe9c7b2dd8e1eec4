//! Which service a socket's backend stands for (recvmsg, getpeername, the
//! UDP reaper): a connected socket's answer is in its slot of the socket
//! slot array (`ferry_skc4_v1`/`ferry_skc6_v1`, by cookie), anything else's
//! in the reverse map (`ferry_sk4_v1`/`ferry_sk6_v1`, LRU, by cookie and
//! backend).
//!
//! The slot is what makes a connect cheap: cookies come in sequence, so a
//! connect writes next to the last one's slot, where the reverse map's
//! insert took a random bucket of 262,144 and the release hook's delete a
//! second visit (agent_common::maps::SOCK_SLOTS_V4). The reverse map stays
//! for what a slot cannot hold: an unconnected sendmsg (a socket may send
//! to many services) and a connect whose slot another live socket holds.

use crate::family::{Addr, Family};

/// Where a socket's reverse translation was found.
#[derive(Clone, Copy)]
pub enum Held {
    Slot,
    Map,
}

/// Remembers that the socket `cookie`'s backend `addr`:`port` stands for
/// `svc` (frontend `rev_nat_id`): in its slot for a connect, in the reverse
/// map otherwise. False: neither had room.
#[inline(always)]
pub fn remember<F: Family>(
    cookie: u64,
    connect: bool,
    addr: Addr<F>,
    port: u16,
    svc: (Addr<F>, u16),
    rev_nat_id: u16,
) -> bool {
    if connect && F::slot_claim(cookie, addr, port, svc, rev_nat_id) {
        return true;
    }
    F::rev_insert(&F::rev_key(cookie, addr, port), svc, rev_nat_id)
}

/// The service (address, port, rev-NAT id) the socket `cookie`'s backend
/// `addr`:`port` stands for, and where that was found.
#[inline(always)]
pub fn find<F: Family>(
    cookie: u64,
    addr: Addr<F>,
    port: u16,
) -> Option<((Addr<F>, u16, u16), Held)> {
    if let Some(found) = F::slot_find(cookie, addr, port) {
        return Some((found, Held::Slot));
    }
    F::rev_lookup(&F::rev_key(cookie, addr, port)).map(|found| (found, Held::Map))
}

/// Forgets what [`find`] found.
#[inline(always)]
pub fn forget<F: Family>(cookie: u64, addr: Addr<F>, port: u16, held: Held) {
    match held {
        Held::Slot => {
            F::slot_free(cookie);
        }
        Held::Map => F::rev_remove(&F::rev_key(cookie, addr, port)),
    }
}

/// The closing socket `cookie`, connected to `addr`:`port`: frees its slot,
/// else deletes its reverse map entry for that peer.
#[inline(always)]
pub fn release<F: Family>(cookie: u64, addr: Addr<F>, port: u16) {
    if !F::slot_free(cookie) {
        F::rev_remove(&F::rev_key(cookie, addr, port));
    }
}
