//! FUSE requests into the router's command file system (`fuse::answer`,
//! the code the router runs on every request read from `/dev/fuse`).
//! Beyond "no panic", checked for every request:
//! - a reply answers the request it was asked (its `unique`), with an
//!   errno the kernel understands and no body with an error;
//! - a session's file is opened, and a completion channel asked for, only
//!   by a thread of that session's process, as its user or root;
//! - a read of the device tree returns the reader's own view (the bytes of
//!   that file as its namespace sees them), never another namespace's, and
//!   nothing to a vanished thread;
//! - no reply is longer than what was asked for.
#![no_main]

use flowverbs_fuzz::fuse_requests::{requests, tree, FuzzCallers, SESSIONS};
use flowverbs_router::fuse::{self, answer, Answer, Call, Callers, TREE_BASE};
use libfuzzer_sys::fuzz_target;

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The caller of `req` is a thread of `session`'s process, as its user or
/// root.
fn is_owner(req: &[u8], session: u64) -> bool {
    let (Some(uid), Some(tid)) = (u32_at(req, 24), u32_at(req, 32)) else {
        return false;
    };
    SESSIONS.iter().any(|&(id, pid, owner)| {
        id == session
            && tid != 0
            && FuzzCallers.thread_group(tid) == Some(pid)
            && (uid == owner || uid == 0)
    })
}

fuzz_target!(|data: &[u8]| {
    let tree = tree();
    for req in requests(data) {
        let got = answer(&tree, &req, &FuzzCallers);
        if req.len() < fuse::IN_HEADER {
            assert_eq!(got, Answer::Nothing, "a request without a header answered");
            continue;
        }
        let opcode = u32_at(&req, 4).unwrap();
        let unique = u64_at(&req, 8).unwrap();
        let node = u64_at(&req, 16).unwrap();
        let tid = u32_at(&req, 32).unwrap();
        match got {
            Answer::Nothing => assert!(
                matches!(
                    opcode,
                    fuse::FUSE_FORGET | fuse::FUSE_BATCH_FORGET | fuse::FUSE_INTERRUPT
                ),
                "opcode {opcode} left unanswered: its caller would wait forever"
            ),
            Answer::Call(Call::CreateChannel {
                unique: u,
                session,
                response,
            }) => {
                assert_eq!(u, unique);
                assert_eq!(opcode, fuse::FUSE_WRITE);
                assert_eq!(node, session + 1, "a channel for another node's session");
                assert!(response != 0);
                assert!(
                    is_owner(&req, session),
                    "thread {tid} asked session {session} for a channel"
                );
            }
            Answer::Reply {
                unique: u,
                errno,
                body,
            } => {
                assert_eq!(u, unique);
                assert!((0..4096).contains(&errno), "errno {errno}");
                assert!(errno == 0 || body.is_empty(), "a body with errno {errno}");
                if errno != 0 {
                    continue;
                }
                let size = u32_at(&req, fuse::IN_HEADER + 16).unwrap_or(0) as usize;
                match opcode {
                    fuse::FUSE_OPEN if node < TREE_BASE && node != fuse::ROOT_ID => {
                        assert!(
                            is_owner(&req, node - 1),
                            "thread {tid} opened session file {node}"
                        );
                    }
                    fuse::FUSE_READ => {
                        assert!(node >= TREE_BASE, "a session file read");
                        assert!(body.len() <= size);
                        let view = i32::try_from(tid)
                            .ok()
                            .and_then(|t| FuzzCallers.view(t))
                            .expect("a read answered for a thread with no view");
                        let file = tree.file(node, &view).expect("a read of a file");
                        let offset = u64_at(&req, fuse::IN_HEADER + 8).unwrap();
                        let start = usize::try_from(offset).unwrap_or(usize::MAX);
                        assert_eq!(
                            Some(&body[..]),
                            file.get(start.min(file.len())..start.min(file.len()) + body.len()),
                            "thread {tid} read bytes that are not its view's"
                        );
                    }
                    fuse::FUSE_READDIR => assert!(body.len() <= size),
                    _ => assert!(body.len() <= 4096, "a {}-byte reply", body.len()),
                }
            }
        }
    }
});
