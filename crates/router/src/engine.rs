//! The isolated data path: the router consumes send queues, executes each
//! work request against the memory regions it concerns (checking keys,
//! bounds, access rights and QP state as an RC responder would) and writes
//! completions. Everything read from a ring is untrusted.

use std::time::Instant;

use log::{debug, warn};

use flowverbs_sys::*;
use flowverbs_verbs::access::{self, Region};
use flowverbs_verbs::opcode::{self, completion_opcode, Shape};
use flowverbs_verbs::{atomic, receive};
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe};
use flowverbs_wire::ring::Take;

use super::events::AsyncTarget;
use super::link::Links;
use super::memory::{ProcessMemory, Segments};
use super::objects::{Stall, Tables};
use flowverbs_verbs::events::responder_error_event;
use flowverbs_verbs::qp::{self as qp_state, QpKind, ERR, RESET, RTS, SQD};

mod datagram;
mod remote;
mod window;

pub(super) use datagram::Datagram;

/// Most work requests, and bytes, one QP's send queue gets per pass.
const PASS_WRS: u32 = 32;
const PASS_BYTES: u64 = 1 << 20;

/// Bytes moved per bounce-buffer step.
const CHUNK: usize = 1 << 20;

pub struct Engine {
    pub tables: Tables,
    bounce: Vec<u8>,
    handles: Vec<u32>,
    /// Where the next pass over the QPs starts (see `service`).
    rotation: usize,
    /// Connections to the routers of other hosts (None: this host only).
    pub links: Option<Links>,
    /// Unit tests and fuzz targets: other routers played by an in-memory
    /// transport, used where the links would be.
    #[cfg(any(test, feature = "fuzzing"))]
    pub wire: Option<super::transport::in_memory::InMemoryTransport>,
    remote: remote::Remote,
    /// Semi mode (`router::semi`): the table of live keys.
    pub key_table: Option<super::semi::KeyTable>,
    /// Semi mode: which sessions share memory.
    pub semi_share: super::semi::SemiShare,
    /// Semi mode over a NIC (`router::nic_path`).
    pub nic: Option<super::nic_path::NicPaths>,
    /// Since start: sessions, QPs, and what closed QPs moved.
    pub totals: flowverbs_wire::control::RouterTotals,
}

/// Where a message's bytes come from.
enum Source {
    Inline(Vec<u8>),
    Memory(ProcessMemory, Segments),
}

impl Source {
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Source::Inline(bytes) => {
                buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
                Ok(())
            }
            Source::Memory(mem, segs) => mem.read_segments(segs, offset, buf),
        }
    }
}

/// The two work queues of a QP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Send,
    Recv,
}

/// What became of one send work request.
enum Outcome {
    Done,
    Stalled(Stall),
    /// An error completion was written and the QP moved to the error state.
    Failed,
    /// Part of a large message was moved; the rest follows on later passes.
    InProgress,
}

/// Which side of a copy failed.
enum CopyError {
    Source,
    Destination,
}

/// Runs an atomic `op` on the 8 bytes at `addr` of a responder's memory
/// (whose key, access and alignment were checked) and returns the value
/// they held. The router is single-threaded, so every atomic is atomic with
/// respect to every other RDMA operation it runs. Err: REM_ACCESS_ERR.
fn atomic_at(
    mem: &ProcessMemory,
    addr: u64,
    op: u32,
    compare_add: u64,
    swap: u64,
) -> Result<[u8; 8], u32> {
    let mut old = [0u8; 8];
    mem.read(addr, &mut old)
        .map_err(|_| IBV_WC_REM_ACCESS_ERR)?;
    let cur = u64::from_ne_bytes(old);
    let new = atomic::apply(op, cur, compare_add, swap);
    if new != cur {
        mem.write(addr, &new.to_ne_bytes())
            .map_err(|_| IBV_WC_REM_ACCESS_ERR)?;
    }
    Ok(old)
}

fn total_len(segs: &Segments) -> u64 {
    segs.iter().map(|s| s.1).sum()
}

impl Engine {
    pub fn new(tables: Tables) -> Engine {
        Engine {
            tables,
            bounce: vec![0; CHUNK],
            handles: Vec::new(),
            rotation: 0,
            links: None,
            #[cfg(any(test, feature = "fuzzing"))]
            wire: None,
            remote: remote::Remote::default(),
            key_table: None,
            semi_share: Default::default(),
            nic: None,
            totals: Default::default(),
        }
    }

    /// Runs every queue once; true if any work request made progress.
    pub fn service(&mut self, now: Instant) -> bool {
        let mut handles = std::mem::take(&mut self.handles);
        handles.clear();
        handles.extend(self.tables.qps.keys().copied());
        // Start each pass at another QP: whoever comes first gets the
        // shared resources first (link room, the CPU before a doorbell).
        if !handles.is_empty() {
            self.rotation = self.rotation.wrapping_add(1);
            let k = self.rotation % handles.len();
            handles.rotate_left(k);
        }
        self.fire_events();
        let mut progress = self.pump_links(now);
        self.count_link_bytes();
        for &h in &handles {
            progress |= self.service_qp(h, now);
        }
        self.handles = handles;
        if self.has_peers() {
            progress |= self.serve_reads();
            self.flush_links();
            progress |= self.link_room_opened();
        }
        progress
    }

    /// The earliest time a stalled request must fail.
    pub fn next_deadline(&self) -> Option<Instant> {
        let local = self
            .tables
            .qps
            .values()
            .filter_map(|q| match q.stall {
                Some(Stall::Retry { deadline, .. }) => deadline,
                _ => None,
            })
            .min();
        match (local, self.remote_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn service_qp(&mut self, h: u32, now: Instant) -> bool {
        let Some(qp) = self.tables.qps.get(&h) else {
            return false;
        };
        match qp.state() {
            ERR => self.flush(h),
            RTS | SQD if qp.semi => false,
            RTS | SQD => self.run_send_queue(h, now),
            _ => false,
        }
    }

    /// Moves a QP to the error state; its queues are flushed by `service`.
    pub fn to_error(&mut self, h: u32) {
        let Some(qp) = self.tables.qps.get_mut(&h) else {
            return;
        };
        if qp.state() == ERR {
            return;
        }
        debug!("qp {:#x} -> error", qp.qpn);
        qp.set_state(ERR);
        self.entered_error(h);
    }

    /// Once for every entry into the error state, whether the router or
    /// the application (modify to ERR) moved the QP there: stalls end, and
    /// a QP on an SRQ raises LAST_WQE_REACHED (nothing more will be taken
    /// from the SRQ for it).
    pub fn entered_error(&mut self, h: u32) {
        let Some(qp) = self.tables.qps.get_mut(&h) else {
            return;
        };
        qp.stall = None;
        let on_srq = qp.srq != 0;
        self.remote_entered_error(h);
        if on_srq {
            self.post_async_event(AsyncTarget::Qp(h), IBV_EVENT_QP_LAST_WQE_REACHED);
        }
    }

    /// Publishes a CQE that is not a solicited receive (see `publish_cqe`).
    fn push_cqe(&mut self, cq: u32, cqe: &Cqe) {
        self.publish_cqe(cq, cqe, false);
    }

    fn cq_free(&self, cq: u32) -> u32 {
        self.tables.cqs.get(&cq).map_or(0, |c| c.free_slots())
    }

    /// Completes every posted work request of a QP in the error state with
    /// IBV_WC_WR_FLUSH_ERR, as far as its CQs have room.
    fn flush(&mut self, h: u32) -> bool {
        let sent = self.flush_queue(h, Queue::Send);
        sent | self.flush_queue(h, Queue::Recv)
    }

    /// Flushes one queue of a QP in the error state, as far as its CQ has
    /// room. True if anything was completed (or the queue was resynced).
    fn flush_queue(&mut self, h: u32, queue: Queue) -> bool {
        let mut progress = false;
        loop {
            if queue == Queue::Recv {
                self.sync_rq(h);
            }
            let qp = &self.tables.qps[&h];
            let (pending, cq) = match queue {
                Queue::Send => (qp.sq_pending(), qp.send_cq),
                // Receives of an SRQ belong to the SRQ, not to this QP.
                Queue::Recv if qp.srq != 0 => return progress,
                Queue::Recv => (qp.rq_pending(), qp.recv_cq),
            };
            let Some(pending) = pending else {
                self.resync_after_violation(h);
                return true;
            };
            if pending == 0 || self.cq_free(cq) == 0 {
                return progress;
            }
            if queue == Queue::Send {
                let w: SendWqe = qp.sq.read(qp.sq_consumer);
                let op = completion_opcode(w.opcode);
                let cqe = Cqe::sent(&w, op, IBV_WC_WR_FLUSH_ERR, 0, qp.qpn);
                self.retire_send(h, &w, Some((cq, cqe)));
                progress = true;
                continue;
            }
            let wr_id = qp.rq.read(qp.rq_consumer).wr_id;
            let cqe = Cqe::receive_failed(wr_id, IBV_WC_WR_FLUSH_ERR, qp.qpn, 0);
            if self.key_table.is_some() {
                // Semi mode: a sender's provider may take it meanwhile.
                let qp = self.tables.qps.get_mut(&h).expect("qp");
                if !qp.header().rq.claim_consumer(qp.rq_consumer) {
                    continue;
                }
                qp.rq_consumer = qp.rq_consumer.wrapping_add(1);
            } else {
                self.consume_recv(h);
            }
            self.push_cqe(cq, &cqe);
            progress = true;
        }
    }

    /// Semi mode: a QP's own receive queue is also taken by its peer's
    /// provider (`router::semi`), so the router reads the shared consumer
    /// index before it looks at the queue.
    pub(super) fn sync_rq(&mut self, h: u32) {
        if self.key_table.is_none() {
            return;
        }
        if let Some(qp) = self.tables.qps.get_mut(&h).filter(|q| q.srq == 0) {
            let c = qp.header().rq.consumer();
            let n = qp.header().rq.producer().wrapping_sub(c);
            if n <= qp.rq.capacity() {
                qp.rq_consumer = c;
            }
        }
    }

    /// A client published an impossible producer index: its QP goes to the
    /// error state and the router drops what it cannot make sense of.
    fn resync_after_violation(&mut self, h: u32) {
        if let Some(qp) = self.tables.qps.get(&h) {
            warn!(
                "qp {:#x}: impossible ring index from the client; QP moved to error",
                qp.qpn
            );
        }
        if self.tables.qps.get(&h).is_some_and(|q| q.state() != ERR) {
            self.post_async_event(AsyncTarget::Qp(h), IBV_EVENT_QP_FATAL);
        }
        self.drain(h);
        self.to_error(h);
    }

    /// Retires the head send WQE `w` of QP `h`: its completion (if any,
    /// on CQ `cq`) carries the WQE's `sq_index`, so that the provider frees
    /// the slot for posting only once it is polled; it is published before
    /// the consumer index moves, because a semi-mode UD sender runs its
    /// own datagrams once the router has consumed every earlier WQE, and
    /// their completions must come after the router's.
    fn retire_send(&mut self, h: u32, w: &SendWqe, completion: Option<(u32, Cqe)>) {
        debug_assert!(completion.is_none_or(|(_, c)| c.sq_index == w.sq_index));
        if let Some((cq, cqe)) = completion {
            self.push_cqe(cq, &cqe);
        }
        let qp = self.tables.qps.get_mut(&h).expect("qp");
        qp.copied = 0;
        qp.sq_consumer = qp.sq_consumer.wrapping_add(1);
        qp.header().sq.publish_consumer(qp.sq_consumer);
    }

    /// Frees the head of QP `h`'s own receive queue after the message that
    /// used it (an SRQ's receives are taken when a message starts, with
    /// [`Engine::take_recv`]).
    fn consume_recv(&mut self, h: u32) {
        let qp = self.tables.qps.get_mut(&h).expect("qp");
        if qp.srq == 0 {
            qp.rq_consumer = qp.rq_consumer.wrapping_add(1);
            qp.header().rq.publish_consumer(qp.rq_consumer);
            qp.header().rq_router_waiting.receives_taken();
        }
    }

    /// Takes the receive at the head of QP `h`'s queue for a message that
    /// lands in it, before writing anything: an SRQ's (other QPs, and in
    /// semi mode senders' providers, take from it too), or a datagram's
    /// (in semi mode several senders' providers take from a UD QP). Raises
    /// SRQ_LIMIT_REACHED when the take crosses the SRQ's armed limit.
    pub(in crate::engine) fn take_recv(&mut self, h: u32) -> Take<(RecvWqe, u32)> {
        let qp = &self.tables.qps[&h];
        let srq_handle = qp.srq;
        if srq_handle == 0 {
            let max_sge = qp.caps.max_recv_sge;
            let taken = qp.header().rq.take(&qp.rq);
            if let Take::Taken { index, .. } = taken {
                qp.header().rq_router_waiting.receives_taken();
                let qp = self.tables.qps.get_mut(&h).expect("qp");
                qp.rq_consumer = index.wrapping_add(1);
            }
            return taken.map(|w| (w, max_sge));
        }
        let Some(srq) = self.tables.srqs.get(&srq_handle) else {
            return Take::Empty;
        };
        let (taken, max_sge) = (srq.header().rq.take(&srq.ring), srq.max_sge);
        let crossed = match taken {
            Take::Taken { remaining, .. } => {
                srq.header().router_waiting.receives_taken();
                srq.header()
                    .disarm_limit(remaining, receive::srq_limit_reached)
            }
            _ => false,
        };
        if crossed {
            self.post_async_event(AsyncTarget::Srq(srq_handle), IBV_EVENT_SRQ_LIMIT_REACHED);
        }
        taken.map(|w| (w, max_sge))
    }

    /// Discards everything posted on a QP's queues (modify to RESET).
    pub fn drain(&mut self, h: u32) {
        self.forget_remote(h);
        if let Some(qp) = self.tables.qps.get_mut(&h) {
            let hdr = qp.header();
            let (sp, rp) = (hdr.sq.producer(), hdr.rq.producer());
            qp.sq_consumer = sp;
            qp.rq_consumer = rp;
            qp.header().sq.publish_consumer(sp);
            qp.header().rq.publish_consumer(rp);
            qp.stall = None;
            qp.copied = 0;
        }
    }

    /// Runs a QP's send queue for at most [`PASS_WRS`] work requests or
    /// [`PASS_BYTES`] bytes, so that one busy QP cannot starve the others
    /// (every tenant of the host shares this thread); `service` comes back
    /// to it on its next pass.
    fn run_send_queue(&mut self, h: u32, now: Instant) -> bool {
        if let Some(peer) = self.remote_route(h) {
            return self.run_remote(h, peer, now);
        }
        let mut progress = false;
        let (mut wrs, mut bytes) = (0u32, 0u64);
        loop {
            let qp = &self.tables.qps[&h];
            if !matches!(qp.state(), RTS | SQD) || wrs >= PASS_WRS || bytes >= PASS_BYTES {
                break;
            }
            let Some(pending) = qp.sq_pending() else {
                self.resync_after_violation(h);
                return true;
            };
            if pending == 0 {
                break;
            }
            let wqe: SendWqe = qp.sq.read(qp.sq_consumer);
            if let Some(Stall::Retry {
                deadline: Some(d),
                rnr,
            }) = qp.stall
            {
                if now >= d {
                    let status = if rnr {
                        IBV_WC_RNR_RETRY_EXC_ERR
                    } else {
                        IBV_WC_RETRY_EXC_ERR
                    };
                    self.fail_requester(h, &wqe, status);
                    return true;
                }
            }
            match self.execute(h, &wqe, now) {
                Outcome::Done => {
                    self.tables.qps.get_mut(&h).expect("qp").stall = None;
                    progress = true;
                    wrs += 1;
                    bytes += if wqe.send_flags & IBV_SEND_INLINE != 0 {
                        u64::from(wqe.inline_len)
                    } else {
                        wqe.sges().iter().map(|s| u64::from(s.length)).sum()
                    };
                }
                Outcome::Stalled(stall) => {
                    let qp = self.tables.qps.get_mut(&h).expect("qp");
                    // Keep the first deadline: retries count from the first try.
                    if !matches!(
                        (qp.stall, stall),
                        (Some(Stall::Retry { .. }), Stall::Retry { .. })
                    ) {
                        qp.stall = Some(stall);
                    }
                    break;
                }
                Outcome::Failed => return true,
                Outcome::InProgress => {
                    // This QP's share of the pass is used up.
                    progress = true;
                    break;
                }
            }
        }
        progress
    }

    /// Consumes the WQE at the head of the send queue, writes its error
    /// completion and moves the QP to the error state. (Slots are always
    /// freed before the completion that reports them is published.)
    fn fail_requester(&mut self, h: u32, wqe: &SendWqe, status: u32) {
        let qp = &self.tables.qps[&h];
        let cqe = Cqe::sent(wqe, completion_opcode(wqe.opcode), status, 0, qp.qpn);
        let cq = qp.send_cq;
        debug!(
            "qp {:#x}: wr {:#x} fails with status {}",
            qp.qpn, wqe.wr_id, status
        );
        let link = self.carried_by_link(h, wqe);
        let qp = self.tables.qps.get_mut(&h).expect("qp");
        if link {
            qp.moved.link.errors += 1;
        } else {
            qp.moved.router.errors += 1;
        }
        self.retire_send(h, wqe, Some((cq, cqe)));
        self.to_error(h);
    }

    /// The memory region behind `key` if it belongs to `session`, as the
    /// semantics core checks it.
    fn region(&self, session: super::objects::SessionId, key: u32) -> Option<Region> {
        self.tables
            .keys
            .get(&key)
            .and_then(|m| self.tables.mrs.get(m))
            .filter(|m| m.session == session && m.lkey == key)
            .map(|m| m.region())
    }

    /// Resolves local SGEs against the QP's protection domain. `write`: the
    /// memory will be written (needs IBV_ACCESS_LOCAL_WRITE).
    fn local_segments(
        &self,
        h: u32,
        sges: &[flowverbs_wire::entries::Sge],
        write: bool,
    ) -> Result<Segments, u32> {
        let qp = &self.tables.qps[&h];
        let mut segs = Segments::with_capacity(sges.len());
        let mut total: u64 = 0;
        for sge in sges {
            let len = u64::from(sge.length);
            total += len;
            let region = self.region(qp.session, sge.lkey);
            access::local(region.as_ref(), qp.pd, sge.addr, len, write)?;
            if let Some(r) = region.filter(|_| len > 0) {
                segs.push((r.va_of(sge.addr), len));
            }
        }
        access::message_len(total)?;
        Ok(segs)
    }

    /// The connected peer of an RC/UC QP, if it is there and accepts
    /// packets from this QP.
    /// A path with a GRH goes to the GID it names: the peer must be served
    /// under that GID (its network namespace's address), as on a fabric
    /// that routes by GID; without a GRH the peer is on this host.
    fn peer(&self, h: u32) -> Option<u32> {
        let a = &self.tables.qps[&h];
        let hb = *self.tables.qpns.get(&a.attr.dest_qp_num)?;
        let b = &self.tables.qps[&hb];
        let gid_of = |session| self.tables.sessions.get(&session).map(|s| s.gid);
        let routed = !a.attr.ah_attr.is_global || gid_of(b.session) == Some(a.attr.ah_attr.dgid);
        // And b's own path leads back here (not to a QP of another host
        // that happens to have a's QPN).
        let back = !b.attr.ah_attr.is_global || gid_of(a.session) == Some(b.attr.ah_attr.dgid);
        let ok = routed
            && back
            && b.kind == a.kind
            && b.attr.dest_qp_num == a.qpn
            && qp_state::receives(b.state());
        ok.then_some(hb)
    }

    fn retry_stall(&self, h: u32, now: Instant) -> Stall {
        let a = &self.tables.qps[&h];
        Stall::Retry {
            deadline: qp_state::retry_deadline(now, a.attr.timeout, a.attr.retry_cnt),
            rnr: false,
        }
    }

    /// Request `ha` waits for a receive of `hb` (receiver not ready): its
    /// stall, and the flag that makes `hb`'s next receive post (or its
    /// SRQ's) wake the router (`wire::segment::RouterWaiting`).
    fn rnr_stall(&self, ha: u32, hb: u32, now: Instant) -> Stall {
        let a = &self.tables.qps[&ha];
        let b = &self.tables.qps[&hb];
        match self.tables.srqs.get(&b.srq) {
            Some(srq) => srq.header().router_waiting.wait_for_receives(),
            None => b.header().rq_router_waiting.wait_for_receives(),
        }
        Stall::Retry {
            deadline: qp_state::rnr_deadline(now, a.attr.rnr_retry, b.attr.min_rnr_timer),
            rnr: true,
        }
    }

    /// Checks an incoming RDMA access at the responder: rkey in the
    /// responder's PD, access rights on both MR and QP, bounds.
    fn remote_segment(
        &self,
        hb: u32,
        rkey: u32,
        addr: u64,
        len: u64,
        want: u32,
    ) -> Result<Segments, u32> {
        let b = &self.tables.qps[&hb];
        let region = self.remote_region(hb, rkey);
        access::remote(
            region.as_ref(),
            b.pd,
            b.attr.qp_access_flags,
            addr,
            len,
            want,
        )?;
        Ok(match region.filter(|_| len > 0) {
            Some(r) => vec![(r.va_of(addr), len)],
            None => Vec::new(),
        })
    }

    /// Streams the message of QP `ha`'s head work request from `src` into
    /// `dst` (ascending order), at most [`PASS_BYTES`] per call: a large
    /// message is moved over several passes, so that it cannot hold the
    /// router (and every other tenant) for its whole length. Ok(true) once
    /// all `len` bytes are there. Progress is kept in the QP (`copied`,
    /// reset when the request leaves the queue); it restarts from 0 if the
    /// peer changed meanwhile. `whole`: copy everything now (a receive
    /// taken from an SRQ could go to another QP between passes).
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        ha: u32,
        hb: u32,
        whole: bool,
        src: &Source,
        dst_mem: ProcessMemory,
        dst: &Segments,
        len: u64,
    ) -> Result<bool, CopyError> {
        let qp = &self.tables.qps[&ha];
        let start = if qp.copied_to == hb {
            qp.copied.min(len)
        } else {
            0
        };
        let end = if whole {
            len
        } else {
            start.saturating_add(PASS_BYTES).min(len)
        };
        let r = self.copy_range(src, dst_mem, dst, start, end);
        let qp = self.tables.qps.get_mut(&ha).expect("qp");
        match r {
            Ok(()) if end < len => {
                qp.copied = end;
                qp.copied_to = hb;
                Ok(false)
            }
            Ok(()) => {
                qp.copied = 0;
                Ok(true)
            }
            Err(e) => {
                qp.copied = 0;
                Err(e)
            }
        }
    }

    /// Streams bytes `[start, end)` of `src` into the same bytes of `dst`.
    fn copy_range(
        &mut self,
        src: &Source,
        dst_mem: ProcessMemory,
        dst: &Segments,
        start: u64,
        len: u64,
    ) -> Result<(), CopyError> {
        let mut off = start;
        while off < len {
            let n = ((len - off) as usize).min(CHUNK);
            let buf = &mut self.bounce[..n];
            src.read(off, buf).map_err(|_| CopyError::Source)?;
            dst_mem
                .write_segments(dst, off, buf)
                .map_err(|_| CopyError::Destination)?;
            off += n as u64;
        }
        Ok(())
    }

    fn memory_of(&self, h: u32) -> ProcessMemory {
        let s = self.tables.qps[&h].session;
        self.tables.sessions[&s].memory.clone()
    }

    /// A responder-side failure. RC: the requester's WQE gets `req_status`,
    /// the responder optionally completes `recv` with `resp_status`, and
    /// both QPs go to the error state. UC has no acknowledgements: the
    /// requester completes successfully and only the responder sees the
    /// error (if a receive was involved).
    fn responder_error(
        &mut self,
        ha: u32,
        wqe: &SendWqe,
        req_status: u32,
        hb: u32,
        recv: Option<(RecvWqe, u32)>,
        len: u64,
    ) -> Outcome {
        if let Some((rwqe, status)) = recv {
            let b = &self.tables.qps[&hb];
            let cqe = Cqe::receive_failed(rwqe.wr_id, status, b.qpn, self.tables.qps[&ha].qpn);
            let cq = b.recv_cq;
            self.consume_recv(hb);
            self.push_cqe(cq, &cqe);
        }
        if self.tables.qps[&ha].kind == QpKind::Uc {
            if recv.is_some() {
                self.to_error(hb);
            }
            self.finish_send(ha, wqe, len);
            return Outcome::Done;
        }
        let responder_was_ok = self.tables.qps.get(&hb).is_some_and(|q| q.state() != ERR);
        if recv.is_none() && responder_was_ok {
            // No receive WQE to report the error on: an affiliated event
            // (before LAST_WQE_REACHED, which to_error raises for SRQ QPs).
            self.post_async_event(AsyncTarget::Qp(hb), responder_error_event(req_status));
        }
        self.to_error(hb);
        self.fail_requester(ha, wqe, req_status);
        Outcome::Failed
    }

    /// Frees the send slot and, if the WR is signaled, completes it
    /// successfully. (The slot is freed before the completion is visible: a
    /// poster that sees the completion may reuse the slot at once.)
    fn finish_send(&mut self, ha: u32, w: &SendWqe, byte_len: u64) {
        let a = &self.tables.qps[&ha];
        let signaled = opcode::signaled(a.sq_sig_all, w.send_flags);
        let cqe = Cqe::sent(
            w,
            completion_opcode(w.opcode),
            IBV_WC_SUCCESS,
            byte_len,
            a.qpn,
        );
        let cq = a.send_cq;
        let link = self.carried_by_link(ha, w);
        let qp = self.tables.qps.get_mut(&ha).expect("qp");
        let moved = if link {
            &mut qp.moved.link
        } else {
            &mut qp.moved.router
        };
        moved.count(w.opcode, byte_len, w.send_flags & IBV_SEND_INLINE != 0);
        self.retire_send(ha, w, signaled.then_some((cq, cqe)));
    }

    /// Where the receive WQEs of a QP come from: its own queue or its SRQ.
    fn recv_pending(&self, h: u32) -> Option<u32> {
        let qp = &self.tables.qps[&h];
        if qp.srq != 0 {
            self.tables.srqs.get(&qp.srq).and_then(|s| s.pending())
        } else {
            qp.rq_pending()
        }
    }

    /// The receive at the head of QP `h`'s queue, left there (a message
    /// that only reports an immediate takes it when it completes).
    fn recv_head(&self, h: u32) -> (RecvWqe, u32) {
        let qp = &self.tables.qps[&h];
        match self.tables.srqs.get(&qp.srq).filter(|_| qp.srq != 0) {
            Some(s) => (s.ring.read(s.header().rq.consumer()), s.max_sge),
            None => (qp.rq.read(qp.rq_consumer), qp.caps.max_recv_sge),
        }
    }

    /// The segments of receive `rwqe` of QP `hb` (whose queue allows
    /// `max_sge`) for a message of `len` bytes, and the semantics core's
    /// verdict on it.
    fn receive_segments(
        &self,
        hb: u32,
        rwqe: &RecvWqe,
        max_sge: u32,
        len: u64,
    ) -> (Segments, Result<(), receive::Fault>) {
        let b = &self.tables.qps[&hb];
        let mut segs = Segments::new();
        let checked = rwqe.sges().iter().map(|sge| {
            let n = u64::from(sge.length);
            let region = self.region(b.session, sge.lkey);
            access::local(region.as_ref(), b.pd, sge.addr, n, true)?;
            if let Some(r) = region.filter(|_| n > 0) {
                segs.push((r.va_of(sge.addr), n));
            }
            Ok(n)
        });
        let verdict = receive::check(rwqe.num_sge, max_sge, checked, len);
        (segs, verdict)
    }

    /// A receive queue with an impossible producer index: an SRQ drops what
    /// it holds; a QP's own queue takes the QP to the error state.
    fn recv_violation(&mut self, h: u32) {
        let srq = self.tables.qps[&h].srq;
        match self.tables.srqs.get_mut(&srq).filter(|_| srq != 0) {
            Some(s) => {
                warn!("srq {srq}: impossible ring index from the client; its receives are dropped");
                s.header().rq.publish_consumer(s.header().rq.producer());
            }
            None => self.resync_after_violation(h),
        }
    }

    /// The requester's own checks of a send work request: opcode allowed
    /// for the QP type, SGE count, inline length, local keys. Returns the
    /// local segments, the message length and whether it is inline, or the
    /// error status of its completion.
    fn validate_send(&self, ha: u32, w: &SendWqe) -> Result<(Segments, u64, bool), u32> {
        let a = &self.tables.qps[&ha];
        let Shape {
            inline,
            reads_local,
        } = opcode::shape(
            a.kind.ibv_type(),
            w.opcode,
            w.send_flags,
            w.num_sge,
            w.inline_len,
            a.caps.max_send_sge,
        )?;
        if inline {
            return Ok((Segments::new(), u64::from(w.inline_len), true));
        }
        let s = self.local_segments(ha, w.sges(), !reads_local)?;
        let l = total_len(&s);
        if opcode::is_atomic(w.opcode) {
            atomic::check_local(s.len(), l)?;
        }
        Ok((s, l, false))
    }

    fn execute(&mut self, ha: u32, w: &SendWqe, now: Instant) -> Outcome {
        let a = &self.tables.qps[&ha];
        let kind = a.kind;
        if self.cq_free(a.send_cq) == 0 {
            return Outcome::Stalled(Stall::CqFull);
        }
        let (local, len, inline) = match self.validate_send(ha, w) {
            Ok(v) => v,
            Err(status) => {
                self.fail_requester(ha, w, status);
                return Outcome::Failed;
            }
        };
        if opcode::is_local(w.opcode) {
            return self.run_window_op(ha, w);
        }
        let src = if inline {
            Source::Inline(w.inline_bytes().to_vec())
        } else {
            Source::Memory(self.memory_of(ha), local.clone())
        };
        if kind == QpKind::Ud {
            return self.execute_ud(ha, w, &src, len);
        }
        let uc = kind == QpKind::Uc;
        let Some(hb) = self.peer(ha) else {
            if uc {
                // Nobody listens: an unreliable message is simply lost.
                self.finish_send(ha, w, len);
                return Outcome::Done;
            }
            return Outcome::Stalled(self.retry_stall(ha, now));
        };
        let mem_a = self.memory_of(ha);
        let mem_b = self.memory_of(hb);
        let (recv_cq, qpn_a, qpn_b) = (
            self.tables.qps[&hb].recv_cq,
            self.tables.qps[&ha].qpn,
            self.tables.qps[&hb].qpn,
        );
        let consumes_recv = opcode::consumes_receive(w.opcode);
        let on_srq = self.tables.qps[&hb].srq != 0;

        // A receive WQE at the responder, if the operation needs one.
        let mut recv: Option<RecvWqe> = None;
        let mut recv_max_sge = 0;
        if consumes_recv {
            self.sync_rq(hb);
            match self.recv_pending(hb) {
                None => {
                    self.recv_violation(hb);
                    return Outcome::Stalled(self.retry_stall(ha, now));
                }
                Some(0) if uc => {
                    self.finish_send(ha, w, len);
                    return Outcome::Done;
                }
                Some(0) => return Outcome::Stalled(self.rnr_stall(ha, hb, now)),
                Some(_) => {}
            }
            if self.cq_free(recv_cq) == 0 {
                return Outcome::Stalled(Stall::CqFull);
            }
            let (r, max) = if on_srq && receive::lands_in_receive(w.opcode) {
                // Its data lands in the receive: take it first.
                match self.take_recv(hb) {
                    Take::Taken { entry, .. } => entry,
                    Take::Empty if uc => {
                        self.finish_send(ha, w, len);
                        return Outcome::Done;
                    }
                    Take::Empty => return Outcome::Stalled(self.rnr_stall(ha, hb, now)),
                    Take::Violation => {
                        self.recv_violation(hb);
                        return Outcome::Stalled(self.retry_stall(ha, now));
                    }
                }
            } else {
                self.recv_head(hb)
            };
            recv = Some(r);
            recv_max_sge = max;
        }

        let mut result_len = len;
        match w.opcode {
            IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_SEND_WITH_INV => {
                let rwqe = recv.expect("recv");
                let (dst, fault) = self.receive_segments(hb, &rwqe, recv_max_sge, len);
                if let Err(f) = fault {
                    return self.responder_error(
                        ha,
                        w,
                        f.requester,
                        hb,
                        Some((rwqe, f.receive)),
                        len,
                    );
                }
                match self.copy(ha, hb, on_srq, &src, mem_b, &dst, len) {
                    Ok(true) => {}
                    Ok(false) => return Outcome::InProgress,
                    Err(CopyError::Source) => {
                        self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                        return Outcome::Failed;
                    }
                    Err(CopyError::Destination) => {
                        return self.responder_error(
                            ha,
                            w,
                            IBV_WC_REM_OP_ERR,
                            hb,
                            Some((rwqe, IBV_WC_LOC_PROT_ERR)),
                            len,
                        )
                    }
                }
            }
            IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM => {
                let dst = match self.remote_segment(
                    hb,
                    w.rkey,
                    w.remote_addr,
                    len,
                    IBV_ACCESS_REMOTE_WRITE,
                ) {
                    Ok(d) => d,
                    Err(status) => return self.responder_error(ha, w, status, hb, None, len),
                };
                // (WRITE_WITH_IMM's receive is checked on every pass and
                // taken in the pass that moves the last byte.)
                match self.copy(ha, hb, false, &src, mem_b, &dst, len) {
                    Ok(true) => {}
                    Ok(false) => return Outcome::InProgress,
                    Err(CopyError::Source) => {
                        self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                        return Outcome::Failed;
                    }
                    Err(CopyError::Destination) => {
                        return self.responder_error(ha, w, IBV_WC_REM_ACCESS_ERR, hb, None, len)
                    }
                }
            }
            IBV_WR_RDMA_READ => {
                let remote = match self.remote_segment(
                    hb,
                    w.rkey,
                    w.remote_addr,
                    len,
                    IBV_ACCESS_REMOTE_READ,
                ) {
                    Ok(r) => r,
                    Err(status) => return self.responder_error(ha, w, status, hb, None, len),
                };
                let src = Source::Memory(mem_b, remote);
                match self.copy(ha, hb, false, &src, mem_a, &local, len) {
                    Ok(true) => {}
                    Ok(false) => return Outcome::InProgress,
                    Err(CopyError::Source) => {
                        return self.responder_error(ha, w, IBV_WC_REM_ACCESS_ERR, hb, None, len)
                    }
                    Err(CopyError::Destination) => {
                        self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                        return Outcome::Failed;
                    }
                }
            }
            _ => {
                // Atomics: an 8-byte aligned remote address (validate_send
                // checked the one 8-byte local SGE).
                if let Err(status) = atomic::check_target(w.remote_addr) {
                    return self.responder_error(ha, w, status, hb, None, len);
                }
                let target = match self.remote_segment(
                    hb,
                    w.rkey,
                    w.remote_addr,
                    8,
                    IBV_ACCESS_REMOTE_ATOMIC,
                ) {
                    Ok(segs) => segs[0].0,
                    Err(status) => return self.responder_error(ha, w, status, hb, None, len),
                };
                let old = match atomic_at(&mem_b, target, w.opcode, w.compare_add, w.swap) {
                    Ok(old) => old,
                    Err(status) => return self.responder_error(ha, w, status, hb, None, len),
                };
                if mem_a.write(local[0].0, &old).is_err() {
                    self.fail_requester(ha, w, IBV_WC_LOC_PROT_ERR);
                    return Outcome::Failed;
                }
                result_len = 8;
            }
        }

        if let Some(mut rwqe) = recv {
            if on_srq && !receive::lands_in_receive(w.opcode) {
                // WRITE_WITH_IMM: the receive only reports the immediate
                // and is taken now, as the message completes.
                match self.take_recv(hb) {
                    Take::Taken { entry, .. } => rwqe = entry.0,
                    Take::Empty if uc => {
                        self.finish_send(ha, w, len);
                        return Outcome::Done;
                    }
                    // Taken by another QP meanwhile: the requester retries.
                    Take::Empty => return Outcome::Stalled(self.rnr_stall(ha, hb, now)),
                    Take::Violation => {
                        self.recv_violation(hb);
                        return Outcome::Stalled(self.retry_stall(ha, now));
                    }
                }
            }
            if w.opcode == IBV_WR_SEND_WITH_INV {
                if let Err(status) = self.invalidate_at_responder(hb, w.imm_data) {
                    return self.responder_error(ha, w, status, hb, Some((rwqe, status)), len);
                }
            }
            let cqe = Cqe::received(rwqe.wr_id, w.opcode, len as u32, w.imm_data, qpn_b, qpn_a);
            self.consume_recv(hb);
            let solicited = w.send_flags & IBV_SEND_SOLICITED != 0;
            self.publish_cqe(recv_cq, &cqe, solicited);
        }
        self.finish_send(ha, w, result_len);
        Outcome::Done
    }

    /// Removes a QP; a peer still sending to it will time out as on a
    /// fabric whose responder vanished.
    pub fn remove_qp(&mut self, h: u32) {
        self.forget_remote(h);
        if let Some(qp) = self.tables.qps.remove(&h) {
            self.totals.moved.add(&qp.moved());
            self.tables.qpns.remove(&qp.qpn);
            // Semi-mode senders may still map its segment: no longer a
            // responder for them.
            qp.header()
                .state
                .store(RESET, std::sync::atomic::Ordering::Release);
            qp.header()
                .path_local
                .store(0, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether work request `w` of QP `h` goes over the link: a connected
    /// QP's path, or a datagram's address handle, names another host.
    fn carried_by_link(&self, h: u32, w: &SendWqe) -> bool {
        let ud = self
            .tables
            .qps
            .get(&h)
            .is_some_and(|q| q.kind == QpKind::Ud);
        if ud {
            self.has_peers() && w.ah_global != 0 && !self.serves_locally(&w.dgid)
        } else {
            self.path_of(h) == flowverbs_wire::control::QpPath::Link
        }
    }

    /// Which path carries QP `h`'s sends (for `flowverbs status`).
    pub fn path_of(&self, h: u32) -> flowverbs_wire::control::QpPath {
        use flowverbs_wire::control::QpPath;
        let Some(q) = self.tables.qps.get(&h) else {
            return QpPath::Router;
        };
        if q.on_nic {
            QpPath::Nic
        } else if q.semi {
            QpPath::Semi
        } else if q.kind != QpKind::Ud
            && q.attr.ah_attr.is_global
            && self.has_peers()
            && !self.serves_locally(&q.attr.ah_attr.dgid)
        {
            QpPath::Link
        } else {
            QpPath::Router
        }
    }

    /// True when a QP in RESET must not keep entries around.
    pub fn is_reset(&self, h: u32) -> bool {
        self.tables.qps.get(&h).is_some_and(|q| q.state() == RESET)
    }
}
