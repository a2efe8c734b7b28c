//! The one encoding of every serialized message (control requests and
//! replies, events, link Hello and Announce payloads): postcard, with
//! trailing bytes rejected. Sequence lengths are checked against the bytes
//! that are there, so a forged length cannot make the reader allocate it.

use serde::{de::DeserializeOwned, Serialize};

/// The bytes of `value`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("our message types always serialize")
}

/// A value decoded from all of `bytes` (bytes left over are an error).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct M {
        a: u32,
        v: Vec<u64>,
    }

    #[test]
    fn round_trip_and_refusals() {
        let m = M {
            a: 7,
            v: vec![1, 2, 3],
        };
        let b = encode(&m);
        assert_eq!(decode::<M>(&b), Ok(m));
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode::<M>(&longer).unwrap_err().contains("trailing"));
        assert!(decode::<M>(&b[..b.len() - 1]).is_err());
        // A sequence claiming 2^28 elements in a few bytes: refused, not
        // allocated.
        let forged = [7u8, 0x80, 0x80, 0x80, 0x80, 0x01, 1];
        assert!(decode::<M>(&forged).is_err());
    }
}
