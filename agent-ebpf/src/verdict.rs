//! The TC programs' verdicts (TCX names them TCX_NEXT/PASS/DROP/REDIRECT;
//! the values are the classic TC_ACT_* ones). Redirects return what
//! `bpf_redirect` returns (TC_ACT_REDIRECT). A leaf module: every
//! north-south module names these, none of them is imported here.
#![allow(
    clippy::unnecessary_cast,
    reason = "the bindings type these u32 for some targets, i32 for others"
)]

use aya_ebpf::bindings as b;

/// Not ours: the next program on the device (or the stack) decides.
pub const PASS: i32 = b::TC_ACT_UNSPEC as i32;
/// Translated: on to the stack, done with (later programs are skipped).
pub const OK: i32 = b::TC_ACT_OK as i32;
/// Dropped. Only [`crate::drop::shot`] returns it: every drop has its reason.
pub const SHOT: i32 = b::TC_ACT_SHOT as i32;
