//! Token secrets: `pirus_<accessor id, 32 hex>_<secret, 43 base64url characters>`. The
//! accessor id is public (it names the token in lists and audits); the 256-bit secret is shown
//! once and stored only as its SHA-256, compared in constant time.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::AuthError;

const PREFIX: &str = "pirus_";

/// A freshly made token: its accessor id, the whole token (shown once), and the digest kept.
#[derive(Debug)]
pub struct Minted {
    pub accessor: Uuid,
    pub token: String,
    pub digest: [u8; 32],
}

/// Makes a new token from 32 random bytes.
pub fn mint() -> Minted {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the operating system's random source");
    let accessor = Uuid::new_v4();
    let encoded = URL_SAFE_NO_PAD.encode(secret);
    Minted {
        accessor,
        token: format!("{PREFIX}{}_{encoded}", accessor.simple()),
        digest: digest(&encoded),
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A presented token, split: its accessor id and the digest of its secret.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented {
    pub accessor: Uuid,
    digest: [u8; 32],
}

impl Presented {
    /// Whether the presented secret is the one stored (constant time).
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.digest.ct_eq(stored))
    }
}

/// Parses an `authorization` header value (`Bearer <token>`).
pub fn parse_header(value: &str) -> Result<Presented, AuthError> {
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    parse(token.trim())
}

/// Parses a token.
pub fn parse(token: &str) -> Result<Presented, AuthError> {
    let rest = token.strip_prefix(PREFIX).ok_or(AuthError::Malformed)?;
    let (accessor, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    if accessor.len() != 32 || secret.len() != 43 {
        return Err(AuthError::Malformed);
    }
    let accessor = Uuid::try_parse(accessor).map_err(|_| AuthError::Malformed)?;
    if URL_SAFE_NO_PAD.decode(secret).map(|b| b.len()) != Ok(32) {
        return Err(AuthError::Malformed);
    }
    Ok(Presented {
        accessor,
        digest: digest(secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_match_only_their_own_digest() {
        let a = mint();
        let b = mint();
        assert_ne!(a.token, b.token);
        let presented = parse_header(&format!("Bearer {}", a.token)).unwrap();
        assert_eq!(presented.accessor, a.accessor);
        assert!(presented.matches(&a.digest));
        assert!(!presented.matches(&b.digest));
        assert!(!presented.matches(&a.digest[..31]));
        assert!(parse_header(&format!("bearer  {}", a.token)).is_ok());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = mint().token;
        for bad in [
            "".to_owned(),
            good.clone(),
            format!("Basic {good}"),
            "Bearer pirus_".to_owned(),
            format!("Bearer {}", good.replace("pirus_", "other_")),
            format!("Bearer {}x", good),
            format!("Bearer {}", &good[..good.len() - 1]),
            "Bearer pirus_0123_abc".to_owned(),
        ] {
            assert_eq!(parse_header(&bad), Err(AuthError::Malformed), "{bad}");
        }
    }
}
