//! ListTasks' query read into the domain's run filter: `name_prefix`, `state`, `tag_key` /
//! `tag_value` pairs, `page_size`, `page_token` and `view`, each problem named by its
//! parameter.

use tes::v1::types::{requests::View, task::State as TesState};
use uuid::Uuid;

use super::{Failure, bad, view, views};
use crate::domain::{Page, RunFilter, TaskFilter};

/// ListTasks' page size when none is asked, and the largest (the TES schema's).
const DEFAULT_PAGE_SIZE: u64 = 256;
const MAX_PAGE_SIZE: u64 = 2048;
/// Tasks in a FULL page at most, and in a BASIC one (TES lets a server answer fewer than
/// asked, with a token for the rest). A task is kept whole with its run (up to 2 MiB), so a
/// BASIC page reads up to 32 MiB of them, a FULL one 8 tasks and their logs.
const FULL_PAGE_SIZE: u64 = 8;
const BASIC_PAGE_SIZE: u64 = 16;

/// What a ListTasks call asks for.
pub(super) struct Listing {
    pub(super) view: View,
    pub(super) page: Page,
    pub(super) filter: RunFilter,
}

impl Listing {
    /// The listing the query's pairs ask for; `None` for a state no Pirus task is ever in.
    pub(super) fn parse(pairs: &[(String, String)]) -> Result<Option<Self>, Failure> {
        let view = view(pairs)?;
        let values = |key: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let last = |key: &str| values(key).last().map(|v| v.to_string());
        let mut filter = TaskFilter {
            name_prefix: last("name_prefix").filter(|p| !p.is_empty()),
            ..Default::default()
        };
        if let Some(state) = last("state").filter(|s| !s.is_empty()) {
            let parsed: TesState = serde_json::from_value(serde_json::Value::String(state.clone()))
                .map_err(|_| bad("state", format!("'{state}' is not a TES state")))?;
            let Some((statuses, command_failed)) = views::statuses(parsed) else {
                return Ok(None);
            };
            filter.statuses = statuses;
            filter.command_failed = command_failed;
        }
        filter.tags = tags(&values("tag_key"), &values("tag_value"))?;
        let page = Page {
            size: page_size(last("page_size").as_deref(), view)?,
            after: page_token(last("page_token").as_deref())?,
        };
        Ok(Some(Self {
            view,
            page,
            filter: RunFilter {
                tasks: Some(filter),
                ..Default::default()
            },
        }))
    }
}

/// The page size asked, bounded by the view: a FULL task carries its executors' output (up to
/// 2 x 256 KiB an attempt) and a BASIC one its whole request, so their pages hold at most
/// [`FULL_PAGE_SIZE`] and [`BASIC_PAGE_SIZE`] tasks, with a token for the rest, and one request
/// cannot make the runner build a response of gigabytes (64 tasks of 2 MiB answered BASIC
/// were a 126 MB response, and eight such requests at once took 1.9 GB).
fn page_size(asked: Option<&str>, view: View) -> Result<u64, Failure> {
    let size = match asked {
        None | Some("") => DEFAULT_PAGE_SIZE,
        Some(v) => match v.parse::<u64>() {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) if n < MAX_PAGE_SIZE => n,
            _ => {
                return Err(bad(
                    "page_size",
                    format!("must be a whole number from 1 to {}", MAX_PAGE_SIZE - 1),
                ));
            }
        },
    };
    Ok(match view {
        View::Full => size.min(FULL_PAGE_SIZE),
        View::Basic => size.min(BASIC_PAGE_SIZE),
        View::Minimal => size,
    })
}

fn page_token(token: Option<&str>) -> Result<Option<Uuid>, Failure> {
    match token {
        None | Some("") => Ok(None),
        Some(token) => Uuid::try_parse(token)
            .map(Some)
            .map_err(|_| bad("page_token", "is not a token this service issued")),
    }
}

/// `tag_key` and `tag_value` pairs, in order: a key without its value matches any value.
fn tags(keys: &[&str], values: &[&str]) -> Result<Vec<(String, Option<String>)>, Failure> {
    if values.len() > keys.len() {
        return Err(bad("tag_value", "has more values than there are tag_key"));
    }
    Ok(keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let value = values.get(i).filter(|v| !v.is_empty());
            (k.to_string(), value.map(|v| v.to_string()))
        })
        .collect())
}
