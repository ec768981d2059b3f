//! OpenTelemetry: a server process exporting to an OTLP/HTTP receiver in the test continues the
//! caller's W3C trace (`traceparent`), passes it on to the Subscription notification its write
//! triggers, and has exported the trace's spans, and its metrics, by the time it has shut down.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use serde_json::json;

use crate::helpers::{ServerProcess, TestApp};
use crate::subscription::{subscription, Receiver};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// An OTLP/HTTP receiver: the request bodies posted to `/v1/traces` and `/v1/metrics`.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let seen = bodies.clone();
    let route = axum::routing::post(move |body: Bytes| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(body);
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/v1/traces", route.clone()).route("/v1/metrics", route);
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, bodies)
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

pub async fn traces_join_the_callers_and_reach_the_collector(app: TestApp) {
    let (collector, exported) = otlp_receiver().await;
    let receiver = Receiver::start().await;
    let args = ["--otlp-endpoint", &collector, "--subscription-allow-http", "--shutdown-delay-seconds", "0"];
    let mut process = ServerProcess::start(&app, &args).await;
    let (status, _) = process
        .request("POST", "/fhir/Subscription", Some(subscription("Task?status=requested", &receiver.url, "active")))
        .await
        .unwrap();
    assert_eq!(status, 201);
    let task = json!({"resourceType": "Task", "status": "requested", "intent": "order"});
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let (status, _, _) =
        process.send("POST", "/fhir/Task", &[("traceparent", traceparent.as_str())], Some(task)).await.unwrap();
    assert_eq!(status, 201);
    let got = receiver.wait_for(1).await;
    assert_eq!(got.len(), 1);
    let carried = got[0].traceparent.clone().unwrap_or_default();
    assert!(carried.starts_with(&format!("00-{TRACE_ID}-")), "the notification continues the trace: {carried}");
    assert!(!carried.contains("00f067aa0ba902b7"), "with a span of its own");

    // Shutting down flushes what is buffered: the caller's trace reached the collector.
    let _ = std::process::Command::new("kill").args(["-TERM", &process.child.id().to_string()]).status();
    for _ in 0..200 {
        if process.child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let id = hex(TRACE_ID);
    let bodies = exported.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "spans were exported");
    assert!(
        bodies.iter().any(|b| b.windows(id.len()).any(|w| w == id.as_slice())),
        "the exported spans carry the caller's trace id"
    );
    let statement = b"INSERT INTO resources";
    assert!(
        bodies.iter().any(|b| b.windows(statement.len()).any(|w| w == statement)),
        "SQL statements are events of the spans that ran them"
    );
    let metric = b"liaison.http.requests";
    assert!(bodies.iter().any(|b| b.windows(metric.len()).any(|w| w == metric)), "metrics are exported over OTLP too");
}
