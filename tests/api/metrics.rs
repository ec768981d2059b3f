//! Metrics for Prometheus: requests, errors and latency by interaction and resource type, the
//! database pool and the Subscription outbox, scraped from the metrics router.

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::helpers::{fixtures, TestApp};

async fn scrape(app: &TestApp) -> String {
    let router = liaison::metrics::router(app.state.clone());
    let response = router.oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub async fn metrics_count_requests_errors_and_latency(app: TestApp) {
    let patient = app.create(fixtures::patient()).await;
    let id = patient["id"].as_str().unwrap();
    for _ in 0..3 {
        app.get(&format!("Patient/{id}")).await.expect(200);
    }
    app.get("Patient/does-not-exist").await.expect(404);
    app.get(&format!("CarePlan?patient={id}")).await.expect(200);
    let text = scrape(&app).await;
    let read = r#"{interaction="read",resource_type="Patient"}"#;
    assert_eq!(sample(&text, &format!("liaison_http_requests_total{read}")), Some(4.0), "{text}");
    let create = r#"liaison_http_requests_total{interaction="create",resource_type="Patient"}"#;
    assert_eq!(sample(&text, create), Some(1.0));
    let search = r#"liaison_http_requests_total{interaction="search-type",resource_type="CarePlan"}"#;
    assert_eq!(sample(&text, search), Some(1.0));
    let not_found = r#"liaison_http_errors_total{interaction="read",resource_type="Patient",class="4xx"}"#;
    assert_eq!(sample(&text, not_found), Some(1.0));
    let count = format!("liaison_http_request_duration_seconds_count{read}");
    assert_eq!(sample(&text, &count), Some(4.0));
    assert!(
        text.contains(
            r#"liaison_http_request_duration_seconds_bucket{le="+Inf",interaction="read",resource_type="Patient"} 4"#
        ) || text.contains(
            r#"liaison_http_request_duration_seconds_bucket{interaction="read",resource_type="Patient",le="+Inf"} 4"#
        ),
        "{text}"
    );
    assert!(sample(&text, "liaison_db_pool_connections").is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, "liaison_db_pool_idle_connections").is_some());
    assert_eq!(sample(&text, "liaison_subscription_outbox_depth"), Some(0.0));
    assert_eq!(sample(&text, "liaison_subscription_delivery_failures_total"), Some(0.0));
    assert!(!text.contains(id), "no ids in labels");
}
