//! Moving bytes between the two sockets of a session once it is authorized.
//!
//! `tls_stream` drives a rustls connection over the ring (handshake, last words);
//! `userspace` is the pump that decrypts and encrypts in this thread; `stop` lets the
//! session's owner end it with a reason. The kTLS + splice pump will sit beside
//! `userspace` and be chosen at run time.

pub mod ktls;
mod stop;
mod tls_stream;
mod userspace;

pub use stop::StopSignal;
pub use tls_stream::{HandshakeError, TlsSession};
pub use userspace::{PumpEnd, PumpError, PumpStats, Side, pump};
