//! The flood's generator: the kernel's own XDP traffic generator (BPF_PROG_RUN of an XDP
//! program with `BPF_F_TEST_XDP_LIVE_FRAMES`, Linux ≥ 5.18, as xdp-tools' xdp-trafficgen
//! does), which hands frames to a lab veth the way a NIC driver's receive does: in pages with
//! XDP headroom, no skb. Where the kernel refuses live frames, the same program runs as the
//! native XDP of a veth pair of the generator's own and does the same (relay mode, below).
//!
//! In live mode the kernel (net/bpf/test_run.c, Documentation/bpf/bpf_prog_run.rst) runs the
//! program on frames from a page pool of its own and acts on the verdict: here every frame is
//! redirected, [`FANOUT`] times (fan-out, below), to a segment-side veth (`v-node1`), whose
//! `ndo_xdp_xmit` puts each `xdp_frame` into its peer's receive ring, the forwarding node's
//! eth0 (a full ring refuses it: veth's `xdp_xmit_errors`). The facts the program is built
//! around:
//! - a page is filled from `data_in` once, when the pool allocates it, and is recycled without
//!   being rewritten: what the program wrote stays for the frame after next, and so does what
//!   the path under test wrote into the frame in place before the page came back (a
//!   forwarding stack's TTL and MAC addresses, a NAT's addresses, ports and checksums: the
//!   skb veth builds around the frame returns its page to the generator's pool). So the
//!   program writes the whole frame, every byte as an absolute value, never trusting or
//!   incrementing what is in the page (a first version that wrote only the varying fields
//!   forwarded only the frames of fresh pages, ~20,000/s);
//! - the redirect's ifindex is looked up in the network namespace of the thread that makes
//!   the call (the run's device is that namespace's loopback), so the generator's thread
//!   enters the segment's namespace first ([`Generator::start`] refuses the root namespace);
//! - `repeat` is a u32 and a pending signal ends the run early; the kernel runs `batch_size`
//!   frames (default 64, at most 256) between flushes to the device. The generator runs
//!   [`CHUNK`] frames a call and checks between calls whether to stop.
//!
//! Relay mode ([`Mode::Relay`]): some kernels refuse live frames (one before 5.18 does not
//! know the flag, EINVAL; a kernel built to forbid them answers EPERM or EOPNOTSUPP), which
//! [`probe`] finds out once per process with a live run of one frame of a program that drops
//! it (nothing is sent). There the generator's thread makes a veth pair of its own in the same
//! namespace (`gi-TID` → `go-TID`, [`Relay`]; deleted when the generator stops, and gone with
//! the namespace anyway), attaches the same program, with its counter map, to `go-TID` as
//! native XDP (a bpf_link), and sends the template frame into `gi-TID` through an AF_PACKET
//! socket (PACKET_QDISC_BYPASS, [`RELAY_BATCH`] frames a sendmmsg(2) call, a stop checked
//! between calls). Native XDP gives `go-TID` its NAPI (no GRO needed) and makes veth turn TSO
//! off on `gi-TID`, so that each skb goes to `go-TID`'s ring (256 frames) rather than to its
//! stack; the transmit schedules `go-TID`'s NAPI on the sending CPU, and its poll runs in that
//! CPU's softirq as the send returns: it copies the frame into a page of `go-TID`'s page pool
//! with XDP headroom and runs the program, whose redirect hands the `xdp_frame` (and its
//! copies) to the segment-side veth's `ndo_xdp_xmit` as in live mode. So the forwarding node receives the
//! same XDP frames through the same veth (and its counters), the program's counter counts
//! them alike, and all the generator's work stays on the generator's CPU. What differs is the
//! generator's cost per frame (a socket send, an skb and its copy into a page, flushes to the
//! device of the few frames each poll finds rather than of [`BATCH`]): it offers fewer frames
//! per second than live mode would. A frame that finds `go-TID`'s ring full is dropped before
//! the program runs and counted ([`Generator::relay_refused`]); with a poll after every send
//! the ring does not fill in steady state (none refused at ~1.2 million frames/s on one CPU,
//! the receiving end on the same CPU, nor in any flood run). Each poll finds the one frame
//! just sent, so before the fan-out each flush handed one frame to the target veth, whose NAPI
//! thread (on the forwarding CPU) was woken for it whenever it had drained its ring: the
//! wake-ups cost the generator's CPU (~13% of it at 1 million frames/s with a fast consumer,
//! in `__napi_schedule`), so the relay offered fewer frames to a faster path (~1.0–1.2 million
//! frames/s in all, and ferry's XDP forwarded 97% of what it was offered: its packets/s were
//! the generator's). Batching the polls by deferring the relay veth's NAPI
//! (`napi_defer_hard_irqs` 1 and a `gro_flush_timeout`) made it slower on the VM where this
//! was measured (1.02 million frames/s undeferred, 0.68 million at 20 µs, 35,000 at 5 µs: the
//! timer's reprogramming costs more than the wake-ups saved), and so would threaded NAPI for
//! the relay (a context switch per frame). The fan-out is what multiplies the relay's frames.
//!
//! Fan-out ([`FANOUT`]): the program does not `bpf_redirect` its frame once; it ends with
//! `bpf_redirect_map(&devmap, 0, BPF_F_BROADCAST)` over a `BPF_MAP_TYPE_DEVMAP` of FANOUT
//! entries that all hold the target's ifindex (a devmap may hold one device under several
//! keys). The kernel (kernel/bpf/devmap.c, `dev_map_enqueue_multi`) walks the entries and
//! enqueues a copy of the frame for each but the last (`xdpf_clone`: a fresh page, the frame
//! and its headroom copied), the frame itself for the last, on the target's per-CPU bulk
//! queue, which hands the target 16 frames an `ndo_xdp_xmit` (DEV_MAP_BULK_SIZE) and the rest
//! at the poll's (or the live batch's) flush, the one hand-over that wakes the target's NAPI.
//! So each frame the program writes reaches the forwarding node FANOUT times back to back, in
//! bursts of up to 16, and the node's NAPI thread is woken once per burst rather than per
//! frame: its ring fills and its polls take batches, as from a NIC under load, and the copies
//! cost the generator a page and a copy each rather than a socket send, an skb, a page and a
//! program run. The test `the_broadcast_sends_each_frame_fanout_times` checks it on this
//! kernel (6.18): N frames written, FANOUT × N handed to the target (its `xdp_xmit`), none
//! refused, and the target's stack receives each frame FANOUT times in a row. What it means
//! for the flood, the same for every contender:
//! - the flows are still [`FLOWS`] ([`SOURCES`] × [`PORTS`]), but each comes in runs of
//!   FANOUT identical frames: a path's per-flow state (a conntrack entry) sees FANOUT
//!   back-to-back packets of the flow on each visit, then the flow is not seen again for
//!   FLOWS × FANOUT frames;
//! - the identical UDP frames are not merged on their way: veth's GRO on the node's eth0
//!   merges UDP only for a local socket that asked for it or with UDP GRO forwarding
//!   (`rx-udp-gro-forwarding`, off by default), so every copy is forwarded and counted on its
//!   own (the test above checks it after the target's GRO; the flood's counts, forwarded =
//!   taken into the ring one for one, show it on the lab's paths);
//! - what the target's counters count (`xdp_xmit`, `xdp_xmit_errors`: offered and refused at
//!   the entry) are frames sent, copies included; the program's counter ([`Program::frames`])
//!   counts frames written, each sent FANOUT times, and so does the relay's
//!   ([`Relay::accepted`], [`Relay::refused`]);
//! - a copy's page is an order-0 page of the page allocator (`MEM_TYPE_PAGE_ORDER0`) rather
//!   than of the relay's page pool, freed by whichever path drops or transmits it;
//! - in live mode the kernel runs [`LIVE_BATCH`] frames between flushes ([`BATCH`] sent); in
//!   the relay, a poll that found more than one frame (only when the sending CPU's softirq ran
//!   late: its budget is 64) would hand 16 per `ndo_xdp_xmit` up to FANOUT times as many
//!   before its flush, which the target's ring (256) may refuse in part, counted as refused at
//!   the entry like any other.
//!
//! The program is loaded from raw instructions ([`generator_program`]): frame `n` (a counter
//! in an array map, which the one generator thread alone advances) comes from source address
//! `198.18.0.(1 + n % SOURCES)` and port `1024 + n % PORTS` (coprime periods: [`FLOWS`]
//! distinct flows), and is sent [`FANOUT`] times. The checksums are the template's constant
//! part ([`Consts`], computed here) plus the varying words, folded, as RFC 1624 allows.
//!
//! [`sink_program`] is the other end for frames ferry's XDP program sends back out of node1:
//! an XDP program on `v-node1` that drops the flood's frames (veth counts them,
//! `rx_queue_0_xdp_drops`) and passes the rest (ARP).

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::env::is_lab_ns;
use crate::{
    netns,
    progtest::{self, TestRunAttr, bpf, owned},
};

/// Source addresses 198.18.0.1 ..= 198.18.0.SOURCES (RFC 2544's benchmarking range).
pub const SOURCES: u32 = 15;
/// Source ports 1024 ..= 1024 + PORTS - 1.
pub const PORTS: u32 = 1024;
/// Distinct flows: the address and port counters advance together, and their periods (15
/// and 1024) are coprime, so the pairs repeat only after their product.
pub const FLOWS: u32 = SOURCES * PORTS;
/// Ethernet 14 + IPv4 20 + UDP 8 + 18 bytes of payload: the 60-byte minimum frame.
pub const FRAME_BYTES: u32 = 60;
const PAYLOAD: usize = 18;
const FIRST_PORT: u16 = 1024;
const SOURCE_NET: [u8; 3] = [198, 18, 0];

/// Offsets in the frame of what the program writes.
const OFF_IP_CSUM: i16 = 14 + 10;
const OFF_SADDR_LAST: i16 = 14 + 12 + 3;
const OFF_SPORT: i16 = 14 + 20;
const OFF_UDP_CSUM: i16 = 14 + 20 + 6;

/// Copies of each frame the program sends: it ends with a broadcast redirect
/// (`bpf_redirect_map(&devmap, 0, BPF_F_BROADCAST)`) over a devmap of FANOUT entries that all
/// hold the target veth, so each frame it writes reaches the forwarding node FANOUT times in a
/// row, through devmap's bulk queue (16 frames an `ndo_xdp_xmit`): see the module's docs.
///
/// Why copies: with one, the relay offered ~1.1 million frames/s, handed them over one a
/// flush and woke the forwarding CPU's NAPI thread for each, so ferry's XDP forwarded all it
/// was offered and its packets/s were the generator's. A copy costs the generator a page and a
/// short copy (`xdpf_clone`) instead of a socket send, an skb, a page and a program run.
///
/// Why 32 (measured on the 2-CPU VM, flood in relay mode, 3 rounds of each, the VM shared with
/// other work): the forwarding CPU's time per frame is the same from 8 copies on (ferry XDP
/// 340–560 ns, ferry TC 740–890 ns; with one copy 1,350–1,530 and 940–1,090 ns, the NAPI thread
/// woken per frame), so the copies set only how much the generator offers, and it offers least
/// to the fastest path, ferry (XDP): 0.9–2.9 million frames/s at 8, 1.7–2.9 million at 16,
/// 2.1–4.7 million at 32. Only at 32 did ferry (XDP) stay far from its offer in the rounds
/// where its NAPI thread had most of the CPU (2.33 of 4.72 million frames/s at 89% of it, 2.14
/// of 4.42 at 84%: 55–58% of the offer scaled to the whole CPU); at 8 and 16 it forwarded
/// 51–60% of the offer at 59–79% of the CPU, 71–100% of it scaled to the whole CPU, where the
/// generator would be the limit again. 32 is two bulk queues per frame written and an eighth
/// of the node's 256-frame ring.
pub const FANOUT: u32 = 32;
/// Frames the program writes per BPF_PROG_RUN call of the running generator (FANOUT times as
/// many sent): tens of milliseconds at the rates seen here, so a stop takes effect quickly.
pub const CHUNK: u32 = (1 << 16) / FANOUT;
/// Frames sent to the device between flushes in live mode (a NIC's NAPI budget).
pub const BATCH: u32 = 64;
/// Frames the program writes between flushes in live mode: [`BATCH`] sent.
pub const LIVE_BATCH: u32 = BATCH / FANOUT;
const _: () = assert!(
    LIVE_BATCH >= 1 && FANOUT <= 256,
    "a flush fits the target's ring"
);

/// The addresses of the flood's frames: what stays the same in every frame.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub dst: Ipv4Addr,
    pub port: u16,
}

/// The source address and port of frame `n`.
pub fn source(n: u64) -> SocketAddrV4 {
    let [a, b, c] = SOURCE_NET;
    let last = 1 + (n % u64::from(SOURCES)) as u8;
    let port = FIRST_PORT + (n % u64::from(PORTS)) as u16;
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, last), port)
}

/// Frame `n` as the reference builders of [`progtest`] make it (every checksum from scratch).
pub fn frame(f: &Flow, n: u64) -> Vec<u8> {
    let src = source(n);
    let udp = progtest::udp(src, SocketAddrV4::new(f.dst, f.port), &[0; PAYLOAD], true);
    let ip = progtest::ipv4(
        progtest::IpOpts::default(),
        *src.ip(),
        f.dst,
        progtest::IPPROTO_UDP,
        &udp,
    );
    progtest::ethernet(f.dst_mac, f.src_mac, progtest::ETH_P_IP, &ip)
}

/// The constant parts of the two checksums: the one's complement sums (unfolded) of the IPv4
/// header and of the UDP pseudo-header and datagram, with the checksum fields, the source
/// address's last byte and the source port taken as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consts {
    pub ip: u32,
    pub udp: u32,
}

impl Consts {
    pub fn of(template: &[u8]) -> Consts {
        let mut t = template.to_vec();
        for off in [OFF_IP_CSUM, OFF_SPORT, OFF_UDP_CSUM] {
            t[off as usize..off as usize + 2].fill(0);
        }
        t[OFF_SADDR_LAST as usize] = 0;
        let ip = &t[14..34];
        let l4 = &t[34..];
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        Consts {
            ip: progtest::sum(0, ip),
            udp: progtest::sum(
                progtest::pseudo_sum(src, dst, progtest::IPPROTO_UDP, l4.len()),
                l4,
            ),
        }
    }

    /// What the program computes for frame `n`: (IPv4 header checksum, UDP checksum), the
    /// constant parts plus the varying words, folded and complemented (a UDP checksum of 0
    /// is sent as 0xffff, RFC 768).
    pub fn checksums(&self, n: u64) -> (u16, u16) {
        let src = source(n);
        let last = u64::from(src.ip().octets()[3]);
        let fold = |mut s: u64| {
            // Two folds, as the program does: the sums are far below 2^32.
            s = (s & 0xffff) + (s >> 16);
            s = (s & 0xffff) + (s >> 16);
            !(s as u16)
        };
        let ip = fold(u64::from(self.ip) + last);
        let udp = fold(u64::from(self.udp) + last + u64::from(src.port()));
        (ip, if udp == 0 { 0xffff } else { udp })
    }

    /// Frame `n` as the program writes it over `page` (a recycled page holds whatever the
    /// last path left in it): `template`'s bytes, then the varying fields.
    pub fn emit(&self, template: &[u8], page: &[u8], n: u64) -> Vec<u8> {
        let mut f = page.to_vec();
        f[..template.len()].copy_from_slice(template);
        let src = source(n);
        let (ip, udp) = self.checksums(n);
        f[OFF_SADDR_LAST as usize] = src.ip().octets()[3];
        let put = |f: &mut Vec<u8>, off: i16, v: u16| {
            f[off as usize..off as usize + 2].copy_from_slice(&v.to_be_bytes())
        };
        put(&mut f, OFF_SPORT, src.port());
        put(&mut f, OFF_IP_CSUM, ip);
        put(&mut f, OFF_UDP_CSUM, udp);
        f
    }
}

// ---------------------------------------------------------------------------------------------
// Raw eBPF

/// One eBPF instruction.
#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn encode(self) -> u64 {
        let [o0, o1] = self.off.to_le_bytes();
        let [i0, i1, i2, i3] = self.imm.to_le_bytes();
        u64::from_le_bytes([self.code, self.src << 4 | self.dst, o0, o1, i0, i1, i2, i3])
    }
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;

// Opcodes (class | op | source), from include/uapi/linux/bpf.h and bpf_common.h.
const MOV64_K: u8 = 0xb7;
const MOV64_X: u8 = 0xbf;
const ADD64_K: u8 = 0x07;
const ADD64_X: u8 = 0x0f;
const AND64_K: u8 = 0x57;
const RSH64_K: u8 = 0x77;
const XOR64_K: u8 = 0xa7;
const MOD64_K: u8 = 0x97;
const AND32_K: u8 = 0x54;
/// BPF_ALU | BPF_END | BPF_TO_BE: to network order (imm: width in bits).
const TO_BE: u8 = 0xdc;
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const LDX_DW: u8 = 0x79;
const STX_H: u8 = 0x6b;
const STX_B: u8 = 0x73;
const STX_DW: u8 = 0x7b;
const ST_W: u8 = 0x62;
const LD_IMM64: u8 = 0x18;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JGT_X: u8 = 0x2d;
const JNE32_K: u8 = 0x56;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
/// ld_imm64's source register for "imm is a map fd".
const PSEUDO_MAP_FD: u8 = 1;

const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_REDIRECT_MAP: i32 = 51;
/// bpf_redirect_map's flag: to every device of the map (the key is ignored).
const BPF_F_BROADCAST: i32 = 1 << 3;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// `dst = dst folded once`: dst = (dst & 0xffff) + (dst >> 16), with `tmp` clobbered.
fn fold(dst: u8, tmp: u8) -> [Insn; 4] {
    [
        insn(MOV64_X, tmp, dst, 0, 0),
        insn(RSH64_K, tmp, 0, 0, 16),
        insn(AND64_K, dst, 0, 0, 0xffff),
        insn(ADD64_X, dst, tmp, 0, 0),
    ]
}

/// The generator: advances the counter in `counter_fd` (an array of one u64), writes
/// `template` (whole, as absolute values) and then frame `n`'s source address, source port
/// and checksums into the frame, and redirects it to every entry of the devmap `devmap_fd`
/// (a broadcast: one copy per entry). A frame shorter than the template or a missing counter
/// is dropped.
fn generator_program(counter_fd: i32, devmap_fd: i32, template: &[u8]) -> Vec<Insn> {
    let c = Consts::of(template);
    let (ip, udp) = (c.ip as i32, c.udp as i32);
    debug_assert!(c.ip < 1 << 30 && c.udp < 1 << 30, "sums of a 60-byte frame");
    let len = i32::try_from(template.len()).expect("a short frame");
    assert!(
        template.len().is_multiple_of(4),
        "the template is written in 8- and 4-byte stores"
    );
    let mut p = vec![
        insn(MOV64_X, R6, R1, 0, 0),
        // n = counter[0]++ (one thread runs the program: no atomics needed).
        insn(ST_W, R10, 0, -4, 0),
        insn(LD_IMM64, R1, PSEUDO_MAP_FD, 0, counter_fd),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_X, R2, R10, 0, 0),
        insn(ADD64_K, R2, 0, 0, -4),
        insn(CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM),
        insn(JEQ_K, R0, 0, 0, 0), // -> drop, patched below
        insn(LDX_DW, R7, R0, 0, 0),
        insn(MOV64_X, R8, R7, 0, 0),
        insn(ADD64_K, R8, 0, 0, 1),
        insn(STX_DW, R0, R8, 0, 0),
        // The frame: data, data_end (xdp_md's first two u32s).
        insn(LDX_W, R2, R6, 0, 0),
        insn(LDX_W, R3, R6, 4, 0),
        insn(MOV64_X, R4, R2, 0, 0),
        insn(ADD64_K, R4, 0, 0, len),
        insn(JGT_X, R4, R3, 0, 0), // -> drop, patched below
    ];
    // The whole template, 8 bytes a store (4 for the rest): whatever the page held goes.
    let (words, rest) = template.as_chunks::<8>();
    for (k, w) in words.iter().enumerate() {
        let w = u64::from_le_bytes(*w);
        p.extend([
            insn(LD_IMM64, R4, 0, 0, w as u32 as i32),
            insn(0, 0, 0, 0, (w >> 32) as u32 as i32),
            insn(STX_DW, R2, R4, 8 * k as i16, 0),
        ]);
    }
    if !rest.is_empty() {
        let w = u32::from_le_bytes(rest.try_into().expect("4 bytes"));
        p.push(insn(ST_W, R2, 0, (template.len() - 4) as i16, w as i32));
    }
    p.extend([
        // r8 = the source address's last byte, r9 = the source port.
        insn(MOV64_X, R8, R7, 0, 0),
        insn(MOD64_K, R8, 0, 0, SOURCES as i32),
        insn(ADD64_K, R8, 0, 0, 1),
        insn(MOV64_X, R9, R7, 0, 0),
        insn(MOD64_K, R9, 0, 0, PORTS as i32),
        insn(ADD64_K, R9, 0, 0, i32::from(FIRST_PORT)),
        insn(STX_B, R2, R8, OFF_SADDR_LAST, 0),
        insn(MOV64_X, R4, R9, 0, 0),
        insn(TO_BE, R4, 0, 0, 16),
        insn(STX_H, R2, R4, OFF_SPORT, 0),
        // IPv4 header checksum: ~fold(constant + last byte).
        insn(MOV64_K, R4, 0, 0, ip),
        insn(ADD64_X, R4, R8, 0, 0),
    ]);
    p.extend(fold(R4, R5));
    p.extend(fold(R4, R5));
    p.extend([
        insn(XOR64_K, R4, 0, 0, 0xffff),
        insn(TO_BE, R4, 0, 0, 16),
        insn(STX_H, R2, R4, OFF_IP_CSUM, 0),
        // UDP checksum: ~fold(constant + last byte + port), 0 sent as 0xffff.
        insn(MOV64_K, R4, 0, 0, udp),
        insn(ADD64_X, R4, R8, 0, 0),
        insn(ADD64_X, R4, R9, 0, 0),
    ]);
    p.extend(fold(R4, R5));
    p.extend(fold(R4, R5));
    p.extend([
        insn(XOR64_K, R4, 0, 0, 0xffff),
        insn(JNE_K, R4, 0, 1, 0),
        insn(MOV64_K, R4, 0, 0, 0xffff),
        insn(TO_BE, R4, 0, 0, 16),
        insn(STX_H, R2, R4, OFF_UDP_CSUM, 0),
        // return bpf_redirect_map(&devmap, 0, BPF_F_BROADCAST): devmap clones the frame for
        // every entry but the last, which gets the frame itself.
        insn(LD_IMM64, R1, PSEUDO_MAP_FD, 0, devmap_fd),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_K, R2, 0, 0, 0),
        insn(MOV64_K, R3, 0, 0, BPF_F_BROADCAST),
        insn(CALL, 0, 0, 0, FN_REDIRECT_MAP),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    let drop = p.len();
    p.extend([
        insn(MOV64_K, R0, 0, 0, XDP_DROP as i32),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    patch_to(&mut p, drop);
    p
}

/// Points every conditional jump with offset 0 at instruction `target` (the program's
/// "else" exit). Jumps meant to skip nothing have none here.
fn patch_to(p: &mut [Insn], target: usize) {
    for (i, x) in p.iter_mut().enumerate() {
        let cond = x.code & 0x07 == 0x05 || x.code & 0x07 == 0x06;
        if cond && x.code != CALL && x.code != EXIT && x.off == 0 {
            x.off = i16::try_from(target - (i + 1)).expect("a short program");
        }
    }
}

/// The sink on a veth: XDP_DROP for an IPv4 frame (no IP options) of UDP to `port` and to
/// `dst`/len, XDP_PASS for anything else (ARP, ICMP).
fn sink_program(port: u16, dst: (Ipv4Addr, u8)) -> Vec<Insn> {
    let (net, len) = dst;
    let mask = u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0);
    // Loads are little-endian: compare with the network-order bytes read that way.
    let le32 = |v: u32| i32::from_le_bytes(v.to_be_bytes());
    let le16 = |v: u16| i32::from(u16::from_le_bytes(v.to_be_bytes()));
    let mut p = vec![
        insn(LDX_W, R2, R1, 0, 0),
        insn(LDX_W, R3, R1, 4, 0),
        insn(MOV64_X, R4, R2, 0, 0),
        insn(ADD64_K, R4, 0, 0, 14 + 20 + 4),
        insn(JGT_X, R4, R3, 0, 0),
        insn(LDX_H, R4, R2, 12, 0),
        insn(JNE32_K, R4, 0, 0, le16(progtest::ETH_P_IP)),
        insn(LDX_B, R4, R2, 14, 0),
        insn(JNE32_K, R4, 0, 0, 0x45),
        insn(LDX_B, R4, R2, 14 + 9, 0),
        insn(JNE32_K, R4, 0, 0, i32::from(progtest::IPPROTO_UDP)),
        insn(LDX_H, R4, R2, 14 + 20 + 2, 0),
        insn(JNE32_K, R4, 0, 0, le16(port)),
        insn(LDX_W, R4, R2, 14 + 16, 0),
        insn(AND32_K, R4, 0, 0, le32(mask)),
        insn(JNE32_K, R4, 0, 0, le32(u32::from(net) & mask)),
        insn(MOV64_K, R0, 0, 0, XDP_DROP as i32),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let pass = p.len();
    p.extend([
        insn(MOV64_K, R0, 0, 0, XDP_PASS as i32),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    patch_to(&mut p, pass);
    p
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_DEVMAP: u32 = 14;
const PROG_TYPE_XDP: u32 = 6;
/// The XDP attach type (of a bpf_link on a device).
const ATTACH_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

const _: () = assert!(size_of::<MapElemAttr>() == 32);
const _: () = assert!(size_of::<LinkCreateAttr>() == 48);

/// Loads an XDP program (the verifier's log in the error if it refuses).
fn load(name: &str, insns: &[Insn]) -> Result<OwnedFd> {
    let code: Vec<u64> = insns.iter().map(|i| i.encode()).collect();
    progtest::load_raw(PROG_TYPE_XDP, ATTACH_XDP, name, &code)
}

/// The generator's program, its counter and its devmap, loaded (attached nowhere: it runs by
/// BPF_PROG_RUN, or as a relay's native XDP).
pub struct Program {
    prog: OwnedFd,
    counter: OwnedFd,
    /// Every entry the target's ifindex: the broadcast sends a copy to each.
    _devmap: OwnedFd,
    /// Copies of each frame (the devmap's entries).
    fanout: u32,
    /// The frame the pages start from (frame 0).
    template: Vec<u8>,
}

impl Program {
    /// Loads the generator for `flow`, sending [`FANOUT`] copies of each frame to `ifindex`
    /// (of the namespace where it will run, which must be the calling thread's: the devmap
    /// looks the device up there).
    pub fn load(flow: &Flow, ifindex: u32) -> Result<Program> {
        Program::with_fanout(flow, ifindex, FANOUT)
    }

    /// [`Program::load`] with `fanout` copies of each frame (1: each frame once).
    pub fn with_fanout(flow: &Flow, ifindex: u32, fanout: u32) -> Result<Program> {
        if fanout == 0 {
            bail!("a fanout of 0 sends nothing");
        }
        let mut attr = MapCreateAttr {
            map_type: MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            ..MapCreateAttr::default()
        };
        let counter = owned(bpf(BPF_MAP_CREATE, &mut attr).context("creating the counter map")?);
        // Value: the ifindex alone (4 bytes: no program of the devmap's own on the target).
        let mut attr = MapCreateAttr {
            map_type: MAP_TYPE_DEVMAP,
            key_size: 4,
            value_size: 4,
            max_entries: fanout,
            ..MapCreateAttr::default()
        };
        let devmap = owned(bpf(BPF_MAP_CREATE, &mut attr).context("creating the devmap")?);
        for key in 0..fanout {
            let mut attr = MapElemAttr {
                map_fd: devmap.as_raw_fd() as u32,
                key: &key as *const u32 as u64,
                value: &ifindex as *const u32 as u64,
                ..MapElemAttr::default()
            };
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
                .with_context(|| format!("devmap entry {key}: ifindex {ifindex}"))?;
        }
        let template = frame(flow, 0);
        let insns = generator_program(counter.as_raw_fd(), devmap.as_raw_fd(), &template);
        let prog = load("flood_gen", &insns)?;
        Ok(Program {
            prog,
            counter,
            _devmap: devmap,
            fanout,
            template,
        })
    }

    /// Copies sent of each frame the program writes.
    pub fn fanout(&self) -> u32 {
        self.fanout
    }

    /// Frames the program has written so far (its counter; each sent [`Program::fanout`]
    /// times).
    pub fn frames(&self) -> Result<u64> {
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = MapElemAttr {
            map_fd: self.counter.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &mut value as *mut u64 as u64,
            ..MapElemAttr::default()
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("reading the generator's counter")?;
        Ok(value)
    }

    pub fn set_frames(&self, n: u64) -> Result<()> {
        let key = 0u32;
        let mut attr = MapElemAttr {
            map_fd: self.counter.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &n as *const u64 as u64,
            ..MapElemAttr::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("setting the generator's counter")?;
        Ok(())
    }

    /// One plain (not live) run on `page`: the verdict and the frame as the program left it.
    /// Nothing is sent.
    pub fn run_once(&self, page: &[u8]) -> Result<(u32, Vec<u8>)> {
        let r = progtest::test_run(self.prog.as_raw_fd(), page, 0)?;
        Ok((r.retval, r.data))
    }

    /// `repeat` live frames, `batch` at a time (each sent [`Program::fanout`] times, so
    /// `batch` times that between flushes): the kernel sends what the program redirects.
    pub fn run_live(&self, repeat: u32, batch: u32) -> Result<()> {
        live_run(&self.prog, &self.template, repeat, batch)
            .context("bpf(BPF_PROG_RUN, BPF_F_TEST_XDP_LIVE_FRAMES)")
    }
}

/// BPF_PROG_RUN of `prog` in live-frames mode: `repeat` frames whose pages start from `data`,
/// `batch` between flushes.
fn live_run(prog: &OwnedFd, data: &[u8], repeat: u32, batch: u32) -> std::io::Result<()> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Modes

/// How the generator's frames reach its program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// BPF_PROG_RUN in live-frames mode: the kernel runs the program on pages of its own.
    /// Reports from before the relay existed were all made this way (serde's default).
    #[default]
    Live,
    /// The kernel refused live frames (`refused`: the probe's error): the generator's thread
    /// sends frames into a veth pair of its own, whose native XDP runs the program ([`Relay`]).
    Relay { refused: String },
}

impl Mode {
    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Mode::Live => "live frames (BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES)".into(),
            Mode::Relay { refused } => format!(
                "relay (a veth pair of the generator's own with the program as its native XDP; \
                 the kernel refused live frames: {refused})"
            ),
        }
    }
}

/// Whether an error of a live BPF_PROG_RUN is the kernel refusing the mode: EPERM (a kernel
/// that forbids it), EOPNOTSUPP, EINVAL (a kernel before 5.18, which does not know the flag).
fn refuses_live(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

/// Asks the kernel whether it runs live frames: a live BPF_PROG_RUN of one frame of a program
/// that drops it (nothing is sent, whatever the namespace). [`Mode::Relay`] if the kernel
/// refuses the mode ([`refuses_live`]); any other error is an error.
pub fn probe() -> Result<Mode> {
    let drop = [
        insn(MOV64_K, R0, 0, 0, XDP_DROP as i32),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let prog = load("flood_probe", &drop)?;
    match live_run(&prog, &[0; FRAME_BYTES as usize], 1, 1) {
        Ok(()) => Ok(Mode::Live),
        Err(e) if refuses_live(&e) => Ok(Mode::Relay {
            refused: format!("BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: {e}"),
        }),
        Err(e) => Err(e).context("probing BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES"),
    }
}

/// This kernel's mode: [`probe`]d once per process (the answer is the kernel's, the same in
/// every namespace).
pub fn mode() -> Result<Mode> {
    static MODE: OnceLock<Mode> = OnceLock::new();
    if let Some(m) = MODE.get() {
        return Ok(m.clone());
    }
    let m = probe()?;
    Ok(MODE.get_or_init(|| m).clone())
}

/// [`mode`], asked from a thread in the lab namespace `ns` (where the generator runs).
pub fn mode_in(ns: &str) -> Result<Mode> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Mode> {
            enter(ns)?;
            mode()
        })
        .join()
        .unwrap_or_else(|_| bail!("the probe's thread panicked"))
    })
}

// ---------------------------------------------------------------------------------------------
// Relay

/// Frames the relay hands to the kernel per sendmmsg(2) call (and between checks whether to
/// stop).
pub const RELAY_BATCH: usize = 64;

/// The generator where the kernel refuses live frames: a veth pair of its own (`gi-TID` →
/// `go-TID`, TID the creating thread's id, so unique in the namespace) in the namespace of the
/// thread that makes it, the program attached to `go-TID` as native XDP (a bpf_link), and an
/// AF_PACKET socket on `gi-TID` (PACKET_QDISC_BYPASS) that sends the template frame. veth's
/// transmit puts each frame in `go-TID`'s ring and schedules its NAPI on the sending CPU; the
/// NAPI poll (the sender's softirq) copies it into a page of its pool with XDP headroom and runs
/// the program, whose redirect hands the `xdp_frame` and its copies ([`FANOUT`] in all) to the
/// target veth's `ndo_xdp_xmit`, as in live mode. The pair is deleted when the relay is dropped (and goes with its namespace).
pub struct Relay {
    sock: OwnedFd,
    _link: OwnedFd,
    pair: VethPair,
    /// The frame sent (the program rewrites every byte of it).
    frame: Vec<u8>,
    /// Frames the socket handed to `gi-TID` so far.
    accepted: u64,
    /// Frames `gi-TID`'s transmit refused (`go-TID`'s ring full: ENOBUFS) so far.
    refused: Arc<AtomicU64>,
}

impl Relay {
    /// Sets up the relay for `program` in the calling thread's network namespace (refusing the
    /// process's own), counting refused frames in `refused`.
    pub fn new(program: &Program, refused: Arc<AtomicU64>) -> Result<Relay> {
        not_in_root_netns()?;
        let pair = VethPair::create()?;
        for dev in [&pair.into, &pair.out] {
            // No IPv6 on the pair: nothing of the stack's own (router solicitations, MLD)
            // reaches the program, whose counter counts the generator's frames alone.
            let knob = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
            if std::path::Path::new("/proc/sys/net/ipv6").exists() {
                std::fs::write(&knob, "1").with_context(|| format!("writing 1 to {knob}"))?;
            }
        }
        // Native XDP gives go-TID its NAPI (no GRO needed) and makes veth turn TSO off on
        // gi-TID ("off [fixed]"), so that every skb the socket sends goes to go-TID's ring and
        // its NAPI rather than to its stack (veth_skb_is_eligible_for_gro).
        let link = attach_xdp(&program.prog, &pair.out)
            .with_context(|| format!("attaching the generator as native XDP on {}", pair.out))?;
        for dev in [&pair.out, &pair.into] {
            pair.run("ip", &["link", "set", dev, "up"])?;
        }
        let sock = packet_socket(ifindex(&pair.into)?)
            .with_context(|| format!("an AF_PACKET socket on {}", pair.into))?;
        Ok(Relay {
            sock,
            _link: link,
            pair,
            frame: program.template.clone(),
            accepted: 0,
            refused,
        })
    }

    /// Sends `n` frames (every one the template: the program writes the flood's), in
    /// [`RELAY_BATCH`]es. A frame `gi-TID` refuses is counted ([`Relay::refused`]), not retried.
    pub fn send(&mut self, n: u64) -> Result<()> {
        let mut iov = libc::iovec {
            iov_base: self.frame.as_ptr() as *mut libc::c_void,
            iov_len: self.frame.len(),
        };
        // SAFETY: mmsghdr is plain data; zeroed is no address, no control data, no flags.
        let mut msgs: [libc::mmsghdr; RELAY_BATCH] = unsafe { std::mem::zeroed() };
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut left = n;
        while left > 0 {
            let k = left.min(RELAY_BATCH as u64) as usize;
            // SAFETY: k messages, each one iovec over the frame, which outlives the call (the
            // kernel only reads it); the socket is bound to gi-TID, so no address is needed.
            let r =
                unsafe { libc::sendmmsg(self.sock.as_raw_fd(), msgs.as_mut_ptr(), k as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        left -= 1;
                    }
                    Some(libc::EINTR) => {}
                    _ => {
                        return Err(e)
                            .with_context(|| format!("sendmmsg(2) into {}", self.pair.into));
                    }
                }
                continue;
            }
            let r = r as u64;
            self.accepted += r;
            left -= r;
            if r < k as u64 {
                // The next message failed, and sendmmsg(2) reports no error once some were
                // sent: the only failure of a sound frame on an up veth is its peer's full
                // ring (ENOBUFS), the frame dropped.
                self.refused.fetch_add(1, Ordering::Relaxed);
                left -= 1;
            }
        }
        Ok(())
    }

    /// Frames handed to `gi-TID` so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Frames refused so far (`go-TID`'s ring full).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The pair's names: (where the socket sends, where the program runs).
    pub fn devices(&self) -> (&str, &str) {
        (&self.pair.into, &self.pair.out)
    }

    /// Waits until `program` has run on every frame handed over since its counter read
    /// `start` (or `within` passed): whether it had.
    pub fn drain(&self, program: &Program, start: u64, within: Duration) -> Result<bool> {
        let end = Instant::now() + within;
        loop {
            if program.frames()? >= start + self.accepted {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A veth pair in the namespace of the thread that made it; deleted when dropped.
struct VethPair {
    /// The namespace (held open, so that the pair can be deleted from any thread).
    ns: File,
    into: String,
    out: String,
}

impl VethPair {
    /// `gi-TID` and `go-TID` in the calling thread's namespace.
    fn create() -> Result<VethPair> {
        let ns = File::open("/proc/thread-self/ns/net").context("opening my netns")?;
        // SAFETY: gettid(2) has no preconditions.
        let tid = unsafe { libc::gettid() };
        let (into, out) = (format!("gi-{tid}"), format!("go-{tid}"));
        run_in(
            &ns,
            "ip",
            &["link", "add", &into, "type", "veth", "peer", "name", &out],
        )?;
        Ok(VethPair { ns, into, out })
    }

    /// `program args` in the pair's namespace, failing with its stderr unless it succeeds.
    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        run_in(&self.ns, program, args)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        if let Err(e) = self.run("ip", &["link", "del", &self.out]) {
            eprintln!("xdpgen: deleting the relay's veth pair {}: {e:#}", self.out);
        }
    }
}

/// `program args` in the namespace of `ns`, an open namespace file of this process; fails with
/// the program's stderr unless it succeeds.
fn run_in(ns: &File, program: &str, args: &[&str]) -> Result<()> {
    let netns = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
    let placement = crate::proc::Placement {
        netns: Some(netns.into()),
        cgroup: None,
    };
    crate::proc::run_placed(program, args, &placement).map(drop)
}

/// An AF_PACKET raw socket bound to `ifindex` for sending (protocol 0: it receives nothing),
/// past the device's qdisc (PACKET_QDISC_BYPASS).
fn packet_socket(ifindex: u32) -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET, SOCK_RAW)");
    }
    // SAFETY: a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: an int option, its size given.
    if unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = i32::try_from(ifindex).context("an ifindex")?;
    // SAFETY: a sockaddr_ll, its size given.
    if unsafe {
        libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("binding to the device");
    }
    Ok(sock)
}

/// Attaches `prog` as native XDP to `dev` (in the calling thread's namespace) through a
/// bpf_link: detached when the link is closed (or the device goes).
fn attach_xdp(prog: &OwnedFd, dev: &str) -> Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex(dev)?,
        attach_type: ATTACH_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..LinkCreateAttr::default()
    };
    Ok(owned(bpf(BPF_LINK_CREATE, &mut attr)?))
}

/// Fails unless the calling thread is in a network namespace other than its process's (the
/// bench runs in the machine's own; its threads enter lab namespaces): the generator never
/// sends where the bench started.
fn not_in_root_netns() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let mine = std::fs::metadata("/proc/thread-self/ns/net").context("reading my netns")?;
    // /proc/self is the thread group's leader, the process's main thread.
    let root = std::fs::metadata("/proc/self/ns/net").context("reading the process's netns")?;
    if (mine.dev(), mine.ino()) == (root.dev(), root.ino()) {
        bail!("refusing to generate frames in the bench's own network namespace");
    }
    Ok(())
}

/// Moves the calling thread into the lab namespace `ns` (refusing any other).
fn enter(ns: &str) -> Result<()> {
    if !is_lab_ns(ns) || !netns::exists(ns) {
        bail!("refusing to generate frames outside a lab namespace (got {ns:?})");
    }
    let path = netns::path(ns);
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns(2) on an open namespace file; only the calling thread moves.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering {ns}"));
    }
    not_in_root_netns()
}

/// The index of `dev` in the calling thread's network namespace.
fn ifindex(dev: &str) -> Result<u32> {
    let name = std::ffi::CString::new(dev).context("device name")?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()).with_context(|| format!("no device {dev}")),
        i => Ok(i),
    }
}

/// Pins the calling thread to `cpu` and gives it `nice`; checks the pin took.
fn pin_self(cpu: usize, nice: i32) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; pid 0 is the
    // calling thread for sched_setaffinity and setpriority(PRIO_PROCESS).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning the generator to CPU {cpu}"));
    }
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting the generator to nice {nice}"));
    }
    // SAFETY: as above; sched_getcpu has no preconditions.
    let on = unsafe { libc::sched_getcpu() };
    if usize::try_from(on).ok() != Some(cpu) {
        bail!("the generator runs on CPU {on} after pinning to {cpu}");
    }
    Ok(())
}

/// Where and how the generator runs.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The lab namespace of the device.
    pub ns: String,
    /// The veth whose peer receives the frames (`v-node1`).
    pub dev: String,
    pub cpu: usize,
    pub nice: i32,
}

/// A generator running on its own thread until stopped.
pub struct Generator {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
    program: Arc<Program>,
    mode: Mode,
    /// Relay mode: frames the relay's veth refused (its ring full).
    relay_refused: Arc<AtomicU64>,
}

impl Generator {
    /// Starts a thread that enters `at.ns`, pins itself, loads the program for `flow`
    /// (redirecting to `at.dev`) and runs it until stopped: [`CHUNK`] live frames a call, or,
    /// where the kernel refuses live frames ([`mode`]), through a [`Relay`] of its own,
    /// [`RELAY_BATCH`] frames a call. Returns once the program is loaded (and the relay set
    /// up), or with why it could not be.
    pub fn start(at: &Placement, flow: Flow) -> Result<Generator> {
        let stop = Arc::new(AtomicBool::new(false));
        let relay_refused = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<Result<(Arc<Program>, Mode)>>();
        let at = at.clone();
        let stopped = stop.clone();
        let refused = relay_refused.clone();
        let handle = std::thread::Builder::new()
            .name("flood-xdpgen".into())
            .spawn(move || -> Result<()> {
                let setup = (|| {
                    enter(&at.ns)?;
                    pin_self(at.cpu, at.nice)?;
                    let mode = mode()?;
                    let program = Arc::new(Program::load(&flow, ifindex(&at.dev)?)?);
                    let relay = match &mode {
                        Mode::Live => None,
                        Mode::Relay { .. } => Some(
                            Relay::new(&program, refused)
                                .with_context(|| format!("the generator in {}", mode.describe()))?,
                        ),
                    };
                    Ok((program, mode, relay))
                })();
                let (program, mode, relay) = match setup {
                    Ok((p, m, r)) => {
                        let _ = tx.send(Ok((p.clone(), m.clone())));
                        (p, m, r)
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = tx.send(Err(e));
                        bail!("{msg}");
                    }
                };
                match relay {
                    None => {
                        while !stopped.load(Ordering::Relaxed) {
                            program.run_live(CHUNK, LIVE_BATCH)?;
                        }
                    }
                    Some(mut relay) => {
                        while !stopped.load(Ordering::Relaxed) {
                            relay
                                .send(RELAY_BATCH as u64)
                                .with_context(|| format!("the generator in {}", mode.describe()))?;
                        }
                    }
                }
                Ok(())
            })
            .context("starting the generator's thread")?;
        let (program, mode) = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => bail!("the generator's thread did not report within 10 s"),
        };
        Ok(Generator {
            stop,
            handle: Some(handle),
            program,
            mode,
            relay_refused,
        })
    }

    /// Whether the thread still runs (false: it failed, [`Generator::stop`] says why).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// How the frames reach the program.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Copies sent of each frame the program writes.
    pub fn fanout(&self) -> u32 {
        self.program.fanout()
    }

    /// Frames the program has written so far (each sent [`Generator::fanout`] times).
    pub fn frames(&self) -> Result<u64> {
        self.program.frames()
    }

    /// Relay mode: frames the relay's veth refused so far, before the program (its ring full);
    /// 0 in live mode.
    pub fn relay_refused(&self) -> u64 {
        self.relay_refused.load(Ordering::Relaxed)
    }

    /// Stops the thread (within one call: a chunk of live frames or a relay batch) and returns
    /// the frames made, or why it failed.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) | None => self.program.frames(),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => bail!("the generator's thread panicked"),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends `count` frames of `flow` slowly (`per_call` at a time, `pause` between), from a
/// thread in `at.ns` as [`Generator::start`]'s, in the kernel's [`mode`] (a relay waits, up to
/// a second, until the program has run on every frame before it goes): a probe of a path.
pub fn send_slowly(
    at: &Placement,
    flow: Flow,
    count: u32,
    per_call: u32,
    pause: Duration,
) -> Result<()> {
    let at = at.clone();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            enter(&at.ns)?;
            pin_self(at.cpu, at.nice)?;
            let mode = mode()?;
            let program = Program::load(&flow, ifindex(&at.dev)?)?;
            let mut relay = match &mode {
                Mode::Live => None,
                Mode::Relay { .. } => Some(
                    Relay::new(&program, Arc::default())
                        .with_context(|| format!("the probe in {}", mode.describe()))?,
                ),
            };
            let mut left = count;
            while left > 0 {
                let n = left.min(per_call);
                match &mut relay {
                    None => program.run_live(n, n.min(LIVE_BATCH))?,
                    Some(r) => r.send(u64::from(n))?,
                }
                left -= n;
                std::thread::sleep(pause);
            }
            if let Some(r) = &relay {
                r.drain(&program, 0, Duration::from_secs(1))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| bail!("the probe's thread panicked"))
    })
}

/// An XDP program attached to a lab device through a bpf_link: detached when dropped (or when
/// the process ends).
pub struct XdpSink {
    _link: OwnedFd,
    _prog: OwnedFd,
}

impl XdpSink {
    /// Attaches [`sink_program`] (native XDP) to `dev` in the lab namespace `ns`.
    pub fn attach(ns: &str, dev: &str, port: u16, dst: (Ipv4Addr, u8)) -> Result<XdpSink> {
        let (ns, dev) = (ns.to_owned(), dev.to_owned());
        std::thread::scope(|s| {
            s.spawn(|| -> Result<XdpSink> {
                enter(&ns)?;
                let prog = load("flood_sink", &sink_program(port, dst))?;
                let link = attach_xdp(&prog, &dev)
                    .with_context(|| format!("attaching the XDP sink to {dev} in {ns}"))?;
                Ok(XdpSink {
                    _link: link,
                    _prog: prog,
                })
            })
            .join()
            .unwrap_or_else(|_| bail!("the sink's thread panicked"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            dst: Ipv4Addr::new(192, 0, 2, 30),
            port: 9000,
        }
    }

    /// `f` as a forwarding path leaves it in its page: new MAC addresses, TTL one less, the
    /// destination translated (checksums left stale).
    fn forwarded(f: &[u8]) -> Vec<u8> {
        let mut g = f.to_vec();
        g[..12].copy_from_slice(&[0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x02, 1, 2, 3, 4, 5]);
        g[14 + 8] -= 1;
        g[14 + 16..14 + 20].copy_from_slice(&[10, 244, 2, 9]);
        g[36..38].copy_from_slice(&8080u16.to_be_bytes());
        g
    }

    #[test]
    fn frames_are_minimal_udp_with_coprime_counters() {
        let f = flow();
        let t = frame(&f, 0);
        assert_eq!(t.len(), FRAME_BYTES as usize);
        assert_eq!(14 + 20 + 8 + PAYLOAD as u32, FRAME_BYTES);
        let p = progtest::parse_ipv4(&t);
        assert_eq!(p.src, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.dst, f.dst);
        assert_eq!(p.proto, progtest::IPPROTO_UDP);
        assert_eq!(source(14), "198.18.0.15:1038".parse().unwrap());
        assert_eq!(source(1023), "198.18.0.4:2047".parse().unwrap());
        // Coprime periods: every (address, port) pair occurs once before any repeats.
        let all: std::collections::BTreeSet<SocketAddrV4> =
            (0..u64::from(FLOWS)).map(source).collect();
        assert_eq!(all.len(), FLOWS as usize);
        assert_eq!(FLOWS, 15_360);
        assert_eq!(source(u64::from(FLOWS)), source(0));
    }

    /// The program's arithmetic, modelled in Rust, against frames built from scratch: every
    /// flow, and over a page that holds another frame (a recycled page).
    #[test]
    fn checksum_arithmetic_matches_the_reference_frames() {
        let f = flow();
        let t = frame(&f, 0);
        let c = Consts::of(&t);
        for n in 0..u64::from(FLOWS) + 3 {
            let want = frame(&f, n);
            progtest::assert_checksums(&want);
            assert_eq!(c.emit(&t, &t, n), want, "frame {n} over the template");
            assert_eq!(
                c.emit(&t, &forwarded(&frame(&f, n + 7)), n),
                want,
                "frame {n} over frame {}",
                n + 7
            );
        }
        // Another destination changes the constants, not the method.
        let g = Flow {
            dst: Ipv4Addr::new(10, 244, 2, 2),
            port: 53,
            ..f
        };
        let c = Consts::of(&frame(&g, 0));
        for n in [0, 1, 14, 15, 1023, 1024, 15_359] {
            assert_eq!(c.emit(&frame(&g, 0), &[0xa5; 60], n), frame(&g, n));
        }
        // Whether a sum complements to 0 in these flows depends on the constants; the rule
        // is tested on the fold itself.
        let z = Consts {
            ip: 0,
            udp: 0xffff - 1 - 1024,
        };
        assert_eq!(
            z.checksums(0).1,
            0xffff,
            "a UDP checksum of 0 is sent as 0xffff"
        );
    }

    #[test]
    fn programs_encode_and_jump_inside() {
        for p in [
            generator_program(3, 4, &frame(&flow(), 0)),
            sink_program(9000, (Ipv4Addr::new(10, 244, 2, 0), 24)),
        ] {
            assert_eq!(p.last().unwrap().code, EXIT);
            for (i, x) in p.iter().enumerate() {
                if matches!(x.code, JEQ_K | JNE_K | JGT_X | JNE32_K) {
                    let to = i as i64 + 1 + i64::from(x.off);
                    assert!(
                        to > i as i64 && (to as usize) < p.len(),
                        "jump at {i}: {p:?}"
                    );
                }
            }
        }
        assert_eq!(
            insn(MOV64_K, R0, 0, 0, 2).encode().to_le_bytes(),
            [0xb7, 0, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(
            insn(STX_H, R2, R4, 34, 0).encode().to_le_bytes(),
            [0x6b, 0x42, 34, 0, 0, 0, 0, 0]
        );
    }

    /// The real program in the kernel (BPF_PROG_RUN, not live: nothing is sent): every flow's
    /// frame byte for byte as built from scratch, its verdict a redirect, the counter advanced
    /// once a frame; over a page holding another frame, the same bytes.
    #[test]
    fn the_program_writes_the_reference_frames() {
        let f = flow();
        let p = Program::load(&f, 1).expect("loading the generator");
        let t = frame(&f, 0);
        for n in 0..u64::from(FLOWS) + 2 {
            let (verdict, out) = p.run_once(&t).expect("BPF_PROG_RUN");
            assert_eq!(verdict, XDP_REDIRECT, "frame {n}");
            assert_eq!(out, frame(&f, n), "frame {n}");
        }
        assert_eq!(p.frames().unwrap(), u64::from(FLOWS) + 2);
        p.set_frames(3).unwrap();
        let (_, out) = p.run_once(&forwarded(&frame(&f, 11))).unwrap();
        assert_eq!(
            out,
            frame(&f, 3),
            "over a page a forwarding path wrote into"
        );
        let (_, out) = p.run_once(&[0xa5; 60]).unwrap();
        assert_eq!(out, frame(&f, 4), "over a page of garbage");
        // Too short to write: dropped, untouched.
        let (verdict, out) = p.run_once(&t[..56]).unwrap();
        assert_eq!((verdict, out.as_slice()), (XDP_DROP, &t[..56]));
    }

    /// A namespace of the test's own (the calling thread's, [`progtest::isolated`]) with a
    /// veth pair `va` → `vb`, `vb` with NAPI (GRO asked for: veth takes XDP frames for a peer
    /// only then): runs `args` there, and reads `va`'s `ethtool -S` counters.
    struct Segment {
        net: String,
    }

    impl Segment {
        fn new() -> Segment {
            not_in_root_netns().expect("an isolated namespace");
            // SAFETY: gettid(2) has no preconditions.
            let tid = unsafe { libc::gettid() };
            let s = Segment {
                net: format!("--net=/proc/{}/task/{tid}/ns/net", std::process::id()),
            };
            // No IPv6 on the pair: the stack's own frames (router solicitations, MLD) would
            // be counted with the generator's at vb.
            if std::path::Path::new("/proc/sys/net/ipv6").exists() {
                std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").unwrap();
            }
            s.sh(&[
                "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb",
            ]);
            s.sh(&["ip", "link", "set", "va", "up"]);
            s.sh(&["ip", "link", "set", "vb", "up"]);
            s.sh(&["ethtool", "-K", "vb", "gro", "off"]);
            s.sh(&["ethtool", "-K", "vb", "gro", "on"]);
            s
        }

        fn sh(&self, args: &[&str]) -> String {
            let out = std::process::Command::new("nsenter")
                .arg(&self.net)
                .args(args)
                .output()
                .expect("nsenter");
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// `va`'s counter `name` (`ethtool -S`).
        fn stat(&self, name: &str) -> u64 {
            self.sh(&["ethtool", "-S", "va"])
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(&format!("{name}: "))
                        .map(str::to_owned)
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} on va"))
        }

        /// The namespace's devices.
        fn links(&self) -> Vec<String> {
            self.sh(&["ip", "-o", "link", "show"])
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_owned())
                .collect()
        }
    }

    /// Live frames in a namespace of the test's own, where the kernel allows them: the
    /// program's redirect to a veth puts every frame in its peer's ring (the veth's `xdp_xmit`
    /// counter), where the peer's NAPI takes them; none is refused, since the peer drains its
    /// ring between batches on the same CPU. Where the kernel refuses them, the probe must say
    /// so: its answer is checked against what a live run of the generator does. Needs root (a
    /// network namespace).
    #[test]
    fn live_frames_reach_the_peer_of_the_veth_or_the_probe_picks_relay() {
        progtest::isolated(|| {
            let seg = Segment::new();
            let p = Program::load(&flow(), ifindex("va").unwrap()).expect("loading");
            let live = p.run_live(1000, LIVE_BATCH);
            match probe().expect("probing live frames") {
                Mode::Live => {
                    live.expect("the probe said live, so a live run");
                    assert_eq!(p.frames().unwrap(), 1000);
                    assert_eq!(
                        seg.stat("tx_queue_0_xdp_xmit"),
                        1000 * u64::from(FANOUT),
                        "each frame {FANOUT} times"
                    );
                    assert_eq!(seg.stat("tx_queue_0_xdp_xmit_errors"), 0);
                }
                Mode::Relay { refused } => {
                    let e = live.expect_err("the probe said relay, but a live run worked");
                    let errno = e
                        .chain()
                        .find_map(|c| c.downcast_ref::<std::io::Error>())
                        .and_then(std::io::Error::raw_os_error);
                    assert!(
                        matches!(errno, Some(libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL)),
                        "a live run failed otherwise than by the kernel's refusal: {e:#}"
                    );
                    let e = std::io::Error::from_raw_os_error(errno.unwrap());
                    assert!(refused.ends_with(&e.to_string()), "{refused} vs {e}");
                    assert_eq!(p.frames().unwrap(), 0, "a refused run ran nothing");
                    assert_eq!(seg.stat("tx_queue_0_xdp_xmit"), 0);
                }
            }
            // The generator refuses namespaces other than a lab's.
            assert!(enter("not-a-lab").is_err());
        });
    }

    /// The relay, whatever the kernel allows, in a namespace of the test's own: the frames the
    /// socket sends into the relay's pair run the program in the pair's native XDP, whose
    /// broadcast hands [`FANOUT`] copies of each to `va`'s `ndo_xdp_xmit` (its `xdp_xmit`
    /// counter), as in live mode; none refused at either ring (the NAPI polls run on the
    /// sending CPU between frames); and the pair goes with the relay. Needs root.
    #[test]
    fn the_relay_delivers_every_frame_to_the_peer_of_the_veth() {
        progtest::isolated(|| {
            let seg = Segment::new();
            let p = Program::load(&flow(), ifindex("va").unwrap()).expect("loading");
            let mut relay = Relay::new(&p, Arc::default()).expect("setting up the relay");
            let (into, out) = (relay.devices().0.to_owned(), relay.devices().1.to_owned());
            assert!(
                seg.links().contains(&into) && seg.links().contains(&out),
                "{:?}",
                seg.links()
            );
            const N: u64 = 10_000;
            relay.send(N).expect("sending");
            assert!(
                relay.drain(&p, 0, Duration::from_secs(5)).unwrap(),
                "the program ran on {} of {} frames",
                p.frames().unwrap(),
                relay.accepted()
            );
            assert_eq!((relay.accepted(), relay.refused()), (N, 0));
            assert_eq!(p.frames().unwrap(), N);
            // Each frame FANOUT times (the broadcast's copies), none refused.
            let sent = N * u64::from(FANOUT);
            assert_eq!(seg.stat("tx_queue_0_xdp_xmit"), sent);
            assert_eq!(seg.stat("tx_queue_0_xdp_xmit_errors"), 0);
            // The frames are the flood's, byte for byte: vb received them (as an XDP frame
            // then an skb, its stack dropping them) with their lengths.
            let rx: serde_json::Value =
                serde_json::from_str(&seg.sh(&["ip", "-j", "-s", "link", "show", "dev", "vb"]))
                    .unwrap();
            assert_eq!(rx[0]["stats64"]["rx"]["packets"].as_u64(), Some(sent));
            assert_eq!(
                rx[0]["stats64"]["rx"]["bytes"].as_u64(),
                Some(sent * u64::from(FRAME_BYTES))
            );
            drop(relay);
            let links = seg.links();
            assert!(
                !links.contains(&into) && !links.contains(&out),
                "the pair outlived the relay: {links:?}"
            );
            // The relay refuses the process's own namespace.
            let refused = std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: setns(2) back into the process's namespace, this thread only.
                    let root = File::open("/proc/self/ns/net").unwrap();
                    assert_eq!(
                        unsafe { libc::setns(root.as_raw_fd(), libc::CLONE_NEWNET) },
                        0
                    );
                    Relay::new(&p, Arc::default())
                        .err()
                        .map(|e| format!("{e:#}"))
                })
                .join()
                .unwrap()
            });
            assert!(
                refused.is_some_and(|e| e.contains("bench's own network namespace")),
                "the relay must refuse the root namespace"
            );
        });
    }

    /// An AF_PACKET socket that receives what `dev` (in the calling thread's namespace)
    /// receives, after its GRO: the frames as the stack sees them.
    struct Tap(OwnedFd);

    impl Tap {
        fn on(dev: &str) -> Tap {
            let all = i32::from((libc::ETH_P_ALL as u16).to_be());
            // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, all) };
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            // SAFETY: a new descriptor that nothing else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            // Room for every frame of a test (an skb of a 60-byte frame takes ~1 KiB).
            let size: libc::c_int = 64 << 20;
            // SAFETY: an int option, its size given.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &size as *const libc::c_int as *const libc::c_void,
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all as u16;
            sll.sll_ifindex = ifindex(dev).unwrap() as i32;
            // SAFETY: a sockaddr_ll, its size given.
            let r = unsafe {
                libc::bind(
                    fd,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            Tap(sock)
        }

        /// Frames the socket dropped (its buffer full) since the last call
        /// (PACKET_STATISTICS, which the read resets).
        fn drops(&self) -> u32 {
            let mut st = libc::tpacket_stats {
                tp_packets: 0,
                tp_drops: 0,
            };
            let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
            // SAFETY: a tpacket_stats, its size given.
            let r = unsafe {
                libc::getsockopt(
                    self.0.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            st.tp_drops
        }

        /// The frames received so far (not those the device sent) into `got`, until `n` in
        /// all or none for `quiet`.
        fn take(&self, got: &mut Vec<Vec<u8>>, n: usize, quiet: Duration) {
            let mut quiet_since = Instant::now();
            let mut buf = [0u8; 2048];
            while got.len() < n && quiet_since.elapsed() < quiet {
                // SAFETY: sockaddr_ll is plain data.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: a buffer and an address of the sizes given.
                let r = unsafe {
                    libc::recvfrom(
                        self.0.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if r < 0 {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                quiet_since = Instant::now();
                if from.sll_pkttype != libc::PACKET_OUTGOING {
                    got.push(buf[..r as usize].to_vec());
                }
            }
        }
    }

    /// The broadcast multiplies: N frames written become `fanout` × N frames handed to `va`'s
    /// `ndo_xdp_xmit` (its `xdp_xmit` counter; a devmap may hold one device under several
    /// keys, and the broadcast sends a copy to each), none refused (`xdp_xmit_errors`), for a
    /// fanout of 1, 3 and [`FANOUT`]. What `vb`'s stack receives, after its GRO: each frame
    /// `fanout` times in a row, byte for byte, every copy a 60-byte frame of its own (GRO
    /// merges none of the identical UDP frames: no UDP GRO for traffic to no local socket).
    /// Needs root.
    #[test]
    fn the_broadcast_sends_each_frame_fanout_times() {
        progtest::isolated(|| {
            let seg = Segment::new();
            let va = ifindex("va").unwrap();
            let tap = Tap::on("vb");
            const N: u64 = 1000;
            for k in [1, 3, FANOUT] {
                let p = Program::with_fanout(&flow(), va, k).expect("loading");
                assert_eq!(p.fanout(), k);
                let mut relay = Relay::new(&p, Arc::default()).expect("setting up the relay");
                let xmit0 = seg.stat("tx_queue_0_xdp_xmit");
                let errors0 = seg.stat("tx_queue_0_xdp_xmit_errors");
                let sent = u64::from(k) * N;
                // In steps of 25 frames written, the tap read between (it holds a few
                // thousand of these skbs, each around a page).
                let mut got = Vec::new();
                for _ in 0..N / 25 {
                    relay.send(25).expect("sending");
                    tap.take(&mut got, sent as usize, Duration::from_millis(2));
                }
                assert!(relay.drain(&p, 0, Duration::from_secs(5)).unwrap());
                assert_eq!((relay.accepted(), relay.refused()), (N, 0), "fanout {k}");
                assert_eq!(p.frames().unwrap(), N, "fanout {k}");
                assert_eq!(
                    seg.stat("tx_queue_0_xdp_xmit") - xmit0,
                    sent,
                    "fanout {k}: {N} frames written"
                );
                assert_eq!(
                    seg.stat("tx_queue_0_xdp_xmit_errors") - errors0,
                    0,
                    "fanout {k}"
                );
                tap.take(&mut got, sent as usize + 1, Duration::from_millis(200));
                assert_eq!(tap.drops(), 0, "fanout {k}: the tap's buffer overflowed");
                assert_eq!(
                    got.len() as u64,
                    sent,
                    "fanout {k}: frames vb's stack received"
                );
                for (i, f) in got.iter().enumerate() {
                    let n = i as u64 / u64::from(k);
                    assert!(
                        *f == frame(&flow(), n),
                        "fanout {k}: frame {i} is not frame {n}'s copy"
                    );
                }
            }
            assert!(
                Program::with_fanout(&flow(), va, 0).is_err(),
                "a fanout of 0 would send nothing"
            );
        });
    }

    /// The sink program in the kernel: drops the flood's frames to node2's pods, passes the rest.
    #[test]
    fn the_sink_drops_the_floods_frames_only() {
        let prog = load(
            "flood_sink",
            &sink_program(9000, (Ipv4Addr::new(10, 244, 2, 0), 24)),
        )
        .expect("loading the sink");
        let to = |dst: Ipv4Addr, port: u16| {
            frame(
                &Flow {
                    dst,
                    port,
                    ..flow()
                },
                5,
            )
        };
        let run = |f: &[u8]| progtest::test_run(prog.as_raw_fd(), f, 0).unwrap().retval;
        assert_eq!(run(&to(Ipv4Addr::new(10, 244, 2, 7), 9000)), XDP_DROP);
        assert_eq!(run(&to(Ipv4Addr::new(10, 244, 2, 7), 9001)), XDP_PASS);
        assert_eq!(run(&to(Ipv4Addr::new(10, 244, 1, 7), 9000)), XDP_PASS);
        let mut arp = to(Ipv4Addr::new(10, 244, 2, 7), 9000);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&arp), XDP_PASS);
        let mut tcp = to(Ipv4Addr::new(10, 244, 2, 7), 9000);
        tcp[14 + 9] = progtest::IPPROTO_TCP;
        assert_eq!(run(&tcp), XDP_PASS);
        assert_eq!(run(&to(Ipv4Addr::new(10, 244, 2, 7), 9000)[..30]), XDP_PASS);
    }
}
