//! Connections to the services: gRPC channels carrying the bearer token, and the TLS trust
//! the tus client shares with them.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use pirus_proto::{
    catalogue::v1::{
        access_service_client::AccessServiceClient,
        catalogue_service_client::CatalogueServiceClient,
    },
    runner::v1::runner_service_client::RunnerServiceClient,
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

use crate::config::Settings;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// An address with a scheme (`host:port` alone means plaintext, as grpcurl's `-plaintext`).
fn with_scheme(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

async fn channel(settings: &Settings, addr: &str, what: &str) -> Result<Channel> {
    let uri = with_scheme(addr);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("{what} address '{addr}' is not a URL"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if uri.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &settings.tls_ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read the CA file {}", path.display()))?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &settings.tls_client {
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS settings for {what}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the {what} at {uri}"))?;
    let header = match &settings.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token has characters a header cannot carry")?,
        ),
        None => None,
    };
    Ok(InterceptedService::new(channel, Bearer(header)))
}

pub(crate) async fn catalogue(settings: &Settings) -> Result<CatalogueServiceClient<Channel>> {
    Ok(
        CatalogueServiceClient::new(channel(settings, &settings.catalogue, "catalogue").await?)
            .max_decoding_message_size(64 << 20),
    )
}

pub(crate) async fn access(settings: &Settings) -> Result<AccessServiceClient<Channel>> {
    Ok(AccessServiceClient::new(
        channel(settings, &settings.catalogue, "catalogue").await?,
    ))
}

pub(crate) async fn runner(settings: &Settings) -> Result<RunnerServiceClient<Channel>> {
    Ok(
        RunnerServiceClient::new(channel(settings, &settings.runner, "runner").await?)
            .max_decoding_message_size(64 << 20),
    )
}

/// The TLS client settings of the tus client: the configured CA, else the system's roots.
pub(crate) fn rustls_config(settings: &Settings) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match &settings.tls_ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("{} holds a bad certificate", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("{} holds a bad certificate", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS settings")?
        .with_root_certificates(roots);
    let config = match &settings.tls_client {
        Some((cert, key)) => {
            use rustls::pki_types::PrivateKeyDer;
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read the certificate {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not match")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
