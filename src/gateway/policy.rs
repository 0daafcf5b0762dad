//! The access decision: may this certificate identity use this service?
//!
//! Allowed when the certificate's user is in the service's `allow_users` or one of its
//! groups is in `allow_groups`; denied otherwise. There is no default-allow path: an
//! empty rule set denies everyone (and the config loader refuses such a service).

use crate::config::Service;
use crate::pki::Identity;

/// The outcome of [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied; the text is for the audit record's `detail` and the client's error.
    Deny(String),
}

pub fn authorize(identity: &Identity, service: &Service) -> Decision {
    if service.allow_users.contains(&identity.user) {
        return Decision::Allow;
    }
    if identity
        .groups
        .iter()
        .any(|g| service.allow_groups.contains(g))
    {
        return Decision::Allow;
    }
    Decision::Deny(format!(
        "user {:?} (groups: {}) is not allowed to use service {:?}",
        identity.user,
        if identity.groups.is_empty() {
            "none".to_string()
        } else {
            identity.groups.join(", ")
        },
        service.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;

    fn identity(user: &str, groups: &[&str]) -> Identity {
        let now = time::OffsetDateTime::now_utc();
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            subject: format!("CN={user}"),
            serial_hex: "01".into(),
            sha256_hex: "00".into(),
            not_before: now,
            not_after: now,
        }
    }

    fn service() -> Service {
        Service {
            name: "main".into(),
            upstream: Upstream::Tcp("127.0.0.1:5432".parse().unwrap()),
            allow_users: vec!["alice".into()],
            allow_groups: vec!["dba".into()],
        }
    }

    #[test]
    fn listed_user_is_allowed() {
        assert_eq!(
            authorize(&identity("alice", &[]), &service()),
            Decision::Allow
        );
    }

    #[test]
    fn member_of_listed_group_is_allowed() {
        assert_eq!(
            authorize(&identity("carol", &["ops", "dba"]), &service()),
            Decision::Allow
        );
    }

    #[test]
    fn anyone_else_is_denied_with_a_reason_naming_user_and_service() {
        let Decision::Deny(why) = authorize(&identity("bob", &["ops"]), &service()) else {
            panic!("bob is neither listed nor in a listed group");
        };
        assert!(
            why.contains("\"bob\"") && why.contains("\"main\""),
            "got: {why}"
        );
    }

    #[test]
    fn user_name_matching_a_group_name_is_not_a_group_member() {
        // A certificate for user "dba" must not pass as a member of group "dba".
        let d = authorize(&identity("dba", &[]), &service());
        assert!(
            matches!(d, Decision::Deny(_)),
            "user named like a group got in: {d:?}"
        );
    }
}
