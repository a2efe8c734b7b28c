//! The verbs semantics, once: pure rules with no I/O that every data path
//! calls (the router's local engine, the cross-host requester and
//! responder, and the semi-mode sender in the provider). Each rule returns
//! the completion status an RDMA NIC reports (IB specification, the verbs
//! man pages), so the paths cannot disagree.
//!
//! - [`qp`]: QP types and states, `ibv_modify_qp` checks, which states send
//!   and receive, RNR and ACK timers;
//! - [`opcode`]: what a work request's opcode means (a receive consumed,
//!   data carried, allowed on which QP type) and the requester's first
//!   checks of a send work request;
//! - [`access`]: memory regions: local keys, remote keys, bounds, access
//!   flags, message length;
//! - [`receive`]: the responder's checks of the receive a message lands in;
//! - [`atomic`]: atomic operations' target and arithmetic;
//! - [`events`]: which async event a responder's error raises;
//! - [`ud`]: datagrams: the GRH area, Q_Keys, the MTU;
//! - [`window`]: memory windows: binding, invalidation, what an rkey reaches;
//! - [`identity`]: GIDs and GUIDs from IPv4 addresses.

pub mod access;
pub mod atomic;
pub mod events;
pub mod identity;
pub mod opcode;
pub mod qp;
pub mod receive;
pub mod ud;
pub mod window;
