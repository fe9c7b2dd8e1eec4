//! Running ferry's TC programs on hand-built packets with BPF_PROG_TEST_RUN.
//!
//! A [`ProgTest`] loads the eBPF object with its maps pinned in a private bpffs (mounted under
//! `/tmp/ferry-lab-<id>/bpffs`, unmounted and removed on drop, on a panic, and by the lab's
//! signal handlers), loads the requested programs **without attaching them anywhere**, and runs
//! them on byte buffers. [`isolated`] runs a test body on a thread of its own in a fresh network
//! namespace, so the FIB lookups the programs make see only what the test sets up.
//!
//! The packet builders compute every checksum from scratch with their own RFC 1071 code, so a
//! test can build the packet it expects and compare bytes.

use std::{
    fs::{self, File},
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};

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
    /// Loads `object` and the TC classifier programs named in `programs` (the verifier runs
    /// here). Nothing is attached.
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
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is no classifier"))?;
            prog.load()
                .with_context(|| format!("loading {name} (verifier)"))?;
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
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .with_context(|| format!("no program {program}"))?
            .try_into()?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        test_run(fd, frame, flags)
    }
}

/// What one BPF_PROG_TEST_RUN gave back.
#[derive(Debug)]
pub struct TestRun {
    /// The program's return value (a TC verdict; -1 reads as 0xffffffff).
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
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
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
    // SAFETY: a valid bpf_attr for this command; the buffers outlive the call and their sizes
    // are the ones given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_PROG_TEST_RUN)");
    }
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
