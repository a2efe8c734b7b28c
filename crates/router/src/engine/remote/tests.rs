//! The engine's side of a peer router going away, on an engine with one
//! session (this test process, whose memory it uses), a CQ and QPs made by
//! the control requests, and links played by an in-memory transport.

use super::*;
use crate::control;
use crate::limits::Limits;
use crate::objects::{Session, SessionId, Tables};
use crate::transport::in_memory::InMemoryTransport;
use flowverbs_verbs::qp::{ERR, INIT, RTS};
use flowverbs_wire::control::{QpCaps, Reply, Request};
use responder::reply_to;

const SESSION: SessionId = 1;
const LOCAL_GID: Gid = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
const LOST_GID: Gid = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2];
const OTHER_GID: Gid = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 3];
/// The router that goes away (serving LOST_GID) and one that stays.
const LOST: PeerId = 1;
const OTHER: PeerId = 2;
const REMOTE_QPN: u32 = 0x4242;

struct Testbed {
    eng: Engine,
    pd: u32,
    cq: u32,
    now: Instant,
}

/// Whatever a test did, the tables stay consistent.
impl Drop for Testbed {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.eng.tables.check().expect("consistent tables");
        }
    }
}

impl Testbed {
    fn new() -> Testbed {
        let mut eng = Engine::new(Tables::new(Limits::default()));
        let trust = crate::semi::TrustGroup {
            uid: 0,
            user_ns: 0,
            pid_ns: 0,
            net_ns: 0,
        };
        let session = Session::of_this_process(LOCAL_GID, 0, trust);
        eng.tables.sessions.insert(SESSION, session);
        eng.announce_gids();
        let pd = match control::handle(&mut eng, SESSION, Request::AllocPd, vec![]).reply {
            Reply::Pd { pd } => pd,
            r => panic!("{r:?}"),
        };
        let create_cq = Request::CreateCq {
            cqe: 64,
            channel: None,
            cookie: 0,
        };
        let cq = match control::handle(&mut eng, SESSION, create_cq, vec![]).reply {
            Reply::Cq { cq, .. } => cq,
            r => panic!("{r:?}"),
        };
        Testbed {
            eng,
            pd,
            cq,
            now: Instant::now(),
        }
    }

    /// A QP of `kind` in `state`, connected to QPN [`REMOTE_QPN`] at `dgid`.
    fn qp(&mut self, kind: QpKind, dgid: Gid, state: u32) -> u32 {
        let create = Request::CreateQp {
            pd: self.pd,
            qp_type: kind.ibv_type(),
            send_cq: self.cq,
            recv_cq: self.cq,
            srq: 0,
            caps: QpCaps {
                max_send_wr: 16,
                max_recv_wr: 16,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            sq_sig_all: true,
            cookie: 0,
            nic_qpn: None,
        };
        let h = match control::handle(&mut self.eng, SESSION, create, vec![]).reply {
            Reply::Qp { qp, .. } => qp,
            r => panic!("{r:?}"),
        };
        let q = self.eng.tables.qps.get_mut(&h).expect("the new QP");
        q.attr.ah_attr.is_global = true;
        q.attr.ah_attr.dgid = dgid;
        q.attr.dest_qp_num = REMOTE_QPN;
        q.attr.sq_psn = 100;
        q.attr.timeout = 14;
        q.attr.retry_cnt = 7;
        q.set_state(state);
        h
    }

    /// Posts a SEND without data, `wr_id`, on QP `h`.
    fn post_send(&mut self, h: u32, wr_id: u64) {
        let qp = &self.eng.tables.qps[&h];
        let mut w = SendWqe::zeroed();
        w.wr_id = wr_id;
        w.opcode = IBV_WR_SEND;
        let p = qp.header().sq.producer();
        qp.sq.write(p, &w);
        qp.header().sq.publish_producer(p.wrapping_add(1));
    }

    /// Puts what QP `h` has posted in flight to `peer`, as the engine does
    /// on a pass; the frames it sent.
    fn send(&mut self, h: u32, peer: PeerId) -> Vec<FrameHeader> {
        let mut wire = InMemoryTransport::default();
        let mut r = Requester::new(peer, self.eng.tables.qps[&h].attr.sq_psn);
        let sent = self.eng.send_requests(h, &mut r, &mut wire, self.now);
        assert_eq!(sent, Some(true));
        self.eng.remote.req.insert(h, r);
        wire.take().into_iter().map(|f| f.hdr).collect()
    }

    /// The responder at `from` acknowledges request `req`.
    fn ack(&mut self, from: PeerId, req: &FrameHeader) {
        let mut a = reply_to(req, Kind::Ack);
        a.status = IBV_WC_SUCCESS.into();
        self.eng.on_response(from, &a, &[], self.now);
    }

    fn state(&self, h: u32) -> u32 {
        self.eng.tables.qps[&h].state()
    }

    /// (wr_id, status) of QP `h`'s completions so far, in order.
    fn completions(&self, h: u32) -> Vec<(u64, u32)> {
        let qpn = self.eng.tables.qps[&h].qpn;
        let ring = self.eng.tables.cqs[&self.cq].cq_ring();
        (0..)
            .map_while(|i| ring.peek(i))
            .filter(|c| c.qp_num == qpn)
            .map(|c| (c.wr_id, c.status))
            .collect()
    }
}

/// Every QP connected to a GID of the router that went away moves to the
/// error state: one with nothing in flight at once; one with requests in
/// flight once the answered ones completed, in order, and the first
/// unanswered one failed (UC: was lost). QPs connected elsewhere, and QPs
/// that do not receive yet, stay as they were.
#[test]
fn a_lost_peer_fails_every_qp_connected_to_its_gids() {
    let mut t = Testbed::new();
    let answered_first = t.qp(QpKind::Rc, LOST_GID, RTS);
    let idle = t.qp(QpKind::Rc, LOST_GID, RTS);
    let uc = t.qp(QpKind::Uc, LOST_GID, RTS);
    let elsewhere = t.qp(QpKind::Rc, OTHER_GID, RTS);
    let not_yet = t.qp(QpKind::Rc, LOST_GID, INIT);
    for wr in 1..=3 {
        t.post_send(answered_first, wr);
    }
    t.post_send(idle, 10);
    t.post_send(uc, 20);
    t.post_send(uc, 21);
    t.post_send(elsewhere, 30);

    let sent = t.send(answered_first, LOST);
    let psns: Vec<u32> = sent.iter().map(|h| h.psn.get()).collect();
    assert_eq!(psns, [100, 101, 102]);
    assert_eq!((sent[0].src_gid, sent[0].dst_gid), (LOCAL_GID, LOST_GID));
    assert_eq!(sent[0].dst_qpn.get(), REMOTE_QPN);
    t.ack(LOST, &sent[0]);
    t.ack(LOST, &sent[2]);
    t.send(uc, LOST);
    t.send(elsewhere, OTHER);
    assert_eq!(t.completions(answered_first), [], "answers wait for a pass");

    t.eng.peer_down(LOST, &[LOST_GID]);
    assert_eq!(t.state(idle), ERR, "nothing in flight: at once");
    assert_eq!(
        t.state(answered_first),
        RTS,
        "completes what was answered first"
    );
    assert_eq!(t.state(uc), RTS);

    for _ in 0..3 {
        t.eng.service(t.now);
    }
    assert_eq!(
        t.completions(answered_first),
        [
            (1, IBV_WC_SUCCESS),
            (2, IBV_WC_RETRY_EXC_ERR),
            // Answered, but behind the failure: flushed.
            (3, IBV_WC_WR_FLUSH_ERR)
        ]
    );
    assert_eq!(t.state(answered_first), ERR);
    assert_eq!(t.completions(idle), [(10, IBV_WC_WR_FLUSH_ERR)]);
    assert_eq!(
        t.completions(uc),
        [(20, IBV_WC_SUCCESS), (21, IBV_WC_SUCCESS)],
        "UC: unanswered messages are lost"
    );
    assert_eq!(t.state(uc), ERR);
    assert_eq!(
        (t.state(elsewhere), t.completions(elsewhere)),
        (RTS, vec![])
    );
    assert_eq!(t.state(not_yet), INIT);
}

/// A QP whose requests are in flight to the lost router fails with it,
/// whatever its path names now.
#[test]
fn a_lost_peer_fails_a_qp_whose_requests_are_in_flight_to_it() {
    let mut t = Testbed::new();
    let moved = t.qp(QpKind::Rc, OTHER_GID, RTS);
    t.post_send(moved, 1);
    t.send(moved, LOST);
    t.eng.peer_down(LOST, &[LOST_GID]);
    t.eng.service(t.now);
    assert_eq!(t.completions(moved), [(1, IBV_WC_RETRY_EXC_ERR)]);
    assert_eq!(t.state(moved), ERR);
}
