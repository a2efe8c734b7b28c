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

/// "FVLK": the first four bytes of every frame.
pub const MAGIC: u32 = 0x4b4c_5646;
/// Version of this module's format; peers of another version are refused.
pub const LINK_VERSION: u16 = 2;
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

/// A frame header. Which fields mean something depends on `kind`; unused
/// ones are zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub qp_kind: u8,
    pub payload_len: u32,
    pub psn: u32,
    pub src_gid: [u8; 16],
    pub dst_gid: [u8; 16],
    pub src_qpn: u32,
    pub dst_qpn: u32,
    /// `ibv_wr_opcode` of a request or datagram.
    pub opcode: u32,
    /// Ack: `ibv_wc_status`; Nak: [`NakReason`].
    pub status: u32,
    pub send_flags: u32,
    /// Immediate data, in the byte order the application posted it.
    pub imm: u32,
    /// Offset of this chunk in its message.
    pub offset: u64,
    /// Length of the whole message.
    pub total_len: u64,
    pub remote_addr: u64,
    pub rkey: u32,
    /// Datagram: the Q_Key it was sent with.
    pub qkey: u32,
    pub compare_add: u64,
    pub swap: u64,
    /// Nak(Rnr): the responder's RNR timer in microseconds. Datagram: the
    /// sender's hop limit (bits 0-7) and traffic class (bits 8-15).
    pub aux: u32,
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn gid_at(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().expect("16 bytes")
}

// Field offsets in the encoded header.
const O_MAGIC: usize = 0;
const O_VERSION: usize = 4;
const O_KIND: usize = 6;
const O_QP_KIND: usize = 7;
const O_PAYLOAD_LEN: usize = 8;
const O_PSN: usize = 12;
const O_SRC_GID: usize = 16;
const O_DST_GID: usize = 32;
const O_SRC_QPN: usize = 48;
const O_DST_QPN: usize = 52;
const O_OPCODE: usize = 56;
const O_STATUS: usize = 60;
const O_SEND_FLAGS: usize = 64;
const O_IMM: usize = 68;
const O_OFFSET: usize = 72;
const O_TOTAL_LEN: usize = 80;
const O_REMOTE_ADDR: usize = 88;
const O_RKEY: usize = 96;
const O_QKEY: usize = 100;
const O_COMPARE_ADD: usize = 104;
const O_SWAP: usize = 112;
const O_AUX: usize = 120;
const _: () = assert!(O_AUX + 4 <= HEADER_LEN);

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

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(O_MAGIC, &MAGIC.to_le_bytes());
        put(O_VERSION, &LINK_VERSION.to_le_bytes());
        put(O_KIND, &[self.kind]);
        put(O_QP_KIND, &[self.qp_kind]);
        put(O_PAYLOAD_LEN, &self.payload_len.to_le_bytes());
        put(O_PSN, &self.psn.to_le_bytes());
        put(O_SRC_GID, &self.src_gid);
        put(O_DST_GID, &self.dst_gid);
        put(O_SRC_QPN, &self.src_qpn.to_le_bytes());
        put(O_DST_QPN, &self.dst_qpn.to_le_bytes());
        put(O_OPCODE, &self.opcode.to_le_bytes());
        put(O_STATUS, &self.status.to_le_bytes());
        put(O_SEND_FLAGS, &self.send_flags.to_le_bytes());
        put(O_IMM, &self.imm.to_le_bytes());
        put(O_OFFSET, &self.offset.to_le_bytes());
        put(O_TOTAL_LEN, &self.total_len.to_le_bytes());
        put(O_REMOTE_ADDR, &self.remote_addr.to_le_bytes());
        put(O_RKEY, &self.rkey.to_le_bytes());
        put(O_QKEY, &self.qkey.to_le_bytes());
        put(O_COMPARE_ADD, &self.compare_add.to_le_bytes());
        put(O_SWAP, &self.swap.to_le_bytes());
        put(O_AUX, &self.aux.to_le_bytes());
        b
    }

    /// Decodes and checks the parts every frame must get right; the
    /// meaning of the fields is checked by whoever acts on the frame.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        let magic = u32_at(b, O_MAGIC);
        if magic != MAGIC {
            return Err(FrameError::Magic(magic));
        }
        let version = u16::from_le_bytes([b[O_VERSION], b[O_VERSION + 1]]);
        if version != LINK_VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = b[O_KIND];
        Kind::from_u8(kind).ok_or(FrameError::Kind(kind))?;
        let payload_len = u32_at(b, O_PAYLOAD_LEN);
        if payload_len as usize > MAX_CHUNK {
            return Err(FrameError::TooLong(payload_len));
        }
        Ok(FrameHeader {
            kind,
            qp_kind: b[O_QP_KIND],
            payload_len,
            psn: u32_at(b, O_PSN),
            src_gid: gid_at(b, O_SRC_GID),
            dst_gid: gid_at(b, O_DST_GID),
            src_qpn: u32_at(b, O_SRC_QPN),
            dst_qpn: u32_at(b, O_DST_QPN),
            opcode: u32_at(b, O_OPCODE),
            status: u32_at(b, O_STATUS),
            send_flags: u32_at(b, O_SEND_FLAGS),
            imm: u32_at(b, O_IMM),
            offset: u64_at(b, O_OFFSET),
            total_len: u64_at(b, O_TOTAL_LEN),
            remote_addr: u64_at(b, O_REMOTE_ADDR),
            rkey: u32_at(b, O_RKEY),
            qkey: u32_at(b, O_QKEY),
            compare_add: u64_at(b, O_COMPARE_ADD),
            swap: u64_at(b, O_SWAP),
            aux: u32_at(b, O_AUX),
        })
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
            payload_len: 4096,
            psn: 7,
            src_gid: [1; 16],
            dst_gid: [2; 16],
            src_qpn: 0x123,
            dst_qpn: 0x456,
            opcode: 2,
            status: 0,
            send_flags: 2,
            imm: 0xdead_beef,
            offset: 1 << 33,
            total_len: 1 << 34,
            remote_addr: 0x7fff_0000_1000,
            rkey: 99,
            qkey: 0x1111,
            compare_add: 5,
            swap: 6,
            aux: 640,
        };
        assert_eq!(FrameHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = FrameHeader::new(Kind::Ack).encode();
        let mut b = good;
        b[0] ^= 1;
        assert!(matches!(FrameHeader::decode(&b), Err(FrameError::Magic(_))));
        let mut b = good;
        b[O_VERSION] = 9;
        assert_eq!(FrameHeader::decode(&b), Err(FrameError::Version(9)));
        let mut b = good;
        b[O_KIND] = 0;
        assert_eq!(FrameHeader::decode(&b), Err(FrameError::Kind(0)));
        let mut b = good;
        b[O_PAYLOAD_LEN..O_PAYLOAD_LEN + 4].copy_from_slice(&(MAX_CHUNK as u32 + 1).to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(FrameError::TooLong(_))
        ));
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let a = Announce {
            gids: vec![[3; 16], [4; 16]],
        };
        assert_eq!(decode_payload::<Announce>(&encode_payload(&a)), Some(a));
        assert_eq!(decode_payload::<Hello>(&[0xff; 7]), None);
        // A length prefix far beyond the payload must not allocate it.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0];
        assert_eq!(decode_payload::<Announce>(&huge), None);
    }
}
