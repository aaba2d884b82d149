//! Request helpers both gRPC edges share: ids, keyset paging tokens, timestamps. Problems are
//! [`FieldError`]s naming the request field; each service turns them into its own error.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A malformed request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 1000;

/// Keyset paging: at most `size` items after `after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub size: u64,
    pub after: Option<Uuid>,
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A required UUID field.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, FieldError> {
    if value.is_empty() {
        return Err(field_error(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| field_error(field, format!("'{value}' is not a UUID")))
}

/// An optional UUID field (empty means none).
pub fn parse_optional_id(field: &str, value: &str) -> Result<Option<Uuid>, FieldError> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse_id(field, value).map(Some)
    }
}

/// Page size (default 50, at most 1000) and token of a List request. The token is opaque to
/// clients: the last id of the previous page.
pub fn page(page_size: i32, page_token: &str) -> Result<Page, FieldError> {
    if page_size < 0 {
        return Err(field_error("page_size", "must not be negative"));
    }
    let size = match page_size as u64 {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let after = match page_token {
        "" => None,
        token => Some(
            Uuid::try_parse(token)
                .map_err(|_| field_error("page_token", "is not a token this service issued"))?,
        ),
    };
    Ok(Page { size, after })
}

/// An idempotency key reused for another resource: the message naming the key, the resource
/// it made and the fields that `differ` (none differ: the same request, answered again).
pub fn reused_key(request_id: &str, what: &str, id: Uuid, differ: &[&str]) -> Option<String> {
    (!differ.is_empty()).then(|| {
        format!(
            "request_id '{request_id}' was used for {what} {id} with another {}; send a new \
             request_id for a new {what}",
            differ.join(", ")
        )
    })
}

impl Page {
    /// Rows a store reads for this page: one more than the page holds, so that a last page
    /// that is exactly full is known to be the last (and answers no token to an empty page).
    pub fn fetch(&self) -> u64 {
        self.size + 1
    }
}

/// The page cut from `rows` (read with [`Page::fetch`]): at most `size` items, and the token of
/// the next page, given only when more rows came than the page holds.
pub fn paged<T>(page: Page, mut rows: Vec<T>, id: impl Fn(&T) -> Uuid) -> (Vec<T>, String) {
    if rows.len() as u64 <= page.size {
        return (rows, String::new());
    }
    rows.truncate(page.size as usize);
    let token = rows.last().map(|r| id(r).simple().to_string());
    (rows, token.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging() {
        assert_eq!(
            page(0, "").unwrap(),
            Page {
                size: 50,
                after: None
            }
        );
        assert_eq!(page(5000, "").unwrap().size, 1000);
        assert_eq!(page(-1, "").unwrap_err().field, "page_size");
        assert_eq!(page(10, "garbage").unwrap_err().field, "page_token");
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let p = page(2, "").unwrap();
        assert_eq!(p.fetch(), 3);
        // Three rows for a page of two: two, and a token after the second.
        let (rows, token) = paged(p, ids.clone(), |id| *id);
        assert_eq!(rows, ids[..2]);
        assert_eq!(page(2, &token).unwrap().after, Some(ids[1]));
        // Exactly two (a last page that is full), one, none: no token.
        for n in [2, 1, 0] {
            let (rows, token) = paged(p, ids[..n].to_vec(), |id| *id);
            assert_eq!((rows.len(), token.as_str()), (n, ""));
        }
    }

    #[test]
    fn ids_name_their_field() {
        assert_eq!(parse_id("file_id", "nope").unwrap_err().field, "file_id");
        assert!(
            parse_id("file_id", "")
                .unwrap_err()
                .message
                .contains("required")
        );
        assert_eq!(parse_optional_id("source_run_id", "").unwrap(), None);
    }
}
