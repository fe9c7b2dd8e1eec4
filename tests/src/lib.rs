//! ferry's kernel tests: labs of network namespaces with real servers and clients.
//!
//! A [`Lab`] is one test's private world: a node network namespace with a bridge, pod
//! namespaces wired to it by veth pairs, a child cgroup of the cgroup2 mount whose sockets
//! ferry's cgroup hooks translate, and a temporary directory holding a private bpffs mount and
//! the manifests directory the agent reads. Everything carries a unique prefix
//! (`fy<id>-*`, `ferry-lab-<id>`) and is removed when the lab is dropped, when the test panics,
//! and when the test process gets SIGINT or SIGTERM.
//!
//! A [`Cluster`] is the two-node variant for north-south traffic: two node namespaces joined by
//! a bridge namespace (the segment), pods behind each node in that node's cgroup, external
//! client namespaces on the segment, and one agent per node reading the same manifests.
//!
//! Nothing here touches the root network namespace, the machine's interfaces or its root
//! cgroup: veth pairs are created directly inside lab namespaces, and the only processes killed
//! are those the lab started, by PID (the agent's after checking its command line; leftovers of
//! the lab cgroup, where only the lab puts processes, from that cgroup's `cgroup.procs`).

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod cgroup;
pub mod cleanup;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod flood;
pub mod flows;
pub mod history;
pub mod lab;
pub mod manifests;
pub mod netns;
pub mod packet_fuzz;
pub mod pinned_maps;
pub mod proc;
pub mod progtest;
pub mod services;
pub mod workload;

pub use agent::AgentOpts;
pub use client::{Attempt, EchoReply};
pub use cluster::{Cluster, ClusterNode};
pub use lab::{Lab, Pod};
pub use manifests::{Endpoint, EndpointSlice, Node, Service};
pub use workload::ClientLoop;

/// True when running as root (the lab needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails a kernel test that runs without root. Kernel tests are marked
/// `#[ignore = "kernel test: ..."]`, so a plain `cargo test` reports them
/// ignored (never passed); `cargo xtask test` runs them as root with
/// `--include-ignored`, and one run without root fails here, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::is_root(),
            "this kernel test needs root (network namespaces, cgroups, bpffs): run `cargo xtask test`"
        );
    };
}
