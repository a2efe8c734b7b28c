//! What the router writes to file descriptors that libibverbs reads itself,
//! and the command libibverbs writes to `cmd_fd`:
//!
//! - the `CREATE_COMP_CHANNEL` command (the only one flowverbs serves on
//!   `cmd_fd`, see `router::fuse`);
//! - completion events: 8 bytes, the `struct ibv_cq *` the provider gave
//!   as the CQ's cookie (`ibv_get_cq_event` reads them from the channel fd);
//! - asynchronous events: 16 bytes `{u64 element, u32 event_type, u32
//!   reserved}` (`ibv_get_async_event` reads them from `async_fd`).
//!
//! These layouts are the kernel's uverbs ABI, which stock libibverbs
//! expects; they do not change with [`super::VERSION`].

/// `IB_USER_VERBS_CMD_CREATE_COMP_CHANNEL`.
pub const CMD_CREATE_COMP_CHANNEL: u32 = 17;

/// Size of the write libibverbs makes for `CREATE_COMP_CHANNEL`:
/// `{u32 command, u16 in_words, u16 out_words, u64 response}`.
pub const CREATE_COMP_CHANNEL_LEN: usize = 16;

/// A parsed `CREATE_COMP_CHANNEL` command: where the caller wants the new
/// fd (the first `u32` of the response buffer, in the caller's memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateCompChannel {
    pub response: u64,
}

impl CreateCompChannel {
    /// Parses a write to `cmd_fd`; None for anything but a well-formed
    /// `CREATE_COMP_CHANNEL` (4 input words, at least 1 output word).
    pub fn parse(bytes: &[u8]) -> Option<CreateCompChannel> {
        if bytes.len() != CREATE_COMP_CHANNEL_LEN {
            return None;
        }
        let command = u32::from_ne_bytes(bytes[0..4].try_into().ok()?);
        let in_words = u16::from_ne_bytes(bytes[4..6].try_into().ok()?);
        let out_words = u16::from_ne_bytes(bytes[6..8].try_into().ok()?);
        let response = u64::from_ne_bytes(bytes[8..16].try_into().ok()?);
        (command == CMD_CREATE_COMP_CHANNEL
            && usize::from(in_words) * 4 == CREATE_COMP_CHANNEL_LEN
            && out_words >= 1
            && response != 0)
            .then_some(CreateCompChannel { response })
    }
}

/// One record for a completion channel: the CQ's cookie.
pub fn cq_event_record(cookie: u64) -> [u8; 8] {
    cookie.to_ne_bytes()
}

/// Size of one asynchronous event record.
pub const ASYNC_EVENT_LEN: usize = 16;

/// One record for `async_fd`. `element` is the object's cookie (the
/// `ibv_qp *`, `ibv_cq *` or `ibv_srq *`), the port number for port events,
/// 0 for device events.
pub fn async_event_record(element: u64, event_type: u32) -> [u8; ASYNC_EVENT_LEN] {
    let mut r = [0u8; ASYNC_EVENT_LEN];
    r[0..8].copy_from_slice(&element.to_ne_bytes());
    r[8..12].copy_from_slice(&event_type.to_ne_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(command: u32, in_words: u16, out_words: u16, response: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&command.to_ne_bytes());
        v.extend_from_slice(&in_words.to_ne_bytes());
        v.extend_from_slice(&out_words.to_ne_bytes());
        v.extend_from_slice(&response.to_ne_bytes());
        v
    }

    #[test]
    fn parses_only_create_comp_channel() {
        assert_eq!(
            CreateCompChannel::parse(&cmd(17, 4, 1, 0x7fff_0000)),
            Some(CreateCompChannel {
                response: 0x7fff_0000
            })
        );
        assert_eq!(CreateCompChannel::parse(&cmd(3, 4, 1, 0x1000)), None);
        assert_eq!(CreateCompChannel::parse(&cmd(17, 5, 1, 0x1000)), None);
        assert_eq!(CreateCompChannel::parse(&cmd(17, 4, 0, 0x1000)), None);
        assert_eq!(CreateCompChannel::parse(&cmd(17, 4, 1, 0)), None);
        assert_eq!(CreateCompChannel::parse(&cmd(17, 4, 1, 8)[..12]), None);
    }

    #[test]
    fn async_record_layout() {
        let r = async_event_record(0x1122_3344_5566_7788, 9);
        assert_eq!(
            u64::from_ne_bytes(r[0..8].try_into().unwrap()),
            0x1122_3344_5566_7788
        );
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 9);
        assert_eq!(&r[12..], &[0; 4]);
    }
}
