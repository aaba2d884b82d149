//! Open streams and transfers end when their token stops being valid (revoked, expired, or
//! gone), within the bound a new call is refused in.
//!
//! A call that may last (a gRPC stream, a tus transfer) takes a [`Hold`] on its caller's
//! token; [`watch`] looks at the tokens that have holds every [`CHECK`] (one database read per
//! such token, none while no stream is open) and cancels the holds of any that is no longer
//! valid. The call's bodies are wrapped in [`Revocable`]: once cancelled, a request body ends
//! where it is (a transfer keeps its durable bytes and pauses, as for a cut connection), and a
//! gRPC response body ends with `UNAUTHENTICATED`.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http_body::Frame;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use uuid::Uuid;

use crate::{AuthMode, Caller, verifier::Verifier};

/// How often the held tokens are read again. With the verifier's cache (2 s) a revocation
/// ends what its token opened within 5 s, the bound in which new calls are refused.
pub const CHECK: Duration = Duration::from_secs(2);

/// The message a revoked stream ends with.
pub const REVOKED: &str = "the token was revoked, expired or its principal disabled";

/// The tokens that have open streams: each one's cancellation, how many calls hold it, and
/// which generation of holds it is (a token cancelled and then held again starts a new one).
#[derive(Debug, Default)]
pub(crate) struct Holds {
    open: Mutex<HashMap<Uuid, Held>>,
    generations: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Held {
    cancel: CancellationToken,
    calls: usize,
    generation: u64,
}

/// One open call's hold on its caller's token: cancelled when the token stops being valid;
/// given back when dropped.
#[derive(Debug)]
pub struct Hold {
    accessor: Uuid,
    generation: u64,
    cancel: CancellationToken,
    holds: Arc<Holds>,
}

impl Hold {
    /// Whether the token stopped being valid while the call was open.
    pub fn revoked(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The cancellation that ends this call's bodies.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut open = self.holds.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.accessor)
            && held.generation == self.generation
        {
            held.calls -= 1;
            if held.calls == 0 {
                open.remove(&self.accessor);
            }
        }
    }
}

impl Holds {
    /// A hold on `accessor`'s token.
    pub(crate) fn hold(self: &Arc<Self>, accessor: Uuid) -> Hold {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(accessor).or_insert_with(|| Held {
            cancel: CancellationToken::new(),
            calls: 0,
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        held.calls += 1;
        Hold {
            accessor,
            generation: held.generation,
            cancel: held.cancel.child_token(),
            holds: Arc::clone(self),
        }
    }

    fn held(&self) -> Vec<Uuid> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.keys().copied().collect()
    }

    fn cancel(&self, accessor: Uuid) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.remove(&accessor) {
            held.cancel.cancel();
        }
    }
}

/// A hold on `caller`'s token when the call may last; none under `--auth none` (nothing can
/// be revoked) or for a caller without a token.
pub fn hold(verifier: &Verifier, caller: &Caller) -> Option<Hold> {
    (verifier.mode() == AuthMode::Token && !caller.unrestricted)
        .then(|| verifier.holds().hold(caller.accessor))
}

/// Reads the held tokens again every [`CHECK`] until `stop`, ending the calls of any that is
/// no longer valid. A token that cannot be read (the database down) is left as it is.
pub async fn watch(verifier: Verifier, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for accessor in verifier.holds().held() {
            if let Ok(false) = verifier.still_valid(accessor).await {
                tracing::info!(%accessor, "ending the calls of a token no longer valid");
                verifier.holds().cancel(accessor);
            }
        }
    }
}

/// A body that ends once its call's hold is cancelled: a request body simply ends (what
/// arrived is kept, as when a connection is cut); a gRPC response body ends with trailers
/// saying `UNAUTHENTICATED`.
pub struct Revocable<B> {
    inner: B,
    /// None: a body no revocation ends (a call that does not last).
    revoked: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Trailers to end with when revoked (a gRPC response), or none (end at once).
    trailers: Option<http::HeaderMap>,
    ended: bool,
    /// Kept for as long as the body lasts (the response of a stream).
    _hold: Option<Hold>,
}

impl<B> std::fmt::Debug for Revocable<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocable")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<B> Revocable<B> {
    /// A body no revocation ends.
    pub fn lasting(inner: B) -> Self {
        Self {
            inner,
            revoked: None,
            trailers: None,
            ended: false,
            _hold: None,
        }
    }

    /// A request body that ends when `cancel` is cancelled.
    pub fn request(inner: B, cancel: CancellationToken) -> Self {
        Self {
            inner,
            revoked: Some(Box::pin(cancel.cancelled_owned())),
            trailers: None,
            ended: false,
            _hold: None,
        }
    }

    /// A gRPC response body that holds `hold` and ends `UNAUTHENTICATED` when it is cancelled.
    pub fn grpc_response(inner: B, hold: Hold) -> Self {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
        trailers.insert(
            "grpc-message",
            http::HeaderValue::from_static(REVOKED_ENCODED),
        );
        Self {
            inner,
            revoked: Some(Box::pin(hold.token().cancelled_owned())),
            trailers: Some(trailers),
            ended: false,
            _hold: Some(hold),
        }
    }
}

/// [`REVOKED`], percent-encoded as grpc-message wants (spaces and commas).
const REVOKED_ENCODED: &str =
    "the%20token%20was%20revoked%2C%20expired%20or%20its%20principal%20disabled";

impl<B> http_body::Body for Revocable<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(revoked) = self.revoked.as_mut()
            && revoked.as_mut().poll(cx).is_ready()
        {
            self.ended = true;
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.revoked {
            None => self.inner.size_hint(),
            // It may end early: no size is promised.
            Some(_) => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_counted_and_cancelled_together() {
        let holds = Arc::new(Holds::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = holds.hold(a);
        let second = holds.hold(a);
        let other = holds.hold(b);
        assert_eq!(holds.held().len(), 2);
        holds.cancel(a);
        assert!(first.revoked() && second.revoked() && !other.revoked());
        drop(other);
        assert!(holds.held().is_empty());
        // A new call of a cancelled token starts a new hold (the verifier refuses it first).
        let again = holds.hold(a);
        assert!(!again.revoked());
        drop((first, second));
        assert_eq!(holds.held(), vec![a]);
    }

    #[test]
    fn the_grpc_message_is_the_message_encoded() {
        let decoded = REVOKED_ENCODED.replace("%20", " ").replace("%2C", ",");
        assert_eq!(decoded, REVOKED);
    }
}
