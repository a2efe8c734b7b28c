//! The wire format between routers: frames on a TCP connection.
//!
//! Every frame is a fixed [`HEADER_LEN`]-byte header, explicitly
//! little-endian (routers of different byte orders interoperate), followed
//! by `payload_len` bytes. A router dials each of its peers and sends only
//! on the connection it dialed; it receives on the connection each peer
//! dialed to it. The first frame on a connection is [`Kind::Hello`].
//!
//! Requests carry one chunk (at most [`MAX_CHUNK`] bytes) of one message;
//! a message is identified by its requester QP and a packet sequence number
//! (one PSN per work request). The responder accepts only the PSN it
//! expects, so after a NAK everything the requester had already sent
//! behind the NAKed request is dropped, and the requester resends from it
//! (go-back-N, as an RC responder does on a fabric).
//!
//! Before any frame, the accepting router writes [`CHALLENGE_LEN`] random
//! bytes on the new connection; the dialing router reads them and proves
//! in its Hello ([`Hello::mac`]) that it holds the routers' shared key, if
//! one is configured.
//!
//! Everything decoded here comes from another host and is validated:
//! [`FrameHeader::decode`] rejects a frame it cannot make sense of.

use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "FVLK": the first four bytes of every frame.
pub const MAGIC: u32 = 0x4b4c_5646;
/// Version of this module's format; peers of another version are refused.
pub const LINK_VERSION: u16 = 5;
/// Bytes of the challenge an accepting router sends before anything else.
pub const CHALLENGE_LEN: usize = 32;
/// Bytes of every frame header.
pub const HEADER_LEN: usize = 128;
/// Most payload bytes in one frame (one chunk of a message).
pub const MAX_CHUNK: usize = 256 * 1024;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// First frame on a connection: [`Hello`] as payload.
    Hello = 1,
    /// The full set of GIDs the sender serves: [`Announce`] as payload.
    Announce = 2,
    /// One chunk of an RC/UC request (SEND, WRITE, READ, atomic).
    Request = 3,
    /// The responder executed request `psn`: `status` is an `ibv_wc_status`
    /// (0: success; otherwise the requester's error status). An atomic's
    /// original value travels as an 8-byte payload.
    Ack = 4,
    /// The responder did not execute request `psn`: `status` is a
    /// [`NakReason`]; the requester resends from `psn`.
    Nak = 5,
    /// One chunk of an RDMA READ response, at `offset` of the message.
    ReadData = 6,
    /// One UD datagram (payload: the message, at most the UD MTU).
    Datagram = 7,
    /// One rdma_cm message between two ids (REQ, REP, ...: the router's
    /// `rdma_cm::link` encodes and checks the payload), from the id of
    /// GID `src_gid` to the router serving `dst_gid`.
    Cm = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Announce,
            3 => Kind::Request,
            4 => Kind::Ack,
            5 => Kind::Nak,
            6 => Kind::ReadData,
            7 => Kind::Datagram,
            8 => Kind::Cm,
            _ => return None,
        })
    }
}

/// Why a responder refused a request (the `status` of a [`Kind::Nak`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum NakReason {
    /// Receiver not ready: no receive posted. `aux` holds the responder's
    /// RNR timer in microseconds.
    Rnr = 1,
    /// The responder cannot take it now (completion queue full, reads
    /// still streaming); resend shortly, no retry is counted.
    Busy = 2,
    /// No QP accepts it (destroyed, not connected to the requester, wrong
    /// state): on a fabric the request would go unanswered, so the
    /// requester retries until its ACK timeout expires.
    NoQp = 3,
}

impl NakReason {
    pub fn from_u32(v: u32) -> Option<NakReason> {
        Some(match v {
            1 => NakReason::Rnr,
            2 => NakReason::Busy,
            3 => NakReason::NoQp,
            _ => return None,
        })
    }
}

/// The QP type a request comes from (responders check it matches).
pub const QP_RC: u8 = 1;
pub const QP_UC: u8 = 2;
pub const QP_UD: u8 = 3;

/// Little-endian integer types of the frame header (zerocopy's: a field
/// is read with `.get()` and written with `.into()` or `.set()`).
pub use zerocopy::little_endian::{U16, U32, U64};

/// A frame header, exactly as it travels: `#[repr(C)]` with little-endian
/// fields and no padding, so the bytes on the wire are this struct's bytes
/// and no offset is written anywhere else. Which fields mean something
/// depends on `kind`; unused ones are zero. `Default` (and [`Self::new`])
/// stamp the magic and this router's link version.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct FrameHeader {
    /// [`MAGIC`].
    pub magic: U32,
    /// [`LINK_VERSION`].
    pub version: U16,
    /// [`Kind`].
    pub kind: u8,
    /// [`QP_RC`], [`QP_UC`] or [`QP_UD`].
    pub qp_kind: u8,
    pub payload_len: U32,
    pub psn: U32,
    pub src_gid: [u8; 16],
    pub dst_gid: [u8; 16],
    pub src_qpn: U32,
    pub dst_qpn: U32,
    /// `ibv_wr_opcode` of a request or datagram.
    pub opcode: U32,
    /// Ack: `ibv_wc_status`; Nak: [`NakReason`].
    pub status: U32,
    pub send_flags: U32,
    /// Immediate data, in the byte order the application posted it.
    pub imm: U32,
    /// Offset of this chunk in its message.
    pub offset: U64,
    /// Length of the whole message.
    pub total_len: U64,
    pub remote_addr: U64,
    pub rkey: U32,
    /// Datagram: the Q_Key it was sent with.
    pub qkey: U32,
    pub compare_add: U64,
    pub swap: U64,
    /// Nak(Rnr): the responder's RNR timer in microseconds. Datagram: the
    /// sender's hop limit (bits 0-7) and traffic class (bits 8-15).
    pub aux: U32,
    pub _reserved: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == HEADER_LEN);

impl Default for FrameHeader {
    fn default() -> Self {
        let mut h = FrameHeader::new_zeroed();
        h.magic = MAGIC.into();
        h.version = LINK_VERSION.into();
        h
    }
}

/// Why a received header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic {0:#x} (not a flowverbs router?)")]
    Magic(u32),
    #[error("link version {0}, this router speaks {LINK_VERSION}")]
    Version(u16),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("payload of {0} bytes exceeds {MAX_CHUNK}")]
    TooLong(u32),
}

impl FrameHeader {
    pub fn new(kind: Kind) -> FrameHeader {
        FrameHeader {
            kind: kind as u8,
            ..Default::default()
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::from_u8(self.kind).expect("decoded headers have a known kind")
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(self.as_bytes());
        b
    }

    /// Checks the parts every frame must get right; the meaning of the
    /// fields is checked by whoever acts on the frame.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        let h = FrameHeader::read_from_bytes(b).expect("HEADER_LEN bytes are one header");
        if h.magic.get() != MAGIC {
            return Err(FrameError::Magic(h.magic.get()));
        }
        if h.version.get() != LINK_VERSION {
            return Err(FrameError::Version(h.version.get()));
        }
        Kind::from_u8(h.kind).ok_or(FrameError::Kind(h.kind))?;
        if h.payload_len.get() as usize > MAX_CHUNK {
            return Err(FrameError::TooLong(h.payload_len.get()));
        }
        Ok(h)
    }
}

/// Payload of [`Kind::Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The address the sender listens on: its identity among routers.
    pub listen: String,
    /// Random per router start: a new value means the peer restarted and
    /// everything it served before is gone.
    pub boot_id: u64,
    /// HMAC-SHA256 under the routers' shared key of the accepting router's
    /// challenge, `listen` and `boot_id` (zeros when no key is configured).
    pub mac: [u8; 32],
}

/// Payload of [`Kind::Announce`]: every GID the sender serves now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub gids: Vec<[u8; 16]>,
    /// Semi mode over a NIC: for each GID above that posts to a NIC, the
    /// physical GID of that NIC, where QPs reach it without the link.
    pub nic_gids: Vec<([u8; 16], [u8; 16])>,
    /// Semi mode over a NIC: the sender's UD QPs on its NICs and the GID
    /// each belongs to (a receiver shows it in a datagram's GRH, where the
    /// NIC wrote the physical GID).
    pub nic_ud_qps: Vec<(u32, [u8; 16])>,
}

/// Decodes the payload of a Hello or Announce frame (`wire::codec`).
pub fn decode_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Option<T> {
    super::codec::decode(payload).ok()
}

pub fn encode_payload<T: Serialize>(value: &T) -> Vec<u8> {
    super::codec::encode(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = FrameHeader {
            kind: Kind::Request as u8,
            qp_kind: QP_RC,
            payload_len: 4096.into(),
            psn: 7.into(),
            src_gid: [1; 16],
            dst_gid: [2; 16],
            src_qpn: 0x123.into(),
            dst_qpn: 0x456.into(),
            opcode: 2.into(),
            send_flags: 2.into(),
            imm: 0xdead_beef.into(),
            offset: (1 << 33).into(),
            total_len: (1 << 34).into(),
            remote_addr: 0x7fff_0000_1000.into(),
            rkey: 99.into(),
            qkey: 0x1111.into(),
            compare_add: 5.into(),
            swap: 6.into(),
            aux: 640.into(),
            ..Default::default()
        };
        let bytes = h.encode();
        // Little-endian on every host, at the documented places.
        assert_eq!(&bytes[0..4], b"FVLK");
        assert_eq!(&bytes[12..16], &7u32.to_le_bytes());
        assert_eq!(&bytes[72..80], &(1u64 << 33).to_le_bytes());
        assert_eq!(&bytes[120..124], &640u32.to_le_bytes());
        assert_eq!(FrameHeader::decode(&bytes), Ok(h));
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = FrameHeader::new(Kind::Ack);
        let mut h = good;
        h.magic = (MAGIC ^ 1).into();
        assert!(matches!(
            FrameHeader::decode(&h.encode()),
            Err(FrameError::Magic(_))
        ));
        let mut h = good;
        h.version = 9.into();
        assert_eq!(
            FrameHeader::decode(&h.encode()),
            Err(FrameError::Version(9))
        );
        let mut h = good;
        h.kind = 0;
        assert_eq!(FrameHeader::decode(&h.encode()), Err(FrameError::Kind(0)));
        let mut h = good;
        h.payload_len = (MAX_CHUNK as u32 + 1).into();
        assert!(matches!(
            FrameHeader::decode(&h.encode()),
            Err(FrameError::TooLong(_))
        ));
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let a = Announce {
            gids: vec![[3; 16], [4; 16]],
            nic_gids: vec![([3; 16], [5; 16])],
            nic_ud_qps: vec![(0x11, [3; 16])],
        };
        assert_eq!(decode_payload::<Announce>(&encode_payload(&a)), Some(a));
        assert_eq!(decode_payload::<Hello>(&[0xff; 7]), None);
        // A length prefix far beyond the payload must not allocate it.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0];
        assert_eq!(decode_payload::<Announce>(&huge), None);
    }
}
