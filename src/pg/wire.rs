//! PostgreSQL wire messages (being built).
