//! `rdma_cm` without the kernel (issue 16): the router serves librdmacm's
//! character device `/dev/infiniband/rdma_cm` through CUSE, so that
//! unmodified programs connecting through the RDMA connection manager
//! (`rping`, `ib_send_bw -R`, ...) run on fv0.
//!
//! - [`abi`]: the command and response layouts (ABI 4), pure;
//! - [`state`]: ids, ports per network namespace, connection messages
//!   (REQ/REP/RTU/REJ/DREQ between ids), events; pure and fuzzable;
//! - [`cuse`]: `/dev/cuse` requests, parsed (pure) and served;
//! - [`link`]: the messages between ids of two routers, as the link
//!   carries them, checked (pure);
//! - [`service`]: the glue the server's event loop calls.

pub mod abi;
pub mod cuse;
pub mod link;
pub mod service;
pub mod state;

pub use service::{device_names, node_name, NetView, RdmaCmService};
pub use state::{Caller, Cm, CmLimits, Memory, Outcome, Route};
