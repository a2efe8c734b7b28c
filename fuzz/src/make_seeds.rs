//! Writes the committed seed corpora (fuzz/corpus/TARGET/): request
//! sequences like those the tests' programs make, link frames like the
//! routers', and kernel text like the router reads.
//! `cargo run --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-seeds --bin make_seeds` (plain
//! build, no sanitizer flags needed).

use flowverbs_fuzz::{encode_step, BUFFER_ADDR};
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
    write(&text, "nic_spec", b"rxe0:1");
    write(&text, "bytes", b"64M");

    traffic_seeds(&format!("{root}/traffic"));
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
