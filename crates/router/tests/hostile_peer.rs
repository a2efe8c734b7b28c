//! A hostile "router" connects to a router's `--listen` port and speaks the
//! link protocol wrongly: garbage, frames before Hello, oversized frames, a
//! second Hello, requests for GIDs it never announced. The router must
//! close such connections (or drop the frames), log why, and go on serving
//! its own processes: never crash or hang. A scripted peer also drives
//! paths that stock programs never reach across hosts (a silent responder,
//! receiver-not-ready both ways). Loopback only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use flowverbs_wire::link::{
    encode_payload, Announce, FrameHeader, Hello, Kind, CHALLENGE_LEN, HEADER_LEN, MAX_CHUNK, QP_RC,
};

fn frame(hdr: FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut h = hdr;
    h.payload_len = (payload.len() as u32).into();
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

fn hello(listen: &str) -> Vec<u8> {
    hello_with(listen, 42, [0; 32])
}

fn hello_with(listen: &str, boot_id: u64, mac: [u8; 32]) -> Vec<u8> {
    frame(
        FrameHeader::new(Kind::Hello),
        &encode_payload(&Hello {
            listen: listen.into(),
            boot_id,
            mac,
        }),
    )
}

/// The challenge a router sends first on a connection to it.
fn read_challenge(s: &mut TcpStream) -> [u8; CHALLENGE_LEN] {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = [0u8; CHALLENGE_LEN];
    s.read_exact(&mut c).expect("the router's challenge");
    c
}

/// True if the router closes `s` within 10 s (EOF or reset).
fn closed_by_router(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {} // its Hello/Announce, if it dialed back: ignore
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A router listening on loopback that lets routers on 127.0.0.1 introduce
/// themselves (the scripted peers).
fn start_listening_router() -> (Router, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let router = Router::start_with(&["--listen", &listen, "--accept-peers", "127.0.0.1/32"]);
    (router, listen)
}

/// Frames from a stream, one at a time (with their payloads).
struct FrameReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl FrameReader {
    fn new(stream: TcpStream) -> FrameReader {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        FrameReader {
            stream,
            buf: Vec::new(),
        }
    }

    /// Every frame that arrives within `secs` seconds.
    fn frames_for(&mut self, secs: u64) -> Vec<FrameHeader> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut b = [0u8; 65536];
        while Instant::now() < deadline {
            match self.stream.read(&mut b) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let mut frames = Vec::new();
        while self.buf.len() >= HEADER_LEN {
            let raw: &[u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().unwrap();
            let h = FrameHeader::decode(raw).expect("the router sends valid frames");
            let end = HEADER_LEN + h.payload_len.get() as usize;
            if self.buf.len() < end {
                break;
            }
            self.buf.drain(..end);
            frames.push(h);
        }
        frames
    }

    /// The next frame for which `want` holds (others are skipped), within
    /// `timeout`; panics otherwise.
    fn next_where(
        &mut self,
        timeout: Duration,
        want: impl Fn(&FrameHeader) -> bool,
    ) -> (FrameHeader, Vec<u8>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            while self.buf.len() >= HEADER_LEN {
                let raw: &[u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().unwrap();
                let h = FrameHeader::decode(raw).expect("the router sends valid frames");
                let end = HEADER_LEN + h.payload_len.get() as usize;
                if self.buf.len() < end {
                    break;
                }
                let payload = self.buf[HEADER_LEN..end].to_vec();
                self.buf.drain(..end);
                if want(&h) {
                    return (h, payload);
                }
                seen.push(h);
            }
            assert!(
                Instant::now() < deadline,
                "no such frame within {timeout:?}; saw {seen:?}"
            );
            let mut b = [0u8; 65536];
            match self.stream.read(&mut b) {
                Ok(0) => panic!("the router closed the connection; saw {seen:?}"),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading from the router: {e}"),
            }
        }
    }
}

/// A fake router at `fake_gid` linked to `router`: (frames to the router,
/// frames from it).
fn scripted_peer(
    router: &mut Router,
    listen: &str,
    fake_gid: [u8; 16],
) -> (TcpStream, FrameReader) {
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let mut to_router = TcpStream::connect(listen).unwrap();
    read_challenge(&mut to_router);
    to_router.write_all(&hello(&fake_addr)).unwrap();
    to_router
        .write_all(&frame(
            FrameHeader::new(Kind::Announce),
            &encode_payload(&Announce {
                gids: vec![fake_gid],
                nic_gids: vec![],
                nic_ud_qps: vec![],
            }),
        ))
        .unwrap();
    let (mut from_router, _) = fake.accept().expect("the router dials back");
    from_router.write_all(&[0; CHALLENGE_LEN]).unwrap();
    let up = format!("peer {fake_addr} up");
    router.wait_for_log(&up, 1, Duration::from_secs(10), |l| l.contains(&up));
    (to_router, FrameReader::new(from_router))
}

#[test]
fn malformed_link_input_closes_the_connection_and_the_router_goes_on() {
    let (mut router, listen) = start_listening_router();
    let connect = || TcpStream::connect(&listen).expect("connecting to the router's link port");

    let mut request = FrameHeader::new(Kind::Request);
    request.qp_kind = QP_RC;
    let mut too_long = FrameHeader::new(Kind::Ack).encode();
    too_long[8..12].copy_from_slice(&(MAX_CHUNK as u32 + 1).to_le_bytes());
    let free = free_port();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", vec![0xab; 3 * HEADER_LEN], "bad frame"),
        (
            "data before Hello",
            frame(request, b"x"),
            "data before Hello",
        ),
        ("oversized frame", too_long.to_vec(), "exceeds"),
        (
            "Hello with a bad address",
            hello("not an address"),
            "Hello with address",
        ),
        (
            "Hello naming another host's address",
            hello("198.18.99.2:7471"),
            "but comes from 127.0.0.1",
        ),
        (
            "second Hello",
            [hello(&format!("127.0.0.1:{free}")), hello("127.0.0.1:1")].concat(),
            "second Hello",
        ),
    ];
    for (what, bytes, logged) in cases {
        let before = router.count_log_lines(|l| l.contains(logged));
        let mut s = connect();
        s.write_all(&bytes).unwrap();
        assert!(
            closed_by_router(&mut s),
            "{what}: the router kept the connection open\n{}",
            router.stderr()
        );
        router.wait_for_log(logged, before + 1, Duration::from_secs(10), |l| {
            l.contains(logged)
        });
        assert!(router.pid().is_some());
    }

    // The router still serves its own processes.
    let out = run_with_timeout(router.command("ibv_devinfo").args(["-d", "fv0"]), 30);
    assert!(
        out.status.success(),
        "{}\n{}",
        show("ibv_devinfo", &out),
        router.stderr()
    );
}

/// The number of the first QP `router`'s status shows for which `want`
/// holds; waits (10 s) for one.
fn wait_for_qp(router: &Router, want: impl Fn(&serde_json::Value) -> bool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = router.status();
        let found = status["sessions"].as_array().and_then(|ss| {
            ss.iter()
                .flat_map(|s| s["qps"].as_array().into_iter().flatten())
                .find(|q| want(q))
                .and_then(|q| q["qpn"].as_u64())
        });
        if let Some(qpn) = found {
            return qpn as u32;
        }
        assert!(
            Instant::now() < deadline,
            "no such QP within 10 s: {status}\n{}",
            router.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GID 0 of the router's own namespace, from the tree it generates.
fn router_gid(router: &Router) -> [u8; 16] {
    let dir = router
        .sysfs_path()
        .join("class/infiniband/fv0/ports/1/gids/0");
    let text = std::fs::read_to_string(&dir).expect("GID 0 in the generated tree");
    let ip: std::net::Ipv6Addr = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("GID {text:?}: {e}"));
    ip.octets()
}

/// A peer that completed the handshake (the router dialed back and says it
/// is up) sends requests for the router's GID to QPs not connected to it,
/// and frames from a GID it never announced. The first get "no QP" NAKs,
/// the second nothing; a local checked transfer (`fv_xfer`) runs meanwhile.
#[test]
fn a_peer_reaches_only_qps_connected_to_it() {
    let (mut router, listen) = start_listening_router();
    let (mut to_router, mut from_router) = scripted_peer(&mut router, &listen, [7; 16]);

    // A local session with a QP: a checked-transfer server waiting for its
    // client.
    let port = free_port().to_string();
    let args = ["-n", "50", "-p", &port];
    let mut server = router.command(XFER.path());
    server.args(args);
    let server = Background::start(server);
    let gid = router_gid(&router);
    // The server's real QP (learned from the router, not guessed), and
    // numbers no QP has.
    let real = wait_for_qp(&router, |_| true);
    let qpns = [real, real + 0x100, real + 0x101, 0xff_fff0];

    let mut bytes = Vec::new();
    for qpn in qpns {
        for (src, kind) in [
            ([7u8; 16], Kind::Request),
            ([8u8; 16], Kind::Request),
            ([8u8; 16], Kind::Datagram),
            ([8u8; 16], Kind::Ack),
        ] {
            let mut h = FrameHeader::new(kind);
            h.qp_kind = QP_RC;
            h.src_gid = src;
            h.dst_gid = gid;
            h.src_qpn = 0x777.into();
            h.dst_qpn = qpn.into();
            h.opcode = (flowverbs_sys::IBV_WR_RDMA_WRITE).into();
            h.total_len = 4.into();
            h.remote_addr = 0x1000.into();
            h.rkey = qpn.into();
            bytes.extend(frame(h, b"evil"));
        }
    }
    to_router.write_all(&bytes).unwrap();
    let answers = from_router.frames_for(3);
    let naks: Vec<&FrameHeader> = answers
        .iter()
        .filter(|h| h.kind == Kind::Nak as u8)
        .collect();
    assert_eq!(
        naks.len(),
        qpns.len(),
        "one NAK per request from the announced GID, none for the rest: {answers:?}\n{}",
        router.stderr()
    );
    for n in &naks {
        assert_eq!(
            n.status.get(),
            flowverbs_wire::link::NakReason::NoQp as u32,
            "{n:?}"
        );
        assert_eq!(
            (n.dst_gid, n.dst_qpn.get(), n.src_gid),
            ([7; 16], 0x777, gid)
        );
    }
    assert!(
        answers.iter().all(|h| h.kind == Kind::Nak as u8
            || h.kind == Kind::Hello as u8
            || h.kind == Kind::Announce as u8),
        "{answers:?}"
    );

    let mut client = router.command(XFER.path());
    client.args(args).arg("127.0.0.1");
    let client = run_with_timeout(&mut client, 60);
    let server = server.finish(Duration::from_secs(60));
    let checked = |o: &std::process::Output| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("checked each way")
    };
    assert!(
        checked(&server) && checked(&client),
        "{}{}{}",
        show("server", &server),
        show("client", &client),
        router.stderr()
    );
}

/// `ibv_rc_pingpong`'s connection message: `LID:QPN:PSN:GID` in hex, with
/// the GID's 16 bytes in order, NUL-terminated (52 bytes).
fn pingpong_message(qpn: u32, gid: &[u8; 16]) -> Vec<u8> {
    let hex: String = gid.iter().map(|b| format!("{b:02x}")).collect();
    let mut m = format!("0000:{qpn:06x}:000000:{hex}").into_bytes();
    m.push(0);
    assert_eq!(m.len(), 52);
    m
}

/// A peer router that completes the handshake, claims a GID, and then never
/// answers: an unmodified `ibv_rc_pingpong` client connected to a QP
/// "there" gets its send completed with IBV_WC_RETRY_EXC_ERR once the ACK
/// timeout and retries are spent (pingpong's timeout 14, retry_cnt 7:
/// about half a second), not a hang.
#[test]
fn a_peer_that_never_answers_ends_in_retry_exceeded() {
    let (mut router, listen) = start_listening_router();
    let claimed: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 7, 7];
    let (_to_router, mut from_router) = scripted_peer(&mut router, &listen, claimed);

    // A pingpong "server" that only does the TCP exchange.
    let oob = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = oob.local_addr().unwrap().port().to_string();
    let exchange = std::thread::spawn(move || {
        let (mut c, _) = oob.accept().unwrap();
        let mut msg = [0u8; 52];
        c.read_exact(&mut msg).unwrap();
        c.write_all(&pingpong_message(0x4242, &claimed)).unwrap();
        let mut done = [0u8; 5];
        let _ = c.read_exact(&mut done);
    });
    let mut client = router.command("ibv_rc_pingpong");
    client
        .args(["-d", "fv0", "-g", "0", "-n", "5", "-p", &port])
        .arg("127.0.0.1");
    let out = run_with_timeout(&mut client, 60);
    exchange.join().unwrap();
    let report = format!("{}{}", show("client", &out), router.stderr());
    assert!(!timed_out(&out), "the client hung\n{report}");
    assert!(!out.status.success(), "{report}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("retry counter exceeded") || text.contains("status 12"),
        "want IBV_WC_RETRY_EXC_ERR\n{report}"
    );
    // The requests did reach the claimed GID's router.
    let frames = from_router.frames_for(1);
    assert!(
        frames.iter().any(|h| h.kind == Kind::Request as u8
            && h.dst_gid == claimed
            && h.dst_qpn.get() == 0x4242),
        "{frames:?}"
    );
}

/// QPN and PSN from an `ibv_rc_pingpong` connection message.
fn parse_pingpong_message(m: &[u8]) -> (u32, u32) {
    let text = std::str::from_utf8(&m[..51]).unwrap();
    let field = |i: usize| u32::from_str_radix(text.split(':').nth(i).unwrap(), 16).unwrap();
    (field(1), field(2))
}

/// An answer (Ack or Nak) to request `req`, from the fake side.
fn answer(req: &FrameHeader, kind: Kind, status: u32, aux: u32) -> Vec<u8> {
    let mut h = FrameHeader::new(kind);
    h.qp_kind = req.qp_kind;
    h.psn = req.psn;
    h.src_gid = req.dst_gid;
    h.dst_gid = req.src_gid;
    h.src_qpn = req.dst_qpn;
    h.dst_qpn = req.src_qpn;
    h.opcode = req.opcode;
    h.status = status.into();
    h.aux = aux.into();
    frame(h, &[])
}

const FAKE_GID: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 9, 9];
const FAKE_QPN: u32 = 0x4242;

/// Requester side of receiver-not-ready: the scripted responder NAKs an
/// unmodified `ibv_rc_pingpong` client's first send twice (RNR), then
/// accepts it; the router resends the same PSN after each RNR timer, the
/// client never sees an error (rnr_retry 7), and once the peer's own send
/// arrives the client completes its iteration.
#[test]
fn the_requester_resends_after_receiver_not_ready() {
    let (mut router, listen) = start_listening_router();
    let (mut to_router, mut from_router) = scripted_peer(&mut router, &listen, FAKE_GID);
    let oob = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = oob.local_addr().unwrap().port().to_string();
    let mut client = router.command("ibv_rc_pingpong");
    client
        .args(["-d", "fv0", "-g", "0", "-n", "1", "-s", "4096", "-p", &port])
        .arg("127.0.0.1");
    let client = Background::start(client);
    let (mut c, _) = oob.accept().unwrap();
    let mut msg = [0u8; 52];
    c.read_exact(&mut msg).unwrap();
    let (client_qpn, client_psn) = parse_pingpong_message(&msg);
    c.write_all(&pingpong_message(FAKE_QPN, &FAKE_GID)).unwrap();
    let mut done = [0u8; 5];
    c.read_exact(&mut done).unwrap();

    let is_send = |h: &FrameHeader| {
        h.kind == Kind::Request as u8
            && h.dst_qpn.get() == FAKE_QPN
            && h.src_qpn.get() == client_qpn
    };
    for attempt in 0..3 {
        let (req, payload) = from_router.next_where(Duration::from_secs(10), is_send);
        assert_eq!(
            req.psn.get(),
            client_psn,
            "attempt {attempt}: the same PSN again"
        );
        assert_eq!(
            (req.offset.get(), req.total_len.get(), payload.len()),
            (0, 4096, 4096)
        );
        let reply = if attempt < 2 {
            answer(
                &req,
                Kind::Nak,
                flowverbs_wire::link::NakReason::Rnr as u32,
                2000,
            )
        } else {
            answer(&req, Kind::Ack, 0, 0)
        };
        to_router.write_all(&reply).unwrap();
    }
    // Our send to the client (its rq_psn is the PSN we told it: 0).
    let mut send = FrameHeader::new(Kind::Request);
    send.qp_kind = QP_RC;
    send.psn = 0.into();
    send.src_gid = FAKE_GID;
    send.dst_gid = router_gid(&router);
    send.src_qpn = FAKE_QPN.into();
    send.dst_qpn = client_qpn.into();
    send.opcode = flowverbs_sys::IBV_WR_SEND.into();
    send.total_len = 4096.into();
    to_router.write_all(&frame(send, &[0x5a; 4096])).unwrap();
    let (ack, _) = from_router.next_where(Duration::from_secs(10), |h| {
        h.kind == Kind::Ack as u8 && h.dst_qpn.get() == FAKE_QPN
    });
    assert_eq!((ack.psn.get(), ack.status.get()), (0, 0), "{ack:?}");
    let out = client.finish(Duration::from_secs(30));
    assert!(
        out.status.success() && parse_pingpong(&out).is_some_and(|r| r.iters == 1),
        "{}{}",
        show("client", &out),
        router.stderr()
    );
}

/// Responder side of receiver-not-ready: an unmodified `ibv_rc_pingpong`
/// server with one receive posted (`-r 1`) gets two sends back to back
/// from the scripted requester; the router accepts the first and NAKs the
/// second (RNR, with the server's RNR timer), then accepts it when it comes
/// again after the server reposted. The server completes both iterations.
#[test]
fn the_responder_naks_receiver_not_ready() {
    let (mut router, listen) = start_listening_router();
    let (mut to_router, mut from_router) = scripted_peer(&mut router, &listen, FAKE_GID);
    let port = free_port();
    let mut server = router.command("ibv_rc_pingpong");
    server
        .args([
            "-d", "fv0", "-g", "0", "-n", "2", "-r", "1", "-s", "4096", "-p",
        ])
        .arg(port.to_string());
    let server = Background::start(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the pingpong server does not listen: {e}"),
        }
    };
    c.write_all(&pingpong_message(FAKE_QPN, &FAKE_GID)).unwrap();
    let mut msg = [0u8; 52];
    c.read_exact(&mut msg).unwrap();
    let (server_qpn, server_psn) = parse_pingpong_message(&msg);
    c.write_all(b"done\0").unwrap();
    // The server moves its QP to RTR after the exchange: wait for it.
    wait_for_qp(&router, |q| {
        q["qpn"].as_u64() == Some(u64::from(server_qpn))
            && matches!(q["state"].as_str(), Some("RTR") | Some("RTS"))
    });

    let send = |psn: u32| {
        let mut h = FrameHeader::new(Kind::Request);
        h.qp_kind = QP_RC;
        h.psn = psn.into();
        h.src_gid = FAKE_GID;
        h.dst_gid = router_gid(&router);
        h.src_qpn = FAKE_QPN.into();
        h.dst_qpn = server_qpn.into();
        h.opcode = (flowverbs_sys::IBV_WR_SEND).into();
        h.total_len = 4096.into();
        frame(h, &[0x33; 4096])
    };
    // Both in one write: the router handles them in one pass, before the
    // server can repost.
    to_router.write_all(&[send(0), send(1)].concat()).unwrap();
    let to_us = |h: &FrameHeader| h.dst_qpn.get() == FAKE_QPN && h.src_qpn.get() == server_qpn;
    let (first, _) = from_router.next_where(Duration::from_secs(10), |h| {
        to_us(h) && h.kind != Kind::Request as u8
    });
    assert_eq!(
        (first.kind, first.psn.get(), first.status.get()),
        (Kind::Ack as u8, 0, 0),
        "{first:?}"
    );
    let (second, _) = from_router.next_where(Duration::from_secs(10), |h| {
        to_us(h) && h.kind != Kind::Request as u8
    });
    assert_eq!(
        (second.kind, second.psn.get(), second.status.get()),
        (
            Kind::Nak as u8,
            1,
            flowverbs_wire::link::NakReason::Rnr as u32
        ),
        "{second:?}"
    );
    assert!(
        second.aux.get() > 0,
        "the NAK carries the server's RNR timer"
    );
    // The server answers our first message with a send of its own: ack it.
    let (req, _) = from_router.next_where(Duration::from_secs(10), |h| {
        to_us(h) && h.kind == Kind::Request as u8
    });
    assert_eq!(req.psn.get(), server_psn);
    to_router.write_all(&answer(&req, Kind::Ack, 0, 0)).unwrap();
    // Resend the NAKed one until it is accepted (the server reposts).
    let mut accepted = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        to_router.write_all(&send(1)).unwrap();
        let (a, _) = from_router.next_where(Duration::from_secs(10), |h| {
            to_us(h)
                && matches!(h.kind, k if k == Kind::Ack as u8 || k == Kind::Nak as u8)
                && h.psn.get() == 1
        });
        if a.kind == Kind::Ack as u8 {
            assert_eq!(a.status.get(), 0);
            accepted = true;
            break;
        }
    }
    assert!(
        accepted,
        "the resent PSN 1 was never accepted\n{}",
        router.stderr()
    );
    let (req, _) = from_router.next_where(Duration::from_secs(10), |h| {
        to_us(h) && h.kind == Kind::Request as u8
    });
    assert_eq!(req.psn.get(), server_psn.wrapping_add(1));
    to_router.write_all(&answer(&req, Kind::Ack, 0, 0)).unwrap();
    let out = server.finish(Duration::from_secs(30));
    assert!(
        out.status.success() && parse_pingpong(&out).is_some_and(|r| r.iters == 2),
        "{}{}",
        show("server", &out),
        router.stderr()
    );
}

/// Without `--accept-peers`, a router that is not a `--peer` cannot
/// introduce itself: its Hello is refused and it is not dialled.
#[test]
fn unknown_routers_are_refused() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut router = Router::start_with(&["--listen", &listen]);
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let mut s = TcpStream::connect(&listen).unwrap();
    read_challenge(&mut s);
    s.write_all(&hello(&fake_addr)).unwrap();
    assert!(closed_by_router(&mut s), "{}", router.stderr());
    let refused = format!("Hello from {fake_addr}: not a --peer");
    router.wait_for_log(&refused, 1, Duration::from_secs(10), |l| {
        l.contains(&refused)
    });
    assert!(
        !router.stderr().contains("introduced itself"),
        "{}",
        router.stderr()
    );
}

/// With a link key, a Hello that proves it on this connection's challenge
/// is accepted; the same bytes on a new connection (another challenge)
/// are refused: a recorded Hello cannot be replayed.
#[test]
fn a_recorded_hello_cannot_be_replayed() {
    let dir = fresh_temp_dir("linkkey");
    let key_file = dir.join("key");
    let key = b"sixteen or more secret bytes";
    std::fs::write(&key_file, key).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut router = Router::start_with(&[
        "--listen",
        &listen,
        "--accept-peers",
        "127.0.0.1/32",
        "--link-key",
        &key_file.to_string_lossy(),
    ]);
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let mut first = TcpStream::connect(&listen).unwrap();
    let challenge = read_challenge(&mut first);
    let mac = flowverbs_router::link::hello_mac(key, &challenge, &fake_addr, 9);
    let recorded = hello_with(&fake_addr, 9, mac);
    first.write_all(&recorded).unwrap();
    let introduced = format!("router {fake_addr} introduced itself");
    router.wait_for_log(&introduced, 1, Duration::from_secs(10), |l| {
        l.contains(&introduced)
    });
    // The same bytes on a new connection. (The key is checked before
    // anything else, so whether the first connection is still up does not
    // matter.)
    let mut replay = TcpStream::connect(&listen).unwrap();
    read_challenge(&mut replay);
    replay.write_all(&recorded).unwrap();
    assert!(closed_by_router(&mut replay), "{}", router.stderr());
    let refused = format!("Hello from {fake_addr} does not prove the link key");
    router.wait_for_log(&refused, 1, Duration::from_secs(10), |l| {
        l.contains(&refused)
    });
    drop(first);
    let _ = std::fs::remove_dir_all(dir);
}

/// The router's view of its peer at `addr`: (bytes queued for it, whether
/// it reads from it).
fn peer_state(router: &Router, addr: &str) -> (u64, bool) {
    let status = router.status();
    let p = status["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["addr"].as_str() == Some(addr)))
        .unwrap_or_else(|| panic!("no peer {addr} in {status}"));
    (
        p["queued"].as_u64().unwrap(),
        p["reading"].as_bool().unwrap(),
    )
}

/// A peer that sends requests but never reads the replies: once more than
/// 32 MiB of replies wait for it, the router stops reading from it (so its
/// memory stays bounded), serves its own processes meanwhile, and once the
/// peer reads, it reads again and answers every request.
#[test]
fn a_peer_that_does_not_read_is_not_read_from() {
    const CAP: u64 = 32 << 20;
    let (mut router, listen) = start_listening_router();
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let mut to_router = TcpStream::connect(&listen).unwrap();
    read_challenge(&mut to_router);
    to_router.write_all(&hello(&fake_addr)).unwrap();
    to_router
        .write_all(&frame(
            FrameHeader::new(Kind::Announce),
            &encode_payload(&Announce {
                gids: vec![[7; 16]],
                nic_gids: vec![],
                nic_ud_qps: vec![],
            }),
        ))
        .unwrap();
    let (mut from_router, _) = fake.accept().expect("the router dials back");
    from_router.write_all(&[0; CHALLENGE_LEN]).unwrap();
    let up = format!("peer {fake_addr} up");
    router.wait_for_log(&up, 1, Duration::from_secs(10), |l| l.contains(&up));
    // A local session, so that the router serves its GID (a pingpong
    // server waiting for a client that never comes).
    let port = free_port().to_string();
    let mut server = router.command("ibv_rc_pingpong");
    server.args(["-d", "fv0", "-g", "0", "-p", &port]);
    let _server = Background::start(server);
    wait_for_qp(&router, |_| true);

    // 1 MiB of requests to a QP that does not exist: one NAK each.
    let mut h = FrameHeader::new(Kind::Request);
    h.qp_kind = QP_RC;
    h.src_gid = [7; 16];
    h.dst_gid = router_gid(&router);
    h.src_qpn = 0x777.into();
    h.dst_qpn = 0xff_fff0.into();
    h.opcode = (flowverbs_sys::IBV_WR_RDMA_WRITE).into();
    h.total_len = 4.into();
    h.remote_addr = 0x1000.into();
    let one = frame(h, b"evil");
    let per_batch = (1 << 20) / one.len();
    let batch: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(per_batch * one.len())
        .collect();
    to_router.set_nonblocking(true).unwrap();
    let mut written: u64 = 0;
    let mut at = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            written < 10 * CAP,
            "{written} bytes of requests and the router still reads"
        );
        assert!(Instant::now() < deadline, "{}", router.stderr());
        match to_router.write(&batch[at..]) {
            Ok(n) => {
                written += n as u64;
                at = (at + n) % batch.len();
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("writing to the router: {e}"),
        }
        // Our socket is full: is it because the router stopped reading?
        let (queued, reading) = peer_state(&router, &fake_addr);
        if !reading {
            assert!(
                (CAP..CAP + (2 << 20)).contains(&queued),
                "{queued} bytes queued when the router stopped reading"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Meanwhile it serves its own processes.
    let out = run_with_timeout(router.command("ibv_devinfo").args(["-d", "fv0"]), 30);
    assert!(out.status.success(), "{}", show("ibv_devinfo", &out));
    // Finish the last partial frame, then read every reply: the router
    // reads again and answers each request.
    to_router.set_nonblocking(false).unwrap();
    let rest = (one.len() - at % one.len()) % one.len();
    to_router.write_all(&batch[at..at + rest]).unwrap();
    written += rest as u64;
    let requests = written / one.len() as u64;
    from_router
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let (mut buf, mut at, mut naks) = (Vec::new(), 0usize, 0u64);
    let mut chunk = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(120);
    while naks < requests {
        assert!(
            Instant::now() < deadline,
            "{naks} of {requests} requests answered\n{}",
            router.stderr()
        );
        match from_router.read(&mut chunk) {
            Ok(0) => panic!("the router closed the connection"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading from the router: {e}"),
        }
        while buf.len() - at >= HEADER_LEN {
            let raw: &[u8; HEADER_LEN] = buf[at..at + HEADER_LEN].try_into().unwrap();
            let h = FrameHeader::decode(raw).expect("the router sends valid frames");
            let end = at + HEADER_LEN + h.payload_len.get() as usize;
            if buf.len() < end {
                break;
            }
            naks += u64::from(h.kind == Kind::Nak as u8);
            at = end;
        }
        buf.drain(..at);
        at = 0;
    }
    assert_eq!(naks, requests);
    assert!(peer_state(&router, &fake_addr).1, "the router reads again");
}
