//! Reading `ferry conntrack -o json`: the flows typed as the agent prints them
//! ([`FlowView`]: the type is the contract).

use std::net::{Ipv4Addr, SocketAddrV4};

use ferry::datapath::codec::FlowView;
use serde::Deserialize;

/// What `ferry conntrack -o json` prints.
#[derive(Deserialize)]
struct Conntrack {
    flows: Vec<FlowView>,
}

/// The flows of one `ferry conntrack -o json`.
pub fn parse(json: &[u8]) -> serde_json::Result<Vec<FlowView>> {
    serde_json::from_slice::<Conntrack>(json).map(|c| c.flows)
}

/// What the tests ask of a flow.
pub trait FlowExt {
    /// `forward` (client to service), not `reply`.
    fn is_forward(&self) -> bool;
    /// The IP of `src` (without the port).
    fn src_ip(&self) -> Option<Ipv4Addr>;
}

impl FlowExt for FlowView {
    fn is_forward(&self) -> bool {
        self.direction == "forward"
    }

    fn src_ip(&self) -> Option<Ipv4Addr> {
        self.src.parse::<SocketAddrV4>().ok().map(|s| *s.ip())
    }
}
