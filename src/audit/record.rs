//! The audit record schema. Field names and values are a public interface (auditors
//! write queries against them): add fields, never rename them. docs/audit.md documents
//! each one.
//!
//! Workers build records; the chain fields (`seq`, `prev_sha256`) are not here because
//! only the writer thread knows them (see `chain` and `writer`). Records about the
//! gateway or the trail itself (reload, rotation, recovery, loss) have no session and
//! so no `session_id` or `peer`.

use std::net::SocketAddr;

use serde::{Serialize, Serializer};
use time::OffsetDateTime;

use crate::pki::Identity;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Event {
    /// A session was authorized and its upstream connection is open.
    #[serde(rename = "session.start")]
    SessionStart,
    /// An authorized session ended.
    #[serde(rename = "session.end")]
    SessionEnd,
    /// A connection was refused; `reason` says why.
    #[serde(rename = "session.denied")]
    SessionDenied,
    /// The gateway re-read its configuration (SIGHUP); `outcome` says whether the new
    /// one is in force.
    #[serde(rename = "gateway.reload")]
    GatewayReload,
    /// Written by the audit writer at start when the file ended in bytes that are not a
    /// whole record (the previous writer was killed mid-write); `torn_*` name them.
    #[serde(rename = "audit.recovered")]
    AuditRecovered,
    /// The first record of a new file after rotation; `previous_file` names the old one.
    #[serde(rename = "audit.rotated")]
    AuditRotated,
    /// Records that could not be queued or written were dropped; `lost_records` counts
    /// them since the last such record.
    #[serde(rename = "audit.lost")]
    AuditLost,
}

impl Event {
    /// Every event, in the order docs/audit.md lists them.
    pub const ALL: [Event; 7] = [
        Event::SessionStart,
        Event::SessionEnd,
        Event::SessionDenied,
        Event::GatewayReload,
        Event::AuditRecovered,
        Event::AuditRotated,
        Event::AuditLost,
    ];

    /// The name written to the `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::SessionStart => "session.start",
            Event::SessionEnd => "session.end",
            Event::SessionDenied => "session.denied",
            Event::GatewayReload => "gateway.reload",
            Event::AuditRecovered => "audit.recovered",
            Event::AuditRotated => "audit.rotated",
            Event::AuditLost => "audit.lost",
        }
    }
}

/// The outcome of a `gateway.reload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new configuration loaded and is in force.
    Ok,
    /// The new configuration failed to load; the old one keeps serving.
    Refused,
}

/// Why a connection was refused. Stable codes, one per cause an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// The client sent no certificate.
    NoClientCert,
    /// The client certificate does not chain to the configured client CA.
    UnknownCa,
    /// The client certificate's not-after is in the past.
    CertExpired,
    /// The client certificate's not-before is in the future.
    CertNotYetValid,
    /// The client certificate is malformed, has the wrong key usage, or a bad signature.
    BadCert,
    /// The SNI names no configured service (or no SNI with several services).
    UnknownService,
    /// The identity is not allowed for this service.
    PolicyDenied,
    /// The TLS handshake failed for another reason (garbage, wrong version, no ALPN match).
    HandshakeFailed,
    /// The client did not finish the handshake in time.
    HandshakeTimeout,
    /// PostgreSQL could not be reached in time.
    UpstreamUnavailable,
    /// Too many sessions or handshakes in flight on this worker.
    Overloaded,
    /// The certificate's validity period is longer than `max_cert_lifetime`.
    LifetimeExceedsMax,
    /// The certificate is on the CA's revocation list.
    Revoked,
    /// The audit log cannot be written and `on_audit_failure` is `refuse`: a session
    /// that could not be recorded does not run. This denial itself is recorded only if
    /// the writer recovers before its queue fills.
    AuditUnavailable,
    /// The gateway was stopping and the drain timeout passed while the connection was
    /// still being admitted (mid-handshake, or waiting for PostgreSQL).
    Shutdown,
}

/// Why an authorized session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Both sides finished; the client closed first.
    ClientClosed,
    /// Both sides finished; PostgreSQL closed first.
    UpstreamClosed,
    /// The client sent something TLS rejects, or its connection failed.
    ClientError,
    /// The PostgreSQL connection failed.
    UpstreamError,
    /// The gateway was shutting down and the drain timeout passed.
    Shutdown,
    /// The login certificate expired (plus `cert_expiry_grace`) while the session ran.
    CertExpired,
    /// The login certificate was revoked while the session ran.
    Revoked,
    /// A reloaded policy no longer allows this identity on this service.
    PolicyChanged,
    /// The client re-keyed (TLS 1.3 KeyUpdate) on a session the kernel's TLS carries,
    /// and this kernel cannot take new keys (Linux before 6.14). The session was closed
    /// cleanly with close_notify.
    KeyUpdateUnsupported,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    #[serde(serialize_with = "rfc3339_micros")]
    pub ts: OffsetDateTime,
    pub event: Event,
    /// Present on every `session.*` record; absent on gateway and trail records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_rfc3339"
    )]
    pub cert_not_after: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DenyReason>,
    /// Free text that helps a human (the TLS error, the upstream error); not for queries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_from_client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_to_client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<CloseReason>,
    /// `session.end` only: which pump carried the bytes, `"ktls"` or `"userspace"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pump: Option<&'static str>,
    /// `gateway.reload` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ReloadOutcome>,
    /// `audit.recovered` only: byte offset in the file where the torn bytes begin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn_offset: Option<u64>,
    /// `audit.recovered` only: how many torn bytes (not counting the newline the writer
    /// added after them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn_bytes: Option<u64>,
    /// `audit.recovered` only: SHA-256 of the torn bytes, lower-case hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn_sha256: Option<String>,
    /// `audit.rotated` only: the file name the previous file was renamed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_file: Option<String>,
    /// `audit.lost` only: records dropped since the previous `audit.lost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_records: Option<u64>,
}

impl AuditRecord {
    /// A record of `event` for `session_id`, stamped now; fill in the rest with the
    /// builder methods.
    pub fn new(event: Event, session_id: &str, peer: SocketAddr) -> AuditRecord {
        AuditRecord {
            session_id: Some(session_id.to_string()),
            peer: Some(peer),
            ..AuditRecord::unattached(event)
        }
    }

    /// A `gateway.reload` record, stamped now. `detail` says what changed or why the
    /// new configuration was refused.
    pub fn reload(outcome: ReloadOutcome, detail: impl Into<String>) -> AuditRecord {
        AuditRecord {
            outcome: Some(outcome),
            detail: Some(detail.into()),
            ..AuditRecord::unattached(Event::GatewayReload)
        }
    }

    /// A record that belongs to no session (gateway and trail events), stamped now.
    pub(crate) fn unattached(event: Event) -> AuditRecord {
        AuditRecord {
            ts: OffsetDateTime::now_utc(),
            event,
            session_id: None,
            peer: None,
            service: None,
            user: None,
            groups: None,
            cert_serial: None,
            cert_sha256: None,
            cert_not_after: None,
            reason: None,
            detail: None,
            bytes_from_client: None,
            bytes_to_client: None,
            duration_ms: None,
            close_reason: None,
            pump: None,
            outcome: None,
            torn_offset: None,
            torn_bytes: None,
            torn_sha256: None,
            previous_file: None,
            lost_records: None,
        }
    }

    pub fn identity(mut self, identity: &Identity) -> AuditRecord {
        self.user = Some(identity.user.clone());
        self.groups = Some(identity.groups.clone());
        self.cert_serial = Some(identity.serial_hex.clone());
        self.cert_sha256 = Some(identity.sha256_hex.clone());
        self.cert_not_after = Some(identity.not_after);
        self
    }

    pub fn service(mut self, service: Option<&str>) -> AuditRecord {
        self.service = service.map(str::to_string);
        self
    }

    pub fn reason(mut self, reason: DenyReason, detail: Option<String>) -> AuditRecord {
        self.reason = Some(reason);
        self.detail = detail;
        self
    }
}

const RFC3339_MICROS: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// Formats a time as RFC 3339 in UTC with microseconds, e.g. `2026-12-03T19:25:26.123456Z`.
pub fn format_ts(ts: OffsetDateTime) -> String {
    let utc = ts.to_offset(time::UtcOffset::UTC);
    // Formatting a valid date with a fixed description cannot fail; fall back to the
    // library's own RFC 3339 rendering rather than lose the record.
    utc.format(RFC3339_MICROS)
        .unwrap_or_else(|_| utc.to_string())
}

fn rfc3339_micros<S: Serializer>(ts: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(*ts))
}

fn opt_rfc3339<S: Serializer>(ts: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => rfc3339_micros(ts, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_record_serialises_with_reason_code_and_no_empty_fields() {
        let mut rec = AuditRecord::new(
            Event::SessionDenied,
            "s1",
            "127.0.0.1:5000".parse().unwrap(),
        )
        .reason(DenyReason::NoClientCert, None);
        rec.ts = time::macros::datetime!(2026-12-03 19:25:26.123456 UTC);
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            json,
            r#"{"ts":"2026-12-03T19:25:26.123456Z","event":"session.denied","session_id":"s1","peer":"127.0.0.1:5000","reason":"no_client_cert"}"#
        );
    }

    #[test]
    fn reload_record_has_outcome_and_no_session_fields() {
        let mut rec = AuditRecord::reload(ReloadOutcome::Refused, "gateway.toml: line 3: bad");
        rec.ts = time::macros::datetime!(2026-12-03 19:25:26.5 UTC);
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            json,
            r#"{"ts":"2026-12-03T19:25:26.500000Z","event":"gateway.reload","detail":"gateway.toml: line 3: bad","outcome":"refused"}"#,
            "a reload record must carry no session_id or peer"
        );
    }

    #[test]
    fn event_names_match_their_serialised_form() {
        for event in Event::ALL {
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(
                json,
                format!("\"{}\"", event.as_str()),
                "as_str disagrees with serde"
            );
        }
    }
}
