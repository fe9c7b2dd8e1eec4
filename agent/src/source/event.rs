//! What every source sends: one event per object change, as it comes (not
//! snapshots), plus the boundaries of complete lists. The control loop's
//! tracker applies them; a source never holds more than it must to tell
//! what changed.

use crate::model::{
    Diagnostic, ServiceName,
    objects::{NodeObj, ObjKey, ServiceObj, SliceObj},
};

/// A change to one kind of object.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta<T, K> {
    /// Created or modified.
    Applied(T),
    Deleted(K),
    /// A complete list of the kind just ended (a first list, or a re-list
    /// after the watch expired): objects of the kind not named are gone.
    Listed(Vec<K>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Service(Delta<ServiceObj, ServiceName>),
    Slice(Delta<SliceObj, ObjKey>),
    Node(Delta<NodeObj, String>),
    /// Problems with one input file as a whole (it cannot be read or
    /// parsed), replacing that file's earlier ones; empty once it is fine.
    FileProblems {
        file: String,
        diags: Vec<Diagnostic>,
    },
    /// Every kind has been listed once: the first full sync may run.
    Synced,
}
