//! The `traffic` target's world: two endpoints (sessions of two users,
//! each with a PD, two MRs, a CQ, an SRQ and four connected QPs: RC, UC,
//! UD, RC on the SRQ) on one router, or on two routers joined by an
//! in-memory wire. The input is a program of client and network actions:
//! work requests written into the rings (shaped, or raw bytes), ring
//! indices set to anything, control requests, engine passes, frames
//! delivered, dropped, duplicated, reordered or corrupted, time passing,
//! the peer router lost and back.
//!
//! What must hold after every action ([`World::check`]): the tables are
//! consistent, and no byte of the buffer outside a writable registered
//! range changed (each endpoint's read-only MR and the guard area after it
//! keep their pattern), whatever the work requests asked.

use std::time::{Duration, Instant};

use flowverbs_router::control;
use flowverbs_router::engine::Engine;
use flowverbs_router::objects::SessionId;
use flowverbs_router::transport::in_memory::{Frame, InMemoryTransport};
use flowverbs_sys::*;
use flowverbs_wire::control::{AddressVector, QpAttr, QpCaps, Reply, Request};
use flowverbs_wire::entries::{RecvWqe, SendWqe, Sge};
use flowverbs_wire::link::{FrameHeader, HEADER_LEN};
use zerocopy::FromBytes;

use crate::{add_session, bare_engine, session_gid, BUFFER_ADDR};

/// Bytes of the buffer each endpoint owns: a writable MR, a read-only MR,
/// then a guard area that no work request may touch.
const REGION: u64 = 256 << 10;
const RW_LEN: u64 = 64 << 10;
const RO_LEN: u64 = 4 << 10;
const RO_PATTERN: u8 = 0x5a;
const GUARD_PATTERN: u8 = 0xa5;
const QKEY: u32 = 0x1111_1111;
/// Set in the `wr_id` of a shaped work request that names a key of
/// another session or no key at all, which must never complete
/// successfully (the other bits are the input's; raw work requests have
/// the bit cleared).
const MUST_FAIL: u64 = 1 << 63;
/// Frames the wire keeps per direction; older ones are lost, as a link
/// that dropped them would.
const WIRE_FRAMES: usize = 4096;
/// Actions per input.
const MAX_ACTIONS: usize = 256;

/// RC, UC, UD, RC on the SRQ.
const QP_TYPES: [u32; 4] = [IBV_QPT_RC, IBV_QPT_UC, IBV_QPT_UD, IBV_QPT_RC];

/// One session and its objects.
pub struct Endpoint {
    pub host: usize,
    pub session: SessionId,
    pub net: u8,
    pub base: u64,
    pub rw: (u32, u32),
    pub ro: (u32, u32),
    pub cq: u32,
    pub srq: u32,
    pub qps: [u32; 4],
    pub qpns: [u32; 4],
}

pub struct World {
    pub hosts: Vec<Engine>,
    pub ends: [Endpoint; 2],
    now: Instant,
    peer_up: bool,
}

/// Reads the input front to back; short reads give zeros.
pub struct Input<'a>(&'a [u8]);

impl Input<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
}

fn ask(eng: &mut Engine, session: SessionId, request: Request) -> Reply {
    control::handle(eng, session, request, Vec::new()).reply
}

/// Fills `len` bytes of the fuzz buffer at `base + offset`.
fn fill(base: u64, offset: u64, len: u64, value: u8) {
    // SAFETY: the fuzz buffer (crate::map_buffer) is mapped for the whole
    // run and this range lies inside it; the engine is single-threaded and
    // not running while the harness writes.
    unsafe { std::ptr::write_bytes((base + offset) as *mut u8, value, len as usize) }
}

/// True if all `len` bytes of the fuzz buffer at `base + offset` are `value`.
fn holds(base: u64, offset: u64, len: u64, value: u8) -> bool {
    // SAFETY: as in `fill`; the bytes are only read.
    let bytes = unsafe { std::slice::from_raw_parts((base + offset) as *const u8, len as usize) };
    bytes.iter().all(|b| *b == value)
}

impl Endpoint {
    fn new(eng: &mut Engine, host: usize, session: SessionId, uid: u32, net: u8) -> Endpoint {
        add_session(eng, session, uid, net);
        eng.announce_gids();
        let base = BUFFER_ADDR + u64::from(net - 1) * REGION;
        fill(base, RW_LEN, RO_LEN, RO_PATTERN);
        fill(
            base,
            RW_LEN + RO_LEN,
            REGION - RW_LEN - RO_LEN,
            GUARD_PATTERN,
        );
        let Reply::Pd { pd } = ask(eng, session, Request::AllocPd) else {
            panic!("no PD")
        };
        let mut mr = |addr: u64, length: u64, access: u32| match ask(
            eng,
            session,
            Request::RegMr {
                pd,
                addr,
                iova: addr,
                length,
                access,
                runs: Vec::new(),
                nic_key: None,
            },
        ) {
            Reply::Mr { lkey, rkey, .. } => (lkey, rkey),
            r => panic!("no MR: {r:?}"),
        };
        let rw = mr(base, RW_LEN, 0xf);
        let ro = mr(base + RW_LEN, RO_LEN, 0);
        let create_cq = Request::CreateCq {
            cqe: 64,
            channel: None,
            cookie: 0,
        };
        let Reply::Cq { cq, .. } = ask(eng, session, create_cq) else {
            panic!("no CQ")
        };
        let create_srq = Request::CreateSrq {
            pd,
            max_wr: 32,
            max_sge: 2,
            srq_limit: 0,
            cookie: 0,
            nic: false,
        };
        let Reply::Srq { srq, .. } = ask(eng, session, create_srq) else {
            panic!("no SRQ")
        };
        let mut qps = [0; 4];
        let mut qpns = [0; 4];
        for (i, qp_type) in QP_TYPES.into_iter().enumerate() {
            let create = Request::CreateQp {
                pd,
                qp_type,
                send_cq: cq,
                recv_cq: cq,
                srq: if i == 3 { srq } else { 0 },
                caps: QpCaps {
                    max_send_wr: 16,
                    max_recv_wr: 16,
                    max_send_sge: 2,
                    max_recv_sge: 2,
                    max_inline_data: 64,
                },
                sq_sig_all: i == 0,
                cookie: 0,
                nic_qpn: None,
            };
            match ask(eng, session, create) {
                Reply::Qp { qp, qpn, .. } => (qps[i], qpns[i]) = (qp, qpn),
                r => panic!("no QP: {r:?}"),
            }
        }
        Endpoint {
            host,
            session,
            net,
            base,
            rw,
            ro,
            cq,
            srq,
            qps,
            qpns,
        }
    }

    /// Moves QP `i` to RTS, connected to the same QP of `peer`.
    fn connect(&self, eng: &mut Engine, i: usize, peer_net: u8, peer_qpn: u32) {
        let ud = QP_TYPES[i] == IBV_QPT_UD;
        let uc = QP_TYPES[i] == IBV_QPT_UC;
        let modify = |state: u32, mask: u32, attr: QpAttr| Request::ModifyQp {
            qp: self.qps[i],
            attr: QpAttr {
                qp_state: state,
                ..attr
            },
            mask: IBV_QP_STATE | mask,
        };
        let init = QpAttr {
            port_num: 1,
            qkey: QKEY,
            qp_access_flags: 0xe,
            ..QpAttr::default()
        };
        let init_mask =
            IBV_QP_PKEY_INDEX | IBV_QP_PORT | if ud { IBV_QP_QKEY } else { IBV_QP_ACCESS_FLAGS };
        let rtr = QpAttr {
            path_mtu: IBV_MTU_1024,
            dest_qp_num: peer_qpn,
            rq_psn: 7,
            max_dest_rd_atomic: 4,
            min_rnr_timer: 1,
            ah_attr: AddressVector {
                is_global: true,
                dgid: session_gid(peer_net),
                port_num: 1,
                hop_limit: 64,
                ..AddressVector::default()
            },
            ..QpAttr::default()
        };
        let rtr_mask = match (ud, uc) {
            (true, _) => 0,
            (_, true) => IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN,
            _ => {
                IBV_QP_AV
                    | IBV_QP_PATH_MTU
                    | IBV_QP_DEST_QPN
                    | IBV_QP_RQ_PSN
                    | IBV_QP_MAX_DEST_RD_ATOMIC
                    | IBV_QP_MIN_RNR_TIMER
            }
        };
        let rts = QpAttr {
            sq_psn: 7,
            timeout: 1,
            retry_cnt: 2,
            rnr_retry: 1,
            max_rd_atomic: 4,
            ..QpAttr::default()
        };
        let rts_mask = match (ud, uc) {
            (true, _) | (_, true) => IBV_QP_SQ_PSN,
            _ => {
                IBV_QP_SQ_PSN
                    | IBV_QP_TIMEOUT
                    | IBV_QP_RETRY_CNT
                    | IBV_QP_RNR_RETRY
                    | IBV_QP_MAX_QP_RD_ATOMIC
            }
        };
        for r in [
            modify(IBV_QPS_INIT, init_mask, init),
            modify(IBV_QPS_RTR, rtr_mask, rtr),
            modify(IBV_QPS_RTS, rts_mask, rts),
        ] {
            let reply = ask(eng, self.session, r);
            assert!(
                !matches!(reply, Reply::Error { .. }),
                "setting up QP {i}: {reply:?}"
            );
        }
    }
}

impl World {
    /// Two endpoints on one router (`two_hosts` false) or on two.
    pub fn new(two_hosts: bool) -> World {
        let mut hosts = vec![bare_engine(false, 1)];
        if two_hosts {
            hosts.push(bare_engine(false, 2));
        }
        let h1 = usize::from(two_hosts);
        let a = Endpoint::new(&mut hosts[0], 0, 1, 1000, 1);
        let b = Endpoint::new(&mut hosts[h1], h1, 2, 1001, 2);
        if two_hosts {
            for (h, other) in [(0, &b), (1, &a)] {
                let mut wire = InMemoryTransport::default();
                wire.gids.insert(session_gid(other.net), 0);
                hosts[h].wire = Some(wire);
            }
        }
        for i in 0..4 {
            a.connect(&mut hosts[0], i, b.net, b.qpns[i]);
            b.connect(&mut hosts[h1], i, a.net, a.qpns[i]);
        }
        World {
            hosts,
            ends: [a, b],
            now: Instant::now(),
            peer_up: true,
        }
    }

    /// Runs the program in `input`: the tables are checked after every
    /// action, the memory at the end (what was written stays written).
    pub fn run(&mut self, input: &mut Input) {
        for _ in 0..MAX_ACTIONS {
            if input.is_empty() {
                break;
            }
            self.act(input);
            self.check_tables();
        }
        self.poll(0);
        self.poll(1);
        self.check_memory();
    }

    fn act(&mut self, input: &mut Input) {
        match input.u8() % 10 {
            0 => {
                let e = usize::from(input.u8() & 1);
                let q = input.u8();
                let wqe = self.shaped_send(e, q, input);
                self.post_send(e, q, &wqe);
            }
            1 => {
                let e = usize::from(input.u8() & 1);
                let q = input.u8();
                let raw = input.bytes(std::mem::size_of::<SendWqe>());
                if let Ok(mut wqe) = SendWqe::read_from_bytes(raw) {
                    wqe.wr_id &= !MUST_FAIL;
                    self.post_send(e, q, &wqe);
                }
            }
            2 => {
                let e = usize::from(input.u8() & 1);
                self.post_recv(e, input);
            }
            3 => {
                let h = usize::from(input.u8()) % self.hosts.len();
                self.hosts[h].service(self.now);
            }
            4 => self.deliver(input),
            5 => self.now += Duration::from_millis(u64::from(input.u16())),
            6 => {
                let e = usize::from(input.u8() & 1);
                let len = usize::from(input.u16());
                let body = input.bytes(len);
                let Ok(request) = flowverbs_wire::codec::decode::<Request>(body) else {
                    return;
                };
                // New registrations would make the guard area writable.
                if matches!(request, Request::RegMr { .. }) {
                    return;
                }
                let end = &self.ends[e];
                let _ = control::handle(&mut self.hosts[end.host], end.session, request, vec![]);
            }
            7 => self.flip_peer(input.u8()),
            8 => {
                let e = usize::from(input.u8() & 1);
                let which = input.u8();
                let value = input.u32();
                self.set_index(e, which, value);
            }
            _ => {
                let e = usize::from(input.u8() & 1);
                self.poll(e);
            }
        }
    }

    /// A send work request built from a few input bytes: an opcode, flags,
    /// a length, offsets into the endpoint's and its peer's MRs, and which
    /// keys (right, read-only, or garbage) it names.
    fn shaped_send(&self, e: usize, q: u8, input: &mut Input) -> SendWqe {
        const OPCODES: [u32; 7] = [
            IBV_WR_SEND,
            IBV_WR_SEND_WITH_IMM,
            IBV_WR_RDMA_WRITE,
            IBV_WR_RDMA_WRITE_WITH_IMM,
            IBV_WR_RDMA_READ,
            IBV_WR_ATOMIC_CMP_AND_SWP,
            IBV_WR_ATOMIC_FETCH_AND_ADD,
        ];
        let (me, peer) = (&self.ends[e], &self.ends[1 - e]);
        let opc = input.u8();
        let flags = input.u8();
        let len = u32::from(input.u16());
        let loff = u64::from(input.u16()) * 4;
        let roff = u64::from(input.u16()) * 4;
        let keys = input.u8();
        let mut w = SendWqe::zeroed();
        w.wr_id = u64::from(input.u32());
        w.opcode = OPCODES
            .get(usize::from(opc))
            .copied()
            .unwrap_or(u32::from(opc));
        w.send_flags = u32::from(flags & 0xf);
        w.imm_data = input.u32();
        let (lkey, lbase) = match keys & 3 {
            0 => (me.rw.0, me.base),
            1 => (me.ro.0, me.base + RW_LEN),
            2 => (peer.rw.0, me.base),
            _ => (0xdead_beef, me.base),
        };
        // A foreign rkey names memory that is writable, so that only the
        // completion's status can tell whether it was refused.
        let (rkey, rbase) = match keys >> 2 & 3 {
            0 => (peer.rw.1, peer.base),
            1 => (peer.ro.1, peer.base + RW_LEN),
            2 => (me.rw.1, me.base),
            _ => (0xfeed_f00d, peer.base),
        };
        let inline = w.send_flags & IBV_SEND_INLINE != 0;
        let remote_op = matches!(opc, 2..=6);
        let rc = QP_TYPES[usize::from(q) % 4] == IBV_QPT_RC;
        // Refused whatever else holds: a wrong lkey on data it must read
        // or write, or (RC, where the responder's verdict comes back) a
        // wrong rkey.
        if len > 0 && ((!inline && keys & 3 >= 2) || (rc && remote_op && keys >> 2 & 3 >= 2)) {
            w.wr_id |= MUST_FAIL;
        }
        w.rkey = rkey;
        w.remote_addr = rbase + roff;
        w.compare_add = u64::from(keys);
        w.swap = u64::from(len);
        w.remote_qpn = if keys & 0x10 == 0 {
            peer.qpns[2]
        } else {
            peer.qpns[0]
        };
        w.remote_qkey = if keys & 0x20 == 0 { QKEY } else { !QKEY };
        w.ah_global = 1;
        w.dgid = session_gid(if keys & 0x40 == 0 { peer.net } else { 9 });
        w.hop_limit = 64;
        if w.send_flags & IBV_SEND_INLINE != 0 {
            let n = len.min(w.inline_mut().len() as u32);
            w.inline_len = n;
            w.inline_mut()[..n as usize].fill(keys);
        } else if keys & 0x80 == 0 {
            w.num_sge = 1;
            w.payload[0] = Sge {
                addr: lbase + loff,
                length: len,
                lkey,
            };
        } else {
            w.num_sge = 2;
            w.payload[0] = Sge {
                addr: lbase + loff,
                length: len / 2,
                lkey,
            };
            w.payload[1] = Sge {
                addr: lbase + loff + u64::from(len),
                length: len - len / 2,
                lkey,
            };
        }
        w
    }

    /// Writes `w` at the producer index of QP `q`'s send queue and
    /// publishes it, as the provider does.
    fn post_send(&mut self, e: usize, q: u8, w: &SendWqe) {
        let end = &self.ends[e];
        let h = end.qps[usize::from(q) % 4];
        let Some(qp) = self.hosts[end.host].tables.qps.get(&h) else {
            return;
        };
        let mut w = *w;
        let p = qp.header().sq.producer();
        w.sq_index = p.wrapping_add(1);
        qp.sq.write(p, &w);
        qp.header().sq.publish_producer(p.wrapping_add(1));
    }

    fn post_recv(&mut self, e: usize, input: &mut Input) {
        let end = &self.ends[e];
        let which = usize::from(input.u8()) % 4;
        let len = u32::from(input.u16());
        let off = u64::from(input.u16()) * 4;
        let keys = input.u8();
        let (lkey, base) = match keys & 3 {
            0 | 1 => (end.rw.0, end.base),
            2 => (end.ro.0, end.base + RW_LEN),
            _ => (0xdead_beef, end.base),
        };
        let mut r = RecvWqe::zeroed();
        r.wr_id = u64::from(keys) << 32 | u64::from(len);
        r.num_sge = if keys & 4 == 0 {
            1
        } else {
            u32::from(keys >> 3)
        };
        r.sge[0] = Sge {
            addr: base + off,
            length: len,
            lkey,
        };
        let eng = &self.hosts[end.host];
        if which == 3 {
            let Some(srq) = eng.tables.srqs.get(&end.srq) else {
                return;
            };
            let p = srq.header().rq.producer();
            srq.ring.write(p, &r);
            srq.header().rq.publish_producer(p.wrapping_add(1));
        } else if let Some(qp) = eng.tables.qps.get(&end.qps[which]) {
            let p = qp.header().rq.producer();
            qp.rq.write(p, &r);
            qp.header().rq.publish_producer(p.wrapping_add(1));
        }
    }

    /// A hostile client sets one of its ring indices to anything.
    fn set_index(&mut self, e: usize, which: u8, value: u32) {
        let end = &self.ends[e];
        let t = &self.hosts[end.host].tables;
        let qp = t.qps.get(&end.qps[usize::from(which >> 2) % 4]);
        match which & 3 {
            0 => qp.map(|q| q.header().sq.publish_producer(value)),
            1 => qp.map(|q| q.header().rq.publish_producer(value)),
            2 => t
                .cqs
                .get(&end.cq)
                .map(|c| c.header().ring.publish_consumer(value)),
            _ => t
                .srqs
                .get(&end.srq)
                .map(|s| s.header().rq.publish_producer(value)),
        };
    }

    /// Takes every published completion of the endpoint's CQ, as
    /// `ibv_poll_cq` does.
    fn poll(&mut self, e: usize) {
        let end = &self.ends[e];
        let Some(cq) = self.hosts[end.host].tables.cqs.get(&end.cq) else {
            return;
        };
        let ring = cq.cq_ring();
        let mut c = ring.header.ring.consumer();
        for _ in 0..ring.slots.capacity() {
            let Some(cqe) = ring.peek(c) else {
                break;
            };
            assert!(
                cqe.status != IBV_WC_SUCCESS || cqe.wr_id & MUST_FAIL == 0,
                "work request {:#x} of QP {:#x}, which names a key it may not use, succeeded",
                cqe.wr_id,
                cqe.qp_num
            );
            c = c.wrapping_add(1);
        }
        ring.header.ring.publish_consumer(c);
    }

    /// The network between two routers: the oldest frame one router sent
    /// is delivered, dropped, duplicated, put last, or corrupted.
    fn deliver(&mut self, input: &mut Input) {
        let from = usize::from(input.u8() & 1);
        let action = input.u8();
        let arg = input.u16();
        if self.hosts.len() < 2 || !self.peer_up {
            return;
        }
        let to = 1 - from;
        let Some(wire) = self.hosts[from].wire.as_mut() else {
            return;
        };
        while wire.sent.len() > WIRE_FRAMES {
            wire.sent.pop_front();
        }
        let Some(frame) = wire.sent.pop_front() else {
            return;
        };
        match action % 5 {
            0 => self.hand(to, &frame),
            1 => {}
            2 => {
                self.hand(to, &frame);
                self.hand(to, &frame);
            }
            3 => wire.sent.push_back(frame),
            _ => {
                // One byte changed anywhere: the header as the link
                // decodes it, or the payload.
                let mut head = frame.hdr.encode();
                let mut payload = frame.payload.clone();
                let at = usize::from(arg) % (HEADER_LEN + payload.len());
                let flip = (arg >> 8) as u8 | 1;
                match at.checked_sub(HEADER_LEN) {
                    None => head[at] ^= flip,
                    Some(p) => payload[p] ^= flip,
                }
                let Ok(hdr) = FrameHeader::decode(&head) else {
                    return;
                };
                if hdr.payload_len.get() as usize != payload.len() {
                    return; // the link would have read a different frame
                }
                self.hand(
                    to,
                    &Frame {
                        peer: frame.peer,
                        hdr,
                        payload,
                    },
                );
            }
        }
    }

    fn hand(&mut self, to: usize, frame: &Frame) {
        self.hosts[to].deliver_frame(0, &frame.hdr, &frame.payload, self.now);
    }

    /// The link between the routers goes down (each router loses the
    /// other, with its GIDs) or comes back; or a router's link fills up
    /// or drains.
    fn flip_peer(&mut self, what: u8) {
        if self.hosts.len() < 2 {
            return;
        }
        if what & 1 == 1 {
            let h = usize::from(what >> 1 & 1);
            if let Some(w) = self.hosts[h].wire.as_mut() {
                if !w.full.remove(&0) {
                    w.full.insert(0);
                }
            }
            return;
        }
        self.peer_up = !self.peer_up;
        for h in 0..2 {
            let other = session_gid(self.ends[1 - h].net);
            let wire = self.hosts[h].wire.as_mut().expect("two hosts have wires");
            if self.peer_up {
                wire.gids.insert(other, 0);
            } else {
                wire.gids.clear();
                wire.sent.clear();
                self.hosts[h].lose_peer(0, &[other]);
            }
        }
    }

    /// Every router's tables are consistent.
    pub fn check_tables(&self) {
        for eng in &self.hosts {
            if let Err(broken) = eng.tables.check() {
                panic!("inconsistent tables: {broken}");
            }
        }
    }

    /// Nothing was written outside the writable MRs.
    pub fn check_memory(&self) {
        for end in &self.ends {
            assert!(
                holds(end.base, RW_LEN, RO_LEN, RO_PATTERN),
                "a read-only MR of session {} was written",
                end.session
            );
            assert!(
                holds(
                    end.base,
                    RW_LEN + RO_LEN,
                    REGION - RW_LEN - RO_LEN,
                    GUARD_PATTERN
                ),
                "memory outside session {}'s MRs was written",
                end.session
            );
        }
    }
}

/// The whole input: the first byte chooses one router or two.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut world = World::new(mode & 1 == 1);
    world.run(&mut Input(rest));
}
