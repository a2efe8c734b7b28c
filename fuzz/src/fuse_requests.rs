//! The input format of the `fuse_requests` target: FUSE requests as the
//! kernel hands them to the router's command file system, from threads of
//! session processes, of other processes and of vanished ones.
//!
//! An input is a sequence of steps. A step whose first byte is odd is raw:
//! `[form][length: u16 LE][request bytes]` (header and body, anything). An
//! even one is shaped, so that the fuzzer reaches every answer quickly:
//! `[form][opcode][node][caller][uid][body length][body]`, each byte an
//! index into the tables below.

use flowverbs_router::fuse::{self, Callers, SessionInfo, SysTree, View};
use flowverbs_router::objects::SessionId;

/// Opcodes a shaped step can carry: every one the file system answers,
/// and some it does not know.
pub const OPCODES: [u32; 20] = [
    fuse::FUSE_INIT,
    fuse::FUSE_LOOKUP,
    fuse::FUSE_FORGET,
    fuse::FUSE_GETATTR,
    fuse::FUSE_READLINK,
    fuse::FUSE_OPEN,
    fuse::FUSE_READ,
    fuse::FUSE_WRITE,
    fuse::FUSE_RELEASE,
    fuse::FUSE_FLUSH,
    fuse::FUSE_OPENDIR,
    fuse::FUSE_READDIR,
    fuse::FUSE_RELEASEDIR,
    fuse::FUSE_INTERRUPT,
    fuse::FUSE_DESTROY,
    fuse::FUSE_IOCTL,
    fuse::FUSE_BATCH_FORGET,
    0,
    4,
    u32::MAX,
];

/// Sessions: (id, pid, uid). Session `id`'s file is node `id + 1`.
pub const SESSIONS: [(SessionId, i32, u32); 2] = [(1, 100, 1000), (2, 200, 1001)];

/// Threads that send requests: (tid, its process, its view's last GID
/// byte). Thread 301 is a process with no session; 999 is gone (no
/// process, no view).
pub const THREADS: [(u32, Option<i32>, Option<u8>); 6] = [
    (101, Some(100), Some(1)),
    (102, Some(100), Some(1)),
    (201, Some(200), Some(2)),
    (301, Some(300), Some(3)),
    (999, None, None),
    (0, None, None),
];

/// User ids a shaped request can carry.
pub const UIDS: [u32; 4] = [1000, 1001, 0, 65534];

/// The node a shaped step's node byte names: the root, session files
/// (node 4 has no session), device-tree nodes, and ids past both.
pub fn node(choice: u8) -> u64 {
    match choice {
        0 => fuse::ROOT_ID,
        1..=3 => u64::from(choice) + 1,
        255 => u64::MAX,
        254 => fuse::TREE_BASE - 1,
        c => fuse::TREE_BASE + u64::from(c - 4),
    }
}

/// The view of a reader whose GID ends in `last` (::ffff:10.0.0.last).
pub fn view(last: u8) -> View {
    let mut gid = [0u8; 16];
    gid[10] = 0xff;
    gid[11] = 0xff;
    gid[12..].copy_from_slice(&[10, 0, 0, last]);
    View {
        gid,
        node_guid: 0x0266_76ff_0a00_0000 | u64::from(last),
        netdev: (last != 3).then(|| format!("veth{last}")),
    }
}

/// The device tree the target serves: fv0 and one real device.
pub fn tree() -> SysTree {
    SysTree::new(
        "uverbs_fv0fuzz",
        &[(
            "uverbs3".into(),
            "rxe0".into(),
            "/sys/devices/virtual/infiniband_verbs/uverbs3".into(),
            "/sys/devices/virtual/infiniband/rxe0".into(),
        )],
    )
}

/// The router's answers about the callers above.
pub struct FuzzCallers;

impl Callers for FuzzCallers {
    fn session(&self, id: SessionId) -> Option<SessionInfo> {
        SESSIONS
            .iter()
            .find(|s| s.0 == id)
            .map(|&(_, pid, uid)| SessionInfo { pid, uid })
    }

    fn view(&self, tid: i32) -> Option<View> {
        let tid = u32::try_from(tid).ok()?;
        THREADS.iter().find(|t| t.0 == tid)?.2.map(view)
    }

    fn thread_group(&self, tid: u32) -> Option<i32> {
        THREADS.iter().find(|t| t.0 == tid)?.1
    }
}

/// A request: the 40-byte header and `body`.
pub fn request(opcode: u32, unique: u64, node: u64, uid: u32, tid: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(fuse::IN_HEADER + body.len());
    v.extend_from_slice(&((fuse::IN_HEADER + body.len()) as u32).to_ne_bytes());
    v.extend_from_slice(&opcode.to_ne_bytes());
    v.extend_from_slice(&unique.to_ne_bytes());
    v.extend_from_slice(&node.to_ne_bytes());
    v.extend_from_slice(&uid.to_ne_bytes());
    v.extend_from_slice(&uid.to_ne_bytes()); // gid
    v.extend_from_slice(&tid.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(body);
    v
}

/// One shaped step (see the module's comment); `body` at most 255 bytes.
pub fn shaped(opcode: u8, node: u8, caller: u8, uid: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, opcode, node, caller, uid, body.len() as u8];
    v.extend_from_slice(&body[..body.len().min(255)]);
    v
}

/// The requests of an input, in order.
pub fn requests(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&form, tail)) = rest.split_first() {
        if form & 1 == 1 {
            let [a, b, tail @ ..] = tail else { break };
            let take = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
            out.push(tail[..take].to_vec());
            rest = &tail[take..];
            continue;
        }
        let [op, node_choice, caller, uid, len, tail @ ..] = tail else {
            break;
        };
        let take = usize::from(*len).min(tail.len());
        let thread = THREADS[usize::from(*caller) % THREADS.len()];
        out.push(request(
            OPCODES[usize::from(*op) % OPCODES.len()],
            out.len() as u64,
            node(*node_choice),
            UIDS[usize::from(*uid) % UIDS.len()],
            thread.0,
            &tail[..take],
        ));
        rest = &tail[take..];
    }
    out
}
