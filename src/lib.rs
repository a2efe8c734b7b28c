//! flowverbs: RDMA verbs for containers without RDMA hardware.
//!
//! - [`provider`]: the libibverbs provider (`libflowverbs-rdmav34.so`), the
//!   thin C boundary loaded by the stock libibverbs.
//! - [`wire`]: ring and control-message layouts shared by provider and router.
//! - [`verbs`]: the verbs semantics, pure rules every data path calls.
//! - [`router`]: the per-host router that serves the device.

pub mod provider;
pub mod router;
pub mod sys;
pub mod verbs;
pub mod wire;
