//! tus 1.0 over HTTP (CONTRACT §3): the core protocol with creation, creation-with-upload,
//! creation-defer-length, termination, checksum, expiration and concatenation, on
//! `/uploads/files/` and `/uploads/pipelines/`. Uploads are the same resources WriteUpload
//! fills: either protocol resumes what the other started.

mod create;
mod headers;
#[cfg(test)]
mod props;

use std::{ops::ControlFlow, sync::Arc};

use axum::{
    Extension, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
};
use pirus_auth::Caller;
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::{
    domain::{Endpoint, Error, Result, UploadState},
    files::Files,
    pipelines::Pipelines,
    uploads::{
        Terminated, Transfer, Uploads,
        driver::{self, Piece, Stop},
    },
};
use headers::{OFFSET_OCTET_STREAM, TUS_VERSION};

#[derive(Clone)]
struct Tus {
    uploads: Uploads,
    files: Files,
    pipelines: Pipelines,
    public_url: Arc<str>,
    /// Origins whose pages may call from a browser; none by default.
    cors_origins: Arc<[String]>,
}

/// The tus routes. They sit behind the HTTP authorization layer, which puts the caller in
/// every request but OPTIONS.
pub(crate) fn router(
    uploads: Uploads,
    files: Files,
    pipelines: Pipelines,
    public_url: &str,
    cors_origins: &[String],
) -> Router {
    let state = Tus {
        uploads,
        files,
        pipelines,
        public_url: public_url.into(),
        cors_origins: cors_origins.into(),
    };
    Router::new()
        .route("/uploads/{endpoint}", any(collection))
        .route("/uploads/{endpoint}/", any(collection))
        .route("/uploads/{endpoint}/{id}", any(member))
        .with_state(state)
}

/// The status code of an error, as tus and CONTRACT §3 want it.
fn error_response(e: Error) -> Response {
    let status = match &e {
        Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Gone(_) => StatusCode::GONE,
        Error::AlreadyExists(_) | Error::FailedPrecondition(_) | Error::OffsetMismatch { .. } => {
            StatusCode::CONFLICT
        }
        Error::Locked => StatusCode::LOCKED,
        Error::ChecksumMismatch => StatusCode::from_u16(460).expect("460 is a valid status"),
        Error::TooLarge(_) | Error::QuotaExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Busy(_) => {
            let mut response = reply(StatusCode::TOO_MANY_REQUESTS, format!("{e}\n"));
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return response.into_response();
        }
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
        }
    };
    reply(status, format!("{e}\n")).into_response()
}

/// A response carrying Tus-Resumable, as every tus response must.
fn reply(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    let h = response.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    response
}

/// The request's Origin, when it is one of `--cors-origins`.
fn allowed_origin<'h>(tus: &Tus, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
    let origin = headers.get("origin")?;
    let text = origin.to_str().ok()?;
    tus.cors_origins.iter().any(|o| o == text).then_some(origin)
}

/// CORS headers for an allowed origin; none for any other (the browser then withholds the
/// answer from the page).
fn with_cors(tus: &Tus, request: &HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = allowed_origin(tus, request) {
        let h = response.headers_mut();
        h.insert("access-control-allow-origin", origin.clone());
        h.insert("vary", HeaderValue::from_static("Origin"));
        h.insert(
            "access-control-expose-headers",
            HeaderValue::from_static(
                "Upload-Offset, Location, Upload-Length, Tus-Version, Tus-Resumable, \
                 Tus-Max-Size, Tus-Extension, Upload-Metadata, Upload-Defer-Length, \
                 Upload-Concat, Upload-Expires",
            ),
        );
    }
    response
}

/// The answer to a request the authorization layer let through without a caller (it never
/// should: every request but OPTIONS gets one).
fn unauthenticated() -> Response {
    pirus_server::ops::unauthorized(
        StatusCode::UNAUTHORIZED,
        "the request was not authenticated",
    )
}

fn set(response: &mut Response, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        response.headers_mut().insert(name, v);
    }
}

fn endpoint(name: &str) -> Result<Endpoint> {
    Endpoint::parse(name).ok_or_else(|| Error::NotFound(format!("/uploads/{name}/")))
}

fn precondition_failed() -> Response {
    let mut r = reply(
        StatusCode::PRECONDITION_FAILED,
        "Tus-Resumable must be 1.0.0\n",
    );
    set(&mut r, "tus-version", TUS_VERSION);
    r
}

/// What both routes do first: resolve the endpoint, answer OPTIONS (which needs neither a
/// token nor Tus-Resumable), and take the caller the authorization layer found (401 without
/// one). `Break` carries the response to send as it is.
fn preamble(
    tus: &Tus,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    found: Option<Extension<Caller>>,
) -> ControlFlow<Response, (Endpoint, Caller)> {
    match (endpoint(name), found) {
        (Err(e), _) => ControlFlow::Break(error_response(e)),
        (Ok(endpoint), _) if method == Method::OPTIONS => {
            ControlFlow::Break(options(tus, endpoint, headers))
        }
        (Ok(_), None) => ControlFlow::Break(unauthenticated()),
        (Ok(endpoint), Some(Extension(caller))) => ControlFlow::Continue((endpoint, caller)),
    }
}

async fn collection(
    State(tus): State<Tus>,
    Path(endpoint_name): Path<String>,
    found: Option<Extension<Caller>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = async {
        let (endpoint, caller) = match preamble(&tus, &endpoint_name, &method, &headers, found) {
            ControlFlow::Continue(found) => found,
            ControlFlow::Break(response) => return response,
        };
        if method != Method::POST {
            return tus_method_not_allowed("OPTIONS, POST");
        }
        if !headers::resumable_ok(&headers) {
            return precondition_failed();
        }
        create::create(&tus, &caller, endpoint, &headers, body)
            .await
            .unwrap_or_else(error_response)
    };
    with_cors(&tus, &headers, response.await)
}

async fn member(
    State(tus): State<Tus>,
    Path((endpoint_name, id)): Path<(String, String)>,
    found: Option<Extension<Caller>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = async {
        let (endpoint, caller) = match preamble(&tus, &endpoint_name, &method, &headers, found) {
            ControlFlow::Continue(found) => found,
            ControlFlow::Break(response) => return response,
        };
        // Browser clients behind proxies that only pass GET and POST; only where browsers
        // are let in at all (--cors-origins).
        let method = match headers
            .get("x-http-method-override")
            .and_then(|v| v.to_str().ok())
        {
            Some(overridden) if method == Method::POST && !tus.cors_origins.is_empty() => {
                Method::from_bytes(overridden.as_bytes()).unwrap_or(method)
            }
            _ => method,
        };
        if !headers::resumable_ok(&headers) {
            return precondition_failed();
        }
        let Ok(id) = Uuid::try_parse(&id) else {
            return error_response(Error::NotFound(format!("upload {id}")));
        };
        let result = match method {
            Method::HEAD => head(&tus, &caller, endpoint, id).await,
            Method::PATCH => patch(&tus, &caller, endpoint, id, &headers, body).await,
            Method::DELETE => terminate(&tus, &caller, endpoint, id).await,
            _ => return tus_method_not_allowed("OPTIONS, HEAD, PATCH, DELETE"),
        };
        result.unwrap_or_else(error_response)
    };
    with_cors(&tus, &headers, response.await)
}

fn tus_empty(status: StatusCode) -> Response {
    reply(status, Body::empty())
}

fn tus_method_not_allowed(allow: &'static str) -> Response {
    let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    set(&mut r, "allow", allow);
    r
}

fn options(tus: &Tus, endpoint: Endpoint, request: &HeaderMap) -> Response {
    let mut r = tus_empty(StatusCode::NO_CONTENT);
    set(&mut r, "tus-version", TUS_VERSION);
    set(&mut r, "tus-extension", headers::extensions(endpoint));
    set(
        &mut r,
        "tus-checksum-algorithm",
        headers::CHECKSUM_ALGORITHMS,
    );
    set(&mut r, "tus-max-size", tus.uploads.max_size());
    // CORS preflight, for browser clients (tus-js-client) of the allowed origins.
    if allowed_origin(tus, request).is_some() {
        set(
            &mut r,
            "access-control-allow-methods",
            "POST, HEAD, PATCH, DELETE, OPTIONS",
        );
        set(
            &mut r,
            "access-control-allow-headers",
            "Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, \
             Content-Type, Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, \
             Upload-Defer-Length, Upload-Concat, Upload-Checksum",
        );
        set(&mut r, "access-control-max-age", 86_400);
    }
    r
}

/// The upload's headers, as HEAD and creation report them.
fn describe(r: &mut Response, state: &UploadState) {
    set(r, "upload-offset", state.offset);
    match state.size {
        Some(size) => set(r, "upload-length", size),
        None => set(r, "upload-defer-length", 1),
    }
    if !state.complete {
        set(r, "upload-expires", headers::http_date(state.expires_at));
    }
}

async fn head(tus: &Tus, caller: &Caller, endpoint: Endpoint, id: Uuid) -> Result<Response> {
    let state = tus.uploads.state_for(caller, id, Some(endpoint)).await?;
    let mut r = tus_empty(StatusCode::OK);
    describe(&mut r, &state);
    set(&mut r, "cache-control", "no-store");
    if !state.metadata.is_empty() {
        set(&mut r, "upload-metadata", &state.metadata);
    }
    if state.is_partial {
        set(&mut r, "upload-concat", "partial");
    } else if !state.parts.is_empty() {
        let urls: Vec<String> = state
            .parts
            .iter()
            .map(|p| format!("/uploads/{endpoint}/{p}"))
            .collect();
        set(&mut r, "upload-concat", format!("final;{}", urls.join(" ")));
    }
    Ok(r)
}

async fn patch(
    tus: &Tus,
    caller: &Caller,
    endpoint: Endpoint,
    id: Uuid,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    if headers.get("content-type").map(|v| v.as_bytes()) != Some(OFFSET_OCTET_STREAM.as_bytes()) {
        let mut r = reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {OFFSET_OCTET_STREAM}\n"),
        );
        set(&mut r, "accept-patch", OFFSET_OCTET_STREAM);
        return Ok(r);
    }
    let offset = headers::number(headers, "Upload-Offset")?
        .ok_or_else(|| Error::invalid("Upload-Offset", "is required"))?;
    let checksum = headers::checksum(headers)?;
    let length = headers::number(headers, "Upload-Length")?;
    let content_length = headers::number(headers, "Content-Length")?;

    let state = tus.uploads.state_for(caller, id, Some(endpoint)).await?;
    if !state.parts.is_empty() {
        return Ok(reply(
            StatusCode::FORBIDDEN,
            "a final upload cannot be patched\n",
        ));
    }
    // Nothing to add to a finished upload: the same answer as the PATCH that finished it.
    if state.complete && offset == state.offset && content_length.unwrap_or(0) == 0 {
        let mut r = tus_empty(StatusCode::NO_CONTENT);
        set(&mut r, "upload-offset", state.offset);
        return Ok(r);
    }
    if let (Some(size), Some(content_length)) = (length.or(state.size), content_length)
        && offset + content_length > size
    {
        return Err(Error::TooLarge(format!(
            "Content-Length: {content_length} bytes at offset {offset} go past the upload's \
             length of {size} bytes"
        )));
    }
    let transfer = tus
        .uploads
        .begin(caller, id, Some(endpoint), offset, length, checksum)
        .await?;
    let state = run_transfer(transfer, body).await?;
    let mut r = tus_empty(StatusCode::NO_CONTENT);
    set(&mut r, "upload-offset", state.offset);
    if !state.complete {
        set(
            &mut r,
            "upload-expires",
            headers::http_date(state.expires_at),
        );
    }
    Ok(r)
}

/// tus termination: the upload goes, and a complete upload's file with it.
async fn terminate(tus: &Tus, caller: &Caller, endpoint: Endpoint, id: Uuid) -> Result<Response> {
    match tus.uploads.terminate(caller, id, endpoint).await? {
        Terminated::Removed => {}
        Terminated::Complete(file) => {
            tus.files.delete(caller, file).await?;
        }
    }
    Ok(tus_empty(StatusCode::NO_CONTENT))
}

/// A request body (a PATCH's, or a creation's first bytes) through the transfer driver, in a
/// task of its own: a client that disconnects mid-body still leaves its bytes durable and the
/// upload paused, even though hyper drops this request's future.
pub(super) async fn run_transfer(transfer: Transfer, body: Body) -> Result<UploadState> {
    let pieces = body.into_data_stream().map(|data| {
        data.map(|data| Piece {
            offset: None,
            data,
            last: false,
        })
    });
    driver::drive(transfer, pieces)
        .await
        .map_err(|stop| match stop {
            Stop::Idle => Error::invalid("body", "nothing arrived for 30 s"),
            Stop::Slow(why) => Error::invalid("body", why),
            Stop::Cut(e) => Error::invalid("body", format!("the request body was cut off: {e}")),
            Stop::Refused(e) => e,
        })
}
