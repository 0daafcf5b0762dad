//! The servers the bench runs in its own process: the upstream behind the gateway (echo,
//! sink and source) and the direct TLS terminator that is the handshake baseline.
//!
//! Both are thread-per-connection on blocking sockets, like the load generator (see
//! `net`), with an elastic pool of accepting threads: there is always an idle thread
//! blocked in `accept`, so a new connection never waits for a thread to be created.
//! Their CPU is counted in a `ThreadGroup`, apart from the load generator's.
//!
//! The upstream speaks echo unless a connection opens with one of two 8-byte magics:
//! `UPLOAD_MAGIC` makes it a sink that answers the byte count (big-endian u64) once the
//! client half-closes; `DOWNLOAD_MAGIC` makes it a source that writes until the client
//! goes away. Any other first bytes are echoed, so any echo client works against it.
//! `pgtunnel bench --serve-upstream ADDR` runs it alone, next to a remote gateway.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::cpu::ThreadGroup;

/// First bytes of a connection that wants the sink (bulk upload).
pub const UPLOAD_MAGIC: &[u8; 8] = b"PGTB-UP\n";
/// First bytes of a connection that wants the source (bulk download).
pub const DOWNLOAD_MAGIC: &[u8; 8] = b"PGTB-DN\n";

/// A server connection idle this long is closed (bench sessions idle while the other
/// targets' rounds run, so this is generous).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A source connection stops writing after this even if nobody closes it.
const SOURCE_LIMIT: Duration = Duration::from_secs(900);
/// Idle accepting threads beyond this many end instead of waiting.
const MAX_IDLE_THREADS: usize = 8;
/// Threads per server at most; connections beyond are closed at once.
const MAX_THREADS: usize = 4096;
const THREAD_STACK: usize = 256 * 1024;
const CHUNK: usize = 64 * 1024;

/// What a server does with each accepted connection.
type Handler = dyn Fn(TcpStream) + Send + Sync;

/// A listening server with its pool of threads. Dropping it stops accepting; running
/// connections end when their clients close.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<PoolShared>,
}

struct PoolShared {
    listener: TcpListener,
    handler: Box<Handler>,
    cpu: Arc<ThreadGroup>,
    stop: AtomicBool,
    idle: AtomicUsize,
    threads: AtomicUsize,
}

impl Server {
    /// The echo/sink/source upstream on `addr` (port 0 picks one).
    pub fn upstream(addr: SocketAddr, cpu: Arc<ThreadGroup>) -> io::Result<Server> {
        Server::start(addr, Box::new(serve_upstream), cpu)
    }

    /// A TLS terminator: handshake with `config`, then echo.
    pub fn terminator(
        addr: SocketAddr,
        config: Arc<ServerConfig>,
        cpu: Arc<ThreadGroup>,
    ) -> io::Result<Server> {
        let handler = move |sock: TcpStream| serve_terminator(sock, config.clone());
        Server::start(addr, Box::new(handler), cpu)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn start(addr: SocketAddr, handler: Box<Handler>, cpu: Arc<ThreadGroup>) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(PoolShared {
            listener,
            handler,
            cpu,
            stop: AtomicBool::new(false),
            idle: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
        });
        for _ in 0..2 {
            spawn_acceptor(&shared)?;
        }
        Ok(Server { addr, shared })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake every thread blocked in accept; each sees the flag and ends. Bounded by
        // the number of idle threads, which only falls once the flag is set.
        let idle = self.shared.idle.load(Ordering::SeqCst);
        for _ in 0..idle {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        }
    }
}

fn spawn_acceptor(shared: &Arc<PoolShared>) -> io::Result<()> {
    if shared.threads.fetch_add(1, Ordering::SeqCst) >= MAX_THREADS {
        shared.threads.fetch_sub(1, Ordering::SeqCst);
        return Err(io::Error::other("server thread limit reached"));
    }
    shared.idle.fetch_add(1, Ordering::SeqCst);
    let pool = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("bench-server".into())
        .stack_size(THREAD_STACK)
        .spawn(move || accept_loop(pool));
    if let Err(err) = spawned {
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        shared.threads.fetch_sub(1, Ordering::SeqCst);
        return Err(err);
    }
    Ok(())
}

/// One pool thread: accept, make sure another thread is accepting, serve, repeat.
fn accept_loop(pool: Arc<PoolShared>) {
    let _member = pool.cpu.enter();
    // Whether this thread is currently counted in `idle`.
    let mut counted_idle = true;
    while !pool.stop.load(Ordering::SeqCst) {
        let sock = match pool.listener.accept() {
            Ok((sock, _)) => sock,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if pool.stop.load(Ordering::SeqCst) {
            break;
        }
        counted_idle = false;
        if pool.idle.fetch_sub(1, Ordering::SeqCst) == 1 && spawn_acceptor(&pool).is_err() {
            // No thread to keep accepting with: serving this one is all we can do.
            tracing::warn!("bench server at its thread limit");
        }
        (pool.handler)(sock);
        if pool.idle.load(Ordering::SeqCst) >= MAX_IDLE_THREADS {
            break;
        }
        pool.idle.fetch_add(1, Ordering::SeqCst);
        counted_idle = true;
    }
    pool.threads.fetch_sub(1, Ordering::SeqCst);
    if counted_idle {
        pool.idle.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_upstream(mut sock: TcpStream) {
    if prepare(&sock).is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    // Read until the first bytes can no longer be the start of a magic.
    let mut have = 0;
    loop {
        match sock.read(&mut buf[have..]) {
            Ok(0) | Err(_) => {
                let _ = sock.write_all(&buf[..have]);
                return;
            }
            Ok(n) => have += n,
        }
        let head = &buf[..have.min(8)];
        let could_be_magic = UPLOAD_MAGIC.starts_with(head) || DOWNLOAD_MAGIC.starts_with(head);
        if have >= 8 || !could_be_magic {
            break;
        }
    }
    let _ = if have >= 8 && buf[..8] == UPLOAD_MAGIC[..] {
        sink(&mut sock, &mut buf, have - 8)
    } else if have >= 8 && buf[..8] == DOWNLOAD_MAGIC[..] {
        source(&mut sock, &mut buf)
    } else {
        echo(&mut sock, &mut buf, have)
    };
}

fn prepare(sock: &TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IDLE_TIMEOUT))?;
    sock.set_write_timeout(Some(IDLE_TIMEOUT))
}

/// Echoes `buf[..have]`, then everything else, until end of stream.
fn echo(sock: &mut impl ReadWrite, buf: &mut [u8], have: usize) -> io::Result<()> {
    sock.write_all(&buf[..have])?;
    sock.flush()?;
    loop {
        let n = sock.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        sock.write_all(&buf[..n])?;
        sock.flush()?;
    }
}

/// Counts bytes until the client half-closes, then answers the count.
fn sink(sock: &mut TcpStream, buf: &mut [u8], already: usize) -> io::Result<()> {
    let mut total = already as u64;
    loop {
        let n = sock.read(buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    sock.write_all(&total.to_be_bytes())
}

/// Writes until the client goes away (or `SOURCE_LIMIT` passes).
fn source(sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    buf.fill(b'd');
    let started = Instant::now();
    while started.elapsed() < SOURCE_LIMIT {
        sock.write_all(buf)?;
    }
    Ok(())
}

fn serve_terminator(sock: TcpStream, config: Arc<ServerConfig>) {
    if prepare(&sock).is_err() {
        return;
    }
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, sock);
    let mut buf = vec![0u8; CHUNK];
    // The handshake runs inside the first read; a refused client ends here.
    let _ = echo(&mut tls, &mut buf, 0);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// Read + Write, for `echo` over TCP and TLS alike.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Server {
        Server::upstream("127.0.0.1:0".parse().unwrap(), ThreadGroup::new()).unwrap()
    }

    fn connect(server: &Server) -> TcpStream {
        let sock = TcpStream::connect(server.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock
    }

    #[test]
    fn upstream_echoes_what_it_receives_even_a_single_byte() {
        let server = upstream();
        let mut sock = connect(&server);
        sock.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        sock.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x", "a one-byte message must come back at once");
        sock.write_all(b"hello").unwrap();
        let mut five = [0u8; 5];
        sock.read_exact(&mut five).unwrap();
        assert_eq!(&five, b"hello", "later messages are echoed too");
    }

    #[test]
    fn upstream_sink_answers_the_byte_count_after_half_close() {
        let server = upstream();
        let mut sock = connect(&server);
        sock.write_all(UPLOAD_MAGIC).unwrap();
        sock.write_all(&vec![7u8; 200_000]).unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        sock.read_exact(&mut count).unwrap();
        assert_eq!(
            u64::from_be_bytes(count),
            200_000,
            "sink counted the wrong number"
        );
    }

    #[test]
    fn upstream_source_writes_until_the_client_leaves() {
        let server = upstream();
        let mut sock = connect(&server);
        sock.write_all(DOWNLOAD_MAGIC).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        sock.read_exact(&mut buf).unwrap();
        assert!(
            buf.iter().all(|&b| b == b'd'),
            "source sends its filler byte"
        );
    }

    #[test]
    fn many_connections_at_once_are_all_served() {
        let server = upstream();
        let mut socks: Vec<TcpStream> = (0..40).map(|_| connect(&server)).collect();
        for (i, sock) in socks.iter_mut().enumerate() {
            sock.write_all(&[i as u8 + 1]).unwrap();
        }
        for (i, sock) in socks.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            sock.read_exact(&mut one).unwrap();
            assert_eq!(one[0], i as u8 + 1, "connection {i} got another's byte");
        }
    }
}
