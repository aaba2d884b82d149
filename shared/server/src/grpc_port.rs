//! The gRPC port's accept loop. tonic's own accepts every connection, holds one that never
//! speaks (nor finishes a TLS handshake) for ever, and stops serving on the first accept error
//! that is not about a single connection (out of file descriptors, say). This one:
//!
//! - keeps at most [`GrpcLimits::max_connections`] open, of which one client (an IPv4
//!   address, an IPv6 /64: [`crate::connection_slots`]) at most
//!   [`GrpcLimits::max_connections_per_peer`]; one more is closed as soon as it is accepted;
//! - closes a connection whose first 24 bytes (the HTTP/2 client preface; with TLS, the
//!   start of its hello) do not arrive within [`GrpcLimits::preface_timeout`];
//! - closes a connection on which no call has been open for [`GrpcLimits::idle_timeout`]
//!   (hyper has no such timeout for an HTTP/2 server, and its keepalive PINGs, answered by
//!   any live client, keep a connection without calls open for ever). Calls are counted by
//!   [`OpenCallsLayer`], which finds the connection's count in the request: it is the
//!   connection's `ConnectInfo` ([`Peer`]);
//! - on an accept error, logs it and tries again 100 ms later instead of ending the server.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use pirus_auth::layer::Holding;

use crate::connection_slots::{ConnectionSlot, ConnectionSlots};

/// Bounds of the gRPC port's connections.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections one client keeps open at once; one more is closed as soon as it is
    /// accepted.
    pub max_connections_per_peer: usize,
    /// A new connection must send its first [`PREFACE`] bytes within this.
    pub preface_timeout: Duration,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
}

/// The length of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE: usize = 24;

/// How much longer an idle connection that read something since it was last looked at is
/// kept ([`Connection::check_idle`]).
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long to wait after an accept error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accepted connections of the gRPC port, as tonic takes them
/// (`serve_with_incoming_shutdown`).
pub(crate) struct Incoming {
    listener: TcpListener,
    preface_timeout: Duration,
    idle_timeout: Duration,
    slots: ConnectionSlots,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    pub(crate) fn new(listener: TcpListener, limits: GrpcLimits) -> Self {
        Self {
            listener,
            preface_timeout: limits.preface_timeout,
            idle_timeout: limits.idle_timeout,
            slots: ConnectionSlots::new(
                "gRPC",
                limits.max_connections,
                limits.max_connections_per_peer,
            ),
            backoff: None,
        }
    }
}

/// Accept errors that concern one connection only (the peer went away before it was taken).
fn about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(backoff) = &mut this.backoff {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            let (stream, peer) = match ready!(this.listener.poll_accept(cx)) {
                Ok(accepted) => accepted,
                Err(e) if about_one_connection(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot accept a gRPC connection; trying again shortly");
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    continue;
                }
            };
            let Some(slot) = this.slots.admit(peer) else {
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let calls = OpenCalls::default();
            return Poll::Ready(Some(Ok(Connection {
                stream,
                _slot: slot,
                preface: Some((Box::pin(tokio::time::sleep(this.preface_timeout)), PREFACE)),
                idle: Box::pin(tokio::time::sleep(this.idle_timeout)),
                idle_timeout: this.idle_timeout,
                read_since_look: false,
                calls,
            })));
        }
    }
}

/// An accepted connection: its slots are given back when it is dropped.
pub(crate) struct Connection {
    stream: TcpStream,
    _slot: ConnectionSlot,
    /// Until the preface has come: its deadline and the bytes still to come.
    preface: Option<(Pin<Box<Sleep>>, usize)>,
    /// When the connection is next looked at for having had no call open for `idle_timeout`.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// Whether anything was read since the idle timer last fired.
    read_since_look: bool,
    calls: OpenCalls,
}

impl Connection {
    /// An error when no call has been open for `idle_timeout`; otherwise the idle timer is
    /// set for when that would next be so (registering the connection's task to be woken).
    ///
    /// A connection that read anything since the last look gets [`IDLE_GRACE`] more: a
    /// call's request may have just been read, its call not yet begun (calls begin on tasks
    /// of their own).
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.idle.as_mut().poll(cx).is_ready() {
            let read = std::mem::take(&mut self.read_since_look);
            let next = match self.calls.idle_since() {
                Some(_) if read => Instant::now() + IDLE_GRACE,
                Some(since) if since.elapsed() >= self.idle_timeout => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no call open on the gRPC connection (--grpc-idle-timeout)",
                    ));
                }
                Some(since) => since + self.idle_timeout,
                None => Instant::now() + self.idle_timeout,
            };
            self.idle.as_mut().reset(next);
        }
        Ok(())
    }
}

/// What tonic puts in every request of a connection: its addresses, and its count of open
/// calls (for [`OpenCallsLayer`]).
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    tcp: TcpConnectInfo,
    calls: OpenCalls,
}

impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        Peer {
            tcp: self.stream.connect_info(),
            calls: self.calls.clone(),
        }
    }
}

/// The calls open on one connection, and since when none has been.
#[derive(Clone, Debug)]
struct OpenCalls(Arc<OpenCallsInner>);

#[derive(Debug)]
struct OpenCallsInner {
    open: AtomicUsize,
    /// Milliseconds after `epoch` when the last open call ended (or the connection came).
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl Default for OpenCalls {
    fn default() -> Self {
        Self(Arc::new(OpenCallsInner {
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }
}

impl OpenCalls {
    fn begin(&self) -> CallOpen {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        CallOpen(self.clone())
    }

    /// Since when no call has been open; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        // The count is read before the time, and a call records its end time before it stops
        // counting: once no call is seen open, the time read is the last one's end or later.
        if self.0.open.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since = self.0.idle_since_ms.load(Ordering::Acquire);
        Some(self.0.epoch + Duration::from_millis(since))
    }
}

/// One open call; ending it (dropping) records when the connection became idle.
pub(crate) struct CallOpen(OpenCalls);

impl Drop for CallOpen {
    fn drop(&mut self) {
        let inner = &self.0.0;
        let now = inner.epoch.elapsed().as_millis() as u64;
        inner.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts each call as open on its connection from its request until its response body ends
/// or is dropped ([`Holding`]) (a stream's last message, or the client cancelling it), and puts the
/// connection's [`TcpConnectInfo`] in the request for the layers after it. Outermost layer of
/// the gRPC server, for [`Incoming`]'s connections.
#[derive(Clone, Copy, Default)]
pub(crate) struct OpenCallsLayer;

impl<S> tower::Layer<S> for OpenCallsLayer {
    type Service = OpenCallsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenCallsService { inner }
    }
}

#[derive(Clone)]
pub(crate) struct OpenCallsService<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for OpenCallsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Unpin,
{
    type Response = http::Response<Holding<RB, Option<CallOpen>>>;
    type Error = S::Error;
    type Future = CountedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let extensions = request.extensions();
        let peer = extensions
            .get::<Peer>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<Peer>>()
                    .map(|i| i.get_ref())
            })
            .cloned();
        let open = peer.map(|peer| {
            request.extensions_mut().insert(peer.tcp);
            peer.calls.begin()
        });
        CountedCall {
            inner: self.inner.call(request),
            open,
        }
    }
}

/// A call's response on its way: hands the call's count to the response body (no allocation
/// of its own per call).
pub(crate) struct CountedCall<F> {
    inner: F,
    open: Option<CallOpen>,
}

impl<F, RB, E> Future for CountedCall<F>
where
    F: Future<Output = Result<http::Response<RB>, E>> + Unpin,
{
    type Output = Result<http::Response<Holding<RB, Option<CallOpen>>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(Pin::new(&mut self.inner).poll(cx))?;
        let open = self.open.take();
        Poll::Ready(Ok(response.map(|body| Holding::new(body, open))))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some((deadline, missing)) = &mut this.preface else {
            match read {
                Poll::Pending => this.check_idle(cx)?,
                Poll::Ready(_) => this.read_since_look = true,
            }
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                *missing = missing.saturating_sub(buf.filled().len() - before);
                if *missing == 0 {
                    this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface in time (--grpc-preface-timeout)",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_from_when_its_last_call_ended() {
        let pause = || std::thread::sleep(Duration::from_millis(30));
        let calls = OpenCalls::default();
        let came = calls.idle_since().expect("idle from the start");
        pause();
        let first = calls.begin();
        let second = calls.begin();
        assert_eq!(calls.idle_since(), None);
        pause();
        drop(first);
        assert_eq!(calls.idle_since(), None, "one call is still open");
        pause();
        let ended = Instant::now();
        drop(second);
        let since = calls.idle_since().expect("no call open");
        assert!(
            since >= came + Duration::from_millis(90),
            "{:?}",
            since - came
        );
        assert!(since + Duration::from_millis(2) >= ended && since <= Instant::now());
    }
}
