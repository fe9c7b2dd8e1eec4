//! The pinned toolchain versions. Change them here (and NIGHTLY in agent/build.rs).

/// Stable toolchain for user space: aya 0.16 needs rustc >= 1.98.
pub const STABLE: &str = "1.99.1";
/// Nightly for the eBPF crate (`-Z build-std=core`). Its LLVM major must equal
/// [`LLVM_MAJOR`]: newer nightlies are LLVM 23 and fail with an llvm-22 bpf-linker.
pub const NIGHTLY: &str = "nightly-2026-06-20";
/// bpf-linker, built against the system's LLVM [`LLVM_MAJOR`].
pub const BPF_LINKER: &str = "0.13.0";
/// cargo-fuzz (`cargo xtask fuzz`), installed with STABLE and run with NIGHTLY.
pub const CARGO_FUZZ: &str = "0.13.2";
/// LLVM major shared by NIGHTLY and the Debian `llvm-N-dev` bpf-linker links to.
pub const LLVM_MAJOR: u32 = 22;

/// Components of the stable toolchain (`cargo xtask test` runs fmt and clippy).
pub const STABLE_COMPONENTS: &[&str] = &["clippy", "rustfmt"];
/// Components of the nightly (`-Z build-std=core` needs the sources of core).
pub const NIGHTLY_COMPONENTS: &[&str] = &["rust-src"];

/// The eBPF target: bpfel/bpfeb after the host's endianness (the programs run on this host).
pub fn bpf_target() -> &'static str {
    if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    }
}

/// The `bpf_target_arch` cfg aya-ebpf needs (the host's arch, as aya-build computes it).
pub fn bpf_target_arch() -> &'static str {
    let arch = std::env::consts::ARCH;
    if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        arch
    }
}
