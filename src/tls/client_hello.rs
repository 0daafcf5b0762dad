//! Reading the SNI out of a raw ClientHello record.
//!
//! rustls' unbuffered server connection does not expose the server name the client
//! asked for, and the gateway routes by it. So the handshake driver hands the first
//! record (which it reads itself, whole) to [`server_name`] before rustls sees it.
//! rustls parses the same bytes and rejects a malformed ClientHello on its own; this
//! parser only has to be safe on hostile input and agree with rustls on well-formed
//! input. A ClientHello split across several records yields `None` (routing then
//! behaves as for a client without SNI); real clients never split one.
//! References: RFC 8446 section 4.1.2 (ClientHello), RFC 6066 section 3 (server_name).

/// Record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The server_name extension, and its host_name entry type.
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// The host name in the SNI extension of the ClientHello in `record` (a whole TLS
/// record: 5-byte header, then the body), lower-cased. `None` if there is none or the
/// bytes are not a ClientHello this parser can read.
pub fn server_name(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != CONTENT_HANDSHAKE {
        return None;
    }
    r.skip(2)?; // legacy record version
    let body = r.vec16()?;

    let mut hs = Reader(body);
    if hs.u8()? != CLIENT_HELLO {
        return None;
    }
    let mut hello = Reader(hs.vec24()?);
    hello.skip(2 + 32)?; // legacy_version, random
    hello.vec8()?; // legacy_session_id
    hello.vec16()?; // cipher_suites
    hello.vec8()?; // legacy_compression_methods
    let mut extensions = Reader(hello.vec16()?);

    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == NAME_TYPE_HOST {
                let name = std::str::from_utf8(name).ok()?;
                return Some(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

/// A cursor over untrusted bytes: every read is bounds-checked and returns `None`
/// instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    fn vec24(&mut self) -> Option<&'a [u8]> {
        let b = self.take(3)?;
        let n = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls, captured by running a client against a buffer.
    fn client_hello(sni: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        // No roots are needed: the hello is captured before any certificate is seen.
        roots.roots.clear();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_service_name_rustls_sent() {
        assert_eq!(server_name(&client_hello("main")).as_deref(), Some("main"));
        assert_eq!(
            server_name(&client_hello("Reporting.DB")).as_deref(),
            Some("reporting.db")
        );
    }

    #[test]
    fn every_truncation_and_garbage_is_none_not_a_panic() {
        let hello = client_hello("main");
        for len in 0..hello.len() {
            assert_eq!(
                server_name(&hello[..len]),
                None,
                "truncated at {len} must give None"
            );
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            server_name(&[22, 3, 1, 0xff, 0xff, 1, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_never_panics() {
        let hello = client_hello("main");
        for i in 0..hello.len() {
            for bit in [0x01u8, 0x80] {
                let mut bent = hello.clone();
                bent[i] ^= bit;
                let _ = server_name(&bent);
            }
        }
    }
}
