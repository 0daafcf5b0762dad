//! Throwaway PostgreSQL clusters (being built).
