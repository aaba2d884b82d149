//! The one authorization layer, for gRPC (a tower layer on the tonic server) and HTTP (the
//! same check as a function the HTTP routes call). A call is authenticated once, before any
//! handler: its [`Caller`] goes into the request's extensions, or it is answered
//! UNAUTHENTICATED (HTTP 401 with `WWW-Authenticate: Bearer`). Health checking and reflection
//! stay open. Calls that change something are recorded in the audit trail with their outcome.

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::{
    AuthError, Caller, Verifier,
    admission::{Admission, Permit},
    audit::Audit,
    revocation::{Hold, Revocable},
};

/// Paths answered without a token.
fn open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// The gRPC status of an authentication failure.
pub fn status(e: &AuthError) -> tonic::Status {
    match e {
        AuthError::Unavailable => tonic::Status::unavailable(e.to_string()),
        _ => tonic::Status::unauthenticated(e.to_string()),
    }
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Verifier,
    audit: Audit,
    /// The methods that change something (`/package.Service/Method`), to audit.
    changes: &'static [&'static str],
    /// The long-lived methods (streams) each caller holds at most a budget of at once.
    streams: &'static [&'static str],
    admission: Admission,
}

impl AuthLayer {
    pub fn new(verifier: Verifier, audit: Audit, changes: &'static [&'static str]) -> Self {
        Self {
            verifier,
            audit,
            changes,
            streams: &[],
            admission: Admission::default(),
        }
    }

    /// Counts the calls of `streams` against each caller's budget.
    pub fn with_admission(
        mut self,
        streams: &'static [&'static str],
        admission: Admission,
    ) -> Self {
        self.streams = streams;
        self.admission = admission;
        self
    }
}

/// A response body that holds `T` until the body ends or is dropped: for a stream, as long
/// as the stream lasts. The auth layer holds a call's [`Permit`] in it ([`Admitted`]); the
/// gRPC port's call counting holds its open call in it too.
#[derive(Debug)]
pub struct Holding<B, T> {
    inner: B,
    _held: T,
}

impl<B, T> Holding<B, T> {
    pub fn new(inner: B, held: T) -> Self {
        Self { inner, _held: held }
    }
}

/// A response body that holds its call's [`Permit`] (if it took one) until the body ends.
pub type Admitted<B> = Holding<B, Option<Permit>>;

impl<B: Default, T: Default> Default for Holding<B, T> {
    fn default() -> Self {
        Self::new(B::default(), T::default())
    }
}

impl<B, T> http_body::Body for Holding<B, T>
where
    B: http_body::Body + Unpin,
    T: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The peer's address: the gRPC port's outermost layer puts its connection's
/// `TcpConnectInfo` in every request, with TLS or without (`pirus_server::grpc_port`).
fn peer<B>(request: &Request<B>) -> Option<IpAddr> {
    use tonic::transport::server::TcpConnectInfo;
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|addr| addr.ip())
}

/// How a gRPC call ended, from its response headers: a failure is sent trailers-only (its
/// `grpc-status` in the headers); a success carries it in the trailers.
fn outcome<B>(response: &Response<B>) -> String {
    match response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("0") => "ok".to_owned(),
        Some(code) => format!("{:?}", tonic::Code::from_bytes(code.as_bytes())),
    }
}

/// A gRPC request's body.
type GrpcBody = tonic::body::Body;

/// The body of a response the layer answers: held (a stream's permit) and revocable (a
/// stream ends when its token stops being valid).
pub type Answered<B> = Admitted<Revocable<B>>;

fn answered<B>(body: B, permit: Option<Permit>) -> Answered<B> {
    Admitted::new(Revocable::lasting(body), permit)
}

impl<S, RB> Service<Request<GrpcBody>> for AuthService<S>
where
    S: Service<Request<GrpcBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<Answered<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<GrpcBody>) -> Self::Future {
        let path = request.uri().path();
        if open(path) {
            let call = self.inner.call(request);
            return Box::pin(async move { Ok(call.await?.map(|body| answered(body, None))) });
        }
        // The method's name when it changes something (to audit); nothing is copied per call.
        let audited = self.layer.changes.iter().copied().find(|c| *c == path);
        let stream = self.layer.streams.contains(&path);
        // The service that was polled ready is the one that serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let header = request.headers().get(http::header::AUTHORIZATION).cloned();
        let peer = peer(&request);
        Box::pin(async move {
            let header = header.as_ref().and_then(|v| v.to_str().ok());
            let caller = match layer.verifier.verify(header, peer).await {
                Ok(caller) => caller,
                Err(e) => {
                    let status = status(&e);
                    if let Some(method) = audited {
                        let outcome = format!("{:?}", status.code());
                        layer
                            .audit
                            .record(None, method, "", &outcome, &peer_text(peer));
                    }
                    return Ok(status.into_http().map(|body| answered(body, None)));
                }
            };
            let permit = if stream {
                match layer.admission.admit(&caller, peer) {
                    Ok(permit) => Some(permit),
                    Err(e) => {
                        let status = crate::admission::exhausted(e.to_string());
                        return Ok(status.into_http().map(|body| answered(body, None)));
                    }
                }
            } else {
                None
            };
            // A stream lasts: it ends when its token stops being valid (its request body
            // where it is, its response with UNAUTHENTICATED).
            let hold = stream
                .then(|| crate::revocation::hold(&layer.verifier, &caller))
                .flatten();
            if let Some(hold) = &hold {
                let cancel = hold.token();
                request = request.map(|body| GrpcBody::new(Revocable::request(body, cancel)));
            }
            // Who made an audited call and what it named, for its event (a change: only then).
            let who = audited.map(|_| caller.clone());
            request.extensions_mut().insert(caller);
            let target = audited.map(|_| AuditTarget::insert(&mut request));
            let response = inner.call(request).await?;
            if let (Some(method), Some(target)) = (audited, target) {
                let outcome = outcome(&response);
                layer.audit.record(
                    who.as_ref(),
                    method,
                    &target.take(),
                    &outcome,
                    &peer_text(peer),
                );
            }
            // A client stream cut by a revocation: whatever the handler answered, the call
            // was refused.
            if hold.as_ref().is_some_and(Hold::revoked) {
                let status = tonic::Status::unauthenticated(crate::revocation::REVOKED);
                return Ok(status.into_http().map(|body| answered(body, None)));
            }
            Ok(response.map(|body| match hold {
                Some(hold) => Admitted::new(Revocable::grpc_response(body, hold), permit),
                None => answered(body, permit),
            }))
        })
    }
}

/// What an audited call changed (the id or name of the resource), as its handler names it
/// with [`AuditTarget::set`]: put in the request by [`AuthLayer`] for audited calls only, read
/// back into the audit event when the call ends. For any other call it is a no-op handle.
#[derive(Clone, Debug)]
pub struct AuditTarget(Option<Arc<Mutex<String>>>);

impl AuditTarget {
    /// A target for the audited call `request`, put in its extensions for the handler.
    fn insert<B>(request: &mut http::Request<B>) -> Self {
        let target = AuditTarget(Some(Arc::default()));
        request.extensions_mut().insert(target.clone());
        target
    }

    /// The target of the audited call `request` (a no-op handle if the call is not audited).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or(Self(None))
    }

    /// Names what the call changed (the last name given wins: a creation names the new id).
    pub fn set(&self, target: impl std::fmt::Display) {
        if let Some(slot) = &self.0 {
            let mut text = target.to_string();
            if text.len() > 256 {
                let end = (0..=256)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text.truncate(end);
            }
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = text;
        }
    }

    fn take(&self) -> String {
        self.0
            .as_ref()
            .map(|slot| std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }
}

fn peer_text(peer: Option<IpAddr>) -> String {
    peer.map(|p| p.to_string()).unwrap_or_default()
}

/// The caller of a gRPC call, put there by [`AuthLayer`].
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("the call was not authenticated"))
}

/// The HTTP side: authenticates a request's `authorization` header; on failure, the 401 (or
/// 503) response to send, with `WWW-Authenticate: Bearer`.
pub async fn authenticate_http(
    verifier: &Verifier,
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Caller, (http::StatusCode, AuthError)> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    verifier.verify(header, peer).await.map_err(|e| {
        let code = match e {
            AuthError::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        };
        (code, e)
    })
}
