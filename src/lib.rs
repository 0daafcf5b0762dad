//! pgtunnel: a zero-trust access gateway for PostgreSQL.
//!
//! The crate is laid out as in `docs/design.md`: `cli` parses the command line and calls
//! one module per subcommand; `config` turns TOML into a validated configuration once;
//! `pki` issues and inspects certificates; `tls` builds rustls configurations; `gateway`
//! and `agent` are the two ends of the tunnel; `audit` owns the audit trail; `pump` moves
//! bytes; `sys` is the only place with `unsafe` (io_uring, socket options, CPU affinity);
//! `bench` measures all of it against a direct baseline (`pgtunnel bench` and `report`).
//! This crate is Linux-only: the data path needs io_uring.

pub mod agent;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod pg;
pub mod pki;
pub mod pump;
pub mod sys;
pub mod tls;
