//! Metrics for Prometheus, on a listener of their own (`--metrics-addr`): requests, errors and
//! latency by FHIR interaction and resource type, the database pool, the Subscription outbox
//! and delivery outcomes. Labels are interactions, types and status classes — never ids.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::AppState;

/// What a request is counted under.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The `restful-interaction` code (`read`, `search-type`, `create`, `batch`, …).
    pub interaction: String,
    /// The resource type addressed, or empty.
    pub resource_type: String,
}

/// An error response's labels: the request's, and `4xx` or `5xx`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub interaction: String,
    pub resource_type: String,
    pub class: String,
}

type Latency = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Latency,
    pool_size: Gauge,
    pool_idle: Gauge,
    outbox_depth: Gauge,
    /// Notifications delivered, and delivery attempts that failed.
    deliveries: Counter,
    delivery_failures: Counter,
    /// The same measurements for OpenTelemetry (exported over OTLP when configured).
    otel: Otel,
}

/// OpenTelemetry instruments on the global meter provider.
#[derive(Debug)]
struct Otel {
    requests: opentelemetry::metrics::Counter<u64>,
    errors: opentelemetry::metrics::Counter<u64>,
    latency: opentelemetry::metrics::Histogram<f64>,
    deliveries: opentelemetry::metrics::Counter<u64>,
    delivery_failures: opentelemetry::metrics::Counter<u64>,
}

impl Otel {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("liaison");
        Self {
            requests: meter.u64_counter("liaison.http.requests").with_description("FHIR requests answered").build(),
            errors: meter
                .u64_counter("liaison.http.errors")
                .with_description("FHIR requests answered with 4xx or 5xx")
                .build(),
            latency: meter
                .f64_histogram("liaison.http.request.duration")
                .with_unit("s")
                .with_description("Time to answer a FHIR request")
                .build(),
            deliveries: meter.u64_counter("liaison.subscription.deliveries").build(),
            delivery_failures: meter.u64_counter("liaison.subscription.delivery_failures").build(),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("liaison");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        let (pool_size, pool_idle, outbox_depth) = (Gauge::default(), Gauge::default(), Gauge::default());
        let (deliveries, delivery_failures) = (Counter::default(), Counter::default());
        registry.register("http_requests", "FHIR requests answered", requests.clone());
        registry.register("http_errors", "FHIR requests answered with a 4xx or 5xx status", errors.clone());
        registry.register("http_request_duration_seconds", "Time to answer a FHIR request", latency.clone());
        registry.register("db_pool_connections", "Open database connections (SQLite: readers)", pool_size.clone());
        registry.register("db_pool_idle_connections", "Idle database connections", pool_idle.clone());
        registry.register("subscription_outbox_depth", "Subscription notifications waiting", outbox_depth.clone());
        registry.register("subscription_deliveries", "Subscription notifications delivered", deliveries.clone());
        registry.register(
            "subscription_delivery_failures",
            "Subscription notification deliveries that failed",
            delivery_failures.clone(),
        );
        let otel = Otel::new();
        Self {
            registry,
            requests,
            errors,
            latency,
            pool_size,
            pool_idle,
            outbox_depth,
            deliveries,
            delivery_failures,
            otel,
        }
    }
}

impl Metrics {
    /// A notification was delivered.
    pub fn delivered(&self) {
        self.deliveries.inc();
        self.otel.deliveries.add(1, &[]);
    }

    /// A delivery attempt failed.
    pub fn delivery_failed(&self) {
        self.delivery_failures.inc();
        self.otel.delivery_failures.add(1, &[]);
    }

    /// Registers gauges of the database pool with OpenTelemetry (observed at each export).
    pub fn observe_pool(&self, store: std::sync::Arc<crate::store::Store>) {
        let meter = opentelemetry::global::meter("liaison");
        let idle = store.clone();
        meter
            .i64_observable_gauge("liaison.db.pool.connections")
            .with_callback(move |g| g.observe(i64::from(store.pool_usage().0), &[]))
            .build();
        meter
            .i64_observable_gauge("liaison.db.pool.idle_connections")
            .with_callback(move |g| g.observe(i64::try_from(idle.pool_usage().1).unwrap_or(i64::MAX), &[]))
            .build();
    }

    fn observe(&self, labels: RequestLabels, status: StatusCode, seconds: f64) {
        let attributes = [
            opentelemetry::KeyValue::new("interaction", labels.interaction.clone()),
            opentelemetry::KeyValue::new("resource_type", labels.resource_type.clone()),
        ];
        self.otel.requests.add(1, &attributes);
        self.otel.latency.record(seconds, &attributes);
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
        if status.is_client_error() || status.is_server_error() {
            let class = if status.is_server_error() { "5xx" } else { "4xx" };
            self.otel
                .errors
                .add(1, &[attributes[0].clone(), attributes[1].clone(), opentelemetry::KeyValue::new("class", class)]);
            let RequestLabels { interaction, resource_type } = labels;
            self.errors.get_or_create(&ErrorLabels { interaction, resource_type, class: class.into() }).inc();
        }
    }
}

/// Middleware: counts and times every FHIR request.
pub async fn measure(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let interaction = crate::http::interaction_of(req.method(), &route).to_owned();
    let resource_type = crate::http::resource_type_of(&state, req.uri().path()).unwrap_or_default();
    let started = Instant::now();
    let response = next.run(req).await;
    let labels = RequestLabels { interaction, resource_type };
    state.metrics.observe(labels, response.status(), started.elapsed().as_secs_f64());
    response
}

/// The metrics listener's router: `GET /metrics` in the OpenMetrics text format.
pub fn router(state: AppState) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(state)
}

async fn scrape(State(state): State<AppState>) -> Response {
    let metrics = &state.metrics;
    let (size, idle) = state.store.pool_usage();
    metrics.pool_size.set(i64::from(size));
    metrics.pool_idle.set(i64::try_from(idle).unwrap_or(i64::MAX));
    match state.store.outbox_depth().await {
        Ok(depth) => {
            metrics.outbox_depth.set(depth);
        }
        Err(e) => tracing::warn!(error = %e, "reading the outbox depth for metrics failed"),
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text).into_response()
}
