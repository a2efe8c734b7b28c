//! The wire format between the provider and the router: shared-memory
//! segments and rings, the entries that travel on them, and the control
//! messages on the router's Unix socket. Both sides use this one module;
//! [`VERSION`] changes whenever any layout here does.

pub mod codec;
pub mod control;
pub mod cq_ring;
pub mod entries;
pub mod events;
pub mod link;
pub mod ring;
pub mod segment;

/// Version of everything in this module; checked at session setup.
pub const VERSION: u32 = 16;

/// Device limits, advertised by the provider and enforced by the router.
pub mod limits {
    /// Scatter/gather entries per work request.
    pub const MAX_SGE: u32 = 16;
    /// Bytes of inline data a send work request can carry.
    pub const MAX_INLINE_DATA: u32 = 256;
    /// Work requests per send or receive queue.
    pub const MAX_QP_WR: u32 = 16384;
    /// Entries per completion queue: what mlx5 devices report (2^22 - 1).
    /// libfabric's ofi_rxm asks for (128 + 128) x 256 = 65536 entries by
    /// default; rings are sparse until used, and every entry counts
    /// against the user's queue-entry budget.
    pub const MAX_CQE: u32 = (1 << 22) - 1;
    pub const MAX_QP: u32 = 16384;
    pub const MAX_CQ: u32 = 16384;
    pub const MAX_MR: u32 = 65536;
    pub const MAX_PD: u32 = 65536;
    /// Memory windows per context.
    pub const MAX_MW: u32 = 65536;
    /// Largest registrable region and message.
    pub const MAX_MR_SIZE: u64 = 1 << 40;
    pub const MAX_MSG_SIZE: u32 = 1 << 31;
    /// Outstanding RDMA reads and atomics per QP.
    pub const MAX_QP_RD_ATOM: u32 = 16;
    /// Shared receive queues and their depth.
    pub const MAX_SRQ: u32 = 16384;
    pub const MAX_SRQ_WR: u32 = 16384;
    /// Largest UD message: the port MTU.
    pub const UD_MTU: u32 = 4096;
    /// Bytes of GRH in front of every UD receive.
    pub const GRH_SIZE: u32 = 40;
    /// Largest QP number: QPNs are 24-bit.
    pub const MAX_QPN: u32 = 0x00ff_ffff;
}
