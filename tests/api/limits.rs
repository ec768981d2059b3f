//! Configurable limits on what clients may hold: slow clients are cut off (header and body
//! timeouts), connections beyond the cap wait, and search sizes follow the configuration. The
//! server stays healthy afterwards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use liaison::serve::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestApp;

/// Serves `app` on a real socket within `limits`.
async fn serve(app: &TestApp, limits: ConnectionLimits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(liaison::serve(listener, app.router.clone(), None, limits, std::future::pending()));
    addr
}

/// Everything the server sends until it closes the connection (or `within` passes: `None`).
async fn read_until_closed(socket: &mut TcpStream, within: Duration) -> Option<String> {
    let mut raw = Vec::new();
    match tokio::time::timeout(within, socket.read_to_end(&mut raw)).await {
        Ok(_) => Some(String::from_utf8_lossy(&raw).into_owned()),
        Err(_) => None,
    }
}

async fn live(addr: SocketAddr) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    read_until_closed(&mut socket, Duration::from_secs(10)).await.expect("answered")
}

pub async fn slow_clients_are_cut_off(app: TestApp) {
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let addr = serve(&app, limits).await;

    // Headers that never finish: the connection is closed after the header timeout.
    let started = Instant::now();
    let mut slow_headers = TcpStream::connect(addr).await.unwrap();
    slow_headers.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let answer = read_until_closed(&mut slow_headers, Duration::from_secs(10)).await;
    assert!(answer.is_some(), "a client that never finishes its headers is disconnected");
    assert!(!answer.unwrap().contains("200 OK"), "and gets no answer to an unfinished request");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());

    // A body that stops half way: 408 with an OperationOutcome, and the connection closes.
    let started = Instant::now();
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    let head =
        "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 200\r\n\r\n";
    slow_body.write_all(head.as_bytes()).await.unwrap();
    slow_body.write_all(br#"{"resourceType": "Patient", "#).await.unwrap();
    let answer = read_until_closed(&mut slow_body, Duration::from_secs(10)).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""resourceType":"OperationOutcome""#) && answer.contains(r#""code":"timeout""#),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());
    assert_eq!(app.get("Patient").await.json["total"], 0, "nothing of the cut-off request was stored");

    // The same for the form body of a POST search.
    let mut slow_form = TcpStream::connect(addr).await.unwrap();
    let head = "POST /fhir/Patient/_search HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 50\r\n\r\nname=";
    slow_form.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut slow_form, Duration::from_secs(10)).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("OperationOutcome"), "{answer}");

    // A body sent slowly but within the timeout is fine.
    let mut steady = TcpStream::connect(addr).await.unwrap();
    let body = serde_json::json!({"resourceType": "Patient", "active": true}).to_string();
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    steady.write_all(head.as_bytes()).await.unwrap();
    for part in body.as_bytes().chunks(body.len() / 3 + 1) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        steady.write_all(part).await.unwrap();
    }
    let answer = read_until_closed(&mut steady, Duration::from_secs(10)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");

    assert!(live(addr).await.starts_with("HTTP/1.1 200"), "the server is healthy afterwards");
}

pub async fn connections_beyond_the_limit_wait(app: TestApp) {
    let limits = ConnectionLimits { max_connections: 2, ..ConnectionLimits::default() };
    let addr = serve(&app, limits).await;
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Both slots are held by idle connections: a third client waits, unanswered.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    assert_eq!(read_until_closed(&mut third, Duration::from_millis(500)).await, None, "no slot, no answer yet");

    // One closes: the waiting client is served.
    drop(first);
    let answer = read_until_closed(&mut third, Duration::from_secs(10)).await.expect("served once a slot frees");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

pub async fn search_size_limits_are_configurable(app: TestApp) {
    let small = TestApp::connect_with(app.backend, &app.database_url, |c| {
        c.max_search_params = 3;
        c.max_search_values = 400;
    })
    .await;
    let r = small.get("Patient?name=a&name=b&name=c&name=d");
    let r = r.await;
    r.expect(400);
    assert!(r.text.contains("at most 3 parameters"), "{}", r.text);
    small.get("Patient?name=a&name=b&name=c").await.expect(200);

    // The largest value count the configuration allows runs on both engines.
    let ids: Vec<String> = (0..400).map(|i| format!("id{i}")).collect();
    small.get(&format!("Patient?_id={}", ids.join(","))).await.expect(200);
    small.get(&format!("Patient?identifier=urn:mrn%7C{}", ids.join(",urn:mrn%7C"))).await.expect(200);
    small.get(&format!("Patient?name={}", ids.join(","))).await.expect(200);
    let r = small.get(&format!("Patient?_id={},one-more", ids.join(","))).await;
    r.expect(400);
    assert!(r.text.contains("at most 400 values"), "{}", r.text);
}
