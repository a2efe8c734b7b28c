//! The router's control-request handler (`control::handle`, the code every
//! client request reaches) on a real engine with two sessions of two
//! users: any request, in any order, naming any handle. After each step
//! the tables must be consistent (`Tables::check`: nothing of a session
//! that is gone, nothing of one session used by another's object, the key
//! and QP-number indexes exact), and the objects must stay within the
//! caps (`Limits`: no unbounded allocation from one input).
#![no_main]

use flowverbs_fuzz::{engine, steps};
use flowverbs_router::control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (semi, steps) = steps(data);
    if steps.is_empty() {
        return;
    }
    let mut eng = engine(semi);
    let limits = eng.tables.limits.clone();
    for (session, request) in steps {
        let Some(request) = request else { continue };
        let _ = control::handle(&mut eng, session, request, Vec::new());
        if let Err(broken) = eng.tables.check() {
            panic!("inconsistent tables: {broken}");
        }
        let held = eng.tables.qps.len() + eng.tables.cqs.len() + eng.tables.srqs.len();
        assert!(
            held <= 2 * limits.objects_per_session,
            "{held} objects: more than the caps allow"
        );
    }
});
