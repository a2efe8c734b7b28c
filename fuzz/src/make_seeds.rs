//! Writes the committed seed corpora (fuzz/corpus/TARGET/): request
//! sequences like those the tests' programs make, link frames like the
//! routers', and kernel text like the router reads.
//! `cargo run --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-seeds --bin make_seeds` (plain
//! build, no sanitizer flags needed).

use flowverbs_fuzz::fuse_requests::{shaped, OPCODES};
use flowverbs_fuzz::{encode_step, BUFFER_ADDR};
use flowverbs_router::fuse::{
    FUSE_DESTROY, FUSE_FLUSH, FUSE_GETATTR, FUSE_INIT, FUSE_IOCTL, FUSE_LOOKUP, FUSE_OPEN,
    FUSE_OPENDIR, FUSE_READ, FUSE_READDIR, FUSE_READLINK, FUSE_RELEASE, FUSE_WRITE,
};
use flowverbs_wire::control::{QpAttr, QpCaps, Request};
use flowverbs_wire::link::{encode_payload, Announce, FrameHeader, Hello, Kind};

const RC: u32 = 2;
const UD: u32 = 4;

fn caps() -> QpCaps {
    QpCaps {
        max_send_wr: 16,
        max_recv_wr: 16,
        max_send_sge: 2,
        max_recv_sge: 2,
        max_inline_data: 64,
    }
}

fn qp(pd: u32, cq: u32, srq: u32, qp_type: u32) -> Request {
    Request::CreateQp {
        pd,
        qp_type,
        send_cq: cq,
        recv_cq: cq,
        srq,
        caps: caps(),
        sq_sig_all: false,
        cookie: 0x1000,
        nic_qpn: None,
    }
}

fn modify(qp: u32, state: u32, mask: u32) -> Request {
    Request::ModifyQp {
        qp,
        attr: QpAttr {
            qp_state: state,
            port_num: 1,
            qp_access_flags: 0xf,
            path_mtu: 3,
            ..QpAttr::default()
        },
        mask,
    }
}

fn write(dir: &str, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(format!("{dir}/{name}"), bytes).expect("seed");
}

fn control_seed(semi: bool, steps: &[(u8, Request)]) -> Vec<u8> {
    let mut v = vec![u8::from(semi)];
    for (s, r) in steps {
        v.extend(encode_step(*s, r));
    }
    v
}

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus");
    let control = format!("{root}/control");
    // Handles are given in order from 1 in a fresh engine.
    let lifecycle = [
        (0, Request::AllocPd),
        (
            0,
            Request::CreateCq {
                cqe: 16,
                channel: None,
                cookie: 0x2000,
            },
        ),
        (0, qp(1, 2, 0, RC)),
        (0, modify(3, 1, 0x1 | 0x10 | 0x8 | 0x20)),
        (
            0,
            Request::RegMr {
                pd: 1,
                addr: BUFFER_ADDR,
                iova: BUFFER_ADDR,
                length: 4096,
                access: 0xf,
                runs: Vec::new(),
                nic_key: None,
            },
        ),
        (1, Request::AllocPd),
        (1, qp(1, 2, 0, RC)),
        (1, Request::DestroyQp { qp: 3 }),
        (0, Request::QueryQp { qp: 3 }),
        (0, Request::DestroyQp { qp: 3 }),
        (0, Request::DestroyCq { cq: 2 }),
        (0, Request::DeallocPd { pd: 1 }),
    ];
    for semi in [false, true] {
        write(
            &control,
            &format!("lifecycle_semi{}", u8::from(semi)),
            &control_seed(semi, &lifecycle),
        );
    }
    // Memory windows: a window of each type over an MR, bound (semi mode
    // asks the router), invalidated, the MR's deregistration refused
    // while one is bound, and another session's tries.
    let window_op = |opcode, mw, rkey, length| Request::SemiWindow {
        qp: 3,
        op: flowverbs_wire::control::WindowOp {
            opcode,
            mw,
            lkey: 0,
            addr: BUFFER_ADDR,
            length,
            access: 0x2,
            rkey,
        },
    };
    let windows = [
        (0, Request::AllocPd),
        (
            0,
            Request::CreateCq {
                cqe: 16,
                channel: None,
                cookie: 0x2000,
            },
        ),
        (0, qp(1, 2, 0, RC)),
        (0, modify(3, 1, 0x1 | 0x10 | 0x8 | 0x20)),
        (
            0,
            Request::RegMr {
                pd: 1,
                addr: BUFFER_ADDR,
                iova: 0x1000_0000,
                length: 4096,
                access: 0x1f,
                runs: Vec::new(),
                nic_key: None,
            },
        ),
        (
            0,
            Request::AllocMw {
                pd: 1,
                mw_type: 1,
                nic_rkey: None,
            },
        ),
        (
            0,
            Request::AllocMw {
                pd: 1,
                mw_type: 2,
                nic_rkey: None,
            },
        ),
        (0, window_op(8, 5, 0x01, 64)),
        (0, window_op(8, 6, 0x02, 64)),
        (0, Request::DeregMr { mr: 4 }),
        (0, window_op(7, 0, 0x02, 0)),
        (
            1,
            Request::AllocMw {
                pd: 1,
                mw_type: 2,
                nic_rkey: None,
            },
        ),
        (1, Request::DeallocMw { mw: 6 }),
        (0, Request::SemiInvalidate { qp: 3, rkey: 0x02 }),
        (0, Request::DeallocMw { mw: 5 }),
        (0, Request::DeallocMw { mw: 6 }),
    ];
    for semi in [false, true] {
        write(
            &control,
            &format!("windows_semi{}", u8::from(semi)),
            &control_seed(semi, &windows),
        );
    }
    // ibv_resize_cq: resizes committed with and without a QP on the CQ,
    // one replaced before its commit, another session's tries, and a
    // commit with none under way.
    let resizes = [
        (0, Request::AllocPd),
        (
            0,
            Request::CreateCq {
                cqe: 16,
                channel: None,
                cookie: 0x2000,
            },
        ),
        (0, Request::ResizeCq { cq: 2, cqe: 64 }),
        (0, Request::CommitCqResize { cq: 2 }),
        (0, qp(1, 2, 0, RC)),
        (0, Request::ResizeCq { cq: 2, cqe: 4 }),
        (0, Request::ResizeCq { cq: 2, cqe: 65535 }),
        (1, Request::CommitCqResize { cq: 2 }),
        (0, Request::CommitCqResize { cq: 2 }),
        (0, Request::CommitCqResize { cq: 2 }),
        (1, Request::ResizeCq { cq: 2, cqe: 8 }),
        (0, Request::DestroyQp { qp: 3 }),
        (0, Request::ResizeCq { cq: 2, cqe: 1 }),
        (0, Request::DestroyCq { cq: 2 }),
    ];
    for semi in [false, true] {
        write(
            &control,
            &format!("resizes_semi{}", u8::from(semi)),
            &control_seed(semi, &resizes),
        );
    }
    let srq = [
        (0, Request::AllocPd),
        (
            0,
            Request::CreateCq {
                cqe: 64,
                channel: None,
                cookie: 0x2000,
            },
        ),
        (
            0,
            Request::CreateSrq {
                pd: 1,
                max_wr: 32,
                max_sge: 1,
                srq_limit: 0,
                cookie: 0x3000,
                nic: false,
            },
        ),
        (0, qp(1, 2, 3, RC)),
        (0, qp(1, 2, 0, UD)),
        (
            0,
            Request::ModifySrq {
                srq: 3,
                max_wr: 0,
                srq_limit: 4,
                mask: 2,
            },
        ),
        (1, Request::DestroySrq { srq: 3 }),
        (0, Request::DestroySrq { srq: 3 }),
        (0, Request::DestroyQp { qp: 4 }),
        (0, Request::DestroySrq { srq: 3 }),
    ];
    for semi in [false, true] {
        write(
            &control,
            &format!("srq_ud_semi{}", u8::from(semi)),
            &control_seed(semi, &srq),
        );
    }

    let link = format!("{root}/link_frames");
    let announce = encode_payload(&Announce {
        gids: vec![[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2]],
        nic_gids: vec![(
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2],
            [7; 16],
        )],
        nic_ud_qps: vec![(
            0x11,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2],
        )],
    });
    let hello = encode_payload(&Hello {
        listen: "127.0.0.1:7471".into(),
        boot_id: 42,
        mac: [0; 32],
    });
    for (name, kind, payload) in [
        ("announce", Kind::Announce, announce),
        ("hello", Kind::Hello, hello),
    ] {
        let mut h = FrameHeader::new(kind);
        h.payload_len = (payload.len() as u32).into();
        let mut v = h.encode().to_vec();
        v.extend_from_slice(&payload);
        write(&link, name, &v);
    }

    let text = format!("{root}/kernel_text");
    write(
        &text,
        "fib_trie",
        b"Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n     +-- 198.18.0.0/24 2 0 2\n        |-- 198.18.0.0\n           /24 link UNICAST\n        |-- 198.18.0.7\n           /32 host LOCAL\n",
    );
    write(&text, "gid", b"0000:0000:0000:0000:0000:ffff:c612:0001\n");
    write(
        &text,
        "route",
        b"Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
          eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
          eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    );
    write(&text, "nic_spec", b"rxe0:1");
    write(&text, "bytes", b"64M");

    traffic_seeds(&format!("{root}/traffic"));
    fuse_seeds(&format!("{root}/fuse_requests"));
}

/// Index of `opcode` in `fuse_requests::OPCODES`.
fn op(opcode: u32) -> u8 {
    OPCODES
        .iter()
        .position(|o| *o == opcode)
        .expect("a listed opcode") as u8
}

/// A `fuse_read_in` (also READDIR's): offset and size.
fn read_in(offset: u64, size: u32) -> Vec<u8> {
    let mut v = vec![0u8; 40];
    v[8..16].copy_from_slice(&offset.to_ne_bytes());
    v[16..20].copy_from_slice(&size.to_ne_bytes());
    v
}

/// What the kernel sends when libibverbs reads the device tree (threads
/// of two namespaces) and when it creates a completion channel (the
/// session's own thread, then a foreign one).
fn fuse_seeds(dir: &str) {
    // Node bytes: 0 the root, 1 session 1's file, 4 + i the tree's node i
    // (the order of `SysTree::new`: 2 sysfs, 3 class, 10 infiniband,
    // 11 fv0, 14 ports, 15 "1", 16 gids, 17 "0", 22 ndevs/0, 26 rxe0).
    let (root, session1, tree) = (0u8, 1u8, |i: u8| i + 4);
    let (own, other_ns, foreign) = (0u8, 2u8, 3u8);
    let mut init = Vec::new();
    for w in [7u32, 31, 0x20000, 0] {
        init.extend_from_slice(&w.to_ne_bytes());
    }
    let mut sysfs = shaped(op(FUSE_INIT), root, own, 2, &init);
    for (parent, name) in [
        (root, "sysfs"),
        (tree(2), "class"),
        (tree(3), "infiniband"),
        (tree(10), "fv0"),
        (tree(11), "ports"),
        (tree(14), "1"),
        (tree(15), "gids"),
        (tree(16), "0"),
    ] {
        sysfs.extend(shaped(
            op(FUSE_LOOKUP),
            parent,
            own,
            0,
            format!("{name}\0").as_bytes(),
        ));
    }
    sysfs.extend(shaped(op(FUSE_GETATTR), tree(17), own, 0, &[0; 16]));
    sysfs.extend(shaped(op(FUSE_OPEN), tree(17), own, 0, &[0; 8]));
    sysfs.extend(shaped(op(FUSE_READ), tree(17), own, 0, &read_in(0, 4096)));
    sysfs.extend(shaped(op(FUSE_READ), tree(17), other_ns, 1, &read_in(5, 8)));
    sysfs.extend(shaped(op(FUSE_OPENDIR), tree(15), own, 0, &[0; 8]));
    sysfs.extend(shaped(
        op(FUSE_READDIR),
        tree(15),
        own,
        0,
        &read_in(0, 4096),
    ));
    sysfs.extend(shaped(op(FUSE_READ), tree(22), own, 0, &read_in(0, 4096)));
    sysfs.extend(shaped(op(FUSE_READLINK), tree(26), own, 0, &[]));
    sysfs.extend(shaped(op(FUSE_RELEASE), tree(17), own, 0, &[0; 24]));
    write(dir, "sysfs", &sysfs);

    let mut cmd = Vec::new();
    cmd.extend_from_slice(&17u32.to_ne_bytes());
    cmd.extend_from_slice(&4u16.to_ne_bytes());
    cmd.extend_from_slice(&2u16.to_ne_bytes());
    cmd.extend_from_slice(&0x7fff_0000u64.to_ne_bytes());
    let mut write_in = vec![0u8; 40];
    write_in[0..8].copy_from_slice(&1u64.to_ne_bytes());
    write_in[16..20].copy_from_slice(&(cmd.len() as u32).to_ne_bytes());
    write_in.extend_from_slice(&cmd);
    let mut session = shaped(op(FUSE_LOOKUP), root, own, 0, b"1\0");
    session.extend(shaped(
        op(FUSE_OPEN),
        session1,
        own,
        0,
        &[2, 0, 0, 0, 0, 0, 0, 0],
    ));
    session.extend(shaped(op(FUSE_WRITE), session1, own, 0, &write_in));
    session.extend(shaped(
        op(FUSE_OPEN),
        session1,
        foreign,
        0,
        &[2, 0, 0, 0, 0, 0, 0, 0],
    ));
    session.extend(shaped(op(FUSE_WRITE), session1, other_ns, 1, &write_in));
    session.extend(shaped(op(FUSE_IOCTL), session1, own, 0, &[0; 32]));
    session.extend(shaped(op(FUSE_FLUSH), session1, own, 0, &[0; 24]));
    session.extend(shaped(op(FUSE_DESTROY), root, own, 2, &[]));
    // A raw step: a request shorter than its header.
    session.extend([1, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    write(dir, "session", &session);
}

/// One action of the `traffic` target (see `flowverbs_fuzz::traffic`).
enum Act {
    /// Endpoint, QP index, opcode index, flags, length, key choice.
    Send(u8, u8, u8, u8, u16, u8),
    /// Endpoint, queue (3: the SRQ), length.
    Recv(u8, u8, u16),
    Service(u8),
    /// From host, action (0 deliver, 2 duplicate, 3 reorder, 4 corrupt).
    Deliver(u8, u8),
    Wait(u16),
    LinkDown,
    Poll(u8),
}

fn traffic_seed(two_hosts: bool, acts: &[Act]) -> Vec<u8> {
    let mut v = vec![u8::from(two_hosts)];
    for a in acts {
        match *a {
            Act::Send(e, q, opc, flags, len, keys) => {
                v.extend([0, e, q, opc, flags]);
                v.extend(len.to_le_bytes());
                v.extend([16, 0, 32, 0, keys, 1, 0, 0, 0, 7, 0, 0, 0]);
            }
            Act::Recv(e, which, len) => {
                v.extend([2, e, which]);
                v.extend(len.to_le_bytes());
                v.extend([64, 0, 0]);
            }
            Act::Service(h) => v.extend([3, h]),
            Act::Deliver(from, action) => v.extend([4, from, action, 0x13, 0x02]),
            Act::Wait(ms) => {
                v.push(5);
                v.extend(ms.to_le_bytes());
            }
            Act::LinkDown => v.extend([7, 0]),
            Act::Poll(e) => v.extend([9, e]),
        }
    }
    v
}

fn traffic_seeds(dir: &str) {
    use Act::*;
    // Every opcode on the RC QP (and SEND on UC, UD and the SRQ's QP), with
    // receives posted first; for two hosts each pass is followed by the
    // frames crossing both ways.
    let mut acts = Vec::new();
    for q in 0..4 {
        for _ in 0..4 {
            acts.push(Recv(1, q, 512));
        }
    }
    for opc in 0..7 {
        acts.push(Send(0, 0, opc, 2, if opc >= 5 { 8 } else { 300 }, 0));
    }
    for q in 1..4 {
        acts.push(Send(0, q, 0, 2, 200, 0));
    }
    acts.push(Send(0, 0, 0, 2 | 8, 40, 0)); // inline
    acts.push(Send(0, 0, 2, 2, 64, 1 << 2)); // write to a read-only MR
    acts.push(Send(0, 0, 2, 2, 64, 2 << 2)); // write with the requester's own rkey
    acts.push(Send(0, 0, 0, 2, 64, 2)); // send from the peer's MR
    for round in 0..6 {
        acts.push(Service(round % 2));
        for _ in 0..4 {
            acts.push(Deliver(0, 0));
            acts.push(Deliver(1, 0));
        }
        acts.push(Poll(0));
        acts.push(Poll(1));
    }
    for two in [false, true] {
        write(
            dir,
            &format!("every_opcode_hosts{}", 1 + u8::from(two)),
            &traffic_seed(two, &acts),
        );
    }
    // Two hosts: frames lost, duplicated, reordered and corrupted, time
    // passing (retransmission), then the link lost with requests in flight.
    let mut faults = vec![Recv(1, 0, 4096), Recv(1, 0, 4096), Recv(1, 3, 4096)];
    for opc in [0, 2, 4, 5] {
        faults.push(Send(0, 0, opc, 2, 8, 0));
    }
    faults.push(Service(0));
    for action in [1, 2, 3, 4, 0, 0] {
        faults.push(Deliver(0, action));
    }
    faults.extend([
        Service(1),
        Deliver(1, 2),
        Deliver(1, 0),
        Wait(500),
        Service(0),
    ]);
    faults.extend([Deliver(0, 0), Deliver(0, 0), Service(1), Deliver(1, 0)]);
    faults.extend([Send(0, 0, 0, 2, 100, 0), Service(0), LinkDown, Service(0)]);
    faults.extend([Wait(5000), Service(0), Poll(0), Service(1), Poll(1)]);
    write(dir, "link_faults", &traffic_seed(true, &faults));
}
