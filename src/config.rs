//! Configuration: command-line flags, each also read from an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::fhir::search::query;
use crate::serve::ConnectionLimits;

/// Liaison, a FHIR R4 server for mental-health care coordination.
#[derive(Clone, Parser)]
#[command(version, about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address and port to listen on.
    #[arg(long, env = "LIAISON_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Database URL: `sqlite://FILE?mode=rwc` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://liaison.db?mode=rwc")]
    pub database_url: String,

    /// Largest number of pooled database connections (readers, for SQLite).
    #[arg(long, env = "LIAISON_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Public base URL of the FHIR API, used in Location headers and Bundle links. Defaults to
    /// `http://{listen-addr}/fhir`.
    #[arg(long, env = "LIAISON_BASE_URL")]
    pub base_url: Option<String>,

    /// Connections served at once; further clients wait in the listen backlog.
    #[arg(long, env = "LIAISON_MAX_CONNECTIONS", default_value_t = ConnectionLimits::DEFAULT.max_connections as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Seconds a client has to send a request's headers (and to finish the TLS handshake); an
    /// idle keep-alive connection is closed after as long.
    #[arg(long, env = "LIAISON_HEADER_TIMEOUT_SECONDS", default_value_t = ConnectionLimits::DEFAULT.header_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_seconds: u64,

    /// Seconds a client has to send a request body once its headers are in; slower gets 408.
    #[arg(long, env = "LIAISON_BODY_TIMEOUT_SECONDS", default_value_t = ConnectionLimits::DEFAULT.body_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_seconds: u64,

    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, env = "LIAISON_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest search page: a larger `_count` is reduced to this.
    #[arg(long, env = "LIAISON_MAX_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_page_size: u32,

    /// With `_total=estimate`, a search counts at most this many matches for `Bundle.total` and
    /// leaves the total out beyond (counting a large result costs more than the page).
    #[arg(long, env = "LIAISON_TOTAL_COUNT_CAP", default_value_t = 1000)]
    pub total_count_cap: i64,

    /// The most resources one conditional delete may remove; 1 refuses a condition that matches
    /// several with 412.
    #[arg(long, env = "LIAISON_MAX_CONDITIONAL_DELETES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conditional_deletes: u32,

    /// The most parameters one search (or search condition) may have; more is a 400.
    #[arg(long, env = "LIAISON_MAX_SEARCH_PARAMS", default_value_t = query::MAX_PARAMS as u32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_search_params: u32,

    /// The most values (comma-separated alternatives) all parameters of one search may have
    /// together; more is a 400. Each becomes an SQL condition: SQLite refuses statements with
    /// much more than 400.
    #[arg(long, env = "LIAISON_MAX_SEARCH_VALUES", default_value_t = query::MAX_VALUES as u32, value_parser = clap::value_parser!(u32).range(1..=400))]
    pub max_search_values: u32,

    /// The most entries a batch or transaction Bundle may hold.
    #[arg(long, env = "LIAISON_MAX_BUNDLE_ENTRIES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_bundle_entries: u32,

    /// PEM certificate chain for HTTPS; with `--tls-key`, the server speaks only TLS 1.3 and 1.2.
    #[arg(long, env = "LIAISON_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "LIAISON_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle for mutual TLS: every client must present a certificate that chains to it.
    #[arg(long, env = "LIAISON_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds between checks for changed certificate files (0: only on SIGHUP).
    #[arg(long, env = "LIAISON_TLS_RELOAD_SECONDS", default_value_t = 60)]
    pub tls_reload_seconds: u64,

    /// OAuth2 issuer whose bearer tokens (JWTs, RS256 or ES256) are accepted; setting it turns
    /// authorization on.
    #[arg(long, env = "LIAISON_AUTH_ISSUER", requires_all = ["auth_audience", "auth_jwks"])]
    pub auth_issuer: Option<String>,

    /// The audience tokens must name (usually this server's base URL).
    #[arg(long, env = "LIAISON_AUTH_AUDIENCE", requires = "auth_issuer")]
    pub auth_audience: Option<String>,

    /// The issuer's public keys: a JWKS file, or an `https://` URL.
    #[arg(long, env = "LIAISON_AUTH_JWKS", requires = "auth_issuer")]
    pub auth_jwks: Option<String>,

    /// Seconds before the JWKS is fetched again (also on a token naming an unknown key).
    #[arg(long, env = "LIAISON_AUTH_JWKS_REFRESH_SECONDS", default_value_t = 300)]
    pub auth_jwks_refresh_seconds: u64,

    /// The issuer's authorization endpoint, advertised in the SMART configuration.
    #[arg(long, env = "LIAISON_AUTH_AUTHORIZATION_ENDPOINT")]
    pub auth_authorization_endpoint: Option<String>,

    /// The issuer's token endpoint, advertised in the SMART configuration.
    #[arg(long, env = "LIAISON_AUTH_TOKEN_ENDPOINT")]
    pub auth_token_endpoint: Option<String>,

    /// Serve on a non-loopback address without TLS or without authorization. Only for a
    /// network that is protected otherwise (a TLS-terminating proxy that also authenticates).
    #[arg(long, env = "LIAISON_ALLOW_INSECURE_EXPOSURE")]
    pub allow_insecure_exposure: bool,

    /// Let Subscriptions notify plain `http://` endpoints (otherwise only `https://`).
    #[arg(long, env = "LIAISON_SUBSCRIPTION_ALLOW_HTTP")]
    pub subscription_allow_http: bool,

    /// Secret for the `X-Liaison-Signature` header (HMAC-SHA256 of the notification id, a dot
    /// and the body) on every notification; none when unset.
    #[arg(long, env = "LIAISON_SUBSCRIPTION_HMAC_SECRET")]
    pub subscription_hmac_secret: Option<String>,

    /// Failed deliveries of one notification before its Subscription is set to `error`.
    #[arg(long, env = "LIAISON_SUBSCRIPTION_MAX_ATTEMPTS", default_value_t = 10)]
    pub subscription_max_attempts: u32,

    /// The first retry's delay in milliseconds; each further one doubles it (at most an hour).
    #[arg(long, env = "LIAISON_SUBSCRIPTION_RETRY_MS", default_value_t = 1000)]
    pub subscription_retry_ms: u64,

    /// Seconds a worker holds the notifications it claimed; a crashed worker's claims pass to
    /// another after this (keep it above the 15 s a delivery may take, or notifications may
    /// be sent twice).
    #[arg(long, env = "LIAISON_SUBSCRIPTION_LEASE_SECONDS", default_value_t = 30)]
    pub subscription_lease_seconds: u64,

    /// Export traces with OpenTelemetry over OTLP/HTTP to this collector (its base URL, e.g.
    /// `http://otel-collector:4318`, or the full `…/v1/traces`); off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The `service.name` of exported traces.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "liaison")]
    pub otel_service_name: String,

    /// Serve metrics for Prometheus (`GET /metrics`) on this address, apart from the FHIR API;
    /// off when unset.
    #[arg(long, env = "LIAISON_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// On SIGTERM, readiness fails at once and requests are still served for this many
    /// seconds (so that load balancers stop sending new ones) before the listener closes.
    #[arg(long, env = "LIAISON_SHUTDOWN_DELAY_SECONDS", default_value_t = 2)]
    pub shutdown_delay_seconds: u64,

    /// Then requests in flight get this many seconds to finish before the process exits.
    #[arg(long, env = "LIAISON_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub shutdown_timeout_seconds: u64,

    /// A JSON file of rules that add security labels to resources as they are written (e.g.
    /// `PSYTHPN` and `R` on Observations coded as psychotherapy notes); see the README.
    #[arg(long, env = "LIAISON_LABEL_RULES")]
    pub label_rules: Option<std::path::PathBuf>,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `liaison=debug,sqlx=warn`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "LIAISON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// What to do instead of serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Walk the audit trail's hash chain and report the first broken link (exit status 1 when
    /// the chain does not hold).
    VerifyAudit,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Where traces are exported: `--otlp-endpoint` with `/v1/traces` unless it names it.
    pub fn otlp_traces_endpoint(&self) -> Option<String> {
        self.otlp_signal_endpoint("traces")
    }

    /// Where metrics are exported: the collector's `/v1/metrics`.
    pub fn otlp_metrics_endpoint(&self) -> Option<String> {
        self.otlp_signal_endpoint("metrics")
    }

    fn otlp_signal_endpoint(&self, signal: &str) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1/traces").unwrap_or(base);
        (!base.is_empty()).then(|| format!("{base}/v1/{signal}"))
    }

    /// The base URL of the FHIR API, without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.base_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("{}://{}/fhir", self.scheme(), self.listen_addr),
        }
    }

    /// The scheme of the listener.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether authorization is configured.
    pub fn auth_configured(&self) -> bool {
        self.auth_issuer.is_some()
    }

    /// The token validation settings, when authorization is configured.
    pub fn auth_settings(&self) -> Option<crate::auth::jwt::AuthSettings> {
        Some(crate::auth::jwt::AuthSettings {
            issuer: self.auth_issuer.clone()?,
            audience: self.auth_audience.clone()?,
            jwks: crate::auth::jwt::JwksSource::parse(self.auth_jwks.as_deref()?),
            refresh: std::time::Duration::from_secs(self.auth_jwks_refresh_seconds.max(1)),
        })
    }

    /// Refuses a configuration that would expose unprotected data: a non-loopback address
    /// needs TLS and authorization unless `--allow-insecure-exposure` says otherwise. Returns
    /// the warning to log loudly when the server runs without authorization.
    pub fn check_exposure(&self) -> Result<Option<String>, String> {
        let loopback = self.listen_addr.ip().is_loopback();
        let (tls, auth) = (self.tls_cert.is_some(), self.auth_configured());
        let protected = tls && auth;
        if !(loopback || protected || self.allow_insecure_exposure) {
            let missing = match (tls, auth) {
                (false, false) => "TLS and authorization",
                (false, true) => "TLS",
                _ => "authorization",
            };
            return Err(format!(
                "refusing to serve on {} without {missing}: configure them, listen on a loopback \
                 address, or pass --allow-insecure-exposure if a proxy in front protects this address",
                self.listen_addr
            ));
        }
        Ok(match (auth, loopback) {
            (true, _) => None,
            (false, true) => Some(format!(
                "NO AUTHORIZATION CONFIGURED: every client on this machine can read and write everything; \
                 serving on the loopback address {} only",
                self.listen_addr
            )),
            (false, false) => Some(format!(
                "NO AUTHORIZATION CONFIGURED and serving on {} (--allow-insecure-exposure): anyone who \
                 reaches this address can read and write everything",
                self.listen_addr
            )),
        })
    }

    /// Settings for tests and embedding: defaults, with the given database.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        let mut config = Self::parse_from(["liaison"]);
        config.database_url = database_url.into();
        config
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("database_url", &redact_password(&self.database_url))
            .field("db_max_connections", &self.db_max_connections)
            .field("base_url", &self.base_url)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_page_size", &self.max_page_size)
            .field("total_count_cap", &self.total_count_cap)
            .field("max_conditional_deletes", &self.max_conditional_deletes)
            .field("max_bundle_entries", &self.max_bundle_entries)
            .field("max_search_params", &self.max_search_params)
            .field("max_search_values", &self.max_search_values)
            .field("max_connections", &self.max_connections)
            .field("header_timeout_seconds", &self.header_timeout_seconds)
            .field("body_timeout_seconds", &self.body_timeout_seconds)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key.as_ref().map(|_| "(set)"))
            .field("tls_client_ca", &self.tls_client_ca)
            .field("tls_reload_seconds", &self.tls_reload_seconds)
            .field("allow_insecure_exposure", &self.allow_insecure_exposure)
            .field("auth_issuer", &self.auth_issuer)
            .field("auth_audience", &self.auth_audience)
            .field("auth_jwks", &self.auth_jwks)
            .field("subscription_allow_http", &self.subscription_allow_http)
            .field("subscription_hmac_secret", &self.subscription_hmac_secret.as_ref().map(|_| "(set)"))
            .field("subscription_max_attempts", &self.subscription_max_attempts)
            .field("subscription_retry_ms", &self.subscription_retry_ms)
            .field("subscription_lease_seconds", &self.subscription_lease_seconds)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`.
fn redact_password(url: &str) -> String {
    let (main, query) = url.split_once('?').map_or((url, None), |(m, q)| (m, Some(q)));
    let main = match main.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?))) {
        Some((scheme, (credentials, host))) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => main.to_owned(),
        },
        None => main.to_owned(),
    };
    let Some(query) = query else { return main };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{main}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_database_password() {
        let config = Config::for_database("postgres://liaison:s3cret@db/liaison");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"));
        assert!(shown.contains("liaison:***@db"));
        let config = Config::for_database("postgres://liaison@db/liaison?sslmode=require&password=s3cret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret") && shown.contains("sslmode=require"));
    }
}
