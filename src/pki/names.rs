//! The rules for the names we put into certificates: PostgreSQL user names (the login
//! certificate's CN), group names (its OUs) and DNS names (a server certificate's SANs).
//! Issuing checks them so a bad name is refused with a clear message instead of making a
//! certificate nobody can use; identity extraction checks the user and groups again so the
//! gateway never acts on a name these rules would not have issued.

use super::PkiError;

/// PostgreSQL keeps at most NAMEDATALEN - 1 = 63 bytes of an identifier (the PostgreSQL
/// documentation, "Identifiers and Key Words"); a longer CN could never match a role.
pub const MAX_USER_LEN: usize = 63;

/// X.520's upper bound for an organizationalUnitName (ub-organizational-unit-name, RFC 5280
/// appendix A.1), counted in characters.
pub const MAX_GROUP_LEN: usize = 64;

/// Checks a PostgreSQL user name for a login certificate's CN.
pub fn validate_user(user: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidName {
        field: "user",
        value: user.to_owned(),
        reason,
    };
    check_text(user).map_err(invalid)?;
    if user.len() > MAX_USER_LEN {
        return Err(invalid(
            "longer than the 63 bytes PostgreSQL keeps of a role name",
        ));
    }
    Ok(())
}

/// Checks a group name for one OU of a login certificate.
pub fn validate_group(group: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidName {
        field: "group",
        value: group.to_owned(),
        reason,
    };
    check_text(group).map_err(invalid)?;
    if group.chars().count() > MAX_GROUP_LEN {
        return Err(invalid(
            "longer than the 64 characters X.520 allows in an OU",
        ));
    }
    Ok(())
}

/// Checks the root's CN: text like a group name, within X.520's 64 characters for a CN
/// (ub-common-name, RFC 5280 appendix A.1).
pub fn validate_ca_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidName {
        field: "CA name",
        value: name.to_owned(),
        reason,
    };
    check_text(name).map_err(invalid)?;
    if name.chars().count() > 64 {
        return Err(invalid(
            "longer than the 64 characters X.520 allows in a CN",
        ));
    }
    Ok(())
}

/// Checks a DNS name for a server certificate's SAN: a host name as RFC 1123 allows, or a
/// wildcard `*.` in front of one.
pub fn validate_dns_name(name: &str) -> Result<(), PkiError> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    match rustls_pki_types::DnsName::try_from(host) {
        Ok(_) => Ok(()),
        Err(_) => Err(PkiError::InvalidName {
            field: "DNS name",
            value: name.to_owned(),
            reason: "not a valid host name (letters, digits, '-' and '.', labels up to 63)",
        }),
    }
}

/// The rules user and group names share.
fn check_text(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if s.trim() != s {
        return Err("must not start or end with white space");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_user_and_group_names_are_accepted() {
        for name in ["alice", "app_reader", "Bob Smith", "müller", "svc-1.prod"] {
            assert!(
                validate_user(name).is_ok(),
                "user {name:?} should be accepted"
            );
            assert!(
                validate_group(name).is_ok(),
                "group {name:?} should be accepted"
            );
        }
    }

    #[test]
    fn empty_control_or_padded_names_are_refused_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("al\nice", "control"),
            ("bob\u{7f}", "control"),
            (" alice", "white space"),
        ];
        for (name, reason) in cases {
            let err = validate_user(name).expect_err("bad user name accepted");
            assert!(
                err.to_string().contains(reason),
                "error for {name:?} should mention {reason:?}: {err}"
            );
            assert!(
                validate_group(name).is_err(),
                "group {name:?} should be refused"
            );
        }
    }

    #[test]
    fn names_too_long_for_postgresql_or_x520_are_refused() {
        assert!(
            validate_user(&"a".repeat(63)).is_ok(),
            "63 bytes is the limit, not over it"
        );
        assert!(
            validate_user(&"a".repeat(64)).is_err(),
            "64 bytes cannot be a role"
        );
        assert!(
            validate_group(&"g".repeat(64)).is_ok(),
            "64 characters fits an OU"
        );
        assert!(
            validate_group(&"g".repeat(65)).is_err(),
            "65 characters overflows an OU"
        );
    }

    #[test]
    fn dns_names_accept_wildcards_and_refuse_junk() {
        for ok in ["db.example.com", "localhost", "*.db.internal"] {
            assert!(validate_dns_name(ok).is_ok(), "{ok:?} should be accepted");
        }
        for bad in ["", "bad name", "a..b", "-x.example", "db.*.example"] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
