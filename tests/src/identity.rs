//! Credentials in the harness. Every test database made by [`crate::TestDb::create`] gets its
//! own admin token (bootstrapped as a deployment does); every process started on that
//! database knows it, so [`crate::Process::channel`], [`crate::http::Http`] and
//! [`crate::http_get`] call as that admin, and tests that are not about identity run unchanged.
//! A runner started by the harness gets a runner token of its own node. Identity tests mint
//! the tokens they need with [`mint`] and call with [`crate::Process::channel_as`] or without
//! any token ([`crate::Process::raw_channel`], [`crate::http::Http::anonymous`]).

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use anyhow::{Context, Result};
use pirus_auth::{Role, store::NewToken};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
};

/// Tokens by what they open: a database URL, or an HTTP address (`127.0.0.1:port`).
static TOKENS: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);

pub fn remember(key: &str, token: &str) {
    TOKENS
        .lock()
        .expect("tokens")
        .insert(key.to_owned(), token.to_owned());
}

pub fn recall(key: &str) -> Option<String> {
    TOKENS.lock().expect("tokens").get(key).cloned()
}

/// Adds `authorization: Bearer <token>` to every call, or nothing.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| {
            format!("Bearer {t}")
                .parse()
                .expect("a token is a valid header value")
        }))
    }
}

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

/// A channel whose calls carry a token (or none).
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

pub fn with_token(channel: tonic::transport::Channel, token: Option<&str>) -> Channel {
    InterceptedService::new(channel, Bearer::new(token))
}

/// Makes a token directly in the database; answers its secret.
pub async fn mint(
    database_url: &str,
    name: &str,
    role: Role,
    node: Option<&str>,
    ttl: Option<chrono::Duration>,
) -> Result<String> {
    let db = pirus_db::connect(&pirus_db::DbConfig::new(database_url)).await?;
    let store = pirus_auth::store::TokenStore::new(db.clone());
    let (_, secret) = store
        .create(NewToken {
            name: name.to_owned(),
            principal: pirus_auth::store::TokenPrincipal::New {
                role,
                quota: Default::default(),
            },
            node: node.map(str::to_owned),
            expires_at: ttl.map(|t| chrono::Utc::now() + t),
            created_by: None,
        })
        .await
        .context("minting a token")?;
    db.close().await.ok();
    Ok(secret)
}

/// Bootstraps the first admin token of a migrated database, as `pirus-catalogue token
/// bootstrap` does.
pub async fn bootstrap(database_url: &str) -> Result<String> {
    let db = pirus_db::connect(&pirus_db::DbConfig::new(database_url)).await?;
    let made = pirus_auth::store::TokenStore::new(db.clone())
        .bootstrap("harness admin")
        .await?
        .context("the test database had a token already")?;
    db.close().await.ok();
    Ok(made.1)
}

/// [`mint`] from synchronous code (starting a process), on a thread with its own runtime.
pub fn mint_blocking(
    database_url: &str,
    name: &str,
    role: Role,
    node: Option<&str>,
) -> Result<String> {
    let (url, name, node) = (
        database_url.to_owned(),
        name.to_owned(),
        node.map(str::to_owned),
    );
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(mint(&url, &name, role, node.as_deref(), None))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the minting thread panicked"))?
}

/// A channel to `addr` (`host:port`) whose calls carry the token in `PIRUS_BENCH_TOKEN`, if
/// set: for the benchmark clients.
pub async fn connect_from_env(addr: &str) -> Result<Channel> {
    let token = std::env::var("PIRUS_BENCH_TOKEN").ok();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(with_token(channel, token.as_deref()))
}

/// Makes principal `name` (a user) with `quota` through `catalogue`'s AccessService, as its
/// admin, and a token of it (named after it); answers the token's secret.
pub async fn principal(
    catalogue: &crate::Process,
    name: &str,
    quota: pirus_proto::catalogue::v1::Quota,
) -> Result<String> {
    use pirus_proto::catalogue::v1::{self as cat, access_service_client::AccessServiceClient};
    let mut access = AccessServiceClient::new(catalogue.channel().await?);
    access
        .create_principal(cat::CreatePrincipalRequest {
            name: name.into(),
            kind: cat::PrincipalKind::Person as i32,
            role: cat::Role::User as i32,
            quota: Some(quota),
            ..Default::default()
        })
        .await?;
    token_of(catalogue, name, &format!("{name} laptop")).await
}

/// A new token, labelled `label`, of principal `name`; answers its secret.
pub async fn token_of(catalogue: &crate::Process, name: &str, label: &str) -> Result<String> {
    use pirus_proto::catalogue::v1::{self as cat, access_service_client::AccessServiceClient};
    let made = AccessServiceClient::new(catalogue.channel().await?)
        .create_token(cat::CreateTokenRequest {
            name: label.into(),
            principal: name.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let token = made.token.context("CreateToken answered no token")?;
    anyhow::ensure!(
        token.principal == name,
        "the token acts for {}",
        token.principal
    );
    Ok(made.secret)
}

/// The catalogue, and a runner that cannot reach LXD (enough for everything but runs), on
/// `db`.
pub async fn services_without_lxd(db: &crate::TestDb) -> Result<(crate::Process, crate::Process)> {
    let catalogue = crate::Launch::new(crate::Kind::Catalogue, &db.url)
        .start()
        .await?;
    let runner = crate::Launch::new(crate::Kind::Runner, &db.url)
        .args(["--lxd-socket", "/nonexistent/lxd.socket"])
        .start()
        .await?;
    Ok((catalogue, runner))
}
