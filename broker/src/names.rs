//! Validated resource names. Names become directory names on disk, so the
//! allowed characters are deliberately narrow.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {reason}")]
pub struct InvalidName {
    pub kind: &'static str,
    pub name: String,
    pub reason: &'static str,
}

/// A tenant name: a DNS label (1-63 of `a-z`, `0-9`, `-`; alphanumeric at
/// both ends), so it can come from a Kubernetes resource name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(String);

pub const DEFAULT_TENANT: &str = "default";

impl TenantName {
    pub fn parse(name: &str) -> Result<TenantName, InvalidName> {
        let err = |reason| InvalidName { kind: "tenant", name: name.to_owned(), reason };
        if name.is_empty() || name.len() > 63 {
            return Err(err("must be 1 to 63 characters"));
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(err("only lowercase letters, digits and '-' are allowed"));
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(err("must start and end with a letter or digit"));
        }
        Ok(TenantName(name.to_owned()))
    }

    /// The tenant a request means: empty is the default tenant.
    pub fn resolve(name: &str) -> Result<TenantName, InvalidName> {
        if name.is_empty() { Ok(TenantName(DEFAULT_TENANT.to_owned())) } else { TenantName::parse(name) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic (or, later, queue) name: 1-249 of `A-Z a-z 0-9 . _ -`, not `.`
/// or `..` (Kafka's rule, so names carry over).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    pub fn parse(name: &str) -> Result<TopicName, InvalidName> {
        let err = |reason| InvalidName { kind: "topic", name: name.to_owned(), reason };
        if name.is_empty() || name.len() > 249 {
            return Err(err("must be 1 to 249 characters"));
        }
        if name == "." || name == ".." {
            return Err(err("'.' and '..' are reserved"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(err("only letters, digits, '.', '_' and '-' are allowed"));
        }
        Ok(TopicName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A consumer group name: the same rule as topic names.
pub fn parse_group_name(name: &str) -> Result<String, InvalidName> {
    TopicName::parse(name).map(|t| t.0).map_err(|e| InvalidName { kind: "group", ..e })
}

/// A queue name: the same rule as topic names.
pub fn parse_queue_name(name: &str) -> Result<String, InvalidName> {
    TopicName::parse(name).map(|t| t.0).map_err(|e| InvalidName { kind: "queue", ..e })
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for ok in ["default", "a", "team-1", &"a".repeat(63)] {
            TenantName::parse(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(TenantName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TenantName::resolve("").unwrap().as_str(), "default");
    }

    #[test]
    fn topic_names() {
        for ok in ["orders", "Orders.v2", "a_b-c", "...", &"x".repeat(249)] {
            TopicName::parse(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", "a\0", &"x".repeat(250)] {
            assert!(TopicName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
