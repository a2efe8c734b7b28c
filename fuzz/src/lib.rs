//! What the fuzz targets share: the input format of the `control` target
//! (a sequence of control requests, each from one of two sessions) and the
//! engine it drives.

use flowverbs_router::engine::Engine;
use flowverbs_router::limits::Limits;
use flowverbs_router::objects::{Session, SessionId, Tables};
use flowverbs_router::semi::{KeyTable, TrustGroup};
use flowverbs_wire::control::Request;

pub mod fuse_requests;
pub mod traffic;

/// Where the `control` target maps [`BUFFER_LEN`] bytes of its own memory
/// (the same address in every run, so that seeds can register it).
pub const BUFFER_ADDR: u64 = 0x5e00_0000_0000;
pub const BUFFER_LEN: u64 = 1 << 20;

/// Maps the buffer at [`BUFFER_ADDR`] (once per process).
pub fn map_buffer() {
    static MAPPED: std::sync::Once = std::sync::Once::new();
    MAPPED.call_once(|| {
        // SAFETY: a fresh anonymous mapping at an address nothing else
        // uses (MAP_FIXED_NOREPLACE fails rather than replace a mapping).
        let p = unsafe {
            libc::mmap(
                BUFFER_ADDR as *mut libc::c_void,
                BUFFER_LEN as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, BUFFER_ADDR, "the fuzz buffer could not be mapped");
    });
}

/// The two sessions, of two users, in two network namespaces.
pub const SESSIONS: [(SessionId, u32, u8); 2] = [(1, 1000, 1), (2, 1001, 2)];

/// One step of the `control` input: `[session][length: u16 LE][postcard
/// Request]`. The first byte of the whole input chooses the mode (odd:
/// semi).
pub fn encode_step(session: u8, request: &Request) -> Vec<u8> {
    let body = flowverbs_wire::codec::encode(request);
    let mut v = vec![session];
    v.extend_from_slice(&(body.len() as u16).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

/// Splits an input into (mode is semi, steps); a step whose body does not
/// decode is kept as None (the handler never sees it: the router's socket
/// layer refuses it first).
pub fn steps(data: &[u8]) -> (bool, Vec<(SessionId, Option<Request>)>) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return (false, Vec::new());
    };
    let mut out = Vec::new();
    while rest.len() >= 3 {
        let session = SESSIONS[usize::from(rest[0] & 1)].0;
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let body = &rest[3..];
        let take = len.min(body.len());
        out.push((
            session,
            flowverbs_wire::codec::decode::<Request>(&body[..take]).ok(),
        ));
        rest = &body[take..];
    }
    (mode & 1 == 1, out)
}

/// A fresh engine with the two sessions (their memory is this process's),
/// in semi mode or isolated mode.
pub fn engine(semi: bool) -> Engine {
    let mut eng = bare_engine(semi, 1);
    for (id, uid, net) in SESSIONS {
        add_session(&mut eng, id, uid, net);
    }
    eng.announce_gids();
    eng
}

/// An engine without sessions; `seed` chooses its memory keys.
pub fn bare_engine(semi: bool, seed: u64) -> Engine {
    map_buffer();
    let mut eng = Engine::new(Tables::new(Limits::default()));
    eng.tables.seed_keys(seed);
    if semi {
        eng.key_table = Some(KeyTable::new().expect("a key table"));
    }
    eng
}

/// The GID of the session in network namespace `net`: ::ffff:10.0.0.net.
pub fn session_gid(net: u8) -> [u8; 16] {
    let mut gid = [0u8; 16];
    gid[10] = 0xff;
    gid[11] = 0xff;
    gid[12..].copy_from_slice(&[10, 0, 0, net]);
    gid
}

/// Adds session `id` of user `uid` in network namespace `net` (call
/// `announce_gids` after the last one).
pub fn add_session(eng: &mut Engine, id: SessionId, uid: u32, net: u8) {
    let trust = TrustGroup {
        uid,
        user_ns: 1,
        pid_ns: 1,
        net_ns: u64::from(net),
    };
    let session = Session::of_this_process(session_gid(net), uid, trust);
    eng.tables.sessions.insert(id, session);
}
