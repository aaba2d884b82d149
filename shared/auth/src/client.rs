//! Credentials for outgoing calls (a runner to the catalogue and to other runners): the bearer
//! header to attach, never shown by `Debug`.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};

use crate::{AuthError, token};

/// An `authorization` value to send, or none.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credential(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Credential(Bearer ***)"),
            None => f.write_str("Credential(none)"),
        }
    }
}

impl Credential {
    /// A bearer token, checked for shape.
    pub fn bearer(token: &str) -> Result<Self, AuthError> {
        token::parse(token)?;
        Self::header(&format!("Bearer {token}"))
    }

    /// An `authorization` header value as a caller presented it (already verified).
    pub fn header(value: &str) -> Result<Self, AuthError> {
        MetadataValue::try_from(value)
            .map(|v| Self(Some(v)))
            .map_err(|_| AuthError::Malformed)
    }

    /// A token kept in a file (surrounding whitespace ignored).
    pub fn read_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        Self::bearer(text.trim()).map_err(|e| format!("the token file {}: {e}", path.display()))
    }

    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// This one, or `fallback` when this one is none.
    pub fn or<'a>(&'a self, fallback: &'a Credential) -> &'a Credential {
        if self.is_none() { fallback } else { self }
    }

    /// A request carrying this credential.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// The presented token, for a verifier of this process (the runner checks its own token
    /// at start-up).
    pub fn token(&self) -> Option<&str> {
        self.0
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

/// A service's own credential, shared by its clients and replaced when its token file
/// changes: a token is rotated without a restart (write the new token to the file, wait for
/// [`FOLLOW_INTERVAL`], then revoke the old one).
#[derive(Debug, Clone, Default)]
pub struct OwnCredential(std::sync::Arc<std::sync::RwLock<Credential>>);

/// How often a token file is read again.
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl OwnCredential {
    pub fn new(credential: Credential) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(credential)))
    }

    pub fn get(&self) -> Credential {
        self.0.read().expect("credential").clone()
    }

    /// Re-reads `path` every [`FOLLOW_INTERVAL`], forever; a changed, well-formed token
    /// replaces the current one. Run it as a task of its own.
    pub async fn follow_file(self, path: std::path::PathBuf) {
        loop {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            match Credential::read_file(&path) {
                Ok(read) if read != self.get() => {
                    tracing::info!(file = %path.display(), "the token file changed; using the new token");
                    *self.0.write().expect("credential") = read;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "keeping the current token"),
            }
        }
    }
}
