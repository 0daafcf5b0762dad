//! `pgtunnel bench` and `pgtunnel report`: the load generator that tells capacity
//! planners what a gateway can carry, and the report they hand on.
//!
//! The bench measures four scenarios (`scenario`): full and resumed mTLS handshakes,
//! round trips over long-lived sessions, bulk throughput, and real PostgreSQL queries —
//! each through the tunnel and against a direct baseline in the same run, in
//! interleaved rounds (`load`). Latencies go into HDR histograms (`histogram`,
//! microseconds, 3 significant digits), with closed-loop or open-loop load, the latter
//! corrected for coordinated omission. CPU of the bench itself, of the gateway and
//! agent processes and of the machine is read from /proc (`cpu`), so every figure comes
//! with its cost per operation and a warning when the load generator, not the target,
//! set the limit. Results print as tables (`table`), and are written as JSON
//! (`results`) and HdrHistogram `.hgrm` files (`hgrm`); `report` renders one or more
//! JSON files into a self-contained HTML page.
//!
//! With no target flags the bench starts everything itself on loopback (`selfhost`);
//! otherwise it measures an existing deployment (`targets`). The load generator uses
//! blocking sockets, one thread per connection (`net` says why). This module may use
//! `anyhow`: it is a tool, like the CLI.

pub mod cpu;
pub mod hgrm;
pub mod histogram;
pub mod load;
pub mod machine;
pub mod net;
pub mod pgwire;
pub mod progress;
pub mod report;
pub mod results;
pub mod run;
pub mod scenario;
pub mod selfhost;
pub mod servers;
pub mod settings;
pub mod table;
pub mod targets;
