//! The connections the load generator opens: plain TCP (to the upstream directly, to an
//! agent, to PostgreSQL) and mTLS (to the gateway or any TLS terminator), over blocking
//! std sockets with TCP_NODELAY.
//!
//! Blocking sockets, one thread per connection, on purpose: a measured operation is then
//! exactly a `send` and a `recv` system call on a thread that does nothing else, with no
//! event loop of ours between the kernel and the clock. It also keeps the bench
//! independent of the io_uring runtime it measures. The cost is a thread per connection,
//! which bounds `--connections` (see `MAX_CONNECTIONS` in `settings`). Every wait is
//! bounded by `IO_TIMEOUT`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::{ClientConnection, ClientSessionMemoryCache, Resumption};
use rustls::{ClientConfig, HandshakeKind, StreamOwned};
use rustls_pki_types::ServerName;

/// Connecting a TCP socket gives up after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Any single read or write gives up after this; nothing in a round should block that
/// long on a healthy target.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach one target.
#[derive(Clone)]
pub enum Connector {
    Tcp(SocketAddr),
    Tls {
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        sni: ServerName<'static>,
    },
}

/// An open connection, plain or TLS.
pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// When the phases of opening a connection finished.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub started: Instant,
    /// TCP connected.
    pub connected: Instant,
    /// TLS handshake complete on our side (same as `connected` for plain TCP).
    pub handshaken: Instant,
    pub kind: Option<HandshakeKind>,
}

impl Connector {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Connector::Tcp(addr) | Connector::Tls { addr, .. } => *addr,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Connector::Tls { .. })
    }

    /// Opens a connection and, for TLS, completes the handshake.
    pub fn connect(&self) -> io::Result<Conn> {
        self.connect_timed().map(|(conn, _)| conn)
    }

    /// Like `connect`, also saying when each phase finished.
    pub fn connect_timed(&self) -> io::Result<(Conn, Opened)> {
        let started = Instant::now();
        let sock = tcp_connect(self.addr())?;
        let connected = Instant::now();
        match self {
            Connector::Tcp(_) => Ok((
                Conn::Tcp(sock),
                Opened {
                    started,
                    connected,
                    handshaken: connected,
                    kind: None,
                },
            )),
            Connector::Tls { config, sni, .. } => {
                let (stream, handshaken) = tls_handshake(config.clone(), sni.clone(), sock)?;
                let kind = stream.conn.handshake_kind();
                let opened = Opened {
                    started,
                    connected,
                    handshaken,
                    kind,
                };
                Ok((Conn::Tls(Box::new(stream)), opened))
            }
        }
    }

    /// The same target with a client that keeps session tickets, so later connections
    /// can resume. `None` for plain TCP.
    pub fn with_resumption(&self) -> Option<Connector> {
        let Connector::Tls { addr, config, sni } = self else {
            return None;
        };
        let mut config = (**config).clone();
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(64)));
        Some(Connector::Tls {
            addr: *addr,
            config: Arc::new(config),
            sni: sni.clone(),
        })
    }

    /// The same target with resumption switched off: every handshake is a full one.
    pub fn without_resumption(&self) -> Connector {
        match self {
            Connector::Tls { addr, config, sni } => {
                let mut config = (**config).clone();
                config.resumption = Resumption::disabled();
                Connector::Tls {
                    addr: *addr,
                    config: Arc::new(config),
                    sni: sni.clone(),
                }
            }
            tcp => tcp.clone(),
        }
    }
}

/// TCP connect with a deadline, TCP_NODELAY and I/O timeouts.
pub fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(sock)
}

/// Runs a client handshake over `io` to the end and writes our last flight, so the
/// server has everything it needs to finish too.
pub fn tls_handshake<T: Read + Write>(
    config: Arc<ClientConfig>,
    sni: ServerName<'static>,
    mut io: T,
) -> io::Result<(StreamOwned<ClientConnection, T>, Instant)> {
    let mut conn = ClientConnection::new(config, sni).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut io)?;
    }
    let done = Instant::now();
    while conn.wants_write() {
        conn.write_tls(&mut io)?;
    }
    Ok((StreamOwned::new(conn, io), done))
}

impl Conn {
    /// Ends our sending direction (TLS: close_notify first), keeping the reading one.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(sock) => sock.shutdown(Shutdown::Write),
            Conn::Tls(stream) => {
                stream.conn.send_close_notify();
                stream.flush()?;
                stream.sock.shutdown(Shutdown::Write)
            }
        }
    }

    /// The negotiated TLS details, for the results ("TLS13_AES_256_GCM_SHA384 /
    /// X25519MLKEM768"), or `None` for plain TCP.
    pub fn tls_description(&self) -> Option<String> {
        let Conn::Tls(stream) = self else {
            return None;
        };
        let suite = stream
            .conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_else(|| "?".to_owned());
        let group = stream
            .conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_else(|| "?".to_owned());
        Some(format!("{suite} / {group}"))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(sock) => sock.read(buf),
            Conn::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(sock) => sock.write(buf),
            Conn::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(sock) => sock.flush(),
            Conn::Tls(stream) => stream.flush(),
        }
    }
}
