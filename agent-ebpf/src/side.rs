//! Where a packet is met: which TC program sees it (a leaf module: the
//! paths, the drop edge and the monitor's events all name it).

use agent_common::event::program;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Arriving on a node device (`ferry_tc_in`).
    Ingress,
    /// Leaving through a node device (`ferry_tc_out`).
    Egress,
    /// Arriving from a pod (`ferry_tc_pod`).
    Pod,
}

impl Side {
    /// The program an event names (agent_common::event::program).
    #[inline(always)]
    pub const fn program(self) -> u8 {
        match self {
            Side::Ingress => program::TC_IN,
            Side::Egress => program::TC_OUT,
            Side::Pod => program::TC_POD,
        }
    }
}
