//! Database outages: while PostgreSQL cannot be reached, requests get 503 OperationOutcomes (and
//! readiness fails) rather than hanging or failing otherwise; once it is back the same server
//! recovers without a restart. The outage is a TCP proxy between server and database that
//! drops every connection and refuses new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{fixtures, Backend, TestApp};

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
