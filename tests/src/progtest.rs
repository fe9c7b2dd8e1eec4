//! Running ferry's TC programs on hand-built packets with BPF_PROG_TEST_RUN.
//!
//! A [`ProgTest`] loads the eBPF object with its maps pinned in a private bpffs (mounted under
//! `/tmp/ferry-lab-<id>/bpffs`, unmounted and removed on drop, on a panic, and by the lab's
//! signal handlers), loads the requested programs **without attaching them anywhere**, and runs
//! them on byte buffers. [`isolated`] runs a test body on a thread of its own in a fresh network
//! namespace, so the FIB lookups the programs make see only what the test sets up.
//!
//! The packet builders compute every checksum from scratch with their own RFC 1071 code, so a
//! test can build the packet it expects and compare bytes. The table tests (packet tests as
//! rows of data) build on them: [`table`], [`frames`], [`fixture`], [`net`].

use std::{
    fs::{self, File},
    io::Read as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

pub mod fixture;
pub mod frames;
pub mod net;
pub mod next_hop;
pub mod table;

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader, programs::Program};

use crate::{
    cleanup::{self, LAB_PREFIX, Record},
    lab::mount_bpffs,
};

/// A bpffs instance of the test's own, registered with the lab cleanup.
pub struct PrivateBpffs {
    record: Record,
}

impl PrivateBpffs {
    pub fn new() -> Result<Self> {
        cleanup::sweep_stale();
        let (id, tmp) = claim_dir()?;
        let mount = tmp.join("bpffs");
        let record = Record {
            id,
            owner_pid: std::process::id(),
            tmp,
            bpffs_mount: mount.clone(),
            ..Record::default()
        };
        cleanup::register(record.clone());
        // From here on a failure drops `me`, which removes the directory.
        let me = PrivateBpffs { record };
        fs::create_dir(&mount)?;
        mount_bpffs(&mount)?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.record.bpffs_mount
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        for e in cleanup::teardown(&self.record) {
            eprintln!("progtest {}: {e}", self.record.id);
        }
        cleanup::unregister(&self.record.id);
    }
}

fn claim_dir() -> Result<(String, PathBuf)> {
    for _ in 0..32 {
        let mut bytes = [0u8; 3];
        File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = PathBuf::from(format!("/tmp/{LAB_PREFIX}{id}"));
        match fs::create_dir(&tmp) {
            Ok(()) => return Ok((id, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", tmp.display())),
        }
    }
    bail!("no free /tmp/{LAB_PREFIX}<id> directory")
}

/// The loaded object (maps pinned in a private bpffs) and its loaded, unattached programs.
pub struct ProgTest {
    // Dropped first: the maps' descriptors close before the bpffs goes.
    pub ebpf: Ebpf,
    pub bpffs: PrivateBpffs,
}

impl ProgTest {
    /// Loads `object` and the programs named in `programs` (TC classifiers, XDP) (the
    /// verifier runs here). Nothing is attached.
    pub fn load(object: &[u8], programs: &[&str]) -> Result<Self> {
        Self::load_sized(object, programs, &[])
    }

    /// [`ProgTest::load`] with some maps given another capacity (`(name, max_entries)`).
    pub fn load_sized(object: &[u8], programs: &[&str], sizes: &[(&str, u32)]) -> Result<Self> {
        if object.is_empty() {
            bail!("the eBPF object is empty (built with AYA_BUILD_SKIP=1?)");
        }
        let bpffs = PrivateBpffs::new()?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(bpffs.path());
        for &(name, size) in sizes {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader.load(object).context("loading the eBPF object")?;
        for &name in programs {
            let loaded = match ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
            {
                Program::SchedClassifier(p) => p.load(),
                Program::Xdp(p) => p.load(),
                _ => bail!("{name} is neither a classifier nor an XDP program"),
            };
            loaded.with_context(|| format!("loading {name} (verifier)"))?;
        }
        Ok(ProgTest { ebpf, bpffs })
    }

    /// Runs a loaded classifier once on `frame` (an Ethernet frame). The skb's device is the
    /// namespace's loopback (ifindex 1), as BPF_PROG_TEST_RUN makes it without a context.
    pub fn run(&self, program: &str, frame: &[u8]) -> TestRun {
        self.run_flags(program, frame, 0)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {program}: {e:#}"))
    }

    pub fn run_flags(&self, program: &str, frame: &[u8], flags: u32) -> Result<TestRun> {
        let fd = self
            .ebpf
            .program(program)
            .with_context(|| format!("no program {program}"))?
            .fd()?
            .as_fd()
            .as_raw_fd();
        test_run(fd, frame, flags)
    }
}

/// What one BPF_PROG_TEST_RUN gave back.
#[derive(Debug)]
pub struct TestRun {
    /// The program's return value (a TC verdict, -1 reading as 0xffffffff; or an XDP action).
    pub retval: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    /// The kernel's average time per run, in ns.
    pub duration_ns: u32,
}

impl TestRun {
    pub fn verdict(&self) -> i32 {
        self.retval as i32
    }
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the `test` member).
#[repr(C)]
#[derive(Default)]
pub struct TestRunAttr {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
    pub flags: u32,
    pub cpu: u32,
    pub batch_size: u32,
    pub _pad: u32,
}

const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);

/// `union bpf_attr` for BPF_PROG_LOAD, as far as it is used here.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// bpf(2) with the `bpf_attr` layout `T` of command `cmd`.
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: every caller passes the bpf_attr layout of its command, whose pointers (if any)
    // point at buffers that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The descriptor bpf(2) returned, owned.
pub fn owned(fd: i64) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: bpf(2) returned a new descriptor that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Loads a program of `prog_type` from raw instructions (`code`, encoded), named `name`
/// (its first 15 bytes); the verifier's last lines in the error if it refuses.
pub fn load_raw(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    code: &[u64],
) -> Result<std::os::fd::OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    match bpf(5, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            bail!(
                "loading the program {name}: {e}; verifier: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Give the skb CHECKSUM_COMPLETE with the frame's sum, and fail the run (EBADMSG or EINVAL)
/// if the program leaves `skb->csum` inconsistent with the bytes.
pub const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;

/// BPF_PROG_TEST_RUN through bpf(2): one run (`repeat` 1), no context.
pub fn test_run(prog_fd: i32, frame: &[u8], flags: u32) -> Result<TestRun> {
    test_run_repeat(prog_fd, frame, flags, 1)
}

/// BPF_PROG_TEST_RUN with `repeat` runs on one skb (each run sees what the
/// previous one left): the last verdict and packet, the average duration.
pub fn test_run_repeat(prog_fd: i32, frame: &[u8], flags: u32, repeat: u32) -> Result<TestRun> {
    let mut out = vec![0u8; 4096];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        flags,
        ..TestRunAttr::default()
    };
    // The buffers outlive the call and their sizes are the ones given.
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("bpf(BPF_PROG_TEST_RUN)")?;
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        retval: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}

/// Runs `body` on a new thread inside a new, empty network namespace (only `lo`, down), which
/// goes away with the thread. Panics propagate.
pub fn isolated<F: FnOnce() + Send + 'static>(body: F) {
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread (CLONE_NEWNET is per task).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        body();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_HLEN: usize = 14;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// RFC 1071: the one's complement of the one's complement sum of big-endian 16-bit words
/// (an odd last byte padded with zero), starting from `initial` (an unfolded partial sum).
pub fn checksum(initial: u32, bytes: &[u8]) -> u16 {
    !fold(sum(initial, bytes))
}

/// The one's complement sum (unfolded) of `bytes` added to `acc`.
pub fn sum(acc: u32, bytes: &[u8]) -> u32 {
    let mut acc = acc as u64;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        acc += word as u64;
    }
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The TCP/UDP pseudo-header's partial sum.
pub fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> u32 {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&[0, proto]);
    b.extend_from_slice(&(l4_len as u16).to_be_bytes());
    sum(0, &b)
}

/// IP header fields a builder does not derive.
#[derive(Clone, Copy, Debug)]
pub struct IpOpts {
    pub tos: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub ttl: u8,
}

impl Default for IpOpts {
    fn default() -> Self {
        IpOpts {
            tos: 0,
            id: 0x1234,
            dont_fragment: true,
            ttl: 64,
        }
    }
}

/// An IPv4 header (no options) with its checksum, followed by `payload`.
pub fn ipv4(opts: IpOpts, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[1] = opts.tos;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&opts.id.to_be_bytes());
    h[6..8].copy_from_slice(&(if opts.dont_fragment { 0x4000u16 } else { 0 }).to_be_bytes());
    h[8] = opts.ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(0, &h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv4 header carrying `options` (a multiple of 4 bytes, at most 40) with its checksum,
/// followed by `payload`.
pub fn ipv4_with_options(
    opts: IpOpts,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 40,
        "IPv4 options of {} bytes",
        options.len()
    );
    let mut p = ipv4(opts, src, dst, proto, payload);
    let hlen = 20 + options.len();
    p[0] = 0x40 | (hlen / 4) as u8;
    p.splice(20..20, options.iter().copied());
    let tot = p.len() as u16;
    p[2..4].copy_from_slice(&tot.to_be_bytes());
    p[10] = 0;
    p[11] = 0;
    let c = checksum(0, &p[..hlen]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// A TCP segment (20-byte header, window 64240) with its checksum.
pub fn tcp(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = vec![0u8; 20];
    s[0..2].copy_from_slice(&src.port().to_be_bytes());
    s[2..4].copy_from_slice(&dst.port().to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[12] = 5 << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    s.extend_from_slice(payload);
    let c = checksum(pseudo_sum(*src.ip(), *dst.ip(), IPPROTO_TCP, s.len()), &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A UDP datagram with its checksum (`with_checksum` false: the "no checksum" 0).
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], with_checksum: bool) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[0..2].copy_from_slice(&src.port().to_be_bytes());
    d[2..4].copy_from_slice(&dst.port().to_be_bytes());
    d[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(payload);
    if with_checksum {
        let c = checksum(pseudo_sum(*src.ip(), *dst.ip(), IPPROTO_UDP, d.len()), &d);
        let c = if c == 0 { 0xffff } else { c };
        d[6..8].copy_from_slice(&c.to_be_bytes());
    }
    d
}

/// An ICMP message (type, code, the 4 "rest of header" bytes, body) with its checksum.
pub fn icmp(ty: u8, code: u8, rest: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(body);
    let c = checksum(0, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A parsed IPv4 frame, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ttl: u8,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TCP/UDP ports (0 for other protocols).
    pub sport: u16,
    pub dport: u16,
    /// The IP payload (as long as the IP total length says).
    pub l4: Vec<u8>,
}

pub fn parse_ipv4(frame: &[u8]) -> Ipv4Frame {
    assert!(
        frame.len() >= ETH_HLEN + 20,
        "frame too short: {}",
        frame.len()
    );
    assert_eq!(
        u16::from_be_bytes([frame[12], frame[13]]),
        ETH_P_IP,
        "not IPv4"
    );
    let ip = &frame[ETH_HLEN..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert!(
        ip.len() >= tot && tot >= ihl,
        "IP total length {tot} vs {}",
        ip.len()
    );
    let l4 = ip[ihl..tot].to_vec();
    let (sport, dport) = if (ip[9] == IPPROTO_TCP || ip[9] == IPPROTO_UDP) && l4.len() >= 4 {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    } else {
        (0, 0)
    };
    Ipv4Frame {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        ttl: ip[8],
        proto: ip[9],
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport,
        dport,
        l4,
    }
}

/// Checks, from scratch, that the IP header checksum and the TCP/UDP/ICMP checksum of an IPv4
/// frame are right (an ICMP error's quoted IP header too). Panics with what is wrong.
pub fn assert_checksums(frame: &[u8]) {
    let ip = &frame[ETH_HLEN..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    assert_eq!(fold(sum(0, &ip[..ihl])), 0xffff, "IP header checksum");
    let f = parse_ipv4(frame);
    match f.proto {
        IPPROTO_TCP => {
            let s = pseudo_sum(f.src, f.dst, IPPROTO_TCP, f.l4.len());
            assert_eq!(fold(sum(s, &f.l4)), 0xffff, "TCP checksum");
        }
        IPPROTO_UDP => {
            if f.l4[6..8] != [0, 0] {
                let s = pseudo_sum(f.src, f.dst, IPPROTO_UDP, f.l4.len());
                assert_eq!(fold(sum(s, &f.l4)), 0xffff, "UDP checksum");
            }
        }
        IPPROTO_ICMP => {
            assert_eq!(fold(sum(0, &f.l4)), 0xffff, "ICMP checksum");
            if matches!(f.l4[0], 3 | 11) && f.l4.len() >= 28 {
                let q = &f.l4[8..];
                let qihl = ((q[0] & 0x0f) as usize) * 4;
                assert_eq!(
                    fold(sum(0, &q[..qihl])),
                    0xffff,
                    "quoted IP header checksum"
                );
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// IPv6 packets

pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
/// Extension headers (RFC 8200): hop-by-hop options, routing, fragment, destination options.
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_DEST: u8 = 60;

/// The IPv6 pseudo-header's partial sum (RFC 8200 8.1): addresses, upper-layer length, next
/// header.
pub fn pseudo_sum_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4_len: usize) -> u32 {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&(l4_len as u32).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, next_header]);
    sum(0, &b)
}

/// IPv6 header fields a builder does not derive.
#[derive(Clone, Copy, Debug)]
pub struct Ip6Opts {
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
    pub hop_limit: u8,
}

impl Default for Ip6Opts {
    fn default() -> Self {
        Ip6Opts {
            traffic_class: 0,
            flow_label: 0x12345,
            hop_limit: 64,
        }
    }
}

/// An IPv6 header whose next header is `next_header`, followed by `payload` (extension
/// headers, if any, and the upper-layer packet).
pub fn ipv6(
    opts: Ip6Opts,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload: &[u8],
) -> Vec<u8> {
    let first = (6u32 << 28) | ((opts.traffic_class as u32) << 20) | (opts.flow_label & 0xfffff);
    let mut h = Vec::with_capacity(IPV6_HLEN + payload.len());
    h.extend_from_slice(&first.to_be_bytes());
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(next_header);
    h.push(opts.hop_limit);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A hop-by-hop or destination options header (`next` follows it) carrying `options`, padded
/// with PadN (or Pad1) to a multiple of 8 bytes.
pub fn options_header(next: u8, options: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(options);
    let pad = (8 - h.len() % 8) % 8;
    match pad {
        0 => {}
        1 => h.push(0),
        n => {
            h.push(1);
            h.push((n - 2) as u8);
            h.extend(std::iter::repeat_n(0, n - 2));
        }
    }
    h[1] = (h.len() / 8 - 1) as u8;
    h
}

/// A routing header (`next` follows it) of `routing_type` with `segments_left` and `addresses`.
pub fn routing_header(
    next: u8,
    routing_type: u8,
    segments_left: u8,
    addresses: &[Ipv6Addr],
) -> Vec<u8> {
    let mut h = vec![
        next,
        (addresses.len() * 2) as u8,
        routing_type,
        segments_left,
        0,
        0,
        0,
        0,
    ];
    for a in addresses {
        h.extend_from_slice(&a.octets());
    }
    h
}

/// A fragment header (`next` follows it): `offset` in 8-byte units, `more` fragments.
pub fn fragment_header(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset << 3) | more as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// The TCP header and payload with the checksum for the pseudo-header sum `pseudo`.
fn tcp_with(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    pseudo: impl Fn(usize) -> u32,
) -> Vec<u8> {
    let mut s = vec![0u8; 20];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[12] = 5 << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    s.extend_from_slice(payload);
    let c = checksum(pseudo(s.len()), &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A TCP segment (20-byte header, window 64240) with its checksum over the IPv6 pseudo-header.
pub fn tcp6(
    src: SocketAddrV6,
    dst: SocketAddrV6,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    tcp_with(src.port(), dst.port(), seq, ack, flags, payload, |len| {
        pseudo_sum_v6(*src.ip(), *dst.ip(), IPPROTO_TCP, len)
    })
}

/// A UDP datagram with its checksum over the IPv6 pseudo-header (a computed 0 sent as
/// 0xffff; `with_checksum` false: the 0 IPv6 forbids).
pub fn udp6(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8], with_checksum: bool) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[0..2].copy_from_slice(&src.port().to_be_bytes());
    d[2..4].copy_from_slice(&dst.port().to_be_bytes());
    d[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(payload);
    if with_checksum {
        let c = checksum(
            pseudo_sum_v6(*src.ip(), *dst.ip(), IPPROTO_UDP, d.len()),
            &d,
        );
        let c = if c == 0 { 0xffff } else { c };
        d[6..8].copy_from_slice(&c.to_be_bytes());
    }
    d
}

/// An ICMPv6 message from `src` to `dst` (type, code, the 4 "rest of header" bytes, body) with
/// its checksum, which covers the pseudo-header.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, rest: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(body);
    let c = checksum(pseudo_sum_v6(src, dst, IPPROTO_ICMPV6, m.len()), &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A parsed IPv6 frame, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The upper-layer protocol, past the extension headers.
    pub proto: u8,
    /// TCP/UDP ports (0 for other protocols).
    pub sport: u16,
    pub dport: u16,
    /// The upper-layer packet (to the end of the payload length).
    pub l4: Vec<u8>,
}

/// The upper-layer protocol of the IPv6 packet `ip` and where it starts, past hop-by-hop,
/// routing, fragment and destination options headers.
pub fn ipv6_upper(ip: &[u8]) -> (u8, usize) {
    let (mut next, mut off) = (ip[6], IPV6_HLEN);
    loop {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let len = (ip[off + 1] as usize + 1) * 8;
                next = ip[off];
                off += len;
            }
            NEXTHDR_FRAGMENT => {
                next = ip[off];
                off += 8;
            }
            _ => return (next, off),
        }
    }
}

pub fn parse_ipv6(frame: &[u8]) -> Ipv6Frame {
    assert!(
        frame.len() >= ETH_HLEN + IPV6_HLEN,
        "frame too short: {}",
        frame.len()
    );
    assert_eq!(
        u16::from_be_bytes([frame[12], frame[13]]),
        ETH_P_IPV6,
        "not IPv6"
    );
    let ip = &frame[ETH_HLEN..];
    assert_eq!(ip[0] >> 4, 6, "IP version");
    let end = IPV6_HLEN + u16::from_be_bytes([ip[4], ip[5]]) as usize;
    assert!(ip.len() >= end, "payload length {end} vs {}", ip.len());
    let (proto, l4_off) = ipv6_upper(&ip[..end]);
    let l4 = ip[l4_off..end].to_vec();
    let (sport, dport) = if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && l4.len() >= 4 {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    } else {
        (0, 0)
    };
    let addr = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap());
    Ipv6Frame {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        hop_limit: ip[7],
        src: addr(8),
        dst: addr(24),
        proto,
        sport,
        dport,
        l4,
    }
}

/// Checks, from scratch, the TCP/UDP/ICMPv6 checksum of an IPv6 frame (pseudo-header
/// included; a fragment's TCP/UDP checksum covers bytes it does not hold and is not checked)
/// and, for an ICMPv6 error quoting a whole UDP datagram or TCP segment, the quoted one's.
/// Panics with what is wrong.
pub fn assert_checksums_v6(frame: &[u8]) {
    let f = parse_ipv6(frame);
    let ip = &frame[ETH_HLEN..];
    let fragment = {
        let (mut next, mut off) = (ip[6], IPV6_HLEN);
        let mut frag = false;
        while matches!(
            next,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
        ) {
            frag |= next == NEXTHDR_FRAGMENT;
            let len = if next == NEXTHDR_FRAGMENT {
                8
            } else {
                (ip[off + 1] as usize + 1) * 8
            };
            next = ip[off];
            off += len;
        }
        frag
    };
    let ok = |what: &str, l4: &[u8], src, dst, proto| {
        let s = pseudo_sum_v6(src, dst, proto, l4.len());
        assert_eq!(fold(sum(s, l4)), 0xffff, "{what} checksum");
    };
    match f.proto {
        IPPROTO_TCP | IPPROTO_UDP if !fragment => ok("L4", &f.l4, f.src, f.dst, f.proto),
        IPPROTO_ICMPV6 => {
            ok("ICMPv6", &f.l4, f.src, f.dst, IPPROTO_ICMPV6);
            if f.l4[0] < 128 && f.l4.len() >= 8 + IPV6_HLEN {
                let q = &f.l4[8..];
                let qlen = IPV6_HLEN + u16::from_be_bytes([q[4], q[5]]) as usize;
                let (qproto, qoff) = ipv6_upper(q);
                let addr = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&q[o..o + 16]).unwrap());
                if q.len() == qlen && (qproto == IPPROTO_TCP || qproto == IPPROTO_UDP) {
                    ok("quoted L4", &q[qoff..], addr(8), addr(24), qproto);
                }
            }
        }
        _ => {}
    }
}
