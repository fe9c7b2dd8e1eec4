//! The one drop path of the TC programs. A north-south function that may
//! drop returns [`Outcome`] (or `Result<_, DropReason>`); the program's
//! edge turns it into the i32 verdict with [`verdict`], and a drop goes
//! through [`shot`], which counts its reason (`agent_common::drop`: each
//! reason feeds its per-CPU counter) and reports it to `ferry monitor`
//! while one listens (event.rs).

pub use agent_common::drop::DropReason;
use aya_ebpf::programs::TcContext;

use crate::{event, maps::count, side::Side, verdict as v};

/// A path's result: a verdict that is not a drop (PASS, OK, a redirect's),
/// or why the packet is dropped.
pub type Outcome = Result<i32, DropReason>;

/// Drops the packet for `reason` (met on `side`): the only place a TC
/// program returns TC_ACT_SHOT. A function of its own, called at the
/// program's edge: its frame (the counter's key, the event) is not added
/// to the deep call chains of the paths that drop.
#[inline(never)]
pub fn shot(reason: DropReason, ctx: &TcContext, side: Side) -> i32 {
    count(reason.counter());
    event::drop(ctx, reason, side);
    v::SHOT
}

/// Drops the packet for `reason` at the XDP program's edge (xdp.rs):
/// counted as TC's drops are (its monitor event is the caller's: event.rs).
#[inline(never)]
pub fn xdp_drop(reason: DropReason) -> u32 {
    count(reason.counter());
    aya_ebpf::bindings::xdp_action::XDP_DROP
}

/// The verdict of `outcome` at a program's edge.
#[inline(always)]
pub fn verdict(outcome: Outcome, ctx: &TcContext, side: Side) -> i32 {
    match outcome {
        Ok(v) => v,
        Err(reason) => shot(reason, ctx, side),
    }
}

/// An [`Outcome`] in one register, as a BPF-to-BPF function returns it (a
/// `Result` is returned through the caller's stack, which the verifier
/// counts against the call chain's 512 bytes): a verdict as it is, a drop
/// as `DROPPED + reason`, which no verdict is.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Raw(i32);

const DROPPED: i32 = 0x100;

impl Raw {
    #[inline(always)]
    pub fn of(outcome: Outcome) -> Raw {
        match outcome {
            Ok(v) => Raw(v),
            Err(reason) => Raw(DROPPED + reason as i32),
        }
    }

    #[inline(always)]
    pub fn get(self) -> Outcome {
        if (self.0 as u32).wrapping_sub(DROPPED as u32) < 0x100 {
            // SAFETY: only `of` makes such a value, from a DropReason
            // (a u8 enum).
            Err(unsafe { core::mem::transmute::<u8, DropReason>((self.0 - DROPPED) as u8) })
        } else {
            Ok(self.0)
        }
    }
}
