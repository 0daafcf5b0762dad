//! tls (being built).
