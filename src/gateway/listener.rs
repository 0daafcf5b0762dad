//! One listening socket per worker, all bound to the same address with SO_REUSEPORT so
//! that the kernel spreads new connections across workers by hash (no accept lock, no
//! thundering herd).

use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::GatewayError;

/// Accept queue length per listener; the kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 1024;

/// Binds `count` listeners on `addr`. With port 0, the first picks a port and the others
/// join it, so all workers serve the same port.
pub fn bind(addr: SocketAddr, count: usize) -> Result<Vec<Socket>, GatewayError> {
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = bind_one(bound).map_err(|source| GatewayError::Bind { addr, source })?;
        if let Some(actual) = listener.local_addr().ok().and_then(|a| a.as_socket()) {
            bound = actual;
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}
