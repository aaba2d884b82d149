//! Token verification with a short cache: a token is read from the database at most once per
//! [`CACHE`] per process, so a revocation is refused everywhere within that time, and a hot
//! path pays a hash and a map lookup. Repeated guesses (unknown tokens or wrong secrets) from
//! one peer are slowed down: after [`FREE_FAILURES`] in a minute, each call from that peer
//! waits 200 ms more than the last, up to 3 s.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::{
    AuthError, AuthMode, Caller,
    store::{TokenInfo, TokenStore},
    token,
};

/// How long a token read from the database is trusted: a revocation takes effect within it.
pub const CACHE: Duration = Duration::from_secs(2);
/// How long a cached token is used while the database cannot be read.
pub const STALE_WHILE_UNAVAILABLE: Duration = Duration::from_secs(600);
/// Entries kept at most (tokens and unknown accessors); unknown ones are dropped beyond.
const MAX_ENTRIES: usize = 10_000;
/// Failures from one peer in a window before it is slowed down.
pub const FREE_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(3);

/// A token read from the database and its stored digest (none: no such token), shared so that
/// a cache hit copies a pointer.
type Entry = Option<Arc<(TokenInfo, Vec<u8>)>>;

#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

struct Inner {
    mode: AuthMode,
    store: TokenStore,
    cache: Mutex<HashMap<Uuid, (Entry, Instant)>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// The tokens open streams hold ([`crate::revocation`]).
    holds: Arc<crate::revocation::Holds>,
}

impl Verifier {
    pub fn new(db: DatabaseConnection, mode: AuthMode) -> Self {
        Self {
            inner: Arc::new(Inner {
                mode,
                store: TokenStore::new(db),
                cache: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
                holds: Arc::default(),
            }),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.inner.mode
    }

    /// Who a call with this `authorization` header value comes from.
    pub async fn verify(
        &self,
        header: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Caller, AuthError> {
        if self.inner.mode == AuthMode::None {
            return Ok(Caller::unauthenticated_admin());
        }
        let result = self.check(header).await;
        // Only guesses count: a token whose secret does not match. A client with no token, a
        // malformed, expired or revoked one is refused as fast as ever (it guesses nothing).
        // And only guesses wait, once checked: the guesser is slowed, not its address, so a
        // valid token from the same address (behind one NAT, or a runner on the same host)
        // is answered at once.
        if let (Err(AuthError::Unknown), Some(peer)) = (&result, peer) {
            // The first FREE_FAILURES guesses in a window are answered at once.
            let delay = self.delay(peer);
            self.failed(peer);
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
        }
        result
    }

    async fn check(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let presented = token::parse_header(header)?;
        let entry = self
            .lookup(presented.accessor)
            .await?
            .ok_or(AuthError::Unknown)?;
        let (info, digest) = &*entry;
        if !presented.matches(digest) {
            return Err(AuthError::Unknown);
        }
        if info.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if info.disabled_at.is_some() {
            return Err(AuthError::Disabled);
        }
        if info.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(AuthError::Expired);
        }
        Ok(Caller {
            accessor: info.accessor,
            name: info.name.clone(),
            principal: info.principal,
            principal_name: info.principal_name.clone(),
            role: info.role,
            node: info.node.clone(),
            credential: crate::Credential::header(header)?,
            unrestricted: false,
        })
    }

    pub(crate) fn holds(&self) -> &Arc<crate::revocation::Holds> {
        &self.inner.holds
    }

    /// Whether `accessor`'s token is still valid (known, not revoked, not expired, its
    /// principal not disabled), read from
    /// the database now; `Err` when it cannot be read. The cache takes what was read.
    pub(crate) async fn still_valid(&self, accessor: Uuid) -> Result<bool, AuthError> {
        let entry = self
            .inner
            .store
            .find(accessor)
            .await
            .map(|e| e.map(Arc::new))
            .map_err(|_| AuthError::Unavailable)?;
        let valid = entry.as_deref().is_some_and(|(info, _)| {
            info.revoked_at.is_none()
                && info.disabled_at.is_none()
                && info.expires_at.is_none_or(|t| t > Utc::now())
        });
        let mut cache = self.inner.cache.lock().expect("token cache");
        cache.insert(accessor, (entry, Instant::now()));
        Ok(valid)
    }

    async fn lookup(&self, accessor: Uuid) -> Result<Entry, AuthError> {
        let cached = {
            let cache = self.inner.cache.lock().expect("token cache");
            cache.get(&accessor).cloned()
        };
        if let Some((entry, at)) = &cached
            && at.elapsed() < CACHE
        {
            return Ok(entry.clone());
        }
        let entry = match self
            .inner
            .store
            .find(accessor)
            .await
            .map(|e| e.map(Arc::new))
        {
            Ok(entry) => entry,
            // While the database is unreachable no token can be made or revoked: a token known
            // a little earlier is still good, so that operators can read /metrics and clients
            // get the service's own UNAVAILABLE answers rather than refusals.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a token");
                return match cached {
                    Some((entry, at)) if at.elapsed() < STALE_WHILE_UNAVAILABLE => Ok(entry),
                    _ => Err(AuthError::Unavailable),
                };
            }
        };
        let mut cache = self.inner.cache.lock().expect("token cache");
        if cache.len() >= MAX_ENTRIES {
            // Unknown accessors (what a flood of guesses leaves) and entries too old to serve
            // even while the database is down go first: guesses cannot push real tokens out
            // and send every caller's next call to the database.
            cache
                .retain(|_, (entry, at)| entry.is_some() && at.elapsed() < STALE_WHILE_UNAVAILABLE);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(accessor, (entry.clone(), Instant::now()));
        Ok(entry)
    }

    /// The pause a peer with recent failures waits before its next attempt is looked at.
    fn delay(&self, peer: IpAddr) -> Option<Duration> {
        let failures = self.inner.failures.lock().expect("failures");
        let (count, since) = failures.get(&peer)?;
        if since.elapsed() > FAILURE_WINDOW || *count < FREE_FAILURES {
            return None;
        }
        Some((Duration::from_millis(200) * (count - FREE_FAILURES + 1)).min(MAX_DELAY))
    }

    fn failed(&self, peer: IpAddr) {
        let mut failures = self.inner.failures.lock().expect("failures");
        if failures.len() >= MAX_ENTRIES {
            failures.retain(|_, (_, since)| since.elapsed() <= FAILURE_WINDOW);
        }
        let entry = failures.entry(peer).or_insert((0, Instant::now()));
        if entry.1.elapsed() > FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}
