//! Liaison: a FHIR R4 server for mental-health care coordination.
//!
//! Layout tour:
//! - [`config`]: command-line flags and environment variables (clap).
//! - [`telemetry`]: log set-up.
//! - [`fhir`]: FHIR knowledge free of HTTP and SQL — the embedded R4 definitions, validation,
//!   the registry of supported resource types, OperationOutcome, Bundles, `meta` stamping.
//! - [`store`]: resource versions on SQLite or PostgreSQL; one transaction per write.
//! - [`http`]: the axum router — one generic handler per FHIR interaction, content negotiation,
//!   CapabilityStatement, health checks.
//! - [`error`]: `AppError`, the single error type that becomes an HTTP response.
//! - [`state`]: `AppState`, what handlers share (store, registry, base URL).
//!
//! Dependencies point one way: `http` uses `fhir` and `store`; `store` uses `fhir`; `fhir`
//! uses neither.
//!
//! Conventions: resources travel as `serde_json` maps, stored and served as the client sent them
//! (apart from the `meta` elements the server owns); errors carry resource types and ids, never
//! clinical content; specification references cite R4 page names (e.g. `http.html#update`).

pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod fhir;
pub mod http;
pub mod metrics;
pub mod serve;
pub mod state;
pub mod store;
pub mod subscription;
pub mod telemetry;
pub mod tls;

use axum::Router;

pub use config::Config;
pub use state::AppState;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the database")]
    Store(#[from] store::StoreError),
    #[error("loading the authorization keys")]
    Auth(#[source] auth::jwt::JwksError),
    #[error("loading the label rules: {0}")]
    LabelRules(String),
}

/// Opens and migrates the store named by `config` and builds the application state.
pub async fn build_state(config: &Config) -> Result<AppState, StartError> {
    let store = store::Store::connect(&config.database_url, config.db_max_connections).await?;
    store.migrate().await?;
    let registry = fhir::registry::Registry::r4();
    let base_url = config.base_url();
    // Index rows and links of resources stored by an older version are rebuilt once.
    let derive = |ty: &str, resource: &serde_json::Value| {
        let references = resource
            .as_object()
            .map(|r| fhir::validate::validate(&registry.definitions, r).references)
            .unwrap_or_default();
        registry.derive(ty, resource, references, &base_url)
    };
    let rebuilt = store.reindex_if_needed(&derive).await?;
    if rebuilt > 0 {
        tracing::info!(resources = rebuilt, "search index and reference links rebuilt");
    }
    store.optimize().await?;
    let limits = state::Limits {
        max_page_size: config.max_page_size,
        total_count_cap: config.total_count_cap,
        max_conditional_deletes: config.max_conditional_deletes as usize,
        max_bundle_entries: config.max_bundle_entries as usize,
        max_body_bytes: config.max_body_bytes,
        search_terms: fhir::search::query::Terms {
            params: config.max_search_params as usize,
            values: config.max_search_values as usize,
        },
    };
    let label_rules = match &config.label_rules {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| StartError::LabelRules(e.to_string()))?;
            auth::labels::LabelRules::parse(&text, &registry.search, &base_url).map_err(StartError::LabelRules)?
        }
        None => auth::labels::LabelRules::default(),
    };
    let state =
        AppState::new(store, registry, base_url, limits, label_rules).with_subscriptions(state::SubscriptionSettings {
            allow_http: config.subscription_allow_http,
            hmac_secret: config.subscription_hmac_secret.clone(),
            max_attempts: config.subscription_max_attempts.max(1),
            retry: std::time::Duration::from_millis(config.subscription_retry_ms),
            lease: std::time::Duration::from_secs(config.subscription_lease_seconds.max(1)),
        });
    Ok(match config.auth_settings() {
        Some(settings) => {
            let auth = auth::jwt::Authenticator::new(settings).await.map_err(StartError::Auth)?;
            let smart = state::SmartEndpoints {
                authorization: config.auth_authorization_endpoint.clone(),
                token: config.auth_token_endpoint.clone(),
            };
            state.with_auth(auth, smart)
        }
        None => state,
    })
}

/// Opens the database named by `config` and walks the audit chain.
pub async fn verify_audit(config: &Config) -> Result<store::ChainReport, StartError> {
    let store = store::Store::connect(&config.database_url, 1).await?;
    store.migrate().await?;
    Ok(store.verify_audit().await?)
}

/// The application router for `state`.
pub fn app(state: AppState) -> Router {
    let docs = http::docs(&state.registry);
    http::router(state).merge(docs)
}

pub use serve::{serve, Peer};

/// Loads the TLS configuration named by `config`, if any.
pub fn load_tls(config: &Config) -> Result<Option<std::sync::Arc<tls::Tls>>, tls::TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let files = tls::TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: config.tls_client_ca.clone() };
    Ok(Some(std::sync::Arc::new(tls::Tls::load(files)?)))
}

/// Reloads the certificate files when they change (checked every `every`), and on SIGHUP.
pub async fn reload_tls(tls: std::sync::Arc<tls::Tls>, every: std::time::Duration) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(if every.is_zero() { std::time::Duration::from_secs(3600) } else { every });
    tick.tick().await;
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<bool>();
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = signalled => true,
        };
        let result = if forced {
            tls.reload().map(|()| true)
        } else if every.is_zero() {
            Ok(false)
        } else {
            tls.reload_if_changed()
        };
        match result {
            Ok(true) => tracing::info!("TLS certificates reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "reloading TLS certificates failed; keeping the previous ones"),
        }
    }
}

/// Keeps the query planner's statistics fresh while the server runs (hourly; only SQLite needs
/// it, see [`store::Store::optimize`]).
pub async fn maintain(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = state.store.optimize().await {
            tracing::warn!(error = %e, "refreshing planner statistics failed");
        }
    }
}
