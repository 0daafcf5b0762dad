//! Moving bytes between the two sockets of a session once it is authorized.
//!
//! `userspace` is the pump that protects TLS records in this thread with our record
//! layer (`tls::record`), on buffers from the per-thread `pool`; `stop` lets the
//! session's owner end it with a reason. `ktls` is the kernel TLS + splice pump beside
//! it, chosen at run time where the kernel can (`sys::ktls::probe`).

pub mod ktls;
pub mod pool;
mod stop;
mod userspace;

pub use stop::StopSignal;
pub use userspace::{PumpEnd, PumpError, PumpStats, Side, pump, pump_watching};

use std::os::fd::AsRawFd;

use rustls::kernel::KernelConnection;

use crate::sys::uring::{self, Socket};
use crate::tls::record::{HEADER_LEN, MAX_PLAINTEXT, RECORD_OVERHEAD, RecordLayer, TicketSink};

/// Last words on a TLS connection before closing it: `message` (a PostgreSQL
/// ErrorResponse, say) as application data, then close_notify, then a write shutdown.
pub async fn farewell<D>(
    sock: &Socket,
    records: &mut RecordLayer<D>,
    message: &[u8],
) -> std::io::Result<()>
where
    KernelConnection<D>: TicketSink,
{
    let message = &message[..message.len().min(MAX_PLAINTEXT)];
    let mut out = vec![0u8; message.len() + 2 * RECORD_OVERHEAD + 2];
    out[HEADER_LEN..HEADER_LEN + message.len()].copy_from_slice(message);
    let data = records.seal_data(&mut out, message.len());
    let alert = records.seal_alert(&mut out[data..], 0);
    let len = data + alert;
    let (res, _) = uring::send_all(sock.as_raw_fd(), out, 0..len).await;
    res?;
    let _ = socket2::SockRef::from(sock.as_fd()).shutdown(std::net::Shutdown::Write);
    Ok(())
}
