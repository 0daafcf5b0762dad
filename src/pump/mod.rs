//! pump (being built).
