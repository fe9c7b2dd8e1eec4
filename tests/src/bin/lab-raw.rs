//! lab-raw: hand-built, possibly spoofed IPv4 packets for the hostile-traffic tests, sent from a
//! raw socket (IP_HDRINCL), and a count of what comes back. Prints one JSON line.
//!
//! ```text
//! lab-raw tcp|udp SRC_IP:PORT DST_IP:PORT [--count N] [--src-net A.B.C.D/LEN] [--src-ports LO-HI]
//!                 [--flags S|A|SA|PA] [--seq N] [--dsr-option IP:PORT] [--payload TEXT]
//!                 [--reply-ms MS] [--count-icmp-from IP --device DEV --quiet-ms MS]
//! ```
//!
//! Packet `i` (from 0) comes from SRC_IP:PORT, or with `--src-net` from the net's (i mod size)th
//! host address, and with `--src-ports` from port LO + (i mod span). `--dsr-option` puts ferry's
//! DSR IPv4 option (type 0x9a, length 8, port, address) right after the fixed header.
//! `--reply-ms`: a UDP socket bound to SRC_IP:PORT (the sender's own address) waits that long for
//! one answer and reports its source (`"reply_from"`). `--count-icmp-from`: an AF_PACKET socket on
//! DEV, read on a thread of its own from before the first packet is sent, counts ICMP port
//! unreachable messages from that address until none came for `--quiet-ms` after the last send
//! (`"icmp_unreachable"`, when the first and last arrived relative to the first send, and
//! `"capture_drops"`: what the socket's buffer lost, so a count with drops is not exact).
//!
//! The kernel fills in the IP total length, id and header checksum (IP_HDRINCL); the TCP/UDP
//! checksum is computed here (the pseudo-header never covers IP options).

use std::{
    io::{self, Write},
    mem,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const DSR_OPT_TYPE: u8 = 0x9a;

struct Opts {
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    count: u32,
    src_net: Option<(u32, u32)>,
    src_ports: Option<(u16, u16)>,
    flags: u8,
    seq: u32,
    dsr: Option<SocketAddrV4>,
    payload: Vec<u8>,
    reply: Option<Duration>,
    icmp_from: Option<Ipv4Addr>,
    device: String,
    quiet: Duration,
}

fn usage() -> ExitCode {
    let _ = writeln!(
        io::stderr(),
        "usage: lab-raw tcp|udp SRC_IP:PORT DST_IP:PORT [--count N] [--src-net NET/LEN] [--src-ports LO-HI] [--flags S|A|SA|PA] [--seq N] [--dsr-option IP:PORT] [--payload TEXT] [--reply-ms MS] [--count-icmp-from IP --device DEV --quiet-ms MS]"
    );
    ExitCode::from(2)
}

fn parse(args: &[String]) -> Option<Opts> {
    let proto = match args.first()?.as_str() {
        "tcp" => libc::IPPROTO_TCP as u8,
        "udp" => libc::IPPROTO_UDP as u8,
        _ => return None,
    };
    let mut o = Opts {
        proto,
        src: args.get(1)?.parse().ok()?,
        dst: args.get(2)?.parse().ok()?,
        count: 1,
        src_net: None,
        src_ports: None,
        flags: 0x02,
        seq: 1,
        dsr: None,
        payload: b"hostile".to_vec(),
        reply: None,
        icmp_from: None,
        device: "eth0".to_owned(),
        quiet: Duration::from_millis(500),
    };
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        let v = rest.next()?;
        match arg.as_str() {
            "--count" => o.count = v.parse().ok()?,
            "--src-net" => {
                let (net, len) = v.split_once('/')?;
                let net: Ipv4Addr = net.parse().ok()?;
                let len: u32 = len.parse().ok().filter(|l| (8..=30).contains(l))?;
                o.src_net = Some((u32::from(net), (1u32 << (32 - len)) - 2));
            }
            "--src-ports" => {
                let (lo, hi) = v.split_once('-')?;
                let (lo, hi): (u16, u16) = (lo.parse().ok()?, hi.parse().ok()?);
                (lo <= hi).then_some(())?;
                o.src_ports = Some((lo, hi));
            }
            "--flags" => {
                o.flags = match v.as_str() {
                    "S" => 0x02,
                    "A" => 0x10,
                    "SA" => 0x12,
                    "PA" => 0x18,
                    _ => return None,
                }
            }
            "--seq" => o.seq = v.parse().ok()?,
            "--dsr-option" => o.dsr = Some(v.parse().ok()?),
            "--payload" => o.payload = v.as_bytes().to_vec(),
            "--reply-ms" => o.reply = Some(Duration::from_millis(v.parse().ok()?)),
            "--count-icmp-from" => o.icmp_from = Some(v.parse().ok()?),
            "--device" => o.device = v.clone(),
            "--quiet-ms" => o.quiet = Duration::from_millis(v.parse().ok()?),
            _ => return None,
        }
    }
    Some(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(opts) = parse(&args) else {
        return usage();
    };
    match run(&opts) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "lab-raw: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Opts) -> io::Result<String> {
    // Listeners first, so nothing that answers the first packet is missed.
    let reply_sock = match o.reply {
        Some(wait) => {
            let s = UdpSocket::bind(o.src)?;
            s.set_read_timeout(Some(wait))?;
            Some(s)
        }
        None => None,
    };
    let raw = RawSocket::open()?;
    let start = Instant::now();
    let sent = Arc::new(AtomicBool::new(false));
    // Counted while the packets go out: a socket buffer would overflow during a flood.
    let counter = match o.icmp_from {
        Some(from) => {
            let cap = Capture::open(&o.device)?;
            let (sent, quiet) = (sent.clone(), o.quiet);
            Some(thread::spawn(move || {
                cap.count_unreachable(from, start, &sent, quiet)
            }))
        }
        None => None,
    };
    for i in 0..o.count {
        let src = source(o, i);
        let packet = build(o, src);
        raw.send_to(&packet, *o.dst.ip())?;
    }
    let sent_ms = start.elapsed().as_millis();
    sent.store(true, Ordering::SeqCst);
    let mut line = format!("{{\"sent\":{},\"send_ms\":{sent_ms}", o.count);
    if let Some(s) = reply_sock {
        let mut buf = [0u8; 2048];
        match s.recv_from(&mut buf) {
            Ok((n, from)) => line.push_str(&format!(
                ",\"reply_from\":\"{from}\",\"reply\":\"{}\"",
                String::from_utf8_lossy(&buf[..n]).escape_default()
            )),
            Err(_) => line.push_str(",\"reply_from\":null"),
        }
    }
    if let Some(counter) = counter {
        let c = counter
            .join()
            .map_err(|_| io::Error::other("the capture thread panicked"))??;
        line.push_str(&format!(
            ",\"icmp_unreachable\":{},\"icmp_first_ms\":{},\"icmp_last_ms\":{},\"capture_drops\":{}",
            c.count, c.first_ms, c.last_ms, c.drops
        ));
    }
    line.push('}');
    Ok(line)
}

/// The source of packet `i`.
fn source(o: &Opts, i: u32) -> SocketAddrV4 {
    let ip = match o.src_net {
        Some((net, hosts)) => Ipv4Addr::from(net + 1 + i % hosts),
        None => *o.src.ip(),
    };
    let port = match o.src_ports {
        Some((lo, hi)) => lo + (i % (u32::from(hi - lo) + 1)) as u16,
        None => o.src.port(),
    };
    SocketAddrV4::new(ip, port)
}

fn build(o: &Opts, src: SocketAddrV4) -> Vec<u8> {
    let l4 = if o.proto == libc::IPPROTO_TCP as u8 {
        let mut s = vec![0u8; 20];
        s[0..2].copy_from_slice(&src.port().to_be_bytes());
        s[2..4].copy_from_slice(&o.dst.port().to_be_bytes());
        s[4..8].copy_from_slice(&o.seq.to_be_bytes());
        s[12] = 5 << 4;
        s[13] = o.flags;
        s[14..16].copy_from_slice(&64240u16.to_be_bytes());
        if o.flags & 0x02 == 0 {
            s.extend_from_slice(&o.payload);
        }
        s
    } else {
        let mut d = vec![0u8; 8];
        d[0..2].copy_from_slice(&src.port().to_be_bytes());
        d[2..4].copy_from_slice(&o.dst.port().to_be_bytes());
        d[4..6].copy_from_slice(&((8 + o.payload.len()) as u16).to_be_bytes());
        d.extend_from_slice(&o.payload);
        d
    };
    let mut l4 = l4;
    let csum_at = if o.proto == libc::IPPROTO_TCP as u8 {
        16
    } else {
        6
    };
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&o.dst.ip().octets());
    pseudo.extend_from_slice(&[0, o.proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let mut c = checksum(&[&pseudo, &l4]);
    if c == 0 && o.proto == libc::IPPROTO_UDP as u8 {
        c = 0xffff;
    }
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());

    let options: Vec<u8> = match o.dsr {
        Some(f) => {
            let mut opt = vec![DSR_OPT_TYPE, 8];
            opt.extend_from_slice(&f.port().to_be_bytes());
            opt.extend_from_slice(&f.ip().octets());
            opt
        }
        None => Vec::new(),
    };
    let hlen = 20 + options.len();
    let mut p = vec![0u8; hlen];
    p[0] = 0x40 | (hlen / 4) as u8;
    p[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = o.proto;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&o.dst.ip().octets());
    p[20..].copy_from_slice(&options);
    p.extend_from_slice(&l4);
    p
}

/// RFC 1071 over the concatenation of `parts` (each of even length but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for chunk in part.chunks(2) {
            let hi = u64::from(chunk[0]) << 8;
            sum += hi | chunk.get(1).copied().map_or(0, u64::from);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

struct RawSocket(i32);

impl RawSocket {
    fn open() -> io::Result<RawSocket> {
        // SAFETY: plain socket(2); IPPROTO_RAW implies IP_HDRINCL.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawSocket(fd))
    }

    fn send_to(&self, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        loop {
            // SAFETY: valid buffer and address of the given sizes.
            let n = unsafe {
                libc::sendto(
                    self.0,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            // A full device queue during a flood: wait for it to drain.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            return Err(e);
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: our descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// An AF_PACKET socket (cooked: IP packets) on one device.
struct Capture(i32);

impl Capture {
    fn open(device: &str) -> io::Result<Capture> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let cap = Capture(fd);
        // Room for a whole flood's answers (root may exceed rmem_max).
        let size: libc::c_int = 64 << 20;
        // SAFETY: a valid int for SO_RCVBUFFORCE.
        unsafe {
            libc::setsockopt(
                cap.0,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let name = std::ffi::CString::new(device)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zeroes are a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a valid sockaddr_ll of its size.
        let r = unsafe {
            libc::bind(
                cap.0,
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cap)
    }

    /// ICMP port unreachable messages from `from` received (not sent) on the device until none
    /// came for `quiet` after `sent` was set.
    fn count_unreachable(
        &self,
        from: Ipv4Addr,
        start: Instant,
        sent: &AtomicBool,
        quiet: Duration,
    ) -> io::Result<Counted> {
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                self.0,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let (mut n, mut first, mut last) = (0u64, 0u128, 0u128);
        let mut quiet_since = Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            if !sent.load(Ordering::SeqCst) {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= quiet {
                break;
            }
            // SAFETY: zeroes are a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid buffers of the given sizes.
            let got = unsafe {
                libc::recvfrom(
                    self.0,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                    continue;
                }
                return Err(e);
            }
            let p = &buf[..got as usize];
            let outgoing = sll.sll_pkttype == libc::PACKET_OUTGOING;
            if outgoing || p.len() < 28 || p[9] != libc::IPPROTO_ICMP as u8 {
                continue;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p[12..16] != from.octets() || p.len() < ihl + 2 || p[ihl] != 3 || p[ihl + 1] != 3 {
                continue;
            }
            let at = start.elapsed().as_millis();
            if n == 0 {
                first = at;
            }
            last = at;
            n += 1;
            quiet_since = Instant::now();
        }
        Ok(Counted {
            count: n,
            first_ms: first,
            last_ms: last,
            drops: self.drops()?,
        })
    }

    /// Packets the kernel dropped because this socket's buffer was full (PACKET_STATISTICS):
    /// a count is only exact when this is 0.
    fn drops(&self) -> io::Result<u32> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: a valid tpacket_stats of the given size.
        let r = unsafe {
            libc::getsockopt(
                self.0,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.tp_drops)
    }
}

struct Counted {
    count: u64,
    first_ms: u128,
    last_ms: u128,
    drops: u32,
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: our descriptor.
        unsafe { libc::close(self.0) };
    }
}
