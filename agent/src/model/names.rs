//! Kubernetes name rules (apimachinery's validation), so that an object the
//! API server would have refused is refused here too, whatever source it
//! came from: a name is part of every diagnostic, metric label and log line.

/// Which rule a name follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label: namespaces. At most 63 of `[a-z0-9-]`, alphanumeric
    /// at both ends.
    Dns1123Label,
    /// RFC 1123 subdomain: EndpointSlices, Nodes. At most 253 characters,
    /// dot-separated RFC 1123 labels.
    Dns1123Subdomain,
    /// RFC 1035 label: Services. An RFC 1123 label starting with a letter.
    Dns1035Label,
    /// IANA service name: named ports. At most 15 of `[a-z0-9-]`, at least
    /// one letter, no hyphen at either end nor two in a row.
    IanaSvcName,
}

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;
const IANA_MAX: usize = 15;

/// Ok, or why `name` breaks `rule` (for a diagnostic).
pub fn check(name: &str, rule: NameRule) -> Result<(), String> {
    let shown = shorten(name);
    let bad = |what: &str| Err(format!("{shown:?} {what}"));
    match rule {
        NameRule::Dns1123Label => {
            if name.len() > LABEL_MAX {
                return bad(&format!("is longer than {LABEL_MAX} characters"));
            }
            if !is_label(name) {
                return bad(
                    "is not a DNS-1123 label (lowercase letters, digits and '-', alphanumeric at both ends)",
                );
            }
        }
        NameRule::Dns1035Label => {
            if name.len() > LABEL_MAX {
                return bad(&format!("is longer than {LABEL_MAX} characters"));
            }
            if !is_label(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                return bad(
                    "is not a DNS-1035 label (a lowercase letter, then lowercase letters, digits and '-', alphanumeric at the end)",
                );
            }
        }
        NameRule::Dns1123Subdomain => {
            if name.len() > SUBDOMAIN_MAX {
                return bad(&format!("is longer than {SUBDOMAIN_MAX} characters"));
            }
            if !name.split('.').all(is_label) {
                return bad("is not a DNS-1123 subdomain (dot-separated lowercase labels)");
            }
        }
        NameRule::IanaSvcName => {
            if name.len() > IANA_MAX {
                return bad(&format!("is longer than {IANA_MAX} characters"));
            }
            let chars_ok = name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !chars_ok
                || !name.bytes().any(|b| b.is_ascii_lowercase())
                || name.starts_with('-')
                || name.ends_with('-')
                || name.contains("--")
            {
                return bad(
                    "is not an IANA service name (lowercase letters, digits and single inner '-', at least one letter)",
                );
            }
        }
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, non-empty.
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= LABEL_MAX
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// A hostile name may be megabytes long: diagnostics quote its start only.
fn shorten(name: &str) -> String {
    const SHOWN: usize = 80;
    if name.len() <= SHOWN {
        return name.to_owned();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &name[..end], name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_as_the_api_server_applies_them() {
        use NameRule::*;
        let ok = [
            ("default", Dns1123Label),
            ("0abc", Dns1123Label),
            ("web-1", Dns1035Label),
            ("web-abc.x-1", Dns1123Subdomain),
            ("http", IanaSvcName),
            ("h2c-1", IanaSvcName),
        ];
        for (name, rule) in ok {
            assert_eq!(check(name, rule), Ok(()), "{name} {rule:?}");
        }
        let long = "a".repeat(64);
        let bad = [
            ("", Dns1123Label),
            ("Web", Dns1123Label),
            ("-a", Dns1123Label),
            ("a-", Dns1123Label),
            (long.as_str(), Dns1123Label),
            ("1web", Dns1035Label),
            ("a..b", Dns1123Subdomain),
            ("a_b", Dns1123Subdomain),
            ("123", IanaSvcName),
            ("a--b", IanaSvcName),
            ("abcdefghijklmnop", IanaSvcName),
            ("HTTP", IanaSvcName),
        ];
        for (name, rule) in bad {
            assert!(check(name, rule).is_err(), "{name:?} {rule:?} should fail");
        }
        let huge = "x".repeat(1 << 20);
        let why = check(&huge, Dns1123Subdomain).unwrap_err();
        assert!(why.len() < 200, "a long name is quoted short: {why}");
    }
}
