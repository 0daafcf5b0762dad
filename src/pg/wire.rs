//! The few PostgreSQL wire messages pgtunnel writes itself: an ErrorResponse to turn a
//! client away with a message psql prints, and the framing of the SSLRequest it answers;
//! and the one it reads, the gateway's ErrorResponse, which the agent logs.
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

/// The fields of an ErrorResponse that a person needs to read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// `S`: ERROR, FATAL, PANIC (localized by the server).
    pub severity: String,
    /// `C`: the SQLSTATE code.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
    /// `H`: the hint, if any.
    pub hint: Option<String>,
}

/// Reads the ErrorResponse at the start of `bytes`, if that is what they hold: `E`, a
/// length that fits, and NUL-terminated fields. Anything else (another message, a
/// message cut short, a malformed one) gives `None`; text that is not UTF-8 is read
/// lossily. Meant for bytes a peer sent, so it never panics and never allocates more
/// than `bytes` holds.
pub fn parse_error_response(bytes: &[u8]) -> Option<ErrorFields> {
    let (&kind, rest) = bytes.split_first()?;
    if kind != b'E' {
        return None;
    }
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let body = rest.get(4..len)?;
    let mut fields = ErrorFields::default();
    let mut pos = 0;
    loop {
        let &tag = body.get(pos)?;
        if tag == 0 {
            return Some(fields);
        }
        let text = &body[pos + 1..];
        let end = text.iter().position(|&b| b == 0)?;
        let value = String::from_utf8_lossy(&text[..end]).into_owned();
        match tag {
            b'S' => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            b'H' => fields.hint = Some(value),
            _ => {}
        }
        pos += 1 + end + 1;
    }
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
    fn error_response_we_write_reads_back() {
        let msg = fatal_error(SqlState::INVALID_AUTHORIZATION, "no entry", Some("ask"));
        let fields = parse_error_response(&msg).expect("an ErrorResponse");
        assert_eq!(
            fields,
            ErrorFields {
                severity: "FATAL".into(),
                code: "28000".into(),
                message: "no entry".into(),
                hint: Some("ask".into()),
            }
        );
        // Bytes after the message (a close_notify's worth, say) are not its business.
        let mut longer = msg.clone();
        longer.extend_from_slice(b"S");
        assert_eq!(parse_error_response(&longer), Some(fields));
    }

    #[test]
    fn anything_but_a_whole_error_response_reads_as_none() {
        let msg = fatal_error(SqlState::REJECTED_CONNECTION, "gone", None);
        for cut in 0..msg.len() {
            assert_eq!(parse_error_response(&msg[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            parse_error_response(b"S"),
            None,
            "PostgreSQL's yes to SSLRequest"
        );
        assert_eq!(
            parse_error_response(b"N"),
            None,
            "PostgreSQL's no to SSLRequest"
        );
        // A length shorter than its own four bytes, and fields without a terminator.
        assert_eq!(parse_error_response(b"E\0\0\0\x02MM"), None);
        assert_eq!(parse_error_response(b"E\0\0\0\x08Mabc"), None);
        assert_eq!(parse_error_response(b"E\xff\xff\xff\xffM\0\0"), None);
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
