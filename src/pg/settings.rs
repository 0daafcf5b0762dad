//! postgresql.conf and pg_hba.conf lines for certificate login (being built).
