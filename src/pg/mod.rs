//! pg (being built).
