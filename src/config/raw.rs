//! The configuration file exactly as written: serde structs with no meaning attached yet.
//! Unknown fields are errors, so a typo (`lisen`) is caught instead of silently ignored.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub gateway: RawGateway,
    #[serde(default)]
    pub service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub listen: String,
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub audit_log: String,
    pub workers: Option<usize>,
    pub max_sessions: Option<usize>,
    pub max_handshakes: Option<usize>,
    pub handshake_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub max_cert_lifetime: Option<String>,
    pub crl: Option<String>,
    pub close_on_cert_expiry: Option<bool>,
    pub cert_expiry_grace: Option<String>,
    pub session_tickets: Option<bool>,
    pub ktls: Option<String>,
    pub ticket_key_file: Option<String>,
    pub ticket_rotation: Option<String>,
    pub audit_fsync: Option<String>,
    pub audit_fsync_interval: Option<String>,
    pub on_audit_failure: Option<String>,
    pub audit_max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub upstream: String,
    #[serde(default)]
    pub allow_users: Vec<String>,
    #[serde(default)]
    pub allow_groups: Vec<String>,
}
