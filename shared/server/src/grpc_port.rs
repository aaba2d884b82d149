//! The gRPC port's accept loop. tonic's own accepts every connection, holds one that never
//! speaks (nor finishes a TLS handshake) for ever, and stops serving on the first accept error
//! that is not about a single connection (out of file descriptors, say). This one:
//!
//! - keeps at most [`GrpcLimits::max_connections`] open, of which one client (an IPv4
//!   address, an IPv6 /64: [`crate::connection_slots`]) at most
//!   [`GrpcLimits::max_connections_per_peer`]; one more is closed as soon as it is accepted;
//! - closes a connection whose first 24 bytes (the HTTP/2 client preface; with TLS, the
//!   start of its hello) do not arrive within [`GrpcLimits::preface_timeout`];
//! - on an accept error, logs it and tries again 100 ms later instead of ending the server.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

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
}

/// The length of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE: usize = 24;

/// How long to wait after an accept error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accepted connections of the gRPC port, as tonic takes them
/// (`serve_with_incoming_shutdown`).
pub(crate) struct Incoming {
    listener: TcpListener,
    preface_timeout: Duration,
    slots: ConnectionSlots,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    pub(crate) fn new(listener: TcpListener, limits: GrpcLimits) -> Self {
        Self {
            listener,
            preface_timeout: limits.preface_timeout,
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
            return Poll::Ready(Some(Ok(Connection {
                stream,
                _slot: slot,
                preface: Some((Box::pin(tokio::time::sleep(this.preface_timeout)), PREFACE)),
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
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
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
