//! Command sequences into the rdma_cm connection manager
//! (`rdma_cm::state::Cm`, what the router runs on every write to its
//! `rdma_cm` device), from two writers on three open files, with a fake
//! memory. Beyond "no panic", checked:
//! - a write returns once (done or blocked), a blocked one only for
//!   GET_EVENT, and `pump` answers only requests that were blocked;
//! - responses go only to the response pointer of the command (the fake
//!   memory refuses every other address range: EFAULT);
//! - once every file is released, no id is left (nothing leaks: ports,
//!   children, counters), and a fresh id can be made.
//!
//! Steps may instead be link frames from another router (checked by
//! `rdma_cm::link::decode`, then `Cm::on_link`), or that router's loss;
//! messages for other routers are sent, held for a link, expire or bounce.
#![no_main]

use std::collections::HashSet;

use flowverbs_router::rdma_cm::abi::{u32_at, HDR};
use flowverbs_router::rdma_cm::link;
use flowverbs_router::rdma_cm::state::{Caller, Cm, CmLimits, Memory, Outcome, Route};

/// The GID of the other router's ids.
const REMOTE: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 9];
use libfuzzer_sys::fuzz_target;

/// Writable: [0x1000, 0x3000). Readable: the same.
struct Fake;

impl Memory for Fake {
    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
        let end = addr.checked_add(bytes.len() as u64).ok_or(libc::EFAULT)?;
        if addr < 0x1000 || end > 0x3000 {
            return Err(libc::EFAULT);
        }
        Ok(())
    }
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        let end = addr.checked_add(buf.len() as u64).ok_or(libc::EFAULT)?;
        if addr < 0x1000 || end > 0x3000 {
            return Err(libc::EFAULT);
        }
        buf.fill(1);
        Ok(())
    }
}

fn caller(n: u8) -> Caller {
    Caller {
        tgid: 100 + i32::from(n),
        uid: 1000,
        netns: u64::from(n % 2),
        gid: [
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            10,
            0,
            0,
            n % 2 + 1,
        ],
        local: vec![],
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cm = Cm::new(CmLimits {
        ids_per_user: 16,
        pending_per_user: 4,
        max_backlog: 4,
        files_per_user: 8,
    });
    for f in 1..=3 {
        cm.open(f, 1000).unwrap();
    }
    let mut blocked = HashSet::new();
    let mut unique = 0u64;
    let start = std::time::Instant::now();
    // Each command: [file, writer, nonblock, len] then len bytes (a whole
    // write: header and payload). A file byte with its top bit set makes
    // the bytes a link frame from REMOTE to the writer's GID instead (and
    // with `nonblock`, REMOTE's router is lost after it).
    let mut rest = data;
    while rest.len() >= 4 {
        let (from_link, file, writer, nonblock, len) = (
            rest[0] & 0x80 != 0,
            u64::from(rest[0] % 3 + 1),
            rest[1] % 2,
            rest[2] & 1 == 1,
            rest[3] as usize,
        );
        rest = &rest[4..];
        let n = len.min(rest.len());
        let (write, tail) = rest.split_at(n);
        rest = tail;
        unique += 1;
        if from_link {
            if let Ok(f) = link::decode(write) {
                cm.on_link(REMOTE, caller(writer).gid, f);
            }
            if nonblock {
                cm.peers_lost(&[REMOTE]);
            }
        }
        // Messages for other routers: sent, held for a link being dialled
        // (the clock moves on by a second per command, so some expire), or
        // bounced.
        let now = start + std::time::Duration::from_secs(unique);
        let mut k = unique;
        cm.flush_outgoing(now, &mut |_| {
            k += 1;
            [Route::Sent, Route::Dialing, Route::Nowhere][(k % 3) as usize]
        });
        if from_link {
            continue;
        }
        match cm.command(file, &caller(writer), unique, nonblock, write, &mut Fake) {
            Outcome::Done(_) => {}
            Outcome::Blocked => {
                assert!(!nonblock, "a nonblocking write blocked");
                assert!(
                    write.len() >= HDR && u32_at(write, 0) == 12,
                    "only GET_EVENT may block"
                );
                blocked.insert(unique);
            }
        }
        let answered = cm.pump(&mut |u, addr, bytes| {
            assert!(
                blocked.contains(&u),
                "answered a request that was not waiting"
            );
            Fake.write(addr, bytes)
        });
        for (u, _) in answered {
            blocked.remove(&u);
        }
        cm.take_wakeups();
    }
    for f in 1..=3 {
        for u in cm.release(f) {
            assert!(
                blocked.remove(&u),
                "released a request that was not waiting"
            );
        }
    }
    assert_eq!(cm.id_count(), 0, "ids left after every file was released");
    cm.open(9, 1000).unwrap();
    let mut create = vec![0u8; HDR + 24];
    create[4..6].copy_from_slice(&24u16.to_ne_bytes());
    create[6..8].copy_from_slice(&4u16.to_ne_bytes());
    create[HDR + 8..HDR + 16].copy_from_slice(&0x1000u64.to_ne_bytes());
    create[HDR + 16..HDR + 18].copy_from_slice(&0x0106u16.to_ne_bytes());
    assert_eq!(
        cm.command(9, &caller(0), 0, true, &create, &mut Fake),
        Outcome::Done(Ok(())),
        "no id can be made after everything was released (a counter leaked)"
    );
});
