//! The name grammar shared by DNS and SNI. For now: what a valid DNS label, instance ID, tag and
//! metadata entry is, so that everything the catalog accepts can later be named in DNS.

use std::collections::BTreeMap;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A name that must be a DNS label is not one.
    #[error(
        "{what} {name:?} is not a valid DNS label (1-63 letters, digits or '-', not starting or ending with '-')"
    )]
    NotALabel {
        /// What the name is (`service name`, `node name`, ...).
        what: &'static str,
        /// The rejected name.
        name: String,
    },
    /// A free-form identifier that is empty, too long, or has forbidden characters.
    #[error("{what} {name:?} is invalid: {reason}")]
    Invalid {
        /// What the identifier is.
        what: &'static str,
        /// The rejected identifier.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

/// Longest instance ID, check ID or tag accepted.
pub const MAX_ID_LEN: usize = 256;
/// Most metadata pairs per instance or node (Consul's limit).
pub const MAX_META_PAIRS: usize = 64;
/// Longest metadata key (Consul's limit).
pub const MAX_META_KEY_LEN: usize = 128;
/// Longest metadata value (Consul's limit).
pub const MAX_META_VALUE_LEN: usize = 512;

/// Whether `s` is a DNS label (RFC 1123 host label): 1-63 of `[A-Za-z0-9-]`, no leading or
/// trailing hyphen.
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Checks that `name` is a DNS label; `what` names it in the error.
pub fn validate_label(what: &'static str, name: &str) -> Result<(), NameError> {
    if is_label(name) {
        Ok(())
    } else {
        Err(NameError::NotALabel {
            what,
            name: name.to_owned(),
        })
    }
}

/// Checks a free-form identifier (instance ID, check ID, tag): non-empty, bounded, printable, and
/// free of `/` so that it can stand in a URL path.
pub fn validate_id(what: &'static str, name: &str) -> Result<(), NameError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_ID_LEN {
        "it is longer than 256 bytes"
    } else if name.chars().any(|c| c.is_control()) {
        "it contains a control character"
    } else if name.contains('/') {
        "it contains '/'"
    } else {
        return Ok(());
    };
    Err(NameError::Invalid {
        what,
        name: name.to_owned(),
        reason,
    })
}

/// Checks metadata as Consul does: at most 64 pairs, keys of `[A-Za-z0-9_-]` up to 128 bytes and
/// not starting with the reserved `consul-`, values up to 512 bytes.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), NameError> {
    let invalid = |name: &str, reason| NameError::Invalid {
        what: "metadata key",
        name: name.to_owned(),
        reason,
    };
    if meta.len() > MAX_META_PAIRS {
        return Err(invalid("", "more than 64 metadata pairs"));
    }
    for (k, v) in meta {
        if k.is_empty() {
            return Err(invalid(k, "it is empty"));
        }
        if k.len() > MAX_META_KEY_LEN {
            return Err(invalid(k, "it is longer than 128 bytes"));
        }
        if !k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(invalid(k, "only letters, digits, '_' and '-' are allowed"));
        }
        if k.starts_with("consul-") {
            return Err(invalid(k, "the 'consul-' prefix is reserved"));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return Err(invalid(k, "its value is longer than 512 bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels() {
        for ok in ["web", "a", "web-1", "W3B", &"a".repeat(63)] {
            assert!(is_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "web.api",
            "web_api",
            "wéb",
            "web api",
            &"a".repeat(64),
        ] {
            assert!(!is_label(bad), "{bad}");
        }
    }

    #[test]
    fn ids() {
        assert!(validate_id("id", "web:1 (blue)").is_ok());
        assert!(validate_id("id", "").is_err());
        assert!(validate_id("id", "a/b").is_err());
        assert!(validate_id("id", "a\nb").is_err());
        assert!(validate_id("id", &"x".repeat(257)).is_err());
    }

    #[test]
    fn meta() {
        let mut m = BTreeMap::new();
        m.insert("version".to_owned(), "1.2".to_owned());
        assert!(validate_meta(&m).is_ok());
        m.insert("consul-x".to_owned(), String::new());
        assert!(validate_meta(&m).is_err());
        let mut m = BTreeMap::new();
        m.insert("bad key".to_owned(), String::new());
        assert!(validate_meta(&m).is_err());
    }

    proptest! {
        #[test]
        fn label_is_lowercase_alnum_hyphen(s in "\\PC{0,70}") {
            let ok = is_label(&s);
            if ok {
                prop_assert!(s.len() <= 63 && !s.starts_with('-') && !s.ends_with('-'));
                prop_assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
            }
            prop_assert_eq!(ok, validate_label("x", &s).is_ok());
        }
    }
}
