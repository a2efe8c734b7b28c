//! What a peer router sends on the link, as the router parses it: a frame
//! header, then the payload of a Hello or an Announce. A header that
//! decodes re-encodes to the same bytes' meaning; a payload that decodes
//! re-encodes and decodes to the same value.
#![no_main]

use flowverbs_wire::link::{
    decode_payload, encode_payload, Announce, FrameHeader, Hello, HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let (head, payload) = data.split_at(HEADER_LEN);
    let head: &[u8; HEADER_LEN] = head.try_into().expect("HEADER_LEN bytes");
    if let Ok(h) = FrameHeader::decode(head) {
        let again = FrameHeader::decode(&h.encode()).expect("an encoded header decodes");
        assert_eq!(again.encode(), h.encode());
    }
    if let Some(a) = decode_payload::<Announce>(payload) {
        assert_eq!(decode_payload::<Announce>(&encode_payload(&a)), Some(a));
    }
    if let Some(h) = decode_payload::<Hello>(payload) {
        assert_eq!(decode_payload::<Hello>(&encode_payload(&h)), Some(h));
    }
});
