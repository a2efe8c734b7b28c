//! The data path with hostile queues and a hostile network: two sessions
//! on one router, or on two routers joined by an in-memory wire, driven by
//! a program of work requests (shaped or raw ring bytes), ring indices,
//! control requests, engine passes, frames delivered, dropped, duplicated,
//! reordered or corrupted, time passing and the peer lost
//! (`flowverbs_fuzz::traffic`). The tables stay consistent after every
//! action, and no byte outside a writable MR is ever written.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowverbs_fuzz::traffic::run(data));
