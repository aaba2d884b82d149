//! Runs one Pirus process's servers: gRPC (the service, health, reflection v1 and v1alpha, one
//! tower layer stack) and the operations HTTP port, from pre-bound listeners, until shutdown.
//!
//! Shutdown order: readiness flips to not serving first, then both servers stop accepting and
//! drain in-flight calls under a deadline; whatever is still running then is dropped.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use pirus_db::sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{
    health::{self, Health},
    metrics::{GrpcMetricsLayer, Metrics},
    ops,
    tls::{ServerTls, TlsListener},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the address file {path}: {source}")]
    AddrFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("cannot set up TLS for gRPC: {0}")]
    GrpcTls(#[source] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// The two listening sockets of a process, bound before anything else so that a taken port is
/// reported at once and `127.0.0.1:0` resolves to a real port, and the TLS both serve with.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub tls: Option<ServerTls>,
}

impl Listeners {
    pub async fn bind(
        grpc: SocketAddr,
        http: SocketAddr,
        tls: Option<ServerTls>,
    ) -> Result<Self, ServeError> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { what, addr, source })
        };
        Ok(Self {
            grpc: bind("gRPC", grpc).await?,
            http: bind("HTTP", http).await?,
            tls,
        })
    }

    /// The scheme clients use: `https` when serving with a certificate.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }
}

#[derive(Debug)]
pub struct ServeOptions {
    /// Fully qualified gRPC service names to report in health.
    pub services: Vec<&'static str>,
    pub addr_file: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    /// Encoded `FileDescriptorSet`s that reflection publishes (health's is added here).
    pub reflection: Vec<&'static [u8]>,
    /// The authorization layer every call (but health and reflection) passes.
    pub auth: AuthSetup,
    /// Bounds of the HTTP port's connections.
    pub http: HttpLimits,
    /// Bounds of the gRPC port's connections.
    pub grpc: crate::grpc_port::GrpcLimits,
    /// The methods whose requests carry data (WriteUpload), which the request bounds leave
    /// to their own ([`crate::request_bounds`]).
    pub data_streams: &'static [&'static str],
}

/// What the authorization layer needs: the verifier, the audit trail, and which methods change
/// something (to be audited).
#[derive(Debug, Clone)]
pub struct AuthSetup {
    pub verifier: pirus_auth::Verifier,
    pub audit: pirus_auth::audit::Audit,
    pub changes: &'static [&'static str],
    /// The long-lived methods each caller holds at most `budget` of at once.
    pub streams: &'static [&'static str],
    pub budget: pirus_auth::admission::StreamBudget,
    /// HTTP/2 streams one connection may carry at once.
    pub streams_per_connection: u32,
}

/// What a service hands to [`serve`]: its gRPC routes and any HTTP routes of its own.
#[derive(Debug)]
pub struct Service {
    pub grpc: Routes,
    pub http: axum::Router,
}

/// Serves until `shutdown` is cancelled, then drains. `db` must be connected and migrated:
/// health turns SERVING here, and the database watchdog keeps it honest afterwards.
pub async fn serve(
    options: ServeOptions,
    listeners: Listeners,
    service: Service,
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let grpc_addr = listeners.grpc_addr();
    let http_addr = listeners.http_addr();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, &options.services, Arc::clone(&metrics)).await;
    let (reflection_v1, reflection_v1alpha) = reflection(&options.reflection)?;
    let routes = service
        .grpc
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // Servers stop on `stop`, which is cancelled only after readiness has flipped.
    let stop = CancellationToken::new();
    // One budget per caller across gRPC streams and tus transfers.
    let admission = pirus_auth::admission::Admission::new(options.auth.budget);
    let incoming = crate::grpc_port::Incoming::new(listeners.grpc, options.grpc);
    let grpc_task = spawn_grpc(
        &options,
        incoming,
        listeners.tls.as_ref(),
        Arc::clone(&metrics),
        admission.clone(),
        routes,
        stop.clone(),
    )?;
    let http_router = ops::router(
        health.clone(),
        std::sync::Arc::clone(&metrics),
        options.auth.verifier.clone(),
    )
    .merge(service.http.layer(axum::middleware::from_fn_with_state(
        ops::HttpAuth {
            verifier: options.auth.verifier.clone(),
            audit: options.auth.audit.clone(),
            admission,
        },
        ops::authenticate,
    )));
    let http_task = match &listeners.tls {
        None => spawn_http(listeners.http, http_router, stop.clone(), options.http),
        Some(tls) => {
            let listener = TlsListener::new(listeners.http, std::sync::Arc::clone(&tls.http))
                .map_err(ServeError::Http)?;
            spawn_http(listener, http_router, stop.clone(), options.http)
        }
    };

    let watchdog = tokio::spawn(health::watch_database(db, health.clone(), stop.clone()));
    // Streams and transfers end when their token stops being valid.
    tokio::spawn(pirus_auth::revocation::watch(
        options.auth.verifier.clone(),
        stop.clone(),
    ));
    health.set_ready().await;

    if let Some(path) = &options.addr_file {
        write_addr_file(path, grpc_addr, http_addr)?;
    }
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "serving");

    let tasks = Tasks {
        grpc: grpc_task,
        http: http_task,
        watchdog,
    };
    run_until_stopped(tasks, &health, &stop, &shutdown, options.shutdown_timeout).await
}

/// Both reflection versions, each describing everything served, themselves included, so that
/// `list` answers the same whichever version a client speaks.
fn reflection(
    sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                ),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The gRPC server over `incoming`, with the layers every call passes through, serving
/// `routes` until `stop`.
fn spawn_grpc(
    options: &ServeOptions,
    incoming: crate::grpc_port::Incoming,
    tls: Option<&ServerTls>,
    metrics: Arc<Metrics>,
    admission: pirus_auth::admission::Admission,
    routes: Routes,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, ServeError> {
    // Large single streams (uploads, downloads, logs) need more than HTTP/2's default 64 KiB
    // window: 4 MiB a stream, 8 MiB a connection, fixed. Not the adaptive window: it starts
    // the connection at 64 KiB, and h2 sizes its budget for small DATA frames in flight (what
    // each request message of a new stream is) from that window, so a client opening more
    // than about 150 streams at once on one connection was cut off with GOAWAY
    // ENHANCE_YOUR_CALM (tests/tests/scale.rs); with 8 MiB it is some 20,000. Peers may send
    // frames of up to 1 MiB rather than 16 KiB: a WriteUpload of 1 GiB then costs the server
    // (and its client) 64 times fewer frames, about 12% of its time on a 2-core host.
    let mut builder = tonic::transport::Server::builder()
        .http2_adaptive_window(Some(false))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .max_frame_size(Some(1 << 20))
        // Long idle streams (WatchRun, StreamRunLogs, a paused upload) stay open through NATs
        // and proxies, and a peer that vanished is noticed, without every client having to
        // configure its own keepalive: a PING every 30 s, the connection dropped when one is
        // not answered within 20 s.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        .max_concurrent_streams(Some(options.auth.streams_per_connection))
        // Outermost: counts each call open on its connection (for --grpc-idle-timeout) and
        // gives the layers below the peer's address.
        .layer(crate::grpc_port::OpenCallsLayer)
        .layer(GrpcMetricsLayer::new(metrics))
        .layer(crate::request_bounds::RequestBoundsLayer::new(
            options.data_streams,
            crate::request_bounds::RequestLimits::default(),
        ))
        .layer(
            pirus_auth::layer::AuthLayer::new(
                options.auth.verifier.clone(),
                options.auth.audit.clone(),
                options.auth.changes,
            )
            .with_admission(options.auth.streams, admission),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            grpc_panic_response,
        ));
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.grpc.clone())
            .map_err(ServeError::GrpcTls)?;
    }
    // No server-wide timeout: it would also cut uploads and watches, which run for as long
    // as they need; a client's own deadline (grpc-timeout) is honoured by tonic.
    let server = builder
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
    Ok(tokio::spawn(server))
}

/// Bounds of the HTTP port's connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A client must send a request's whole header within this (and the next request's, on
    /// a kept-alive connection); the connection is closed otherwise.
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections one client (an IPv4 address, an IPv6 /64) keeps open at once; one more
    /// is closed as soon as it is accepted.
    pub max_connections_per_peer: usize,
}

/// Serves the HTTP port on `listener` (plain or TLS) until `stop`, HTTP/1.1 with
/// [`HttpLimits`] (a client that trickles its headers, or opens connections by the thousand,
/// holds nothing for long, and no one client can hold every connection slot); handlers see the peer's address as `ConnectInfo<SocketAddr>`
/// either way. On `stop` it stops accepting and waits for the connections in flight to end
/// their current requests (the caller bounds that wait).
fn spawn_http<L>(
    mut listener: L,
    router: axum::Router,
    stop: CancellationToken,
    limits: HttpLimits,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let slots = crate::connection_slots::ConnectionSlots::new(
            "HTTP",
            limits.max_connections,
            limits.max_connections_per_peer,
        );
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        loop {
            let (io, peer) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Some(slot) = slots.admit(peer) else {
                drop(io);
                continue;
            };
            let router = router.clone();
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    tower::ServiceExt::oneshot(router.clone(), request)
                },
            );
            let connection =
                graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(io), service));
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
            });
        }
        graceful.shutdown().await;
        Ok(())
    })
}

/// What a running server is made of.
struct Tasks {
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    watchdog: tokio::task::JoinHandle<()>,
}

/// Runs until asked to stop (or until a server fails on its own), then flips readiness, stops
/// accepting, and drains in-flight calls for at most `deadline`.
async fn run_until_stopped(
    mut tasks: Tasks,
    health: &Health,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
    deadline: std::time::Duration,
) -> Result<(), ServeError> {
    let early = tokio::select! {
        () = shutdown.cancelled() => None,
        r = &mut tasks.grpc => Some(r.map(|r| r.map_err(ServeError::Grpc))),
        r = &mut tasks.http => Some(r.map(|r| r.map_err(ServeError::Http))),
    };
    health.set_not_ready("shutting down").await;
    stop.cancel();
    let _ = tasks.watchdog.await;
    if let Some(result) = early {
        tracing::error!("a server stopped unexpectedly");
        return match result {
            Ok(r) => r,
            Err(join) => {
                tracing::error!(error = %join, "server task failed");
                Ok(())
            }
        };
    }
    tracing::info!(?deadline, "shutting down: draining in-flight calls");
    let drain = async {
        let (grpc, http) = tokio::join!(tasks.grpc, tasks.http);
        if let Ok(Err(e)) = grpc {
            tracing::warn!(error = %e, "gRPC server ended with an error");
        }
        if let Ok(Err(e)) = http {
            tracing::warn!(error = %e, "HTTP server ended with an error");
        }
    };
    if tokio::time::timeout(deadline, drain).await.is_err() {
        tracing::warn!("drain deadline passed; dropping the calls still in flight");
    }
    tracing::info!("stopped");
    Ok(())
}

/// A panic in a handler answers INTERNAL instead of dropping the connection.
fn grpc_panic_response(
    _panic: Box<dyn std::any::Any + Send + 'static>,
) -> http::Response<tonic::body::Body> {
    tracing::error!("a gRPC handler panicked");
    tonic::Status::internal("internal error").into_http()
}

/// Writes the bound addresses atomically (temporary file, then rename), so a reader never sees a
/// half-written file.
fn write_addr_file(path: &PathBuf, grpc: SocketAddr, http: SocketAddr) -> Result<(), ServeError> {
    let body = serde_json::json!({ "grpc": grpc.to_string(), "http": http.to_string() });
    let tmp = path.with_extension("tmp");
    let err = |source| ServeError::AddrFile {
        path: path.clone(),
        source,
    };
    std::fs::write(&tmp, format!("{body}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
