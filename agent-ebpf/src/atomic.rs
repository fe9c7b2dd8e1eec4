//! The BPF atomic instructions Rust's `core::sync::atomic` does not reach on
//! the BPF target (BPF_ATOMIC, Linux 5.12), one place for their asm.

/// Stores `new` at `p` if it holds `old` (BPF_CMPXCHG); returns what `p`
/// held.
#[inline(always)]
pub unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let seen: u64;
    // SAFETY: the caller's pointer is valid for an 8-byte access; the
    // instruction reads and writes only it and r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inlateout("r0") old => seen,
        );
    }
    seen
}

/// `*p |= bits` in one instruction (BPF_OR, no fetch), for words that other
/// CPUs set bits of.
#[inline(always)]
pub unsafe fn or(p: *mut u64, bits: u64) {
    // SAFETY: the caller's pointer is valid for an 8-byte access; the
    // instruction touches only it.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) |= {bits}",
            p = in(reg) p,
            bits = in(reg) bits,
        );
    }
}
