//! Database outages: while PostgreSQL cannot be reached, or the SQLite file is locked by
//! another process, requests get 503 OperationOutcomes with Retry-After rather than hanging or
//! failing otherwise; once the database is back the same server recovers without a restart, and
//! nothing refused was stored. The PostgreSQL outage is a TCP proxy between server and database
//! that drops every connection and refuses new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use serde_json::json;
use sqlx::Connection;

use crate::helpers::{fixtures, Backend, ServerProcess, TestApp};

/// A TCP proxy to `upstream` that can be cut and restored.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, l) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                l.lock().unwrap().push(link);
            }
        });
        Self { addr, open, links }
    }

    /// The database goes away: every connection is dropped, new ones are refused.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

pub async fn a_database_outage_is_503_and_recovers(app: TestApp) {
    if app.backend != Backend::Postgres {
        // SQLite is a file in the process: there is no server to lose.
        return;
    }
    let upstream: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    assert!(app.database_url.contains("127.0.0.1:5432"), "the test database is on {upstream}");
    let proxy = Proxy::start(upstream).await;
    let url = app.database_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let server = TestApp::connect(Backend::Postgres, &url).await;
    let patient = server.create(fixtures::patient()).await;
    let path = format!("Patient/{}", patient["id"].as_str().unwrap());

    proxy.cut();
    let started = std::time::Instant::now();
    let r = server.get(&path).await;
    r.expect(503);
    assert_eq!(r.issues()[0]["code"], "transient", "{}", r.text);
    let request_id = r.header("x-request-id").expect("every answer names its request").to_owned();
    assert!(
        r.issues()[0]["diagnostics"].as_str().unwrap().contains(&request_id),
        "a 5xx names its request id: {}",
        r.text
    );
    assert!(r.header("retry-after").is_some(), "503 says when to retry");
    server.post("Patient", &fixtures::patient()).await.expect(503);
    server.get("/health/ready").await.expect(503);
    assert!(started.elapsed().as_secs() < 30, "answered, not hung: {:?}", started.elapsed());

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if server.get(&path).await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "the same server serves again once the database is back");
    server.post("Patient", &fixtures::patient()).await.expect(201);
    server.get("/health/ready").await.expect(200);
}

pub async fn a_locked_sqlite_file_is_503_and_recovers(app: TestApp) {
    if app.backend != Backend::Sqlite {
        return;
    }
    let server = ServerProcess::start(&app, &[]).await;
    let (status, patient) = server.request("POST", "/fhir/Patient", Some(fixtures::patient())).await.unwrap();
    assert_eq!(status, 201);
    let path = format!("/fhir/Patient/{}", patient["id"].as_str().unwrap());

    // Another process (this test) takes the database's write lock and holds it.
    let mut holder = sqlx::SqliteConnection::connect(&app.database_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();
    let mut refused = fixtures::patient();
    refused["identifier"] = json!([{"system": "urn:mrn", "value": "while-locked"}]);
    let started = std::time::Instant::now();
    let (write, read) =
        tokio::join!(server.send("POST", "/fhir/Patient", &[], Some(refused)), server.send("GET", &path, &[], None));
    for (what, answer) in [("write", write), ("read", read)] {
        let (status, headers, outcome) = answer.unwrap();
        assert_eq!(status, 503, "a {what} while the file is locked: {outcome}");
        assert_eq!(outcome["issue"][0]["code"], "transient", "{outcome}");
        assert!(headers.get("retry-after").is_some(), "503 says when to retry");
    }
    assert!(started.elapsed().as_secs() < 30, "answered, not hung: {:?}", started.elapsed());

    // The lock goes: the same process serves again, and the refused write was not stored.
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    drop(holder);
    let (status, _) = server.request("GET", &path, None).await.unwrap();
    assert_eq!(status, 200);
    let (status, found) = server.request("GET", "/fhir/Patient?identifier=urn:mrn%7Cwhile-locked", None).await.unwrap();
    assert_eq!((status, found["total"].as_u64()), (200, Some(0)), "the refused write is not there: {found}");
    let (status, _) = server.request("POST", "/fhir/Patient", Some(fixtures::patient())).await.unwrap();
    assert_eq!(status, 201);
}
