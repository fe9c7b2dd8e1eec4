//! Every connection the agent's HTTP servers hold, in one process-wide
//! registry, so that clients holding connections open cannot starve the
//! servers (or the rest of the agent) of file descriptors.
//!
//! - Each server has a cap; a new connection beyond it closes one of that
//!   server's idle connections.
//! - All servers together stay within a budget of half the descriptor limit
//!   (the rest is for maps, programs, files and the API client); beyond it an
//!   idle connection of any server goes.
//! - When accept(2) fails for lack of descriptors, an idle connection of any
//!   server goes, so that a flood on one health-check node port cannot keep
//!   /healthz from answering.
//!
//! The connection closed is the oldest idle one of the client address that
//! holds the most: a flood from one address only ever replaces its own
//! connections, and a probe that holds one is left alone even while the
//! flood reconnects faster than the probe can send its request. Idle means
//! no request is being handled: a connection still sending its headers
//! (slowloris), waiting between keep-alive requests, or not reading its
//! response.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::oneshot;

/// Which server a connection belongs to.
pub type ServerId = u64;

struct Entry {
    server: ServerId,
    peer: IpAddr,
    busy: Arc<AtomicBool>,
    /// Dropping it tells the connection's task to close the socket.
    _close: oneshot::Sender<()>,
}

pub struct Registry {
    budget: usize,
    next_id: u64,
    next_server: ServerId,
    /// By connection id: the order of acceptance, oldest first.
    entries: BTreeMap<u64, Entry>,
    per_server: BTreeMap<ServerId, usize>,
    per_peer: BTreeMap<IpAddr, usize>,
    per_server_peer: BTreeMap<(ServerId, IpAddr), usize>,
}

/// What a connection's task holds: its busy flag and the signal to close.
pub struct Admitted {
    pub id: u64,
    pub busy: Arc<AtomicBool>,
    pub closed: oneshot::Receiver<()>,
}

/// Why a connection was not admitted: every candidate is handling a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

fn bump<K: Ord>(m: &mut BTreeMap<K, usize>, k: K, up: bool) {
    if up {
        *m.entry(k).or_default() += 1;
    } else if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl Registry {
    pub fn new(budget: usize) -> Self {
        Registry {
            budget: budget.max(1),
            next_id: 0,
            next_server: 0,
            entries: BTreeMap::new(),
            per_server: BTreeMap::new(),
            per_peer: BTreeMap::new(),
            per_server_peer: BTreeMap::new(),
        }
    }

    pub fn new_server(&mut self) -> ServerId {
        self.next_server += 1;
        self.next_server
    }

    /// Admits a connection from `peer` to `server`, closing an idle one first
    /// when the server's cap or the budget is reached.
    pub fn admit(
        &mut self,
        server: ServerId,
        peer: IpAddr,
        cap: usize,
    ) -> Result<Admitted, Refused> {
        if self.live(server) >= cap {
            self.evict(Some(server)).ok_or(Refused)?;
        } else if self.entries.len() >= self.budget {
            self.evict(None).ok_or(Refused)?;
        }
        self.next_id += 1;
        let id = self.next_id;
        let busy = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        self.entries.insert(
            id,
            Entry {
                server,
                peer,
                busy: busy.clone(),
                _close: tx,
            },
        );
        self.count(server, peer, true);
        Ok(Admitted {
            id,
            busy,
            closed: rx,
        })
    }

    fn count(&mut self, server: ServerId, peer: IpAddr, up: bool) {
        bump(&mut self.per_server, server, up);
        bump(&mut self.per_peer, peer, up);
        bump(&mut self.per_server_peer, (server, peer), up);
    }

    /// Closes the oldest idle connection of the client holding the most, on
    /// `server` or on all servers; returns its id.
    pub fn evict(&mut self, server: Option<ServerId>) -> Option<u64> {
        let held = |e: &Entry| match server {
            Some(s) => self.per_server_peer.get(&(s, e.peer)).copied().unwrap_or(0),
            None => self.per_peer.get(&e.peer).copied().unwrap_or(0),
        };
        let candidate =
            |e: &Entry| server.is_none_or(|s| e.server == s) && !e.busy.load(Ordering::Acquire);
        let most = self
            .entries
            .values()
            .filter(|e| candidate(e))
            .map(held)
            .max()?;
        let id = self
            .entries
            .iter()
            .find(|(_, e)| candidate(e) && held(e) == most)
            .map(|(&id, _)| id)?;
        self.remove(id);
        Some(id)
    }

    /// Forgets a connection (closed, or evicted: dropping its entry signals the task).
    pub fn remove(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            self.count(e.server, e.peer, false);
        }
    }

    /// Closes every connection of a server that stops.
    pub fn close_server(&mut self, server: ServerId) {
        let ids: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.server == server)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.remove(id);
        }
    }

    pub fn live(&self, server: ServerId) -> usize {
        self.per_server.get(&server).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.entries.len()
    }
}

/// The process's registry; its budget is half the descriptor limit in force
/// when the first server starts (after [`super::fd_limit::raise_soft_to_hard`]).
pub fn global() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let soft = super::fd_limit::current().map_or(1024, |(soft, _)| soft);
        Mutex::new(Registry::new(
            usize::try_from(soft / 2).unwrap_or(usize::MAX),
        ))
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn beyond_the_cap_the_heaviest_clients_oldest_idle_connection_goes() {
        let mut r = Registry::new(100);
        let (a, b) = (r.new_server(), r.new_server());
        let (flood, probe) = (ip(1), ip(2));
        let mut probe_conn = r.admit(a, probe, 3).unwrap();
        let mut f1 = r.admit(a, flood, 3).unwrap();
        let mut f2 = r.admit(a, flood, 3).unwrap();
        let mut elsewhere = r.admit(b, flood, 3).unwrap();
        // The probe's connection is the oldest, and idle: the flood's oldest goes.
        let f3 = r.admit(a, flood, 3).unwrap();
        assert_eq!(f1.closed.try_recv(), Err(TryRecvError::Closed));
        assert_eq!(probe_conn.closed.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(r.live(a), 3);
        // A busy connection is never closed: the next idle one of the flood goes.
        f2.busy.store(true, Ordering::Release);
        let _f4 = r.admit(a, flood, 3).unwrap();
        assert_eq!(f2.closed.try_recv(), Err(TryRecvError::Empty));
        let mut f3_closed = f3.closed;
        assert_eq!(f3_closed.try_recv(), Err(TryRecvError::Closed));
        // Another server's connections are not this server's cap.
        assert_eq!(elsewhere.closed.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(r.live(b), 1);
    }

    #[test]
    fn when_every_connection_is_busy_a_new_one_is_refused() {
        let mut r = Registry::new(100);
        let a = r.new_server();
        let c = r.admit(a, ip(1), 1).unwrap();
        c.busy.store(true, Ordering::Release);
        assert_eq!(r.admit(a, ip(2), 1).err(), Some(Refused));
        assert_eq!(r.live(a), 1);
    }

    #[test]
    fn beyond_the_budget_a_connection_of_any_server_goes() {
        let mut r = Registry::new(3);
        let (a, b) = (r.new_server(), r.new_server());
        let mut f1 = r.admit(a, ip(1), 10).unwrap();
        let _f2 = r.admit(a, ip(1), 10).unwrap();
        let mut p = r.admit(b, ip(2), 10).unwrap();
        let _p2 = r.admit(b, ip(3), 10).unwrap();
        assert_eq!(r.total(), 3);
        assert_eq!(f1.closed.try_recv(), Err(TryRecvError::Closed));
        assert_eq!(p.closed.try_recv(), Err(TryRecvError::Empty));
        r.close_server(a);
        assert_eq!((r.total(), r.live(a), r.live(b)), (2, 0, 2));
        // Out of descriptors: ties go to the oldest.
        assert_eq!(r.evict(None), Some(3));
        assert_eq!(r.evict(None), Some(4));
        assert_eq!(r.evict(None), None);
    }
}
