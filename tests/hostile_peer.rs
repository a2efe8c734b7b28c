//! A hostile "router" connects to a router's `--listen` port and speaks the
//! link protocol wrongly: garbage, frames before Hello, oversized frames, a
//! second Hello, requests for GIDs it never announced. The router must
//! close such connections (or drop the frames), log why, and go on serving
//! its own processes: never crash or hang. Loopback only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use flowverbs::wire::link::{
    encode_payload, Announce, FrameHeader, Hello, Kind, HEADER_LEN, MAX_CHUNK, QP_RC,
};

fn frame(hdr: FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut h = hdr;
    h.payload_len = payload.len() as u32;
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

fn hello(listen: &str) -> Vec<u8> {
    frame(
        FrameHeader::new(Kind::Hello),
        &encode_payload(&Hello {
            listen: listen.into(),
            boot_id: 42,
        }),
    )
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

fn start_listening_router() -> (Router, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let router = Router::start_with(&["--listen", &listen]);
    (router, listen)
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

/// Reads whole frames from `s` for `secs` seconds.
fn read_frames(s: &mut TcpStream, secs: u64) -> Vec<FrameHeader> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = Vec::new();
    let mut b = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER_LEN {
        let raw: &[u8; HEADER_LEN] = buf[at..at + HEADER_LEN].try_into().unwrap();
        let h = FrameHeader::decode(raw).expect("the router sends valid frames");
        at += HEADER_LEN + h.payload_len as usize;
        frames.push(h);
    }
    frames
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
/// the second nothing; a local checked pingpong runs meanwhile.
#[test]
fn a_peer_reaches_only_qps_connected_to_it() {
    let (mut router, listen) = start_listening_router();
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let mut to_router = TcpStream::connect(&listen).unwrap();
    to_router.write_all(&hello(&fake_addr)).unwrap();
    to_router
        .write_all(&frame(
            FrameHeader::new(Kind::Announce),
            &encode_payload(&Announce {
                gids: vec![[7; 16]],
            }),
        ))
        .unwrap();
    let (mut from_router, _) = fake.accept().expect("the router dials back");
    let up = format!("peer {fake_addr} up");
    router.wait_for_log(&up, 1, Duration::from_secs(10), |l| l.contains(&up));

    // A local session with a QP: a pingpong server waiting for its client.
    let port = free_port().to_string();
    let args = ["-d", "fv0", "-g", "0", "-c", "-n", "50", "-p", &port];
    let mut server = router.command("ibv_rc_pingpong");
    server.args(args);
    let server = Background::start(server);
    let gid = router_gid(&router);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !router.stderr().contains("session 1:") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300)); // its QP, after the session

    let mut bytes = Vec::new();
    let qpns = 0x100..0x110u32;
    for qpn in qpns.clone() {
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
            h.src_qpn = 0x777;
            h.dst_qpn = qpn;
            h.opcode = flowverbs::sys::IBV_WR_RDMA_WRITE;
            h.total_len = 4;
            h.remote_addr = 0x1000;
            h.rkey = qpn;
            bytes.extend(frame(h, b"evil"));
        }
    }
    to_router.write_all(&bytes).unwrap();
    let answers = read_frames(&mut from_router, 3);
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
            n.status,
            flowverbs::wire::link::NakReason::NoQp as u32,
            "{n:?}"
        );
        assert_eq!((n.dst_gid, n.dst_qpn, n.src_gid), ([7; 16], 0x777, gid));
    }
    assert!(
        answers.iter().all(|h| h.kind == Kind::Nak as u8
            || h.kind == Kind::Hello as u8
            || h.kind == Kind::Announce as u8),
        "{answers:?}"
    );

    let mut client = router.command("ibv_rc_pingpong");
    client.args(args).arg("127.0.0.1");
    let client = run_with_timeout(&mut client, 60);
    let server = server.finish(Duration::from_secs(60));
    assert!(
        server.status.success() && client.status.success(),
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
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let claimed: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 7, 7];
    let mut to_router = TcpStream::connect(&listen).unwrap();
    to_router.write_all(&hello(&fake_addr)).unwrap();
    to_router
        .write_all(&frame(
            FrameHeader::new(Kind::Announce),
            &encode_payload(&Announce {
                gids: vec![claimed],
            }),
        ))
        .unwrap();
    let (mut from_router, _) = fake.accept().expect("the router dials back");
    let up = format!("peer {fake_addr} up");
    router.wait_for_log(&up, 1, Duration::from_secs(10), |l| l.contains(&up));

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
    let frames = read_frames(&mut from_router, 1);
    assert!(
        frames
            .iter()
            .any(|h| h.kind == Kind::Request as u8 && h.dst_gid == claimed && h.dst_qpn == 0x4242),
        "{frames:?}"
    );
}
