//! The nouns and their verbs, and what several of them share: uploading a local file through
//! tus with resume, finding a pipeline by name, paging through a list.

pub(crate) mod file;
pub(crate) mod follow;
pub(crate) mod node;
pub(crate) mod pipeline;
pub(crate) mod principal;
pub(crate) mod run;
pub(crate) mod token;

use std::future::Future;

use anyhow::{Context, Result, bail};
use pirus_proto::catalogue::v1::{
    ListPipelinesRequest, Pipeline, PipelineStatus,
    catalogue_service_client::CatalogueServiceClient,
};

use crate::{
    config::Settings,
    connect::{self, Channel},
    progress::Progress,
    remember::{Entry, Local, Remembered},
    tus::{self, Tus},
};

pub(crate) type Catalogue = CatalogueServiceClient<Channel>;

/// Uploads `local` into the upload `create` makes (CreateFile or CreatePipeline: its id and
/// tus URL), or resumes the one begun earlier for the same file (same path, size and
/// modification time) from the server's offset. Answers the upload's id.
pub(crate) async fn upload<F, Fut>(
    settings: &Settings,
    local: &Local,
    chunk: Option<u64>,
    create: F,
) -> Result<String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Entry>>,
{
    let remembered = Remembered::new(&settings.cache_dir);
    let tls = || connect::rustls_config(settings);
    let token = settings.token.as_deref();
    let (entry, start, mut tus) = begin(settings, local, &remembered, create).await?;
    let mut progress = Progress::new(&local.name(), local.size, start);
    let mut start = start;
    // A transfer cut off a moment ago may still hold the upload on the server (423) until the
    // server notices, and a refused or broken PATCH can end with the connection closed: try
    // again for a while, from the offset the server then reports.
    let mut locked_tries = 0;
    while start < local.size {
        let sent = tokio::select! {
            sent = tus.send(&entry.url, &local.path, start, local.size, chunk, &mut progress) => Some(sent),
            _ = tokio::signal::ctrl_c() => None,
        };
        if let Some(Err(e)) = &sent
            && (e.downcast_ref::<tus::Locked>().is_some() || e.downcast_ref::<tus::Cut>().is_some())
            && locked_tries < 60
        {
            locked_tries += 1;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            tus = Tus::connect(&entry.url, tls, token).await?;
            start = tus
                .head(&entry.url)
                .await?
                .context("the upload is gone from the server")?
                .offset;
            progress.set(start);
            continue;
        }
        match sent {
            None => {
                progress.finish("interrupted");
                bail!("interrupted: run the same command again to resume the upload");
            }
            Some(Err(e)) => {
                progress.finish("cut off");
                return Err(e.context(format!(
                    "the upload of {} stopped; run the same command again to resume it",
                    local.path.display()
                )));
            }
            Some(Ok(offset)) if offset > start => start = offset,
            Some(Ok(offset)) => bail!("the server took no bytes (its offset stays {offset})"),
        }
    }
    progress.finish("uploaded");
    remembered.forget(&local.key)?;
    Ok(entry.id)
}

/// The upload begun earlier for `local` (resumed at the server's offset), or a new one that
/// `create` makes: its entry, the offset to send from, and a tus connection to it.
async fn begin<F, Fut>(
    settings: &Settings,
    local: &Local,
    remembered: &Remembered,
    create: F,
) -> Result<(Entry, u64, Tus)>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Entry>>,
{
    let tls = || connect::rustls_config(settings);
    let token = settings.token.as_deref();
    if let Some(entry) = remembered.get(&local.key) {
        refuse_plaintext(settings, &entry.url)?;
        let mut tus = Tus::connect(&entry.url, tls, token).await?;
        match tus.head(&entry.url).await? {
            // The same upload, unless the server says another length (then start again).
            Some(at) if at.length.is_none_or(|l| l == local.size) => {
                return Ok((entry, at.offset, tus));
            }
            _ => remembered.forget(&local.key)?,
        }
    }
    let entry = create().await?;
    refuse_plaintext(settings, &entry.url)?;
    remembered.put(&local.key, entry.clone())?;
    let tus = Tus::connect(&entry.url, tls, token).await?;
    Ok((entry, 0, tus))
}

/// The upload URL is the catalogue's to say: it must not take the token out of TLS.
fn refuse_plaintext(settings: &Settings, url: &str) -> Result<()> {
    if settings.catalogue.starts_with("https://") && !url.starts_with("https://") {
        bail!(
            "the catalogue answered the upload URL {url}, which is not https: the token \
             would cross the network in clear (set the catalogue's --public-url to https)"
        );
    }
    Ok(())
}

/// Whether `text` is an id (a UUID) rather than a name.
pub(crate) fn is_id(text: &str) -> bool {
    text.len() == 36
        && text.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// A pipeline by id, `name` (its newest READY version) or `name:version`.
pub(crate) async fn find_pipeline(catalogue: &mut Catalogue, spec: &str) -> Result<Pipeline> {
    if is_id(spec) {
        return Ok(catalogue
            .get_pipeline(pirus_proto::catalogue::v1::GetPipelineRequest {
                id: spec.to_owned(),
            })
            .await
            .with_context(|| format!("pipeline {spec}"))?
            .into_inner());
    }
    let (name, version) = match spec.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    let mut page_token = String::new();
    let mut found: Option<Pipeline> = None;
    loop {
        let page = catalogue
            .list_pipelines(ListPipelinesRequest {
                page_size: 1000,
                page_token,
                status: PipelineStatus::Ready as i32,
                name: name.to_owned(),
            })
            .await
            .with_context(|| format!("looking for pipeline {spec}"))?
            .into_inner();
        // Oldest first: the last match is the newest.
        for p in page.pipelines {
            if version.is_none_or(|v| v == p.version) {
                found = Some(p);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    found.with_context(|| format!("no READY pipeline {spec}"))
}

/// Every page of a list, concatenated.
pub(crate) async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String)>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}
