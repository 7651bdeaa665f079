//! Credentials (DESIGN §4.5): bearer tokens — their format, generation and
//! hashing — and the in-memory index that maps a presented token or client
//! certificate name to an [`Identity`].
//!
//! Tokens are `strata_` + 32 random bytes in unpadded base64url (43
//! characters). Only their SHA-256 lives anywhere (the catalog; plain
//! SHA-256 suffices for 256 bits of entropy: no dictionary to attack). The
//! principals and token hashes are catalog state (replicated in cluster
//! mode); [`Credentials`] is rebuilt from the catalog whenever they change,
//! so a check is one hash and one map lookup under a read lock.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::acl::{AclOperation, Grants, ResourceKind};
use crate::catalog::Catalog;
use crate::locks::{read_lock, write_lock};

/// Every token starts with this.
pub(crate) const TOKEN_PREFIX: &str = "strata_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Characters of base64url for [`TOKEN_BYTES`] without padding.
const TOKEN_CHARS: usize = 43;
#[cfg(test)]
use crate::catalog::TOKEN_ID_CHARS;
pub(crate) use crate::catalog::TokenHash;

/// Why a presented token was refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("a token starts with {TOKEN_PREFIX:?}")]
    Prefix,
    #[error("a token has {TOKEN_CHARS} characters after {TOKEN_PREFIX:?}, this one {0}")]
    Length(usize),
    #[error("a token is base64url after {TOKEN_PREFIX:?}")]
    Encoding,
}

/// A syntactically valid token (not yet known to be issued).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.id())
    }
}

impl Token {
    /// Checks the shape of a presented token: prefix, length, alphabet and
    /// that the characters decode to exactly 32 bytes (canonical form).
    pub(crate) fn parse(s: &str) -> Result<Token, TokenError> {
        let body = s.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Prefix)?;
        if body.len() != TOKEN_CHARS {
            return Err(TokenError::Length(body.len()));
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Encoding)?;
        // The last character carries 4 spare bits: only the canonical
        // encoding is accepted, so one token has exactly one spelling.
        if bytes.len() != TOKEN_BYTES || URL_SAFE_NO_PAD.encode(&bytes) != body {
            return Err(TokenError::Encoding);
        }
        Ok(Token(s.to_owned()))
    }

    /// A new random token from the operating system's generator.
    pub(crate) fn generate() -> Result<Token, std::io::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        Ok(Token(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The token's public id: the start of its hash, in hex.
    pub(crate) fn id(&self) -> String {
        self.hash().id()
    }
}

/// Checks a principal name: 1-253 of `A-Z a-z 0-9 . _ @ -` (what a
/// certificate CN or DNS name, or a Kubernetes name, usually holds).
pub(crate) fn check_principal_name(name: &str) -> Result<(), crate::names::InvalidName> {
    let err = |reason| crate::names::InvalidName { kind: "principal", name: name.to_owned(), reason };
    if name.is_empty() || name.len() > 253 {
        return Err(err("must be 1 to 253 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-')) {
        return Err(err("only letters, digits, '.', '_', '@' and '-' are allowed"));
    }
    Ok(())
}

/// Who a credential names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// The holder of the admin token: every tenant, every operation.
    ClusterAdmin,
    /// A principal of one tenant.
    Principal { tenant: String, name: String },
}

#[derive(Debug, Default)]
struct Index {
    /// Token hash → (tenant, principal).
    tokens: HashMap<TokenHash, (String, String)>,
    /// Principal name → tenant (client certificates name principals).
    principals: HashMap<String, String>,
    /// Principal name → what its tenant's ACL grants it.
    grants: HashMap<String, Grants>,
}

/// The credentials the broker accepts: the admin token and the catalog's
/// principals and token hashes.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    admin: Option<(String, TokenHash)>,
    index: RwLock<Index>,
}

/// Why the admin token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("the admin token file {path} is empty")]
    Empty { path: std::path::PathBuf },
}

impl crate::catalog::PrincipalIndex for Credentials {
    fn rebuild(&self, catalog: &Catalog) {
        Credentials::rebuild(self, catalog);
    }
}

impl Credentials {
    /// Reads the admin token (one line; surrounding whitespace ignored). Any
    /// non-empty string works, so an operator may use a token of its own
    /// making; `strata_`-shaped ones are recommended.
    pub(crate) fn load(admin_token_file: &Path, catalog: &Catalog) -> Result<Credentials, AdminTokenError> {
        let admin = if admin_token_file.as_os_str().is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(admin_token_file)
                .map_err(|source| AdminTokenError::Read { path: admin_token_file.to_path_buf(), source })?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(AdminTokenError::Empty { path: admin_token_file.to_path_buf() });
            }
            let hash = TokenHash(Sha256::digest(token.as_bytes()).into());
            Some((token, hash))
        };
        let creds = Credentials { admin, index: RwLock::default() };
        creds.rebuild(catalog);
        Ok(creds)
    }

    /// The admin token itself (brokers present it to each other).
    pub(crate) fn admin_token(&self) -> Option<&str> {
        self.admin.as_ref().map(|(t, _)| t.as_str())
    }

    /// Re-reads principals, token hashes and ACLs from the catalog.
    pub(crate) fn rebuild(&self, catalog: &Catalog) {
        let mut index = Index {
            grants: crate::acl::index(
                catalog.principals.iter().map(|(n, p)| (n.as_str(), p.tenant.as_str())),
                &catalog.acls,
            ),
            ..Index::default()
        };
        for (name, p) in &catalog.principals {
            index.principals.insert(name.clone(), p.tenant.clone());
            for t in p.tokens.values() {
                if let Some(h) = TokenHash::from_hex(&t.hash) {
                    index.tokens.insert(h, (p.tenant.clone(), name.clone()));
                }
            }
        }
        *write_lock(&self.index) = index;
    }

    /// Who a bearer token names; `None` for an unknown or revoked token.
    pub(crate) fn by_token(&self, presented: &str) -> Option<Identity> {
        let hash = TokenHash(Sha256::digest(presented.as_bytes()).into());
        if let Some((_, admin)) = &self.admin
            && *admin == hash
        {
            return Some(Identity::ClusterAdmin);
        }
        // Only well-formed tokens are ever issued; skip the lookup otherwise.
        Token::parse(presented).ok()?;
        let index = read_lock(&self.index);
        index.tokens.get(&hash).map(|(tenant, name)| Identity::Principal { tenant: tenant.clone(), name: name.clone() })
    }

    /// Whether the ACL of `principal`'s tenant allows it `op` on the `kind`
    /// resource `name` (no allocation: the produce path asks this per batch).
    pub(crate) fn allows(&self, principal: &str, kind: ResourceKind, name: &str, op: AclOperation) -> bool {
        read_lock(&self.index).grants.get(principal).is_some_and(|g| g.allows(kind, name, op))
    }

    /// Whether `principal` may do `op` on at least one `kind` resource.
    pub(crate) fn allows_any(&self, principal: &str, kind: ResourceKind, op: AclOperation) -> bool {
        read_lock(&self.index).grants.get(principal).is_some_and(|g| g.allows_any(kind, op))
    }

    /// The principal a verified client certificate names.
    pub(crate) fn by_certificate_name(&self, name: &str) -> Option<Identity> {
        let index = read_lock(&self.index);
        index.principals.get(name).map(|tenant| Identity::Principal { tenant: tenant.clone(), name: name.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(Token::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.as_str().len(), TOKEN_PREFIX.len() + TOKEN_CHARS);
        assert_eq!(a.id().len(), TOKEN_ID_CHARS);
        assert_eq!(TokenHash::from_hex(&a.hash().to_hex()), Some(a.hash()));
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        assert_eq!(Token::parse("garbage"), Err(TokenError::Prefix));
        assert_eq!(Token::parse("strata_abc"), Err(TokenError::Length(3)));
        let bad_char = format!("strata_{}", "!".repeat(TOKEN_CHARS));
        assert_eq!(Token::parse(&bad_char), Err(TokenError::Encoding));
        // Non-canonical last character (spare bits set).
        let t = Token::generate().unwrap();
        let body = &t.as_str()[TOKEN_PREFIX.len()..];
        let last = body.as_bytes()[TOKEN_CHARS - 1];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.iter().position(|c| *c == last).unwrap();
        let other = alphabet[(pos & !0b11) | ((pos + 1) & 0b11)] as char;
        let mutated = format!("{TOKEN_PREFIX}{}{other}", &body[..TOKEN_CHARS - 1]);
        assert_eq!(Token::parse(&mutated), Err(TokenError::Encoding));
    }

    proptest! {
        /// Any string: the parser answers (never panics), and accepts exactly
        /// the canonical encodings of 32 bytes.
        #[test]
        fn parser_accepts_exactly_canonical_tokens(s in ".{0,80}") {
            let candidate = format!("{TOKEN_PREFIX}{s}");
            let ours = Token::parse(&candidate).is_ok();
            let expected = URL_SAFE_NO_PAD.decode(&s).ok()
                .filter(|b| b.len() == TOKEN_BYTES && URL_SAFE_NO_PAD.encode(b) == s)
                .is_some();
            prop_assert_eq!(ours, expected);
            let _ = Token::parse(&s);
        }

        /// Every 32-byte value round-trips, and changing any character
        /// either gives another valid token or is refused, never the same one.
        #[test]
        fn tokens_round_trip(bytes in proptest::array::uniform32(any::<u8>()), at in 0usize..TOKEN_CHARS) {
            let s = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
            let t = Token::parse(&s).unwrap();
            prop_assert_eq!(t.as_str(), s.as_str());
            let mut chars: Vec<char> = s.chars().collect();
            let i = TOKEN_PREFIX.len() + at;
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let changed: String = chars.into_iter().collect();
            if let Ok(other) = Token::parse(&changed) {
                prop_assert_ne!(other.hash(), t.hash());
            }
        }
    }

    #[test]
    fn the_index_follows_the_catalog_and_knows_the_admin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin");
        std::fs::write(&file, "  s3cret-admin\n").unwrap();
        let mut catalog = Catalog::default();
        let creds = Credentials::load(&file, &catalog).unwrap();
        assert_eq!(creds.admin_token(), Some("s3cret-admin"));
        assert_eq!(creds.by_token("s3cret-admin"), Some(Identity::ClusterAdmin));
        let token = Token::generate().unwrap();
        assert_eq!(creds.by_token(token.as_str()), None);
        use crate::catalog::CatalogCommand as C;
        catalog.apply(&C::CreatePrincipal { tenant: "default".into(), name: "alice".into(), at_ms: 1 }).unwrap();
        catalog
            .apply(&C::IssueToken {
                tenant: "default".into(),
                principal: "alice".into(),
                hash: token.hash().to_hex(),
                at_ms: 2,
            })
            .unwrap();
        creds.rebuild(&catalog);
        let alice = Identity::Principal { tenant: "default".into(), name: "alice".into() };
        assert_eq!(creds.by_token(token.as_str()), Some(alice.clone()));
        assert_eq!(creds.by_certificate_name("alice"), Some(alice));
        catalog.apply(&C::RevokeToken { tenant: "default".into(), principal: "alice".into(), id: token.id() }).unwrap();
        creds.rebuild(&catalog);
        assert_eq!(creds.by_token(token.as_str()), None);
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(Credentials::load(&file, &catalog), Err(AdminTokenError::Empty { .. })));
    }
}
