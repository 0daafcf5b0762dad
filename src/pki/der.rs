//! The little DER we encode ourselves. rcgen keeps one value per attribute type in a
//! subject name, but a login certificate carries one OU per group. So after rcgen has
//! built and signed a login certificate, we swap its subject for one encoded here and
//! sign the new to-be-signed part again with the same CA key. Everything else (serial,
//! validity, extensions, signature algorithm) stays exactly as rcgen wrote it. Only the
//! handful of shapes a certificate's outer layers use are understood: single-byte tags
//! and definite lengths (DER allows nothing else, X.690 section 10.1).

use rcgen::SigningKey;

use super::PkiError;

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_BIT_STRING: u8 = 0x03;
/// `[0] EXPLICIT Version` at the head of a TBSCertificate (RFC 5280 section 4.1).
const TAG_VERSION: u8 = 0xa0;

/// id-at-commonName, 2.5.4.3, as encoded content octets.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
/// id-at-organizationalUnitName, 2.5.4.11.
const OID_ORG_UNIT: [u8; 3] = [0x55, 0x04, 0x0b];

/// The subject of a login certificate: one RDN per group (OU), then the user (CN), each a
/// UTF8String. In RFC 4514 form, which reverses the order, this reads
/// `CN=alice,OU=analytics,OU=dba` for groups `["dba", "analytics"]`.
pub(crate) fn login_subject(user: &str, groups: &[String]) -> Vec<u8> {
    let mut rdns = Vec::new();
    for group in groups {
        rdns.extend(single_attribute_rdn(&OID_ORG_UNIT, group));
    }
    rdns.extend(single_attribute_rdn(&OID_COMMON_NAME, user));
    tlv(TAG_SEQUENCE, &rdns)
}

/// Returns `cert_der` with its subject replaced by `subject` (a DER Name) and signed again
/// by `issuer_key`, which must be the key that issued it.
pub(crate) fn replace_subject(
    cert_der: &[u8],
    subject: &[u8],
    issuer_key: &impl SigningKey,
) -> Result<Vec<u8>, PkiError> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (cert, _) = read_tlv(cert_der)?;
    let (tbs, rest) = read_tlv(cert.content)?;
    let (signature_algorithm, _) = read_tlv(rest)?;

    // TBSCertificate ::= SEQUENCE { [0] version, serialNumber, signature, issuer,
    // validity, subject, ... }: the subject is the sixth element when the version is
    // present (always, for v3) and the fifth otherwise.
    let mut elements = Vec::new();
    let mut rest = tbs.content;
    while !rest.is_empty() {
        let (element, after) = read_tlv(rest)?;
        elements.push(element);
        rest = after;
    }
    let subject_index = match elements.first() {
        Some(first) if first.tag == TAG_VERSION => 5,
        _ => 4,
    };
    match elements.get(subject_index) {
        Some(old) if old.tag == TAG_SEQUENCE => {}
        _ => {
            return Err(malformed(
                "no subject where the TBSCertificate should have one",
            ));
        }
    }

    let mut tbs_content = Vec::with_capacity(tbs.content.len() + subject.len());
    for (i, element) in elements.iter().enumerate() {
        let bytes = if i == subject_index {
            subject
        } else {
            element.whole
        };
        tbs_content.extend_from_slice(bytes);
    }
    let new_tbs = tlv(TAG_SEQUENCE, &tbs_content);
    let signature = issuer_key.sign(&new_tbs)?;

    // BIT STRING content: the count of unused bits in the last octet (none), then the
    // signature octets.
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(&signature);

    let mut content = new_tbs;
    content.extend_from_slice(signature_algorithm.whole);
    content.extend(tlv(TAG_BIT_STRING, &bits));
    Ok(tlv(TAG_SEQUENCE, &content))
}

/// One DER element: its tag, the whole encoding, and the content octets.
struct Tlv<'a> {
    tag: u8,
    whole: &'a [u8],
    content: &'a [u8],
}

/// Reads the element at the start of `input`; returns it and what follows it.
fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), PkiError> {
    let (&tag, after_tag) = input.split_first().ok_or_else(|| malformed("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(malformed("multi-byte tag where none belongs"));
    }
    let (&first, after_len_byte) = after_tag
        .split_first()
        .ok_or_else(|| malformed("truncated"))?;

    // Short form: the byte is the length. Long form: 0x80 | n, then n length octets;
    // four is plenty for anything we handle, and 0x80 alone is the indefinite length
    // that DER forbids.
    let (len, header_len) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after_len_byte.len() < n {
            return Err(malformed("bad length"));
        }
        let len = after_len_byte[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };

    let end = header_len
        .checked_add(len)
        .filter(|&end| end <= input.len())
        .ok_or_else(|| malformed("length runs past the end"))?;
    let element = Tlv {
        tag,
        whole: &input[..end],
        content: &input[header_len..end],
    };
    Ok((element, &input[end..]))
}

/// Encodes one element with a definite length in the shortest form.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Fits the short form, so the cast keeps every bit.
        out.push(len as u8);
    } else {
        let octets = len.to_be_bytes();
        let skip = octets.iter().take_while(|&&b| b == 0).count();
        let significant = &octets[skip..];
        // At most size_of::<usize>() = 8 octets, so the count fits in the low 7 bits.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// `SET { SEQUENCE { type OID, value UTF8String } }`: a relative distinguished name with a
/// single attribute.
fn single_attribute_rdn(oid: &[u8], value: &str) -> Vec<u8> {
    let mut attribute = tlv(TAG_OID, oid);
    attribute.extend(tlv(TAG_UTF8_STRING, value.as_bytes()));
    tlv(TAG_SET, &tlv(TAG_SEQUENCE, &attribute))
}

fn malformed(what: &str) -> PkiError {
    PkiError::BadCertificate(format!(
        "malformed DER from the certificate builder: {what}"
    ))
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::X509Name;

    use super::*;

    #[test]
    fn lengths_round_trip_in_short_and_long_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 70_000] {
            let content = vec![0x5a; len];
            let encoded = tlv(TAG_SEQUENCE, &content);
            let (element, rest) = read_tlv(&encoded).expect("reading back what we wrote");
            assert_eq!(element.content.len(), len, "content length for {len}");
            assert!(
                rest.is_empty(),
                "nothing should follow the element for {len}"
            );
        }
        assert_eq!(
            tlv(TAG_SET, &[0; 200])[..3],
            [TAG_SET, 0x81, 200],
            "long form for 200"
        );
    }

    #[test]
    fn truncated_or_indefinite_lengths_are_errors_not_panics() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 1, 2],
            &[0x30, 0x80],
            &[0x30, 0x85, 1],
        ] {
            assert!(read_tlv(bad).is_err(), "{bad:02x?} should not parse");
        }
    }

    #[test]
    fn login_subject_lists_groups_as_ous_before_the_cn() {
        let der = login_subject("alice", &["dba".to_owned(), "ops team".to_owned()]);
        let (_, name) = X509Name::from_der(&der).expect("our Name parses");
        let ous: Vec<&str> = name
            .iter_organizational_unit()
            .map(|a| a.as_str().expect("OU is a string"))
            .collect();
        assert_eq!(ous, ["dba", "ops team"], "one OU per group, in order");
        let cns: Vec<&str> = name
            .iter_common_name()
            .map(|a| a.as_str().expect("CN is a string"))
            .collect();
        assert_eq!(cns, ["alice"], "exactly one CN carrying the user");
    }
}
