//! Whole seconds of a nanosecond clock, without a division.
//!
//! BPF has no 64×64→128-bit multiply, so LLVM cannot turn `ns / 1e9` into a
//! reciprocal multiply there: it stays a `div`, which the x86 JIT emits as a
//! 64-bit `div` (tens of cycles) on every tracked packet. This is the
//! reciprocal multiply compilers emit on x86-64 (`shr 9; mulq M; shr 11`),
//! with the high half of the product built from 32-bit halves. Exact for
//! every `u64` (the tests compare it with the division).

/// ⌈2^75 / 10^9 / 2^9⌉ in the form x86-64 compilers use for `n / 1_000_000_000`.
const MAGIC: u64 = 0x0044_B82F_A09B_5A53;

/// `ns / 1_000_000_000`.
#[inline(always)]
pub const fn ns_to_seconds(ns: u64) -> u64 {
    // a < 2^55 and MAGIC < 2^55: their halves' products and sums stay in 64 bits.
    let a = ns >> 9;
    let (a1, a0) = (a >> 32, a & 0xffff_ffff);
    let (m1, m0) = (MAGIC >> 32, MAGIC & 0xffff_ffff);
    let mid = a1 * m0 + a0 * m1 + ((a0 * m0) >> 32);
    let high = a1 * m1 + (mid >> 32);
    high >> 11
}

#[cfg(test)]
mod tests {
    use super::ns_to_seconds;

    #[test]
    fn equals_the_division_at_every_second_boundary_and_the_extremes() {
        let edges = [
            0,
            1,
            511,
            512,
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
            (1 << 63) - 1,
        ];
        for ns in edges {
            assert_eq!(ns_to_seconds(ns), ns / 1_000_000_000, "{ns}");
        }
        // Both sides of every second boundary over 50 days, then sparser up to u64::MAX.
        let mut s: u64 = 0;
        while let Some(b) = s.checked_mul(1_000_000_000) {
            for ns in [b.saturating_sub(1), b, b.saturating_add(1)] {
                assert_eq!(ns_to_seconds(ns), ns / 1_000_000_000, "{ns}");
            }
            s = if s < 50 * 86_400 {
                s + 1
            } else {
                s + s / 1_000 + 1
            };
        }
    }

    #[test]
    fn equals_the_division_on_pseudo_random_values() {
        // xorshift64*: deterministic, covers every bit width.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..2_000_000u32 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let ns = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> (i % 64);
            assert_eq!(ns_to_seconds(ns), ns / 1_000_000_000, "{ns}");
        }
    }
}
