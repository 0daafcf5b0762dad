//! The only place with `unsafe`: the io_uring runtime, socket options rustls' kernel
//! hand-off needs, CPU affinity and the few raw syscalls we make. Everything above this
//! module is safe Rust. Linux-only.
#![allow(unsafe_code)]

pub mod affinity;
pub mod fd;
pub mod ktls;
pub mod net;
pub mod uring;
