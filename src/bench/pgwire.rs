//! The smallest PostgreSQL client that can log in the way pgtunnel users do and run a
//! query: SSLRequest, TLS with the login certificate (the server verified for its name,
//! as `sslmode=verify-full`), StartupMessage, certificate authentication, then the
//! simple-query protocol. Reference: PostgreSQL documentation, "Frontend/Backend
//! Protocol", protocol 3.0.
//!
//! Why our own instead of driving pgbench: the pg scenario then shares the rest of the
//! bench — the same load threads, open- and closed-loop pacing, HDR histograms and CPU
//! accounting as every other scenario, interleaved with its direct baseline round by
//! round. pgbench itself is driven by `loadtest/pgbench.sh`.
//!
//! It does not do passwords (SCRAM, MD5), the extended protocol, COPY or cancellation:
//! a server asking for a password is an error that says so. Through the agent the
//! stream is TLS inside the tunnel's TLS, as psql with `sslmode=verify-full` does.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::ClientConnection;
use rustls::{ClientConfig, StreamOwned};
use rustls_pki_types::ServerName;

use super::net::{self, Conn, Connector};
use crate::pg::wire::SSL_REQUEST;

/// Protocol 3.0 in a StartupMessage.
const PROTOCOL_3_0: i32 = 196_608;
/// A backend message longer than this is refused instead of buffered.
const MAX_MESSAGE: usize = 64 << 20;

/// Where and as whom to log in.
#[derive(Clone)]
pub struct PgTarget {
    /// TCP to PostgreSQL itself, or to an agent in front of it.
    pub connector: Connector,
    /// TLS with the login certificate, verifying the server for `server_name`.
    pub tls: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    pub user: String,
    pub database: String,
}

/// A logged-in session, ready for queries.
pub struct PgSession {
    stream: StreamOwned<ClientConnection, Conn>,
    body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the server does not accept TLS (answered {0:?} to the SSLRequest)")]
    NoTls(char),
    #[error(
        "PostgreSQL asked for a password (authentication request {0}); the bench logs in with the certificate only (pg_hba method `cert`)"
    )]
    Password(i32),
    #[error("PostgreSQL: {0}")]
    Server(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl PgSession {
    /// Connects, negotiates TLS, logs in, and waits for ReadyForQuery.
    pub fn open(target: &PgTarget) -> Result<PgSession, PgError> {
        let mut conn = target.connector.connect()?;
        conn.write_all(&SSL_REQUEST)?;
        conn.flush()?;
        let mut answer = [0u8; 1];
        conn.read_exact(&mut answer)?;
        if answer[0] != b'S' {
            return Err(PgError::NoTls(char::from(answer[0])));
        }
        let (stream, _) = net::tls_handshake(target.tls.clone(), target.server_name.clone(), conn)?;
        let mut session = PgSession {
            stream,
            body: Vec::new(),
        };
        session.send(&startup_message(&target.user, &target.database))?;
        session.login()
    }

    /// Runs `sql` with the simple-query protocol; returns the number of rows.
    pub fn simple_query(&mut self, sql: &str) -> Result<u64, PgError> {
        self.send(&query_message(sql))?;
        let mut rows = 0;
        let mut failure = None;
        loop {
            match self.receive()? {
                b'D' => rows += 1,
                b'E' => failure = Some(error_text(&self.body)),
                b'Z' => break,
                // RowDescription, CommandComplete, EmptyQueryResponse, notices, ...
                _ => {}
            }
        }
        match failure {
            Some(text) => Err(PgError::Server(text)),
            None => Ok(rows),
        }
    }

    /// Follows the authentication exchange until ReadyForQuery.
    fn login(mut self) -> Result<PgSession, PgError> {
        loop {
            match self.receive()? {
                b'R' => {
                    let code = read_i32(&self.body, 0)?;
                    if code != 0 {
                        return Err(PgError::Password(code));
                    }
                }
                b'E' => return Err(PgError::Server(error_text(&self.body))),
                b'Z' => return Ok(self),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                _ => {}
            }
        }
    }

    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.stream.write_all(message)?;
        self.stream.flush()
    }

    /// Reads one backend message into `self.body` and returns its type byte.
    fn receive(&mut self) -> Result<u8, PgError> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| (4..=MAX_MESSAGE).contains(&l))
            .ok_or_else(|| PgError::Protocol(format!("message length {len}")))?;
        self.body.resize(len - 4, 0);
        self.stream.read_exact(&mut self.body)?;
        Ok(head[0])
    }
}

/// When a reply that should have been echoed data starts with `E`, the agent or the
/// gateway may have refused the session in PostgreSQL's words (an ErrorResponse). Reads
/// the rest of that message (bounded) and returns its text, or `None` if it is not one.
pub fn refusal(first: u8, rest: &mut impl Read) -> Option<String> {
    if first != b'E' {
        return None;
    }
    let mut len = [0u8; 4];
    rest.read_exact(&mut len).ok()?;
    let len = usize::try_from(i32::from_be_bytes(len)).ok()?;
    if !(5..=64 * 1024).contains(&len) {
        return None;
    }
    let mut body = vec![0u8; len - 4];
    rest.read_exact(&mut body).ok()?;
    Some(error_text(&body))
}

fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (key, value) in [
        ("user", user),
        ("database", database),
        ("application_name", "pgtunnel-bench"),
    ] {
        push_cstr(&mut body, key);
        push_cstr(&mut body, value);
    }
    body.push(0);
    framed(None, &body)
}

fn query_message(sql: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(sql.len() + 1);
    push_cstr(&mut body, sql);
    framed(Some(b'Q'), &body)
}

/// A message: optional type byte, then Int32 length (counting itself), then the body.
fn framed(kind: Option<u8>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.extend(kind);
    // Bodies we build are a query or a few names: far below 2 GiB.
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Appends `s` as a C string; a NUL inside it is cut there, as the protocol cannot
/// carry it.
fn push_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().take_while(|&b| b != 0));
    out.push(0);
}

fn read_i32(body: &[u8], at: usize) -> Result<i32, PgError> {
    body.get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| PgError::Protocol("message too short".into()))
}

/// "SEVERITY CODE: message" from an ErrorResponse body (fields: type byte, C string).
fn error_text(body: &[u8]) -> String {
    let (mut severity, mut code, mut message) = ("ERROR".to_owned(), String::new(), String::new());
    for field in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    format!("{severity} {code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_message_has_protocol_3_and_terminated_parameters() {
        let msg = startup_message("bench", "postgres");
        let len = i32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        assert_eq!(len, msg.len(), "length counts the whole message");
        assert_eq!(&msg[4..8], &PROTOCOL_3_0.to_be_bytes(), "protocol 3.0");
        assert!(
            msg.ends_with(b"application_name\0pgtunnel-bench\0\0"),
            "parameters end with an empty name: {msg:?}"
        );
        assert!(
            msg.windows(11).any(|w| w == b"user\0bench\0"),
            "user parameter"
        );
    }

    #[test]
    fn query_message_is_typed_framed_and_nul_terminated() {
        let msg = query_message("SELECT 1");
        assert_eq!(msg[0], b'Q', "type byte");
        assert_eq!(&msg[1..5], &13i32.to_be_bytes(), "4 + 8 + 1 bytes");
        assert_eq!(&msg[5..], b"SELECT 1\0");
    }

    #[test]
    fn error_text_shows_severity_code_and_message() {
        let body = b"SFATAL\0VFATAL\0C28000\0Mcertificate authentication failed\0\0";
        assert_eq!(
            error_text(body),
            "FATAL 28000: certificate authentication failed"
        );
    }
}
