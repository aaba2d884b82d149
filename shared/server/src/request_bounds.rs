//! What a gRPC call's request may hold in memory while it arrives. A unary message is read
//! whole before its handler sees it, so a client that declares a 16 MB message and sends 15 MB
//! of it makes the server hold 15 MB: a hundred such calls held 1.5 GB of the catalogue, for
//! minutes. So every request but the streams that carry data (WriteUpload) is bounded:
//!
//! - at most [`RequestLimits::unary_bytes`] each (what the largest unary request needs, with
//!   room to spare: a run's configuration, a file's tags);
//! - at most [`RequestLimits::total_bytes`] for all of them being received at once, across
//!   callers (RESOURCE_EXHAUSTED with a retry hint past it);
//! - a request whose bytes stop arriving for [`RequestLimits::idle`] is cut off.
//!
//! The streams that carry data are bounded elsewhere: by the transfer's blocks and pace.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// The bounds, per request and per process.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub unary_bytes: u64,
    pub total_bytes: u32,
    pub idle: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            unary_bytes: 1 << 20,
            total_bytes: 64 << 20,
            idle: Duration::from_secs(30),
        }
    }
}

/// Bounds the requests of every method but `unbounded` (the data streams).
#[derive(Clone, Debug)]
pub struct RequestBoundsLayer {
    unbounded: &'static [&'static str],
    limits: RequestLimits,
    budget: Arc<Semaphore>,
}

impl RequestBoundsLayer {
    pub fn new(unbounded: &'static [&'static str], limits: RequestLimits) -> Self {
        Self {
            unbounded,
            limits,
            budget: Arc::new(Semaphore::new(limits.total_bytes as usize)),
        }
    }
}

impl<S> Layer<S> for RequestBoundsLayer {
    type Service = RequestBounds<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBounds {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestBounds<S> {
    inner: S,
    layer: RequestBoundsLayer,
}

type GrpcBody = tonic::body::Body;

impl<S, RB> Service<Request<GrpcBody>> for RequestBounds<S>
where
    S: Service<Request<GrpcBody>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<GrpcBody>) -> Self::Future {
        if self.layer.unbounded.contains(&request.uri().path()) {
            return self.inner.call(request);
        }
        let layer = &self.layer;
        let request = request.map(|body| {
            GrpcBody::new(Bounded {
                inner: body,
                received: 0,
                limits: layer.limits,
                budget: Arc::clone(&layer.budget),
                held: None,
                idle: None,
            })
        });
        self.inner.call(request)
    }
}

/// A request body within its bounds; the bytes it took from the process's budget go back
/// when it is dropped.
struct Bounded {
    inner: GrpcBody,
    received: u64,
    limits: RequestLimits,
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    /// Armed the first time the body waits for bytes (most requests arrive whole, and never
    /// pay for a timer), and pushed back each time bytes arrive.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Bounded {
    /// Takes `n` more bytes, or says why not.
    fn take(&mut self, n: usize) -> Result<(), tonic::Status> {
        self.received += n as u64;
        if self.received > self.limits.unary_bytes {
            return Err(tonic::Status::resource_exhausted(format!(
                "the request is larger than the {} bytes this method takes",
                self.limits.unary_bytes
            )));
        }
        let permit = u32::try_from(n)
            .ok()
            .and_then(|n| Arc::clone(&self.budget).try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                pirus_auth::admission::exhausted(
                    "the server is receiving as many request bytes as it holds at once; retry"
                        .to_owned(),
                )
            })?;
        match self.held.as_mut() {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

impl http_body::Body for Bounded {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let idle = self.limits.idle;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(status) = self.take(data.len()) {
                        return Poll::Ready(Some(Err(status)));
                    }
                    if let Some(timer) = self.idle.as_mut() {
                        timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let timer = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                        format!("the request stopped arriving for {idle:?}"),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
