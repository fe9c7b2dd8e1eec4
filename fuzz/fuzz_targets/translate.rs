//! Services, EndpointSlices and Nodes built field by field (see objects.rs): the translation
//! never panics, gives the same result twice, and its frontends hold together (see
//! invariants.rs).
#![no_main]

use ferry_fuzz::{entry, invariants, objects::World};

libfuzzer_sys::fuzz_target!(|world: World| {
    let cfg = world.config();
    let objects = entry::objects(&world.inputs(), &cfg.node_name);
    invariants::translate_and_check(&objects, &cfg);
});
