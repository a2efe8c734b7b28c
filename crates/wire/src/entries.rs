//! Fixed-size entries carried on the rings: send and receive work queue
//! entries (provider → router) and completion entries (router → provider).
//! All are `#[repr(C)]` integers only with no padding (zerocopy's
//! `FromBytes` and `IntoBytes`, checked at compile time), so any bit
//! pattern is a valid value, the router validates contents, never layout,
//! and no uninitialised byte ever reaches the other process.

use super::limits::{MAX_INLINE_DATA, MAX_SGE};
use flowverbs_sys::*;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// One scatter/gather element, as in `struct ibv_sge`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// A send work request as posted by `ibv_post_send`.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SendWqe {
    pub wr_id: u64,
    /// `enum ibv_wr_opcode`.
    pub opcode: u32,
    /// `enum ibv_send_flags` bits.
    pub send_flags: u32,
    /// Number of SGEs in `payload` (0 when inline).
    pub num_sge: u32,
    /// Number of inline bytes in `payload` when `send_flags` has INLINE.
    pub inline_len: u32,
    /// Immediate data, in network byte order as the application gave it;
    /// SEND_WITH_INV: the rkey to invalidate at the responder.
    pub imm_data: u32,
    /// RDMA and atomics: the remote key. BIND_MW: the window's new rkey.
    /// LOCAL_INV: the rkey to invalidate.
    pub rkey: u32,
    pub remote_addr: u64,
    pub compare_add: u64,
    pub swap: u64,
    /// UD: destination QP number and Q_Key, and the address handle's
    /// destination GID (valid when `ah_global` is 1).
    pub remote_qpn: u32,
    pub remote_qkey: u32,
    pub ah_global: u32,
    pub dgid: [u8; 16],
    /// UD: the address handle's hop limit and traffic class (GRH).
    pub hop_limit: u32,
    pub traffic_class: u32,
    /// The WR's send-queue index + 1, as the provider counts WRs; its
    /// completion carries it back (`Cqe::sq_index`).
    pub sq_index: u32,
    /// BIND_MW: the window (its handle), the region's lkey, the rights
    /// granted; the range is `remote_addr` and `compare_add` (its length).
    pub mw: u32,
    pub mw_lkey: u32,
    pub mw_access: u32,
    pub _reserved: [u32; 5],
    /// The SGEs, or the inline bytes (`inline_bytes`, `inline_mut`).
    pub payload: [Sge; MAX_SGE as usize],
}

const _: () = assert!(MAX_SGE as usize * 16 == MAX_INLINE_DATA as usize);

/// A receive work request as posted by `ibv_post_recv`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct RecvWqe {
    pub wr_id: u64,
    pub num_sge: u32,
    pub _reserved: u32,
    pub sge: [Sge; MAX_SGE as usize],
}

/// A work completion, the router's rendering of `struct ibv_wc`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Cqe {
    pub wr_id: u64,
    /// `enum ibv_wc_status`.
    pub status: u32,
    /// `enum ibv_wc_opcode`.
    pub opcode: u32,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// Immediate data in network byte order.
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    /// `enum ibv_wc_flags` bits.
    pub wc_flags: u32,
    /// Send-side completions: the reported WR's `SendWqe::sq_index` (its
    /// slot and every earlier one are free once the completion is polled).
    /// 0 on receive completions.
    pub sq_index: u32,
    /// Written last (release) by whoever produced the entry: its ring
    /// index + 1. The consumer takes entry `i` once `seq == i + 1`, so
    /// several producers (the router, senders' providers in semi mode) can
    /// fill one CQ (see `wire::cq_ring`).
    pub seq: u32,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
    /// 1 when the router produced the entry (set by the router as it
    /// publishes): the consumer's provider then yields to the router when
    /// it polls this CQ in vain (`provider::verbs::cq`). A hint only.
    pub from_router: u8,
    pub _reserved: [u8; 9],
}

impl Cqe {
    /// The completion of send work request `w` (its `sq_index` included)
    /// with `status`; `opcode` is its `ibv_wc_opcode`. A successful
    /// SEND_WITH_IMM or RDMA_WRITE_WITH_IMM is flagged `IBV_WC_WITH_IMM`
    /// (its immediate data 0), as Soft-RoCE and mlx5 flag the requester's
    /// completion.
    pub fn sent(w: &SendWqe, opcode: u32, status: u32, byte_len: u64, qp_num: u32) -> Cqe {
        let with_imm = status == IBV_WC_SUCCESS
            && matches!(w.opcode, IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM);
        Cqe {
            wc_flags: if with_imm { IBV_WC_WITH_IMM } else { 0 },
            wr_id: w.wr_id,
            status,
            opcode,
            byte_len: if status == IBV_WC_SUCCESS {
                byte_len as u32
            } else {
                0
            },
            qp_num,
            sq_index: w.sq_index,
            ..Default::default()
        }
    }

    /// The completion of a receive that failed with `status` (a responder
    /// error), as every executor writes it.
    pub fn receive_failed(wr_id: u64, status: u32, qp_num: u32, src_qp: u32) -> Cqe {
        Cqe {
            wr_id,
            status,
            opcode: IBV_WC_RECV,
            qp_num,
            src_qp,
            ..Default::default()
        }
    }

    /// The successful receive completion of a message sent with
    /// `wr_opcode` (SEND, SEND_WITH_IMM or RDMA_WRITE_WITH_IMM), as every
    /// executor writes it.
    pub fn received(
        wr_id: u64,
        wr_opcode: u32,
        byte_len: u32,
        imm_data: u32,
        qp_num: u32,
        src_qp: u32,
    ) -> Cqe {
        let with_imm = matches!(wr_opcode, IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM);
        let with_inv = wr_opcode == IBV_WR_SEND_WITH_INV;
        Cqe {
            wr_id,
            status: IBV_WC_SUCCESS,
            opcode: if wr_opcode == IBV_WR_RDMA_WRITE_WITH_IMM {
                IBV_WC_RECV_RDMA_WITH_IMM
            } else {
                IBV_WC_RECV
            },
            byte_len,
            // (`ibv_wc`'s imm_data and invalidated_rkey share their bytes.)
            imm_data: if with_imm || with_inv { imm_data } else { 0 },
            wc_flags: if with_imm {
                IBV_WC_WITH_IMM
            } else if with_inv {
                IBV_WC_WITH_INV
            } else {
                0
            },
            qp_num,
            src_qp,
            ..Default::default()
        }
    }
}

impl Cqe {
    /// The successful receive completion of a datagram of `len` bytes
    /// (after its 40-byte GRH area) from QP `src_qp`, as every executor
    /// writes it.
    pub fn datagram_received(
        wr_id: u64,
        len: u32,
        imm: Option<u32>,
        qp_num: u32,
        src_qp: u32,
        sl: u8,
    ) -> Cqe {
        Cqe {
            wr_id,
            status: IBV_WC_SUCCESS,
            opcode: IBV_WC_RECV,
            byte_len: len + super::limits::GRH_SIZE,
            imm_data: imm.unwrap_or(0),
            wc_flags: IBV_WC_GRH | if imm.is_some() { IBV_WC_WITH_IMM } else { 0 },
            qp_num,
            src_qp,
            sl,
            ..Default::default()
        }
    }
}

impl SendWqe {
    pub fn zeroed() -> Self {
        Self::new_zeroed()
    }
    /// The SGEs, clamped to the maximum (the router checks num_sge itself).
    pub fn sges(&self) -> &[Sge] {
        &self.payload[..(self.num_sge as usize).min(MAX_SGE as usize)]
    }
    /// The inline bytes, clamped to the maximum.
    pub fn inline_bytes(&self) -> &[u8] {
        &self.payload.as_bytes()[..(self.inline_len as usize).min(MAX_INLINE_DATA as usize)]
    }
    /// The payload as inline bytes, to fill.
    pub fn inline_mut(&mut self) -> &mut [u8] {
        self.payload.as_mut_bytes()
    }
}

impl RecvWqe {
    pub fn zeroed() -> Self {
        Self::new_zeroed()
    }
    pub fn sges(&self) -> &[Sge] {
        &self.sge[..(self.num_sge as usize).min(MAX_SGE as usize)]
    }
}

pub const SEND_WQE_SIZE: usize = 384;
pub const RECV_WQE_SIZE: usize = 272;
pub const CQE_SIZE: usize = 64;

const _: () = assert!(std::mem::size_of::<Sge>() == 16);
const _: () = assert!(std::mem::size_of::<SendWqe>() == SEND_WQE_SIZE);
const _: () = assert!(std::mem::offset_of!(SendWqe, payload) == 128);
const _: () = assert!(std::mem::size_of::<RecvWqe>() == RECV_WQE_SIZE);
const _: () = assert!(std::mem::size_of::<Cqe>() == CQE_SIZE);
const _: () = assert!(std::mem::offset_of!(Cqe, seq) == 44);
const _: () = assert!(std::mem::offset_of!(Cqe, wc_flags) == 36);
