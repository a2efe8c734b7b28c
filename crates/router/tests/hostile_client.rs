//! A hostile client speaks the wire protocol directly: malformed control
//! messages, handles of other sessions, garbage ring entries, impossible
//! ring indices, attempts to shrink segments. The router must answer with
//! errors or error completions, never crash, hang, or touch memory that
//! RDMA does not grant.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::Router;
use flowverbs_sys::*;
use flowverbs_wire::control::{self, AddressVector, ArenaRun, QpAttr, QpCaps, Reply, Request};
use flowverbs_wire::cq_ring::CqRing;
use flowverbs_wire::entries::{Cqe, RecvWqe, SendWqe, Sge};
use flowverbs_wire::limits::MAX_CQE;
use flowverbs_wire::ring::RingSlots;
use flowverbs_wire::segment::{CqHeader, CqLayout, Mapping, QpHeader, QpLayout};
use flowverbs_wire::VERSION;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

struct Client {
    sock: OwnedFd,
    _segment: Option<OwnedFd>,
    /// Our ends of the async-event pipe and the event socket (the session
    /// ends when the event socket hangs up).
    _events: (OwnedFd, OwnedFd),
    cmd_file: Option<String>,
    /// The session's GID 0.
    gid: [u8; 16],
}

/// A pipe's read end and write end, and an event socket pair (ours,
/// the router's), as Hello needs.
fn hello_fds() -> ((OwnedFd, OwnedFd), (OwnedFd, OwnedFd)) {
    let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let pair = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    (pipe, pair)
}

fn connect(router: &Router) -> OwnedFd {
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let addr = UnixAddr::new(&router.runtime_dir.join("router.sock")).unwrap();
    socket::connect(sock.as_raw_fd(), &addr).unwrap();
    let tv = nix::sys::time::TimeVal::new(10, 0);
    socket::setsockopt(&sock, socket::sockopt::ReceiveTimeout, &tv).unwrap();
    sock
}

impl Client {
    fn new(router: &Router) -> Client {
        let sock = connect(router);
        let ((async_read, async_write), (ours, theirs)) = hello_fds();
        control::send(
            sock.as_fd(),
            &Request::Hello { version: VERSION },
            &[async_write.as_raw_fd(), theirs.as_raw_fd()],
        )
        .unwrap();
        let (reply, mut fds) =
            control::recv::<Reply>(sock.as_fd(), MsgFlags::empty()).expect("router answers");
        let Reply::Hello { cmd_file, gid, .. } = reply else {
            panic!("{reply:?}")
        };
        // Semi mode adds the key table.
        assert!(fds.len() == 2 || fds.len() == 3, "{} fds", fds.len());
        fds.truncate(1);
        Client {
            sock,
            _segment: fds.pop(),
            _events: (async_read, ours),
            cmd_file,
            gid,
        }
    }

    fn call(&mut self, req: &Request) -> (Reply, Vec<OwnedFd>) {
        self.call_passing(req, &[])
    }

    fn call_passing(&mut self, req: &Request, fds: &[i32]) -> (Reply, Vec<OwnedFd>) {
        control::send(self.sock.as_fd(), req, fds).unwrap();
        control::recv::<Reply>(self.sock.as_fd(), MsgFlags::empty()).expect("router answers")
    }

    fn ok(&mut self, req: &Request) -> (Reply, Vec<OwnedFd>) {
        let r = self.call(req);
        assert!(!matches!(r.0, Reply::Error { .. }), "{req:?} -> {:?}", r.0);
        r
    }

    fn errno(&mut self, req: &Request) -> i32 {
        match self.call(req).0 {
            Reply::Error { errno, .. } => errno,
            other => panic!("{req:?} should fail, got {other:?}"),
        }
    }

    fn pd(&mut self) -> u32 {
        match self.ok(&Request::AllocPd).0 {
            Reply::Pd { pd } => pd,
            r => panic!("{r:?}"),
        }
    }

    fn cq(&mut self, cqe: u32) -> (u32, Mapping, CqLayout) {
        let (r, fds) = self.ok(&Request::CreateCq {
            cqe,
            channel: None,
            cookie: 0,
        });
        let Reply::Cq {
            cq,
            capacity,
            segment_size,
        } = r
        else {
            panic!("{r:?}")
        };
        let map = Mapping::map(&fds[0], segment_size as usize).unwrap();
        (cq, map, CqLayout::new(capacity))
    }

    fn qp(&mut self, pd: u32, cq: u32) -> (u32, u32, Mapping, QpLayout, OwnedFd) {
        self.qp_with_cookie(pd, cq, 0)
    }

    /// An RC QP whose async events carry `cookie` (what would be the
    /// `ibv_qp *`).
    fn qp_with_cookie(
        &mut self,
        pd: u32,
        cq: u32,
        cookie: u64,
    ) -> (u32, u32, Mapping, QpLayout, OwnedFd) {
        let caps = QpCaps {
            max_send_wr: 16,
            max_recv_wr: 16,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        };
        let (r, mut fds) = self.ok(&Request::CreateQp {
            pd,
            qp_type: IBV_QPT_RC,
            send_cq: cq,
            recv_cq: cq,
            srq: 0,
            caps,
            sq_sig_all: true,
            cookie,
            nic_qpn: None,
        });
        let Reply::Qp {
            qp,
            qpn,
            sq_capacity,
            rq_capacity,
            segment_size,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        let fd = fds.pop().unwrap();
        let map = Mapping::map(&fd, segment_size as usize).unwrap();
        (qp, qpn, map, QpLayout::new(sq_capacity, rq_capacity), fd)
    }

    /// RESET -> INIT -> RTR -> RTS, connected to `dest_qpn` of this
    /// router (the path names the session's own GID: fv0 is RoCE).
    fn connect_qp(&mut self, qp: u32, dest_qpn: u32, access: u32) {
        let av = self.own_path();
        self.connect_qp_via(qp, dest_qpn, access, av);
    }

    /// An address vector to this session's own GID.
    fn own_path(&self) -> AddressVector {
        AddressVector {
            port_num: 1,
            is_global: true,
            dgid: self.gid,
            ..Default::default()
        }
    }

    /// As `connect_qp`, with the given address vector.
    fn connect_qp_via(&mut self, qp: u32, dest_qpn: u32, access: u32, av: AddressVector) {
        let init = QpAttr {
            qp_state: IBV_QPS_INIT,
            port_num: 1,
            qp_access_flags: access,
            ..Default::default()
        };
        self.ok(&Request::ModifyQp {
            qp,
            attr: init,
            mask: 0x39,
        });
        let rtr = QpAttr {
            qp_state: IBV_QPS_RTR,
            path_mtu: IBV_MTU_1024,
            dest_qp_num: dest_qpn,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            ah_attr: av,
            ..Default::default()
        };
        self.ok(&Request::ModifyQp {
            qp,
            attr: rtr,
            mask: 0x129181,
        });
        // timeout 1, retry_cnt 0: a request nobody answers fails fast.
        let rts = QpAttr {
            qp_state: IBV_QPS_RTS,
            timeout: 1,
            retry_cnt: 0,
            rnr_retry: 0,
            max_rd_atomic: 1,
            ..Default::default()
        };
        self.ok(&Request::ModifyQp {
            qp,
            attr: rts,
            mask: 0x12e01,
        });
    }
}

fn post(map: &Mapping, layout: &QpLayout, index: u32, wqe: &SendWqe) {
    // SAFETY: the segment holds the send queue at sq_offset.
    let sq = unsafe { RingSlots::new(map.as_ptr().add(layout.sq_offset), layout.sq_capacity) };
    sq.write(index, wqe);
    // SAFETY: the segment starts with a QpHeader.
    let hdr = unsafe { map.header::<QpHeader>() };
    hdr.sq.publish_producer(index + 1);
}

/// Waits (bounded) for `n` completions and returns them.
fn completions(map: &Mapping, layout: &CqLayout, from: u32, n: u32) -> Vec<Cqe> {
    // SAFETY: the segment starts with a CqHeader and holds the ring after it.
    let ring = unsafe {
        CqRing::new(
            map.header::<CqHeader>(),
            RingSlots::new(map.as_ptr().add(layout.ring_offset), layout.capacity),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n as usize {
        match ring.peek(from + out.len() as u32) {
            Some(c) => out.push(c),
            None => {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {n} completions"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    ring.header.ring.publish_consumer(from + n);
    out
}

/// Every async event record queued for `client` so far, as (element,
/// event type).
fn async_events(client: &Client) -> Vec<(u64, u32)> {
    use flowverbs_wire::events::ASYNC_EVENT_LEN;
    let fd = client._events.0.as_fd();
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut rec = [0u8; ASYNC_EVENT_LEN];
    while let Ok(ASYNC_EVENT_LEN) = nix::unistd::read(fd.as_raw_fd(), &mut rec) {
        out.push((
            u64::from_ne_bytes(rec[0..8].try_into().unwrap()),
            u32::from_ne_bytes(rec[8..12].try_into().unwrap()),
        ));
    }
    out
}

fn assert_router_alive(router: &Router) {
    let mut c = Client::new(router);
    c.pd();
}

/// `ibv_resize_cq`'s two requests: only the owner resizes, a commit needs
/// a resize, sizes are checked; the rings a resize leaves are charged to
/// the user until drained, so resizing forever without polling ends at
/// the budget, while resizing a drained CQ never does.
#[test]
fn resizes_are_checked_and_charged() {
    let router = Router::start();
    let mut a = Client::new(&router);
    let mut b = Client::new(&router);
    let (cq, map, _layout) = a.cq(8);
    let resize = |cqe| Request::ResizeCq { cq, cqe };
    assert_eq!(b.errno(&resize(16)), libc::EINVAL);
    assert_eq!(b.errno(&Request::CommitCqResize { cq }), libc::EINVAL);
    assert_eq!(a.errno(&Request::CommitCqResize { cq }), libc::EINVAL);
    assert_eq!(a.errno(&resize(0)), libc::EINVAL);
    assert_eq!(a.errno(&resize(MAX_CQE + 1)), libc::EINVAL);
    // B's resize changed nothing: A's uncommitted resize is A's own.
    a.ok(&resize(16));
    assert_eq!(b.errno(&Request::CommitCqResize { cq }), libc::EINVAL);
    a.ok(&Request::CommitCqResize { cq });

    // Drained (empty) rings are released at the next resize: far more
    // resizes to a large size than the user's entry budget holds.
    const BIG: u32 = 65535;
    let budget_in_big_cqs = (1u32 << 24) / (BIG + 1);
    for _ in 0..budget_in_big_cqs + 40 {
        a.ok(&resize(BIG));
        a.ok(&Request::CommitCqResize { cq });
    }

    // A client that claims completions it never polls (it writes the
    // producer index of its own ring) keeps every frozen ring: refused at
    // the budget, and the router lives on.
    let (cq2, map2, _) = a.cq(8);
    drop(map);
    let mut refused = None;
    let mut ring = map2;
    for i in 0..budget_in_big_cqs + 40 {
        // SAFETY: the segment starts with a CqHeader.
        unsafe { ring.header::<CqHeader>() }
            .ring
            .producer
            .store(3, std::sync::atomic::Ordering::Release);
        let (r, fds) = a.call(&Request::ResizeCq { cq: cq2, cqe: BIG });
        if let Reply::Error { errno, .. } = r {
            refused = Some((i, errno));
            break;
        }
        let Reply::Cq { segment_size, .. } = r else {
            panic!("{r:?}")
        };
        a.ok(&Request::CommitCqResize { cq: cq2 });
        ring = Mapping::map(&fds[0], segment_size as usize).unwrap();
    }
    let (at, errno) = refused.expect("never refused: frozen rings are not charged");
    assert!(
        at > 100,
        "refused too early, at resize {at} (errno {errno})"
    );
    assert_router_alive(&router);
    // Destroying the CQ gives everything back.
    a.ok(&Request::DestroyCq { cq: cq2 });
    a.ok(&Request::DestroyCq { cq });
    let (cq3, _m3, _) = a.cq(MAX_CQE);
    for _ in 0..4 {
        a.ok(&Request::ResizeCq {
            cq: cq3,
            cqe: MAX_CQE,
        });
    }
}

#[test]
fn malformed_control_messages_are_refused() {
    let router = Router::start();

    // Garbage bytes: the router closes the connection (not a timeout: the
    // receive must see the close).
    let closed = |sock: &OwnedFd| {
        matches!(
            control::recv::<Reply>(sock.as_fd(), MsgFlags::empty()),
            Err(control::WireError::Closed)
        )
    };
    let sock = connect(&router);
    nix::unistd::write(&sock, &[0xa5u8; 300]).unwrap();
    assert!(closed(&sock), "garbage: the connection stays open");

    // A request before Hello: closed.
    let sock = connect(&router);
    control::send(sock.as_fd(), &Request::AllocPd, &[]).unwrap();
    assert!(
        closed(&sock),
        "a request before Hello: the connection stays open"
    );

    // Wrong version: an explicit error.
    let sock = connect(&router);
    control::send(
        sock.as_fd(),
        &Request::Hello {
            version: VERSION + 1,
        },
        &[],
    )
    .unwrap();
    let (r, _) = control::recv::<Reply>(sock.as_fd(), MsgFlags::empty()).unwrap();
    assert!(
        matches!(r, Reply::Error { errno, .. } if errno == libc::EPROTO),
        "{r:?}"
    );

    // Hello without its descriptors, or with the wrong kinds: refused.
    let (_pipe, (_ours, theirs)) = hello_fds();
    for fds in [vec![], vec![theirs.as_raw_fd(), theirs.as_raw_fd()]] {
        let sock = connect(&router);
        let hello = Request::Hello { version: VERSION };
        control::send(sock.as_fd(), &hello, &fds).unwrap();
        let r = control::recv::<Reply>(sock.as_fd(), MsgFlags::empty());
        assert!(
            !matches!(r, Ok((Reply::Hello { .. }, _))),
            "Hello with fds {fds:?}: {r:?}"
        );
    }

    // Oversized message: closed, router fine.
    let sock = connect(&router);
    let big = vec![1u8; 60_000];
    let _ = nix::unistd::write(&sock, &big);
    assert!(
        closed(&sock),
        "an oversized message: the connection stays open"
    );

    assert_router_alive(&router);
}

#[test]
fn handles_and_limits_are_checked() {
    let router = Router::start();
    let mut a = Client::new(&router);
    let mut b = Client::new(&router);
    let pd_a = a.pd();
    let (cq_a, _m, _l) = a.cq(8);
    // B cannot use A's objects.
    assert_eq!(b.errno(&Request::DeallocPd { pd: pd_a }), libc::EINVAL);
    assert_eq!(b.errno(&Request::DestroyCq { cq: cq_a }), libc::EINVAL);
    assert_eq!(
        b.errno(&Request::RegMr {
            pd: pd_a,
            addr: 0x1000,
            iova: 0x1000,
            length: 10,
            access: 1,
            runs: vec![],
            nic_key: None,
        }),
        libc::EINVAL
    );
    // Unmapped memory, absurd sizes, bad flags.
    let pd_b = b.pd();
    assert_eq!(
        b.errno(&Request::RegMr {
            pd: pd_b,
            addr: 0x10,
            iova: 0x10,
            length: 4096,
            access: 1,
            runs: vec![],
            nic_key: None,
        }),
        libc::EFAULT
    );
    assert_eq!(
        b.errno(&Request::RegMr {
            pd: pd_b,
            addr: u64::MAX - 5,
            iova: u64::MAX - 5,
            length: 100,
            access: 1,
            runs: vec![],
            nic_key: None,
        }),
        libc::EINVAL
    );
    assert_eq!(
        b.errno(&Request::RegMr {
            pd: pd_b,
            addr: 0x1000,
            iova: 0x1000,
            length: 8,
            access: IBV_ACCESS_REMOTE_WRITE,
            runs: vec![],
            nic_key: None,
        }),
        libc::EINVAL
    );
    for (cqe, channel) in [(0, None), (u32::MAX, None), (8, Some(0)), (8, Some(-1))] {
        assert_eq!(
            b.errno(&Request::CreateCq {
                cqe,
                channel,
                cookie: 0
            }),
            libc::EINVAL,
            "cqe {cqe} channel {channel:?}"
        );
    }
    let caps = QpCaps {
        max_send_wr: 1 << 30,
        ..Default::default()
    };
    let (cq_b, _m2, _l2) = b.cq(8);
    assert_eq!(
        b.errno(&Request::CreateQp {
            pd: pd_b,
            qp_type: IBV_QPT_RC,
            send_cq: cq_b,
            recv_cq: cq_b,
            srq: 0,
            caps,
            sq_sig_all: false,
            cookie: 0,
            nic_qpn: None,
        }),
        libc::EINVAL
    );
    // An SRQ of another session cannot be attached.
    let (r, _srq_fds) = a.ok(&Request::CreateSrq {
        pd: pd_a,
        max_wr: 4,
        max_sge: 1,
        srq_limit: 0,
        cookie: 0,
        nic: false,
    });
    let Reply::Srq { srq: srq_a, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        b.errno(&Request::CreateQp {
            pd: pd_b,
            qp_type: IBV_QPT_RC,
            send_cq: cq_b,
            recv_cq: cq_b,
            srq: srq_a,
            caps: QpCaps::default(),
            sq_sig_all: false,
            cookie: 0,
            nic_qpn: None,
        }),
        libc::EINVAL
    );
    assert_eq!(b.errno(&Request::DestroySrq { srq: srq_a }), libc::EINVAL);
    // A CQ of another session cannot be attached.
    assert_eq!(
        b.errno(&Request::CreateQp {
            pd: pd_b,
            qp_type: IBV_QPT_RC,
            send_cq: cq_a,
            recv_cq: cq_b,
            srq: 0,
            caps: QpCaps::default(),
            sq_sig_all: false,
            cookie: 0,
            nic_qpn: None,
        }),
        libc::EINVAL
    );
    assert_router_alive(&router);
}

#[test]
fn segments_cannot_be_shrunk() {
    let router = Router::start();
    let mut a = Client::new(&router);
    let pd = a.pd();
    let (cq, _m, _l) = a.cq(4);
    let (_qp, _qpn, _map, _layout, fd) = a.qp(pd, cq);
    assert!(
        nix::unistd::ftruncate(&fd, 0).is_err(),
        "QP segment must be sealed against shrinking"
    );
}

#[test]
fn garbage_ring_entries_give_error_completions() {
    let router = Router::start();
    let mut a = Client::new(&router);
    let pd = a.pd();
    let (cq, cq_map, cq_layout) = a.cq(64);
    let (qp, qpn, map, layout, _fd) = a.qp(pd, cq);
    a.connect_qp(qp, qpn, IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE);

    // A WQE of pseudo-random bytes.
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut wqe = SendWqe::zeroed();
    for b in zerocopy::IntoBytes::as_mut_bytes(&mut wqe) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    wqe.wr_id = 77;
    post(&map, &layout, 0, &wqe);
    // The control call wakes the router (it re-checks every ring then).
    let _ = a.call(&Request::QueryQp { qp });
    let c = completions(&cq_map, &cq_layout, 0, 1);
    assert_eq!(c[0].wr_id, 77);
    assert_ne!(c[0].status, IBV_WC_SUCCESS, "{:?}", c[0]);
    // SAFETY: the segment starts with a QpHeader.
    let hdr = unsafe { map.header::<QpHeader>() };
    assert_eq!(
        hdr.state.load(std::sync::atomic::Ordering::Acquire),
        IBV_QPS_ERR
    );

    // A write that names an unknown lkey: local protection error.
    let (qp2, qpn2, map2, layout2, _fd2) = a.qp(pd, cq);
    a.connect_qp(qp2, qpn2, IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE);
    let mut w = SendWqe::zeroed();
    w.wr_id = 5;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED;
    w.num_sge = 1;
    let mut sges = [Sge::default(); 16];
    sges[0] = Sge {
        addr: 0x1000,
        length: 64,
        lkey: 0xdead_beef,
    };
    w.payload = sges;
    post(&map2, &layout2, 0, &w);
    let _ = a.call(&Request::QueryQp { qp: qp2 });
    let c = completions(&cq_map, &cq_layout, 1, 1);
    assert_eq!(
        (c[0].wr_id, c[0].status),
        (5, IBV_WC_LOC_PROT_ERR),
        "{:?}",
        c[0]
    );

    // An impossible producer index: the QP goes to error, nothing else, and
    // the application gets IBV_EVENT_QP_FATAL for it.
    const QP3_COOKIE: u64 = 0x00c0_ffee_0003;
    let (qp3, qpn3, map3, _layout3, _fd3) = a.qp_with_cookie(pd, cq, QP3_COOKIE);
    a.connect_qp(qp3, qpn3, 0);
    // SAFETY: the segment starts with a QpHeader.
    let hdr3 = unsafe { map3.header::<QpHeader>() };
    hdr3.sq.publish_producer(1_000_000);
    hdr3.rq.publish_producer(u32::MAX);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hdr3.state.load(std::sync::atomic::Ordering::Acquire) != IBV_QPS_ERR {
        let _ = a.call(&Request::QueryQp { qp: qp3 });
        assert!(
            Instant::now() < deadline,
            "QP with impossible index never moved to error"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let events = async_events(&a);
    assert!(
        events.contains(&(QP3_COOKIE, IBV_EVENT_QP_FATAL)),
        "no QP_FATAL for the QP with the impossible index: {events:x?}"
    );
    // A garbage CQ consumer index only stalls this client.
    // SAFETY: the segment starts with a CqHeader.
    unsafe { cq_map.header::<CqHeader>() }
        .ring
        .publish_consumer(0x8000_0000);
    assert_router_alive(&router);
}

#[test]
fn rkeys_of_other_tenants_are_refused() {
    let router = Router::start();
    // Tenant B registers memory the router will protect.
    let mut b = Client::new(&router);
    let pd_b = b.pd();
    let secret = vec![0x5au8; 4096];
    let (r, _) = b.ok(&Request::RegMr {
        pd: pd_b,
        addr: secret.as_ptr() as u64,
        iova: secret.as_ptr() as u64,
        length: 4096,
        access: IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ,
        runs: vec![],
        nic_key: None,
    });
    let Reply::Mr { rkey: b_rkey, .. } = r else {
        panic!()
    };

    // Tenant A connects a QP to itself and writes with B's rkey.
    let mut a = Client::new(&router);
    let pd = a.pd();
    let (cq, cq_map, cq_layout) = a.cq(8);
    let (qp, qpn, map, layout, _fd) = a.qp(pd, cq);
    a.connect_qp(qp, qpn, IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
    let mut w = SendWqe::zeroed();
    w.wr_id = 9;
    w.opcode = IBV_WR_RDMA_WRITE;
    w.send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE;
    w.inline_len = 16;
    w.remote_addr = secret.as_ptr() as u64;
    w.rkey = b_rkey;
    post(&map, &layout, 0, &w);
    let _ = a.call(&Request::QueryQp { qp });
    let c = completions(&cq_map, &cq_layout, 0, 1);
    assert_eq!(
        (c[0].wr_id, c[0].status),
        (9, IBV_WC_REM_ACCESS_ERR),
        "{:?}",
        c[0]
    );
    assert!(
        secret.iter().all(|&x| x == 0x5a),
        "another tenant's memory was written"
    );
}

/// A QP connected to itself and a WQE builder for the window tests.
fn bind_wqe(wr_id: u64, mw: u32, lkey: u32, addr: u64, rkey: u32) -> SendWqe {
    let mut w = SendWqe::zeroed();
    w.wr_id = wr_id;
    w.opcode = IBV_WR_BIND_MW;
    w.send_flags = IBV_SEND_SIGNALED;
    w.mw = mw;
    w.mw_lkey = lkey;
    w.remote_addr = addr;
    w.compare_add = 4096;
    w.mw_access = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
    w.rkey = rkey;
    w
}

/// Memory windows are their owner's: another tenant can neither
/// deallocate, bind nor invalidate one, nor reach memory through its rkey
/// (on the router's data path and through the semi-mode requests), and
/// the owner's window still works afterwards.
#[test]
fn windows_of_other_tenants_are_refused() {
    let router = Router::start();
    let access = IBV_ACCESS_LOCAL_WRITE
        | IBV_ACCESS_REMOTE_WRITE
        | IBV_ACCESS_REMOTE_READ
        | IBV_ACCESS_MW_BIND;
    let reg = |c: &mut Client, pd: u32, buf: &[u8]| match c
        .ok(&Request::RegMr {
            pd,
            addr: buf.as_ptr() as u64,
            iova: buf.as_ptr() as u64,
            length: buf.len() as u64,
            access,
            runs: vec![],
            nic_key: None,
        })
        .0
    {
        Reply::Mr { lkey, .. } => lkey,
        r => panic!("{r:?}"),
    };
    let window = |c: &mut Client, pd: u32| match c
        .ok(&Request::AllocMw {
            pd,
            mw_type: 1,
            nic_rkey: None,
        })
        .0
    {
        Reply::Mw { mw, rkey } => (mw, rkey),
        r => panic!("{r:?}"),
    };
    // Tenant B binds a window over its secret.
    let mut b = Client::new(&router);
    let pd_b = b.pd();
    let secret = vec![0x5au8; 4096];
    let lkey_b = reg(&mut b, pd_b, &secret);
    let (mw_b, rkey) = window(&mut b, pd_b);
    let bound = (rkey & !0xff) | (rkey.wrapping_add(1) & 0xff);
    let (cq_b, cq_map_b, cq_layout_b) = b.cq(8);
    let (qp_b, qpn_b, map_b, layout_b, _fd_b) = b.qp(pd_b, cq_b);
    b.connect_qp(
        qp_b,
        qpn_b,
        IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ,
    );
    let addr = secret.as_ptr() as u64;
    post(
        &map_b,
        &layout_b,
        0,
        &bind_wqe(1, mw_b, lkey_b, addr, bound),
    );
    let _ = b.call(&Request::QueryQp { qp: qp_b });
    let c = completions(&cq_map_b, &cq_layout_b, 0, 1);
    assert_eq!((c[0].status, c[0].opcode), (IBV_WC_SUCCESS, IBV_WC_BIND_MW));

    // Tenant A tries everything with B's window.
    let mut a = Client::new(&router);
    // A NIC twin's rkey on a router without a NIC: refused.
    let pd_a = a.pd();
    assert_eq!(
        a.errno(&Request::AllocMw {
            pd: pd_a,
            mw_type: 1,
            nic_rkey: Some(0x1234_5600),
        }),
        libc::EINVAL
    );
    assert_eq!(a.errno(&Request::DeallocMw { mw: mw_b }), libc::EINVAL);
    assert_eq!(
        a.errno(&Request::AllocMw {
            pd: pd_b,
            mw_type: 1,
            nic_rkey: None,
        }),
        libc::EINVAL
    );
    let pd = a.pd();
    assert_eq!(
        a.errno(&Request::AllocMw {
            pd,
            mw_type: 7,
            nic_rkey: None,
        }),
        libc::EINVAL
    );
    let mine = vec![0u8; 4096];
    let lkey_a = reg(&mut a, pd, &mine);
    let (cq, cq_map, cq_layout) = a.cq(8);
    let mut done = 0;
    let mut attempt = |a: &mut Client, w: SendWqe, want: u32| {
        let (qp, qpn, map, layout, _fd) = a.qp(pd, cq);
        a.connect_qp(qp, qpn, IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
        post(&map, &layout, 0, &w);
        let _ = a.call(&Request::QueryQp { qp });
        let c = completions(&cq_map, &cq_layout, done, 1);
        done += 1;
        assert_eq!((c[0].wr_id, c[0].status), (w.wr_id, want), "{:?}", c[0]);
        qp
    };
    // Binding B's window to A's memory.
    let next = (bound & !0xff) | (bound.wrapping_add(1) & 0xff);
    let bind = bind_wqe(2, mw_b, lkey_a, mine.as_ptr() as u64, next);
    attempt(&mut a, bind, IBV_WC_MW_BIND_ERR);
    // Invalidating it.
    let mut inv = SendWqe::zeroed();
    inv.wr_id = 3;
    inv.opcode = IBV_WR_LOCAL_INV;
    inv.send_flags = IBV_SEND_SIGNALED;
    inv.rkey = bound;
    attempt(&mut a, inv, IBV_WC_LOC_QP_OP_ERR);
    // Writing through its rkey.
    let mut w = SendWqe::zeroed();
    w.wr_id = 4;
    w.opcode = IBV_WR_RDMA_WRITE;
    w.send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE;
    w.inline_len = 16;
    w.remote_addr = addr;
    w.rkey = bound;
    let qp = attempt(&mut a, w, IBV_WC_REM_ACCESS_ERR);
    // The semi-mode requests (this router is in isolated mode, and the QP
    // is not a semi QP anyway).
    let op = control::WindowOp::of(&bind_wqe(5, mw_b, lkey_a, 0, next));
    assert_eq!(a.errno(&Request::SemiWindow { qp, op }), libc::EINVAL);
    let inv = Request::SemiInvalidate { qp, rkey: bound };
    assert_eq!(a.errno(&inv), libc::ENOENT);
    assert!(
        secret.iter().all(|&x| x == 0x5a),
        "another tenant's memory was written"
    );
    let _ = lkey_a;

    // B's window is as B left it: B reads through it.
    let mut r = SendWqe::zeroed();
    r.wr_id = 6;
    r.opcode = IBV_WR_RDMA_READ;
    r.send_flags = IBV_SEND_SIGNALED;
    r.num_sge = 1;
    r.payload[0] = Sge {
        addr: addr + 2048,
        length: 16,
        lkey: lkey_b,
    };
    r.remote_addr = addr;
    r.rkey = bound;
    post(&map_b, &layout_b, 1, &r);
    let _ = b.call(&Request::QueryQp { qp: qp_b });
    let c = completions(&cq_map_b, &cq_layout_b, 1, 1);
    assert_eq!((c[0].wr_id, c[0].status), (6, IBV_WC_SUCCESS), "{:?}", c[0]);
    assert_router_alive(&router);
}

#[test]
fn peers_of_a_vanished_client_get_error_completions() {
    let router = Router::start();
    let mut a = Client::new(&router);
    let mut b = Client::new(&router);
    let pd_a = a.pd();
    let (cq_a, cq_map, cq_layout) = a.cq(8);
    let (qp_a, qpn_a, map_a, layout_a, _fd_a) = a.qp(pd_a, cq_a);
    let pd_b = b.pd();
    let (cq_b, _m, _l) = b.cq(8);
    let (qp_b, qpn_b, _map_b, _layout_b, _fd_b) = b.qp(pd_b, cq_b);
    a.connect_qp(qp_a, qpn_b, 0);
    b.connect_qp(qp_b, qpn_a, 0);
    // B dies: its connection closes and the router drops its objects
    // (A posts once the router shows B's session gone).
    drop(b);
    router.wait_for_sessions(1, Duration::from_secs(10));
    let mut w = SendWqe::zeroed();
    w.wr_id = 11;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE;
    w.inline_len = 8;
    post(&map_a, &layout_a, 0, &w);
    let _ = a.call(&Request::QueryQp { qp: qp_a });
    // timeout 1, retry_cnt 0 (connect_qp): the retry budget is tiny.
    let c = completions(&cq_map, &cq_layout, 0, 1);
    assert_eq!(
        (c[0].wr_id, c[0].status),
        (11, IBV_WC_RETRY_EXC_ERR),
        "{:?}",
        c[0]
    );
    assert_router_alive(&router);
}

/// The command file (the session's cmd_fd on the router's FUSE mount) is
/// the session's process's alone, and serves nothing but
/// CREATE_COMP_CHANNEL.
#[test]
fn command_file_is_guarded() {
    let router = Router::start();
    let client = Client::new(&router);
    let name = client
        .cmd_file
        .clone()
        .expect("the router serves a command file");
    let path = router.runtime_dir.join(name);
    // Another process may not open it.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3<>{}", path.display()))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a foreign process opened {}",
        path.display()
    );
    // A session that does not exist has no file.
    let missing = router.runtime_dir.join("fuse").join("999999");
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(&missing)
        .is_err());
    // Its owner may, but only CREATE_COMP_CHANNEL is served.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let e = nix::unistd::write(&f, &[0u8; 16]).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EOPNOTSUPP);
    let e = nix::unistd::write(&f, &[1u8; 3]).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EOPNOTSUPP);
    // ioctl fails with ENOTTY, so libibverbs falls back to write and sysfs.
    let mut hdr = [0u8; 24];
    // SAFETY: an ioctl on our own fd with a buffer of the size it encodes.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0xc018_1b01u64 as _, hdr.as_mut_ptr()) };
    assert_eq!(r, -1);
    assert_eq!(nix::errno::Errno::last(), nix::errno::Errno::ENOTTY);
    // A CREATE_COMP_CHANNEL whose response points nowhere: the provider
    // end (ours here) is asked for a pipe and does not answer, then hangs
    // up; the write fails instead of hanging.
    let mut cmd = Vec::new();
    cmd.extend_from_slice(&17u32.to_ne_bytes());
    cmd.extend_from_slice(&4u16.to_ne_bytes());
    cmd.extend_from_slice(&1u16.to_ne_bytes());
    cmd.extend_from_slice(&8u64.to_ne_bytes());
    let writer = std::thread::spawn(move || nix::unistd::write(&f, &cmd));
    // The router asks our provider end for a pipe (the write is blocked in
    // the file system meanwhile); we never answer, and hang up.
    let (ev, _) = control::recv::<control::Event>(client._events.1.as_fd(), MsgFlags::empty())
        .expect("the router asks for a pipe");
    assert!(matches!(ev, control::Event::MakeChannel { .. }), "{ev:?}");
    drop(client);
    let r = writer.join().unwrap();
    assert!(r.is_err(), "write returned {r:?}");
    assert_router_alive(&router);
}

#[test]
fn a_path_to_another_gid_does_not_reach_a_local_qp() {
    let router = Router::start();
    let mut a = Client::new(&router);
    let pd = a.pd();
    let (cq, cq_map, cq_layout) = a.cq(8);
    let (qp1, qpn1, map1, layout1, _f1) = a.qp(pd, cq);
    let (qp2, qpn2, _map2, _layout2, _f2) = a.qp(pd, cq);
    // QP1's path names a GID no session on this router has.
    let elsewhere = AddressVector {
        port_num: 1,
        is_global: true,
        dgid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 9],
        ..Default::default()
    };
    a.connect_qp_via(qp1, qpn2, 0, elsewhere);
    a.connect_qp(qp2, qpn1, 0);
    let mut w = SendWqe::zeroed();
    w.wr_id = 21;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE;
    w.inline_len = 8;
    post(&map1, &layout1, 0, &w);
    let _ = a.call(&Request::QueryQp { qp: qp1 });
    let c = completions(&cq_map, &cq_layout, 0, 1);
    assert_eq!(
        (c[0].wr_id, c[0].status),
        (21, IBV_WC_RETRY_EXC_ERR),
        "{:?}",
        c[0]
    );
}

/// Semi mode's control messages: arena runs, key resolution and error
/// reports are checked like every other request; a QP gets its peer's rings
/// only when the router connected it on the semi path, and keys only of its
/// responder's protection domain.
#[test]
fn semi_mode_requests_are_checked() {
    let router = Router::start_with(&["--mode", "semi"]);
    let mut b = Client::new(&router);
    let pd_b = b.pd();
    let other_pd_b = b.pd();
    let page = vec![0u8; 3 * 4096];
    let addr = (page.as_ptr() as u64).next_multiple_of(4096);
    let run = |offset| ArenaRun {
        addr,
        len: 4096,
        offset,
    };
    let access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    let reg = |pd, runs: Vec<ArenaRun>| Request::RegMr {
        pd,
        addr,
        iova: addr,
        length: 4096,
        access,
        runs,
        nic_key: None,
    };
    // Runs that do not cover the region, or point inside a page.
    let short = ArenaRun { len: 0, ..run(0) };
    assert_eq!(b.errno(&reg(pd_b, vec![short])), libc::EINVAL);
    assert_eq!(b.errno(&reg(pd_b, vec![run(100)])), libc::EINVAL);
    // Runs without an arena to point into.
    assert_eq!(b.errno(&reg(pd_b, vec![run(0)])), libc::EINVAL);
    // A NIC's key, on a router without a NIC.
    let nic_key = Request::RegMr {
        pd: pd_b,
        addr,
        iova: addr,
        length: 4096,
        access,
        runs: vec![],
        nic_key: Some(0x1234),
    };
    assert_eq!(b.errno(&nic_key), libc::EINVAL);
    // With an arena: shared.
    let arena =
        nix::sys::memfd::memfd_create(c"test-arena", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .unwrap();
    nix::unistd::ftruncate(&arena, 4096).unwrap();
    let (r, _) = b.call_passing(&reg(pd_b, vec![run(0)]), &[arena.as_raw_fd()]);
    let Reply::Mr { rkey: shared, .. } = r else {
        panic!("{r:?}")
    };
    let (r, _) = b.ok(&reg(pd_b, vec![]));
    let Reply::Mr { rkey: unshared, .. } = r else {
        panic!("{r:?}")
    };
    let (r, _) = b.ok(&reg(other_pd_b, vec![run(0)]));
    let Reply::Mr { rkey: other_pd, .. } = r else {
        panic!("{r:?}")
    };

    // A's QP on the semi path to B's QP, which does not name A yet.
    let mut a = Client::new(&router);
    let pd_a = a.pd();
    let (cq_a, _m1, _l1) = a.cq(8);
    let (qp_a, qpn_a, _m2, _l2, _f2) = a.qp(pd_a, cq_a);
    let (cq_b, _m3, _l3) = b.cq(8);
    let (qp_b, qpn_b, _m4, _l4, _f4) = b.qp(pd_b, cq_b);
    let (qp_c, qpn_c, _m5, _l5, _f5) = b.qp(pd_b, cq_b);
    // A NIC's QP number, on a router without a NIC.
    let nic_qp = Request::CreateQp {
        pd: pd_b,
        qp_type: IBV_QPT_RC,
        send_cq: cq_b,
        recv_cq: cq_b,
        srq: 0,
        caps: QpCaps::default(),
        sq_sig_all: false,
        cookie: 0,
        nic_qpn: Some(0x42),
    };
    assert_eq!(b.errno(&nic_qp), libc::EINVAL);
    let (r, fds) = a.ok(&Request::ModifyQp {
        qp: qp_a,
        attr: QpAttr {
            qp_state: IBV_QPS_INIT,
            port_num: 1,
            ..Default::default()
        },
        mask: 0x39,
    });
    assert!(matches!(r, Reply::Done) && fds.is_empty());
    let (r, fds) = a.ok(&Request::ModifyQp {
        qp: qp_a,
        attr: QpAttr {
            qp_state: IBV_QPS_RTR,
            path_mtu: IBV_MTU_1024,
            dest_qp_num: qpn_b,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            ah_attr: a.own_path(),
            ..Default::default()
        },
        mask: 0x129181,
    });
    assert!(
        matches!(r, Reply::SemiPath { peer_qpn } if peer_qpn == qpn_b),
        "{r:?}"
    );
    assert!(fds.is_empty(), "no rings before B names A");
    // Naming B's QPN grants nothing of B: neither its rings nor its memory.
    let connect_a = Request::SemiConnect { qp: qp_a };
    assert_eq!(a.errno(&connect_a), libc::EAGAIN, "B does not name A");
    assert_eq!(
        a.errno(&Request::ResolveKey {
            qp: qp_a,
            key: shared,
            dest_qpn: 0,
        }),
        libc::ENOENT,
        "B does not name A"
    );
    // B connects to another QP (C, its own): still nothing for A.
    b.connect_qp(qp_b, qpn_c, IBV_ACCESS_REMOTE_WRITE);
    b.connect_qp(qp_c, qpn_b, IBV_ACCESS_REMOTE_WRITE);
    assert_eq!(a.errno(&connect_a), libc::EAGAIN, "B names C, not A");
    // B back to RESET, then connected to A: granted.
    b.ok(&Request::ModifyQp {
        qp: qp_b,
        attr: QpAttr {
            qp_state: IBV_QPS_RESET,
            ..Default::default()
        },
        mask: 0x1,
    });
    b.connect_qp(qp_b, qpn_a, IBV_ACCESS_REMOTE_WRITE);
    let (r, fds) = a.ok(&connect_a);
    assert!(
        matches!(r, Reply::SemiPeer { peer_qpn, .. } if peer_qpn == qpn_b),
        "{r:?}"
    );
    assert_eq!(fds.len(), 2, "the peer's QP and CQ segments");
    // Another session cannot ask for A's grant.
    assert_eq!(b.errno(&connect_a), libc::EINVAL);

    let resolve = |key| Request::ResolveKey {
        qp: qp_a,
        key,
        dest_qpn: 0,
    };
    let (r, fds) = a.ok(&resolve(shared));
    assert!(matches!(r, Reply::Key { .. }) && fds.len() == 1, "{r:?}");
    assert_eq!(a.errno(&resolve(unshared)), libc::EACCES);
    assert_eq!(a.errno(&resolve(other_pd)), libc::EACCES, "another PD");
    assert_eq!(a.errno(&resolve(0x1234_5678)), libc::EACCES, "no such key");
    // B's QP is on the semi path too (A's QP existed when B connected);
    // its responder is A, so B's own key does not resolve through it.
    assert_eq!(
        b.errno(&Request::ResolveKey {
            qp: qp_b,
            key: shared,
            dest_qpn: 0,
        }),
        libc::EACCES
    );
    // Handles of another session.
    assert_eq!(
        b.errno(&Request::ResolveKey {
            qp: qp_a,
            key: shared,
            dest_qpn: 0,
        }),
        libc::EINVAL
    );
    assert_eq!(
        b.errno(&Request::SemiError {
            qp: qp_a,
            own: true,
            peer_event: None
        }),
        libc::EINVAL
    );
    // An error report moves exactly the QP and its peer to ERR.
    a.ok(&Request::SemiError {
        qp: qp_a,
        own: true,
        peer_event: Some(IBV_EVENT_QP_FATAL),
    });
    for (c, qp) in [(&mut a, qp_a), (&mut b, qp_b)] {
        let (r, _) = c.ok(&Request::QueryQp { qp });
        let Reply::QpAttr { attr } = r else {
            panic!("{r:?}")
        };
        assert_eq!(attr.qp_state, IBV_QPS_ERR);
    }
    // Runs are refused by an isolated router.
    let iso = Router::start();
    let mut c = Client::new(&iso);
    let pd_c = c.pd();
    assert_eq!(c.errno(&reg(pd_c, vec![run(0)])), libc::EINVAL);
    assert_router_alive(&router);
    drop(page);
}

static SEND_ONE: common::CProgram = common::CProgram::new("fv_send_one.c");

/// A responder (driven by hand) posts a receive with more SGEs than its QP
/// allows; a real provider SENDs into it. Every data path must answer as
/// the semantics core says: the receive completes with LOC_QP_OP_ERR, the
/// SEND with REM_OP_ERR. (Semi mode once checked a global maximum instead
/// of the QP's, and reported LOC_PROT_ERR.)
fn too_many_receive_sges(router_args: &[&str]) {
    use std::io::{BufRead, BufReader, Write};
    let router = Router::start_with(router_args);
    let mut sender = router.command(SEND_ONE.path());
    let mut sender = sender
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sender.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").unwrap();
    let qpn_a = u32::from_str_radix(first.trim_start_matches("qpn 0x"), 16).unwrap();

    let mut b = Client::new(&router);
    let pd = b.pd();
    let (cq, cq_map, cq_layout) = b.cq(8);
    let (qp, qpn_b, map, layout, _fd) = b.qp(pd, cq);
    b.connect_qp(qp, qpn_a, 0);
    // A receive of MAX_SGE + 1 SGEs (the QP allows MAX_SGE).
    let mut r = RecvWqe::zeroed();
    r.wr_id = 0xbeef;
    r.num_sge = flowverbs_wire::limits::MAX_SGE + 1;
    // SAFETY: the segment holds the receive queue at rq_offset.
    let rq = unsafe { RingSlots::new(map.as_ptr().add(layout.rq_offset), layout.rq_capacity) };
    rq.write(0, &r);
    // SAFETY: the segment starts with a QpHeader.
    unsafe { map.header::<QpHeader>() }.rq.publish_producer(1);

    let mut stdin = sender.stdin.take().unwrap();
    writeln!(stdin, "{qpn_b:x}").unwrap();
    drop(stdin);
    let status = lines.next().expect("a status line").unwrap();
    let _ = sender.wait();
    assert_eq!(
        status,
        format!("status {IBV_WC_REM_OP_ERR}"),
        "the SEND's completion\n{}",
        router.stderr()
    );
    let _ = b.call(&Request::QueryQp { qp });
    let c = completions(&cq_map, &cq_layout, 0, 1);
    assert_eq!(
        (c[0].wr_id, c[0].status),
        (0xbeef, IBV_WC_LOC_QP_OP_ERR),
        "the receive's completion {:?}\n{}",
        c[0],
        router.stderr()
    );
}

#[test]
fn too_many_receive_sges_isolated() {
    too_many_receive_sges(&[]);
}

#[test]
fn too_many_receive_sges_semi() {
    too_many_receive_sges(&["--mode", "semi"]);
}
