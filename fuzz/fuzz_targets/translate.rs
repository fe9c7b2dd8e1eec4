//! Services, EndpointSlices and Nodes built field by field (see objects.rs): the translation
//! never panics, gives the same result twice, and its frontends hold together (see
//! invariants.rs).
#![no_main]

use ferry_fuzz::{invariants, objects::World};

libfuzzer_sys::fuzz_target!(|world: World| {
    invariants::translate_and_check(&world.inputs());
});
