//! Property tests of the tus headers a client sends: whatever the bytes, parsing answers a
//! value or an error naming the header, never panics, and what it keeps is bounded by what
//! was sent; Upload-Metadata round-trips through its encoding; Upload-Concat finds every
//! upload it names.

use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use uuid::Uuid;

use super::headers::{self, Concat};
use crate::domain::{Endpoint, Error};

fn with(name: &'static str, value: &[u8]) -> Option<HeaderMap> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    Some(headers)
}

/// The header an error names, if it is a field error.
fn field(e: &Error) -> Option<&str> {
    match e {
        Error::InvalidArgument { field, .. } => Some(field),
        _ => None,
    }
}

/// Upload-Metadata keys as tus allows them: no spaces or commas, not empty.
fn key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,16}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn metadata_round_trips(
        pairs in proptest::collection::btree_map(key(), proptest::option::of(any::<String>()), 0..12)
    ) {
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k} {}", STANDARD.encode(v)),
                None => k.clone(),
            })
            .collect();
        let raw = encoded.join(",");
        let headers = with("upload-metadata", raw.as_bytes()).expect("a valid header");
        let (kept, parsed) = headers::metadata(&headers).expect("well-formed metadata");
        // HTTP trims a header's ends: a last value of "" ("key ") arrives as "key".
        prop_assert_eq!(kept, raw.trim());
        // An empty value reads as no value, wherever it stands (both mean nothing given).
        let expected: Vec<(String, Option<String>)> = pairs
            .into_iter()
            .map(|(k, v)| (k, v.filter(|v| !v.is_empty())))
            .collect();
        let parsed: Vec<(String, Option<String>)> = parsed
            .into_iter()
            .map(|(k, v)| (k, v.filter(|v| !v.is_empty())))
            .collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn any_metadata_parses_or_is_refused_by_name(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(headers) = with("upload-metadata", &raw) {
            match headers::metadata(&headers) {
                Ok((kept, pairs)) => {
                    prop_assert!(kept.len() <= raw.len());
                    // Each pair came from at least a key's worth of the header.
                    prop_assert!(pairs.len() <= raw.len());
                }
                Err(e) => prop_assert_eq!(field(&e), Some("Upload-Metadata")),
            }
        }
    }

    #[test]
    fn any_checksum_parses_or_is_refused_by_name(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Some(headers) = with("upload-checksum", &raw) {
            match headers::checksum(&headers) {
                Ok(Some(c)) => prop_assert!(c.expected.len() <= raw.len()),
                Ok(None) => prop_assert!(false, "a header was sent"),
                Err(e) => prop_assert_eq!(field(&e), Some("Upload-Checksum")),
            }
        }
    }

    #[test]
    fn any_length_parses_or_is_refused_by_name(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Some(headers) = with("upload-length", &raw) {
            match headers::number(&headers, "Upload-Length") {
                Ok(Some(_)) => {
                    let text = String::from_utf8(raw).unwrap_or_default();
                    let digits = text.trim().trim_start_matches('+');
                    prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
                }
                Ok(None) => prop_assert!(false, "a header was sent"),
                Err(e) => prop_assert_eq!(field(&e), Some("Upload-Length")),
            }
        }
    }

    #[test]
    fn concat_finds_every_upload_it_names(
        ids in proptest::collection::vec(any::<u128>(), 1..20),
        absolute in any::<bool>(),
    ) {
        let ids: Vec<Uuid> = ids.into_iter().map(Uuid::from_u128).collect();
        let base = if absolute { "https://catalogue.example:8080" } else { "" };
        let urls: Vec<String> = ids.iter().map(|id| format!("{base}/uploads/files/{id}")).collect();
        let raw = format!("final;{}", urls.join(" "));
        let headers = with("upload-concat", raw.as_bytes()).expect("a valid header");
        prop_assert_eq!(
            headers::concat(&headers, Endpoint::Files).expect("well-formed"),
            Some(Concat::Final(ids))
        );
    }

    #[test]
    fn any_concat_parses_or_is_refused_by_name(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Some(headers) = with("upload-concat", &raw) {
            for endpoint in [Endpoint::Files, Endpoint::Pipelines] {
                match headers::concat(&headers, endpoint) {
                    Ok(Some(Concat::Final(parts))) => prop_assert!(parts.len() * 36 <= raw.len()),
                    Ok(_) => {}
                    Err(e) => prop_assert_eq!(field(&e), Some("Upload-Concat")),
                }
            }
        }
    }
}
