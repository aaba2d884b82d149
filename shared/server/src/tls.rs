//! Transport security: the certificates a server presents (gRPC and HTTP alike, from the same
//! files), the client certificates it may require (mTLS), and the trust and client identity of
//! outgoing calls (runner to catalogue, runner to runner). rustls with the ring provider
//! throughout; PEM files are read once at start-up and every problem names its option and file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Args;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};

/// How long a client may take over its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes the HTTP port runs at once; a connection beyond them is closed at once, so that
/// clients that open connections and never finish a handshake hold bounded memory.
const MAX_HANDSHAKES: usize = 1024;

/// A certificate, key or CA file that cannot be used, named with its option.
#[derive(Debug, thiserror::Error)]
#[error("{option} {}: {reason}", path.display())]
pub struct TlsError {
    option: &'static str,
    path: PathBuf,
    reason: String,
}

impl TlsError {
    fn new(option: &'static str, path: &Path, reason: impl std::fmt::Display) -> Self {
        Self {
            option,
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// What a server presents and whom it accepts (CONTRACT §6).
#[derive(Args, Clone, Debug, Default)]
pub struct ServerTlsOptions {
    /// PEM certificate chain this server presents on gRPC and HTTP alike (with --tls-key).
    #[arg(long, env = "PIRUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "PIRUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: every client must present a certificate one of them signed (mTLS),
    /// on gRPC and HTTP alike.
    #[arg(long, env = "PIRUS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve plaintext on an address other machines can reach (behind a TLS-terminating proxy,
    /// or on a network you trust). Without it, a non-loopback bind needs --tls-cert.
    #[arg(long, env = "PIRUS_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
}

/// A server's loaded TLS settings: one for tonic, one for the HTTP port, from the same files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub grpc: tonic::transport::ServerTlsConfig,
    pub http: Arc<ServerConfig>,
}

impl ServerTlsOptions {
    /// Reads and checks the files; none when no certificate is given.
    pub fn load(&self) -> Result<Option<ServerTls>, TlsError> {
        let (Some(cert_path), Some(key_path)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let (cert_pem, chain) = read_certificates("--tls-cert", cert_path)?;
        let key_pem = read("--tls-key", key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::new("--tls-key", key_path, pem_reason(e, "private key")))?;

        let mut grpc = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match &self.tls_client_ca {
            Some(ca_path) => {
                let (ca_pem, roots) = read_roots("--tls-client-ca", ca_path)?;
                grpc = grpc.client_ca_root(tonic::transport::Certificate::from_pem(ca_pem));
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::new("--tls-client-ca", ca_path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut http = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::new("--tls-key", key_path, e))?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(ServerTls {
            grpc,
            http: Arc::new(http),
        }))
    }
}

/// Whom outgoing calls trust and what they present (CONTRACT §6).
#[derive(Args, Clone, Debug, Default)]
pub struct ClientTlsOptions {
    /// PEM CA certificates trusted for https:// addresses this process calls (the catalogue,
    /// other runners); default the system's trusted roots.
    #[arg(long, env = "PIRUS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate presented on https:// calls, for servers that require one (with
    /// --tls-client-key).
    #[arg(long, env = "PIRUS_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "PIRUS_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

/// Outgoing calls' TLS: applied to every `https://` endpoint, never to `http://`.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: tonic::transport::ClientTlsConfig,
}

impl ClientTlsOptions {
    pub fn load(&self) -> Result<ClientTls, TlsError> {
        let mut config = tonic::transport::ClientTlsConfig::new();
        config = match &self.tls_ca {
            Some(path) => {
                let (pem, _) = read_roots("--tls-ca", path)?;
                config.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            let (cert_pem, _) = read_certificates("--tls-client-cert", cert)?;
            let key_pem = read("--tls-client-key", key)?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                TlsError::new("--tls-client-key", key, pem_reason(e, "private key"))
            })?;
            config = config.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        }
        Ok(ClientTls {
            config: config.timeout(HANDSHAKE_TIMEOUT),
        })
    }
}

impl ClientTls {
    /// An endpoint for `url` (`http://` or `https://`), with TLS when it is `https://`.
    pub fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, String> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|e| e.to_string())?;
        if url.starts_with("https://") {
            endpoint
                .tls_config(self.config.clone())
                .map_err(|e| e.to_string())
        } else {
            Ok(endpoint)
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(option, path, e))
}

/// The file's bytes and the certificates in it (at least one).
fn read_certificates(
    option: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsError> {
    let pem = read(option, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(option, path, pem_reason(e, "certificate")))?;
    if certs.is_empty() {
        return Err(TlsError::new(option, path, "no PEM certificate in it"));
    }
    Ok((pem, certs))
}

/// The file's bytes and its certificates as trust roots.
fn read_roots(option: &'static str, path: &Path) -> Result<(Vec<u8>, RootCertStore), TlsError> {
    let (pem, certs) = read_certificates(option, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(option, path, e))?;
    }
    Ok((pem, roots))
}

fn pem_reason(e: rustls::pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a PEM {what}: {other:?}"),
    }
}

/// The HTTP port's listener with TLS: handshakes run concurrently (a slow client holds up no
/// one), at most [`MAX_HANDSHAKES`] at once, each under [`HANDSHAKE_TIMEOUT`]; failed
/// handshakes are logged and dropped.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = std::sync::Arc::clone(&handshakes).try_acquire_owned() else {
                    tracing::debug!(%peer, "too many TLS handshakes at once; connection closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
