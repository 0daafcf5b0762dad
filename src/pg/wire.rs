//! The few PostgreSQL wire messages pgtunnel writes itself: an ErrorResponse to turn a
//! client away with a message psql prints, and the framing of the SSLRequest it answers.
//! Everything else in the stream is PostgreSQL's and passes through untouched.
//! Reference: PostgreSQL documentation, "Message Formats" (protocol 3.0).

/// The 8-byte SSLRequest: length 8, then the code 1234.5679.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A SQLSTATE code and its meaning, for the errors pgtunnel raises itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// 28000 invalid_authorization_specification: certificate or policy refused.
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    /// 08004 sqlserver_rejected_establishment_of_sqlconnection: no such service.
    pub const REJECTED_CONNECTION: SqlState = SqlState("08004");
    /// 57P03 cannot_connect_now: PostgreSQL is unreachable.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// 53300 too_many_connections: the gateway is at its session cap.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
}

/// Builds an ErrorResponse with severity FATAL. Text fields must not contain NUL bytes
/// (the protocol's terminator); any that do are cut at the first NUL.
pub fn fatal_error(code: SqlState, message: &str, hint: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code.0),
        (b'M', message),
    ] {
        push_field(&mut body, tag, value);
    }
    if let Some(hint) = hint {
        push_field(&mut body, b'H', hint);
    }
    body.push(0);

    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.push(b'E');
    // Length counts itself (4 bytes) and the body, not the type byte.
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

fn push_field(out: &mut Vec<u8>, tag: u8, value: &str) {
    out.push(tag);
    let clean = value.split('\0').next().unwrap_or("");
    out.extend_from_slice(clean.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_framed_with_length_and_terminators() {
        let msg = fatal_error(SqlState::INVALID_AUTHORIZATION, "no", None);
        assert_eq!(msg[0], b'E');
        let len = u32::from_be_bytes(msg[1..5].try_into().unwrap()) as usize;
        assert_eq!(
            len,
            msg.len() - 1,
            "length must cover everything after the type byte"
        );
        assert_eq!(&msg[5..], b"SFATAL\0VFATAL\0C28000\0Mno\0\0");
    }

    #[test]
    fn nul_in_message_cannot_break_framing() {
        let msg = fatal_error(SqlState::REJECTED_CONNECTION, "a\0b", Some("h"));
        assert!(
            msg.ends_with(b"Ma\0Hh\0\0"),
            "text after NUL must be dropped: {msg:?}"
        );
    }
}
