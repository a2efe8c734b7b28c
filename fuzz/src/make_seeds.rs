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
}
