//! Parsing of tus request headers. Every function names the header it rejects.

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use http::HeaderMap;
use uuid::Uuid;

use crate::{
    domain::{Endpoint, Error, Result},
    uploads::{ChecksumAlgorithm, ChunkChecksum},
};

pub(super) const TUS_VERSION: &str = "1.0.0";
/// The tus extensions an endpoint supports: concatenation only where parts can be joined
/// (files; a package is uploaded whole, or in PATCH chunks, and a part never installs).
pub(super) fn extensions(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Files => {
            "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,concatenation"
        }
        Endpoint::Pipelines => {
            "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration"
        }
    }
}
pub(super) const CHECKSUM_ALGORITHMS: &str = "sha1,sha256,md5";
pub(super) const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// Upload-Metadata as sent, and its decoded `(key, value)` pairs.
pub(super) type Metadata = (String, Vec<(String, Option<String>)>);

/// The longest Upload-Metadata accepted.
const MAX_METADATA: usize = 64 << 10;

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| Error::invalid(name, "is not text")),
    }
}

/// A non-negative integer header.
pub(super) fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>> {
    match text(headers, name)? {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| Error::invalid(name, format!("'{s}' is not a non-negative integer"))),
    }
}

/// Whether the request speaks our tus version.
pub(super) fn resumable_ok(headers: &HeaderMap) -> bool {
    headers.get("tus-resumable").and_then(|v| v.to_str().ok()) == Some(TUS_VERSION)
}

/// Upload-Metadata: comma-separated `key base64value` pairs (the value may be absent).
pub(super) fn metadata(headers: &HeaderMap) -> Result<Metadata> {
    const NAME: &str = "Upload-Metadata";
    let Some(raw) = text(headers, NAME)? else {
        return Ok((String::new(), Vec::new()));
    };
    if raw.len() > MAX_METADATA {
        return Err(Error::invalid(NAME, "is longer than 64 KiB"));
    }
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default();
        let value = parts.next();
        if parts.next().is_some() {
            return Err(Error::invalid(
                NAME,
                format!("'{item}' is not 'key base64value'"),
            ));
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(Error::invalid(NAME, format!("key '{key}' is repeated")));
        }
        let value = match value {
            None => None,
            Some(v) => {
                let bytes = STANDARD.decode(v).map_err(|_| {
                    Error::invalid(NAME, format!("the value of '{key}' is not base64"))
                })?;
                Some(String::from_utf8(bytes).map_err(|_| {
                    Error::invalid(NAME, format!("the value of '{key}' is not UTF-8"))
                })?)
            }
        };
        pairs.push((key.to_owned(), value));
    }
    Ok((raw.to_owned(), pairs))
}

/// Upload-Checksum: `<algorithm> <base64 digest>`.
pub(super) fn checksum(headers: &HeaderMap) -> Result<Option<ChunkChecksum>> {
    const NAME: &str = "Upload-Checksum";
    let Some(raw) = text(headers, NAME)? else {
        return Ok(None);
    };
    let (name, digest) = raw
        .split_once(' ')
        .ok_or_else(|| Error::invalid(NAME, "is not '<algorithm> <base64 digest>'"))?;
    let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(|| {
        Error::invalid(
            NAME,
            format!("'{name}' is not supported (use {CHECKSUM_ALGORITHMS})"),
        )
    })?;
    let expected = STANDARD
        .decode(digest.trim())
        .map_err(|_| Error::invalid(NAME, "the digest is not base64"))?;
    Ok(Some(ChunkChecksum {
        algorithm,
        expected,
    }))
}

/// Upload-Concat of a creation request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Concat {
    Partial,
    Final(Vec<Uuid>),
}

/// `partial`, or `final;<url> <url> ...` where each URL (absolute or a path) names an upload of
/// the same endpoint.
pub(super) fn concat(headers: &HeaderMap, endpoint: Endpoint) -> Result<Option<Concat>> {
    const NAME: &str = "Upload-Concat";
    let Some(raw) = text(headers, NAME)? else {
        return Ok(None);
    };
    if raw == "partial" {
        return Ok(Some(Concat::Partial));
    }
    let Some(list) = raw.strip_prefix("final;") else {
        return Err(Error::invalid(
            NAME,
            "must be 'partial' or 'final;<upload URLs>'",
        ));
    };
    let marker = format!("/uploads/{endpoint}/");
    let parts = list
        .split(' ')
        .filter(|u| !u.is_empty())
        .map(|url| {
            let id = url
                .rfind(&marker)
                .map(|i| &url[i + marker.len()..])
                .ok_or_else(|| {
                    Error::invalid(NAME, format!("'{url}' is not an upload of {marker}"))
                })?;
            Uuid::try_parse(id.trim_end_matches('/'))
                .map_err(|_| Error::invalid(NAME, format!("'{url}' is not an upload URL")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Concat::Final(parts)))
}

/// An HTTP date (RFC 7231), as Upload-Expires wants it.
pub(super) fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn metadata_pairs() {
        let h = headers(&[(
            "upload-metadata",
            "filename cmVhZHMuZnE=,is_confidential, tags YSxi",
        )]);
        let (_, pairs) = metadata(&h).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("filename".into(), Some("reads.fq".into())),
                ("is_confidential".into(), None),
                ("tags".into(), Some("a,b".into())),
            ]
        );
        for bad in ["filename !!!", "a YQ==,a Yg==", "a b c"] {
            let err = metadata(&headers(&[("upload-metadata", bad)])).unwrap_err();
            assert!(
                err.to_string().starts_with("Upload-Metadata"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn checksums() {
        let h = headers(&[("upload-checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")]);
        let c = checksum(&h).unwrap().unwrap();
        assert_eq!(c.algorithm, ChecksumAlgorithm::Sha1);
        assert_eq!(c.expected.len(), 20);
        assert!(checksum(&headers(&[("upload-checksum", "crc32 AAAA")])).is_err());
        assert!(checksum(&headers(&[("upload-checksum", "md5 ***")])).is_err());
        assert!(checksum(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn concat_lists() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let h = headers(&[(
            "upload-concat",
            &format!("final;http://h:1/uploads/files/{a} /uploads/files/{b}"),
        )]);
        assert_eq!(
            concat(&h, Endpoint::Files).unwrap(),
            Some(Concat::Final(vec![a, b]))
        );
        assert!(concat(&h, Endpoint::Pipelines).is_err());
        let h = headers(&[("upload-concat", "partial")]);
        assert_eq!(concat(&h, Endpoint::Files).unwrap(), Some(Concat::Partial));
        assert!(concat(&headers(&[("upload-concat", "whole")]), Endpoint::Files).is_err());
    }

    #[test]
    fn numbers_name_the_header() {
        let err = number(&headers(&[("upload-offset", "-1")]), "Upload-Offset").unwrap_err();
        assert!(err.to_string().starts_with("Upload-Offset"));
        assert_eq!(
            number(&headers(&[("upload-length", "12")]), "Upload-Length").unwrap(),
            Some(12)
        );
    }

    #[test]
    fn dates() {
        let t = DateTime::parse_from_rfc3339("2026-11-28T07:05:09Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(http_date(t), "Sat, 28 Nov 2026 07:05:09 GMT");
    }
}
