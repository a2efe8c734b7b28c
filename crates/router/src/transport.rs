//! What the engine needs from whatever carries frames between routers.
//!
//! [`crate::link::Peers`] serves it over TCP. A host RDMA NIC could
//! serve it later without touching the engine: one RC QP per peer router,
//! each frame a SEND (header and payload in one message, or the payload
//! written with RDMA WRITE into a buffer the peer advertised), `has_room`
//! backed by the send queue's depth and the peer's advertised credits. The
//! frames and their meaning (`wire::link`) stay the same.

use std::io;
use std::mem::MaybeUninit;

use flowverbs_wire::link::FrameHeader;

/// A router this one exchanges frames with.
pub type PeerId = usize;

pub type Gid = [u8; 16];

pub trait Transport {
    /// The peer that serves `gid`, if it is known and reachable now.
    fn locate(&self, gid: &Gid) -> Option<PeerId>;
    /// True if `peer` announced `gid`: a router speaks only for its GIDs.
    fn serves(&self, peer: PeerId, gid: &Gid) -> bool;
    /// True while `peer` takes more data without exceeding its budget
    /// (flow control: the engine stops producing data, never replies).
    fn has_room(&self, peer: PeerId) -> bool;
    /// Queues one frame. Frames to a peer that is down are dropped (the
    /// engine hears of the outage separately).
    fn send(&mut self, peer: PeerId, hdr: FrameHeader, payload: &[u8]);
    /// Queues one frame whose `len`-byte payload `fill` writes in place
    /// (every byte, when it returns Ok). If `fill` fails, nothing is queued.
    fn send_with(
        &mut self,
        peer: PeerId,
        hdr: FrameHeader,
        len: usize,
        fill: &mut dyn FnMut(&mut [MaybeUninit<u8>]) -> io::Result<()>,
    ) -> io::Result<()>;
}

/// A transport that keeps frames in memory, for unit tests and fuzz
/// targets: each frame
/// sent waits in `sent`, in order, until the test delivers it, drops it
/// or delivers it out of order.
#[cfg(any(test, feature = "fuzzing"))]
pub mod in_memory {
    use std::collections::{HashMap, HashSet, VecDeque};

    use super::*;

    /// One frame as it was sent.
    #[derive(Clone, Debug)]
    pub struct Frame {
        pub peer: PeerId,
        pub hdr: FrameHeader,
        pub payload: Vec<u8>,
    }

    #[derive(Default)]
    pub struct InMemoryTransport {
        /// Frames sent and not taken yet, oldest first.
        pub sent: VecDeque<Frame>,
        /// Peers without room: nothing but replies is sent to them.
        pub full: HashSet<PeerId>,
        /// The peer that serves each GID.
        pub gids: HashMap<Gid, PeerId>,
    }

    impl InMemoryTransport {
        /// Every frame sent since the last call, oldest first.
        pub fn take(&mut self) -> Vec<Frame> {
            self.sent.drain(..).collect()
        }
    }

    impl Transport for InMemoryTransport {
        fn locate(&self, gid: &Gid) -> Option<PeerId> {
            self.gids.get(gid).copied()
        }

        fn serves(&self, peer: PeerId, gid: &Gid) -> bool {
            self.gids.get(gid) == Some(&peer)
        }

        fn has_room(&self, peer: PeerId) -> bool {
            !self.full.contains(&peer)
        }

        fn send(&mut self, peer: PeerId, mut hdr: FrameHeader, payload: &[u8]) {
            hdr.payload_len = (payload.len() as u32).into();
            self.sent.push_back(Frame {
                peer,
                hdr,
                payload: payload.to_vec(),
            });
        }

        fn send_with(
            &mut self,
            peer: PeerId,
            mut hdr: FrameHeader,
            len: usize,
            fill: &mut dyn FnMut(&mut [MaybeUninit<u8>]) -> io::Result<()>,
        ) -> io::Result<()> {
            let mut payload = Vec::with_capacity(len);
            fill(&mut payload.spare_capacity_mut()[..len])?;
            // SAFETY: `fill` returned Ok, so it initialised these `len`
            // bytes (within the capacity reserved above).
            unsafe { payload.set_len(len) };
            hdr.payload_len = (len as u32).into();
            self.sent.push_back(Frame { peer, hdr, payload });
            Ok(())
        }
    }
}
