//! Logs and traces. Logs go to standard error as text or JSON, filtered by `--log-level`; they
//! name resource types, ids and routes, never resource content. Traces are exported with
//! OpenTelemetry over OTLP/HTTP when an endpoint is configured (`--otlp-endpoint`, or the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise no tracer is installed and spans cost
//! what `tracing` spans cost. W3C `traceparent` is read from requests and written on
//! Subscription notifications.

use std::time::Duration;

use axum::http::{self, HeaderMap};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{global, Context};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// What must be flushed before the process exits.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (at most a few seconds).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5)));
            if let Ok(Err(e)) = flushed.await {
                eprintln!("exporting the last traces failed: {e}");
            }
        }
        if let Some(meters) = self.meters {
            let flushed = tokio::task::spawn_blocking(move || meters.shutdown_with_timeout(Duration::from_secs(5)));
            if let Ok(Err(e)) = flushed.await {
                eprintln!("exporting the last metrics failed: {e}");
            }
        }
    }
}

/// Installs logging, and tracing export when configured. Call once, inside the Tokio runtime.
pub fn init(config: &Config) -> Telemetry {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr).boxed()
        }
    }
    .with_filter(filter);
    global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, mut export_error) = match config.otlp_traces_endpoint() {
        Some(endpoint) => match provider(&endpoint, &config.otel_service_name) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    // Metrics go the same way; the server's instruments report to the global meter provider
    // (a no-op without one).
    let meters = match config.otlp_metrics_endpoint() {
        Some(endpoint) => match meter_provider(&endpoint, &config.otel_service_name) {
            Ok(m) => {
                global::set_meter_provider(m.clone());
                Some(m)
            }
            Err(e) => {
                export_error = export_error.or(Some(e));
                None
            }
        },
        None => None,
    };
    // Spans are exported from `info` up, whatever the log level says, with each SQL statement
    // (sqlx logs them at `debug`: the statement text, bound values never, and its duration) as
    // an event of the span that ran it.
    let traces = provider.as_ref().map(|p| {
        let statements = EnvFilter::new("info,sqlx::query=debug");
        tracing_opentelemetry::layer().with_tracer(p.tracer("liaison")).with_filter(statements)
    });
    let _ = tracing_subscriber::registry().with(logs).with(traces).try_init();
    if let Some(e) = export_error {
        tracing::error!(error = %e, "OpenTelemetry export could not be set up; continuing without it");
    }
    Telemetry { provider, meters }
}

fn otlp_client() -> OtlpClient {
    OtlpClient {
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        runtime: tokio::runtime::Handle::current(),
        timeout: Duration::from_secs(10),
    }
}

fn meter_provider(endpoint: &str, service: &str) -> Result<SdkMeterProvider, String> {
    let exporter = MetricExporter::builder()
        .with_http()
        .with_http_client(otlp_client())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = Resource::builder().with_service_name(service.to_owned()).build();
    Ok(SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource).build())
}

fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(otlp_client())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = Resource::builder().with_service_name(service.to_owned()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The OTLP exporter's HTTP client: hyper, run on the server's runtime (the SDK's batch
/// processor calls it from a thread of its own).
#[derive(Debug, Clone)]
struct OtlpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let request = request.map(Full::new);
        let sent = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, async {
                let (parts, body) = client.request(request).await?.into_parts();
                Ok::<_, HttpError>(http::Response::from_parts(parts, body.collect().await?.to_bytes()))
            })
            .await?
        });
        sent.await?
    }
}

/// Makes `span` a child of the trace the request's `traceparent` names, if any.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of the trace a stored `traceparent` names, if any.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    let mut headers = HeaderMap::new();
    if let Some(value) = traceparent.and_then(|t| http::HeaderValue::from_str(t).ok()) {
        headers.insert("traceparent", value);
        continue_trace(span, &headers);
    }
}

/// The current span's `traceparent`, when traces are exported.
pub fn traceparent() -> Option<String> {
    let mut headers = HeaderMap::new();
    propagate(&mut headers);
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Writes the current span's trace context into outgoing `headers` (`traceparent`).
pub fn propagate(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
    }
}

/// The current trace's id (32 hex digits), when traces are exported.
pub fn trace_id() -> Option<String> {
    let context: Context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}
