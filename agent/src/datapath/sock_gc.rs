//! Destroys connected UDP sockets stuck on a removed backend (cilium#12859).
//!
//! connect4 translates a connected UDP socket once; when its backend leaves
//! the service, the socket would keep sending to it. After a sync that
//! removed UDP backends, the agent lists them in `ferry_dead4_v1` and runs
//! the `ferry_udp_gc` iterator (agent-ebpf/src/sock_destroy.rs), which
//! destroys the sockets ferry connected to them with the kfunc
//! `bpf_sock_destroy` (Linux 6.5 and later). The socket is disconnected
//! with ECONNABORTED: a blocked recv() returns that, the next send() fails
//! with EDESTADDRREQ, and an application that connects again reaches a
//! live backend. A BPF socket iterator walks the network namespace of the
//! thread that creates it, so the agent runs it once in every namespace a
//! process on the node is in (found under /proc), from a helper thread that
//! enters each in turn.
//!
//! Optional: without the kfunc or the iterator the agent warns once and
//! connected UDP sockets keep their backend, as before.

use std::{
    collections::{BTreeSet, HashSet},
    fs,
    io::Read as _,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
};

use agent_common::{
    Dead4Key, Dead6Key, SOCK_DESTROY_CALL_MAGIC, maps as names,
    net::{ip4_to_raw, ip6_to_raw, port_to_raw},
};
use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData},
    programs::Iter,
};
use aya_obj::btf::BtfKind;
use tracing::{debug, info, warn};

use crate::model::{BackendAddr, Protocol};

/// The iterator program.
pub const PROGRAM: &str = "ferry_udp_gc";
const KFUNC: &str = "bpf_sock_destroy";

/// An eBPF object, 8-byte aligned (the ELF parser wants aligned headers).
pub struct PatchedObject {
    words: Vec<u64>,
    len: usize,
    /// Whether the placeholder call became a call to the kernel's kfunc.
    pub kfunc: Result<(), String>,
}

impl PatchedObject {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Turns the placeholder helper call of `ferry_udp_gc` into a call to the
/// kfunc `bpf_sock_destroy` (src_reg BPF_PSEUDO_KFUNC_CALL, imm its vmlinux
/// BTF id). Without the kfunc the object is left as it is: only that program
/// then fails to load.
pub fn patch_object(object: &[u8], btf: Option<&Btf>) -> PatchedObject {
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: the buffer has room for `object.len()` bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    let mut call = [0x85u8, 0, 0, 0, 0, 0, 0, 0];
    call[4..].copy_from_slice(&SOCK_DESTROY_CALL_MAGIC.to_le_bytes());
    let sites: Vec<usize> = bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == call)
        .map(|(i, _)| i)
        .collect();
    let kfunc = (|| {
        if sites.is_empty() {
            return Err("no placeholder call in the object".to_string());
        }
        let btf = btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
        let id = btf
            .id_by_type_name_kind(KFUNC, BtfKind::Func)
            .map_err(|_| format!("the kernel has no kfunc {KFUNC} (Linux >= 6.5)"))?;
        for &at in &sites {
            bytes[at + 1] = 0x20; // src_reg 2: BPF_PSEUDO_KFUNC_CALL
            bytes[at + 4..at + 8].copy_from_slice(&id.to_le_bytes());
        }
        Ok(())
    })();
    PatchedObject {
        words,
        len: object.len(),
        kfunc,
    }
}

pub struct SockGc {
    dead: HashMap<MapData, Dead4Key, u8>,
    dead6: HashMap<MapData, Dead6Key, u8>,
}

impl SockGc {
    /// Loads the iterator; `None` (with one warning) when the kernel cannot.
    pub fn load(ebpf: &mut Ebpf, kfunc: &Result<(), String>, btf: Option<&Btf>) -> Option<Self> {
        let loaded = (|| -> Result<Self, String> {
            kfunc.clone()?;
            let btf = btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
            let prog: &mut Iter = ebpf
                .program_mut(PROGRAM)
                .ok_or("program missing from the object")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            prog.load("udp", btf).map_err(|e| format!("{e}"))?;
            let map = ebpf
                .take_map(names::DEAD_V4)
                .ok_or("map ferry_dead4_v1 missing from the object")?;
            let mut dead: HashMap<MapData, Dead4Key, u8> =
                HashMap::try_from(map).map_err(|e| format!("{e}"))?;
            let map = ebpf
                .take_map(names::DEAD_V6)
                .ok_or("map ferry_dead6_v1 missing from the object")?;
            let mut dead6: HashMap<MapData, Dead6Key, u8> =
                HashMap::try_from(map).map_err(|e| format!("{e}"))?;
            // Left over by a predecessor stopped mid-run.
            let stale: Vec<Dead4Key> = dead.keys().filter_map(Result::ok).collect();
            for k in stale {
                let _ = dead.remove(&k);
            }
            let stale: Vec<Dead6Key> = dead6.keys().filter_map(Result::ok).collect();
            for k in stale {
                let _ = dead6.remove(&k);
            }
            Ok(Self { dead, dead6 })
        })();
        match loaded {
            Ok(gc) => {
                info!(
                    program = PROGRAM,
                    "connected UDP sockets of removed backends will be destroyed"
                );
                Some(gc)
            }
            Err(detail) => {
                warn!(
                    program = PROGRAM,
                    %detail,
                    "connected UDP sockets keep a removed backend (needs bpf_sock_destroy, Linux >= 6.5)"
                );
                None
            }
        }
    }

    /// Destroys the connected UDP sockets ferry pointed at `gone` (both
    /// families: a dual-stack socket's IPv4-mapped peer is found through
    /// the IPv4 list).
    pub fn run(&mut self, ebpf: &mut Ebpf, gone: &[BackendAddr]) {
        let mut v4: HashSet<Dead4Key> = HashSet::new();
        let mut v6: HashSet<Dead6Key> = HashSet::new();
        for b in gone.iter().filter(|b| b.proto == Protocol::Udp) {
            let port = port_to_raw(b.port);
            match b.ip {
                IpAddr::V4(ip) => v4.insert(Dead4Key {
                    addr: ip4_to_raw(ip.octets()),
                    port,
                    _pad: 0,
                }),
                IpAddr::V6(ip) => v6.insert(Dead6Key {
                    addr: ip6_to_raw(ip.octets()),
                    port,
                    _pad: 0,
                }),
            };
        }
        if v4.is_empty() && v6.is_empty() {
            return;
        }
        for k in &v4 {
            if let Err(e) = self.dead.insert(k, &1, 0) {
                warn!(error = %e, "listing a removed UDP backend");
            }
        }
        for k in &v6 {
            if let Err(e) = self.dead6.insert(k, &1, 0) {
                warn!(error = %e, "listing a removed UDP backend");
            }
        }
        let Some(Ok(prog)) = ebpf.program_mut(PROGRAM).map(<&mut Iter>::try_from) else {
            return;
        };
        let t0 = std::time::Instant::now();
        let namespaces = net_namespaces();
        let walked = std::thread::scope(|s| {
            s.spawn(|| walk(prog, &namespaces))
                .join()
                .unwrap_or_default()
        });
        for k in &v4 {
            let _ = self.dead.remove(k);
        }
        for k in &v6 {
            let _ = self.dead6.remove(k);
        }
        debug!(
            backends = v4.len() + v6.len(),
            namespaces = walked,
            took_us = t0.elapsed().as_micros() as u64,
            "UDP sockets of removed backends destroyed"
        );
    }
}

/// One open handle per network namespace a process is in.
fn net_namespaces() -> Vec<fs::File> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(f) = fs::File::open(entry.path().join("ns/net")) else {
            continue;
        };
        let Ok(meta) = f.metadata() else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(f);
        }
    }
    out
}

/// Runs the iterator in each namespace; called on a thread of its own (it
/// leaves the thread in the last namespace). Returns how many were walked.
fn walk(prog: &mut Iter, namespaces: &[fs::File]) -> usize {
    let mut walked = 0;
    for ns in namespaces {
        // setns needs CAP_SYS_ADMIN even into the namespace the thread is in:
        // without it (the DaemonSet does not grant it) the agent's own
        // namespace is still walked.
        let here = fs::metadata("/proc/thread-self/ns/net").map(|m| (m.dev(), m.ino()));
        let there = ns.metadata().map(|m| (m.dev(), m.ino()));
        let entered = matches!((&here, &there), (Ok(a), Ok(b)) if a == b)
            // SAFETY: a valid namespace descriptor; only this thread moves.
            || unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
        if !entered {
            debug!(error = %std::io::Error::last_os_error(), "entering a network namespace");
            continue;
        }
        let mut run = || -> Result<(), String> {
            let id = prog.attach().map_err(|e| e.to_string())?;
            let link = prog.take_link(id).map_err(|e| e.to_string())?;
            let mut file = link.into_file().map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            file.read_to_end(&mut out).map_err(|e| e.to_string())?;
            Ok(())
        };
        match run() {
            Ok(()) => walked += 1,
            Err(e) => debug!(error = %e, "UDP socket iterator"),
        }
    }
    walked
}
