//! A plain HTTP/1.1 client for tus requests: any method, any headers, a body in memory.

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn offset(&self) -> u64 {
        self.header("upload-offset")
            .and_then(|v| v.parse().ok())
            .expect("Upload-Offset")
    }
}

/// Requests carry the token of the process serving the URL (see [`crate::identity`]), unless
/// they set `authorization` themselves or the client is [`Http::anonymous`].
#[derive(Debug, Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    harness_tokens: bool,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            harness_tokens: true,
        }
    }
}

impl Http {
    /// A client that sends no token but those a request names.
    pub fn anonymous() -> Self {
        Self {
            harness_tokens: false,
            ..Self::default()
        }
    }

    /// An anonymous client connecting from the loopback address `local` (a peer of its own).
    pub fn anonymous_from(local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            harness_tokens: false,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response> {
        let mut request = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let named = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"));
        if self.harness_tokens && !named {
            let uri: hyper::Uri = url.parse()?;
            if let Some(token) = uri
                .authority()
                .and_then(|a| crate::identity::recall(a.as_str()))
            {
                request = request.header("authorization", format!("Bearer {token}"));
            }
        }
        let response = self
            .client
            .request(request.body(Full::new(body.into()))?)
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// A tus request (Tus-Resumable set) with an empty body.
    pub async fn tus(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Response> {
        let mut all = vec![("tus-resumable", "1.0.0")];
        all.extend_from_slice(headers);
        self.send(method, url, &all, Bytes::new()).await
    }

    /// A tus PATCH of `data` at `offset`.
    pub async fn patch(
        &self,
        url: &str,
        offset: u64,
        data: impl Into<Bytes>,
        extra: &[(&str, &str)],
    ) -> Result<Response> {
        let offset = offset.to_string();
        let mut headers = vec![
            ("tus-resumable", "1.0.0"),
            ("content-type", "application/offset+octet-stream"),
            ("upload-offset", offset.as_str()),
        ];
        headers.extend_from_slice(extra);
        self.send("PATCH", url, &headers, data).await
    }
}

/// Base64 of `s` (for Upload-Metadata values).
pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A tus PATCH of `length` bytes to `location` (an absolute URL) as `token`, over a plain
/// connection of its own to `addr`: its headers and first `first` bytes are sent and the rest
/// held back, so the transfer stays in progress until the caller writes the rest.
pub async fn held_patch(
    addr: std::net::SocketAddr,
    location: &str,
    token: &str,
    length: usize,
    first: usize,
) -> Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let path = location
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| format!("/{path}"))
        .context("not an absolute URL")?;
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\n\
         Authorization: Bearer {token}\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&vec![b'x'; first]).await?;
    Ok(stream)
}
