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
    /// Leaving towards a pod (`ferry_tc_pod_out`: the per-packet ClusterIP
    /// path's replies, pod_lb.rs).
    PodOut,
}

impl Side {
    /// The program an event names (agent_common::event::program). A pod
    /// device's two programs share one name (`TC_POD`): the drop reason
    /// and the tuple tell their events apart.
    #[inline(always)]
    pub const fn program(self) -> u8 {
        match self {
            Side::Ingress => program::TC_IN,
            Side::Egress => program::TC_OUT,
            Side::Pod | Side::PodOut => program::TC_POD,
        }
    }

    /// A pod's host-end device, either way.
    #[inline(always)]
    pub const fn pod_device(self) -> bool {
        matches!(self, Side::Pod | Side::PodOut)
    }
}
