//! An in-memory model of the load-balancing maps ([`LbMaps`]): what the
//! kernel would hold, every write in order, and optional limits and
//! failures, for tests of the programmer and the control loop without a
//! kernel (and for tools that dry-run a translation).

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    rc::Rc,
};

use agent_common::{AffinityKey, AffinityValue, SvcValue, maps as names};

use super::{
    codec::{BackendValue, MemberKey, RevNatValue, SvcKey},
    lbmaps::LbMaps,
};
use crate::{
    error::{Error, Result},
    model::{Cidr, Family},
};

/// One write, as the model saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutSvc(SvcKey),
    DelSvc(SvcKey),
    PutBackend(u32),
    DelBackend(u32),
    PutRevNat(u16),
    DelRevNat(u16),
    DelAffinity,
    PutRange(u16, Cidr),
    DelRange(u16, Cidr),
    PutMaglev,
    DelMaglev,
    PutMember(MemberKey),
    DelMember(MemberKey),
}

/// The maps' contents.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    pub services: BTreeMap<SvcKey, SvcValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub rev_nat: BTreeMap<u16, RevNatValue>,
    pub affinity: Vec<(AffinityKey, AffinityValue)>,
    pub ranges: BTreeSet<(u16, Cidr)>,
    pub maglev: BTreeMap<u32, u32>,
    pub members: BTreeMap<MemberKey, u32>,
}

#[derive(Debug, Default)]
pub struct Inner {
    pub contents: Contents,
    pub ops: Vec<Op>,
    /// Fails the write after this many more succeed (the kernel saying no:
    /// ENOMEM, say), once.
    pub fail_after: Option<usize>,
}

/// Shared (cheap to clone) so a second programmer can adopt what the first
/// wrote, and a test can look inside while a programmer owns a handle.
#[derive(Clone, Default)]
pub struct MemMaps(pub Rc<RefCell<Inner>>);

impl MemMaps {
    pub fn take_ops(&self) -> Vec<Op> {
        std::mem::take(&mut self.0.borrow_mut().ops)
    }

    pub fn contents(&self) -> Contents {
        self.0.borrow().contents.clone()
    }

    /// Makes write number `n` from now (0 = the next one) fail.
    pub fn fail_write(&self, n: usize) {
        self.0.borrow_mut().fail_after = Some(n);
    }

    fn write(&self, map: &'static str, op: Op, f: impl FnOnce(&mut Contents)) -> Result<()> {
        let mut m = self.0.borrow_mut();
        if let Some(n) = m.fail_after {
            if n == 0 {
                m.fail_after = None;
                return Err(Error::Map {
                    name: map.to_owned(),
                    source: Box::new(aya::maps::MapError::KeyNotFound),
                });
            }
            m.fail_after = Some(n - 1);
        }
        f(&mut m.contents);
        m.ops.push(op);
        Ok(())
    }
}

impl LbMaps for MemMaps {
    fn services(&self) -> Vec<(SvcKey, SvcValue)> {
        let m = self.0.borrow();
        m.contents.services.iter().map(|(k, v)| (*k, *v)).collect()
    }
    fn backends(&self) -> Vec<(u32, BackendValue)> {
        let m = self.0.borrow();
        m.contents.backends.iter().map(|(k, v)| (*k, *v)).collect()
    }
    fn rev_nats(&self) -> Vec<(u16, RevNatValue)> {
        let m = self.0.borrow();
        m.contents.rev_nat.iter().map(|(k, v)| (*k, *v)).collect()
    }
    fn affinity(&self) -> Vec<(AffinityKey, AffinityValue)> {
        self.0.borrow().contents.affinity.clone()
    }
    fn put_service(&mut self, k: SvcKey, v: SvcValue) -> Result<()> {
        self.write(names::SERVICES_V4, Op::PutSvc(k), |c| {
            c.services.insert(k, v);
        })
    }
    fn del_service(&mut self, k: &SvcKey) -> Result<()> {
        self.write(names::SERVICES_V4, Op::DelSvc(*k), |c| {
            c.services.remove(k);
        })
    }
    fn put_backend(&mut self, id: u32, v: BackendValue) -> Result<()> {
        self.write(names::BACKENDS_V4, Op::PutBackend(id), |c| {
            c.backends.insert(id, v);
        })
    }
    fn del_backend(&mut self, id: u32, _family: Family) -> Result<()> {
        self.write(names::BACKENDS_V4, Op::DelBackend(id), |c| {
            c.backends.remove(&id);
        })
    }
    fn put_rev_nat(&mut self, id: u16, v: RevNatValue) -> Result<()> {
        self.write(names::REV_NAT_V4, Op::PutRevNat(id), |c| {
            c.rev_nat.insert(id, v);
        })
    }
    fn del_rev_nat(&mut self, id: u16, _family: Family) -> Result<()> {
        self.write(names::REV_NAT_V4, Op::DelRevNat(id), |c| {
            c.rev_nat.remove(&id);
        })
    }
    fn del_affinity(&mut self, k: &AffinityKey) -> Result<()> {
        self.write(names::AFFINITY, Op::DelAffinity, |c| {
            c.affinity.retain(|(a, _)| a != k);
        })
    }
    fn put_src_range(&mut self, rev: u16, cidr: Cidr) -> Result<()> {
        self.write(names::SRC_RANGE_V4, Op::PutRange(rev, cidr), |c| {
            c.ranges.insert((rev, cidr));
        })
    }
    fn del_src_range(&mut self, rev: u16, cidr: Cidr) -> Result<()> {
        self.write(names::SRC_RANGE_V4, Op::DelRange(rev, cidr), |c| {
            c.ranges.remove(&(rev, cidr));
        })
    }
    fn src_ranges(&self) -> Vec<(u16, Cidr)> {
        self.0.borrow().contents.ranges.iter().copied().collect()
    }
    fn put_maglev(&mut self, key: u32, id: u32) -> Result<()> {
        self.write(names::MAGLEV, Op::PutMaglev, |c| {
            c.maglev.insert(key, id);
        })
    }
    fn del_maglev(&mut self, key: u32) -> Result<()> {
        self.write(names::MAGLEV, Op::DelMaglev, |c| {
            c.maglev.remove(&key);
        })
    }
    fn maglev_entries(&self) -> Vec<(u32, u32)> {
        let m = self.0.borrow();
        m.contents.maglev.iter().map(|(k, v)| (*k, *v)).collect()
    }
    fn put_member(&mut self, k: MemberKey, id: u32) -> Result<()> {
        self.write(names::MEMBERS_V4, Op::PutMember(k), |c| {
            c.members.insert(k, id);
        })
    }
    fn del_member(&mut self, k: &MemberKey) -> Result<()> {
        self.write(names::MEMBERS_V4, Op::DelMember(*k), |c| {
            c.members.remove(k);
        })
    }
    fn members(&self) -> Vec<(MemberKey, u32)> {
        let m = self.0.borrow();
        m.contents.members.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
