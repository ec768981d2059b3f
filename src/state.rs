//! Shared application state: immutable after start-up, so any replica can serve any request.

use std::ops::Deref;
use std::sync::Arc;

use crate::audit::AuditLog;
use crate::auth::jwt::Authenticator;
use crate::auth::labels::LabelRules;
use crate::fhir::registry::Registry;
use crate::store::Store;

/// Cheap to clone; handlers take it as `State<AppState>`.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// What every handler may use.
#[derive(Debug)]
pub struct Inner {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    /// Public base URL of the FHIR API, without a trailing slash.
    pub base_url: String,
    pub limits: Limits,
    /// Bearer-token validation; `None` when authorization is not configured.
    pub auth: Option<Authenticator>,
    /// Endpoints advertised in the SMART configuration.
    pub smart: SmartEndpoints,
    /// The audit trail.
    pub audit: AuditLog,
    /// How Subscription notifications are delivered.
    pub subscriptions: SubscriptionSettings,
    /// Rules that add security labels to what is written.
    pub label_rules: LabelRules,
    /// The process is shutting down: readiness fails so that no new work is sent here.
    pub draining: std::sync::atomic::AtomicBool,
    /// Counters, histograms and gauges for Prometheus.
    pub metrics: crate::metrics::Metrics,
}

/// Delivery settings of rest-hook Subscriptions.
#[derive(Clone, Default)]
pub struct SubscriptionSettings {
    /// Plain `http://` endpoints are accepted.
    pub allow_http: bool,
    /// The HMAC-SHA256 key of the signature header.
    pub hmac_secret: Option<String>,
    /// Failed deliveries before the Subscription is set to `error`.
    pub max_attempts: u32,
    /// The first retry's delay; each further one doubles it.
    pub retry: std::time::Duration,
    /// How long a worker holds the notifications it claimed.
    pub lease: std::time::Duration,
}

impl std::fmt::Debug for SubscriptionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionSettings")
            .field("allow_http", &self.allow_http)
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "(set)"))
            .field("max_attempts", &self.max_attempts)
            .field("retry", &self.retry)
            .field("lease", &self.lease)
            .finish()
    }
}

/// The issuer's OAuth2 endpoints, as configured.
#[derive(Debug, Clone, Default)]
pub struct SmartEndpoints {
    pub authorization: Option<String>,
    pub token: Option<String>,
}

/// Configured bounds on the work one request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest search page (`_count`).
    pub max_page_size: u32,
    /// With `_total=estimate`, searches count at most this many matches for `Bundle.total`.
    pub total_count_cap: i64,
    /// The most resources one conditional delete may remove (1: only single matches).
    pub max_conditional_deletes: usize,
    /// The most entries of a batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// The largest request body, in bytes (the entries of a batch are dispatched with it).
    pub max_body_bytes: usize,
    /// The most parameters and values of one search.
    pub search_terms: crate::fhir::search::query::Terms,
}

impl AppState {
    /// The state over `store`; starts the audit trail's writer on the current runtime.
    pub fn new(store: Store, registry: Registry, base_url: String, limits: Limits, label_rules: LabelRules) -> Self {
        let (store, registry) = (Arc::new(store), Arc::new(registry));
        let audit = AuditLog::start(store.clone(), registry.clone(), base_url.clone());
        let subscriptions = SubscriptionSettings::default();
        let metrics = crate::metrics::Metrics::default();
        metrics.observe_pool(store.clone());
        Self(Arc::new(Inner {
            store,
            registry,
            base_url,
            limits,
            auth: None,
            smart: SmartEndpoints::default(),
            audit,
            subscriptions,
            label_rules,
            draining: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }))
    }

    /// The same state with these Subscription delivery settings.
    pub fn with_subscriptions(self, subscriptions: SubscriptionSettings) -> Self {
        let inner = Arc::try_unwrap(self.0)
            .unwrap_or_else(|_| panic!("with_subscriptions is called before the state is shared"));
        Self(Arc::new(Inner { subscriptions, ..inner }))
    }

    /// The same state with bearer-token authorization.
    pub fn with_auth(self, auth: Authenticator, smart: SmartEndpoints) -> Self {
        let inner =
            Arc::try_unwrap(self.0).unwrap_or_else(|_| panic!("with_auth is called before the state is shared"));
        Self(Arc::new(Inner { auth: Some(auth), smart, ..inner }))
    }

    /// How a search (or a search condition) sent to this server is read: its base URL, the
    /// configured size limits, and pages of at most `max_count`.
    pub fn parse_options(&self, strict: bool, max_count: u32) -> crate::fhir::search::query::ParseOptions<'_> {
        crate::fhir::search::query::ParseOptions {
            base_url: &self.base_url,
            strict,
            max_count,
            terms: self.limits.search_terms,
        }
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
