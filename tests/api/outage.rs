//! Database outages: while PostgreSQL cannot be reached, or the SQLite file is locked by
//! another process, requests get 503 OperationOutcomes with Retry-After rather than hanging or
//! failing otherwise; once the database is back the same server recovers without a restart, and
//! nothing refused was stored. One PostgreSQL outage is a TCP proxy between server and database
//! that drops every connection and refuses new ones; the other stops a PostgreSQL cluster of the
//! test's own (`pg_ctl stop -m immediate`, as a crash would) under concurrent writers and starts
//! it again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use serde_json::json;
use sqlx::Connection;

use crate::crash::{check, shared_goals, Tally, Writers};
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

/// SQLite keeps commits in its write-ahead log until a checkpoint copies them into the database
/// file. Liaison checkpoints in the background shortly after writes, instead of inside the commit
/// that takes the log past 1,000 pages: a few writes, far below that, reach the file itself
/// within moments, read here with the log ignored (`immutable`), as a copy of the file alone
/// would be.
pub async fn sqlite_writes_reach_the_database_file_in_the_background(app: TestApp) {
    if app.backend != Backend::Sqlite {
        return;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned());
    }
    let file = app.database_url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
    let in_file = || async {
        // `immutable`: the file alone, without the log or its locks.
        let url = format!("sqlite://{file}?immutable=true");
        let Ok(mut conn) = sqlx::SqliteConnection::connect(&url).await else { return 0 };
        let found: Result<(i64,), _> =
            sqlx::query_as("SELECT count(*) FROM resources WHERE resource_type = 'Patient' AND id IN (?, ?, ?)")
                .bind(&ids[0])
                .bind(&ids[1])
                .bind(&ids[2])
                .fetch_one(&mut conn)
                .await;
        found.map_or(0, |(n,)| n)
    };
    let started = std::time::Instant::now();
    while in_file().await < 3 && started.elapsed().as_secs() < 10 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(in_file().await, 3, "the patients are in the database file, not only in its log");
    // The server serves on: the checkpoint kept the log and the file consistent.
    for id in &ids {
        app.get(&format!("Patient/{id}")).await.expect(200);
    }
}

/// A PostgreSQL cluster of the test's own: made with `initdb` in a temporary directory,
/// listening on a Unix socket there, stopped and started with `pg_ctl` (as the `postgres` user when the
/// test runs as root, since PostgreSQL refuses to run as root).
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

impl Cluster {
    /// The directory of `initdb` and `pg_ctl`: the newest installed PostgreSQL's.
    fn tools() -> Option<PathBuf> {
        let from_pg_config = Command::new("pg_config").arg("--bindir").output().ok().filter(|o| o.status.success());
        let mut candidates: Vec<PathBuf> =
            from_pg_config.map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())).into_iter().collect();
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .collect();
        versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
        candidates.extend(versions.into_iter().rev());
        candidates.into_iter().find(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
    }

    fn id(flag: &str) -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// A new, stopped cluster; `None` when PostgreSQL's server tools are not installed.
    fn create() -> Option<Self> {
        let bin = Self::tools()?;
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let dir = tempfile::tempdir().unwrap();
        if root {
            let (uid, gid) = (Self::id("-u").expect("a postgres user"), Self::id("-g").expect("its group"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let cluster = Self { dir, bin, as_postgres: root };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `tool` of the cluster's PostgreSQL, run as the `postgres` user when the test is root.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if !self.as_postgres {
            return Command::new(program);
        }
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).output().unwrap_or_else(|e| panic!("{tool} runs: {e}"));
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn start(&self) {
        let dir = self.dir.path().display().to_string();
        // Only a Unix socket in the cluster's directory: no TCP port to race other tests for.
        let options = format!("-c listen_addresses= -k {dir}");
        let log = Path::new(&dir).join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-w", "-l", &log, "-o", &options, "start"]);
    }

    /// Stops the server the way a crash would: no checkpoint, recovery from the WAL at start.
    fn crash(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-w", "-m", "immediate", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@localhost/postgres?host={}", self.dir.path().display())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "stop"]).output();
    }
}

pub async fn postgres_stopped_and_restarted_under_load(app: TestApp) {
    if app.backend != Backend::Postgres {
        return;
    }
    let Some(cluster) = Cluster::create() else {
        assert!(std::env::var_os("CI").is_none(), "CI needs PostgreSQL's server tools (initdb, pg_ctl)");
        eprintln!("skipped: initdb and pg_ctl are not installed");
        return;
    };
    cluster.start();
    let local = TestApp::connect(Backend::Postgres, &cluster.url()).await;
    let goals = shared_goals(&local).await;
    let server = Arc::new(ServerProcess::start(&local, &[]).await);
    let writers = Writers::start(&server, &goals, 0);
    writers.wait_for(2 * crate::crash::WRITERS).await;

    cluster.crash();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let path = format!("/fhir/Goal/{}", goals[0]);
    let (status, headers, outcome) = server.send("GET", &path, &[], None).await.unwrap();
    assert_eq!(status, 503, "while the database is down: {outcome}");
    assert!(headers.get("retry-after").is_some(), "503 says when to retry");
    assert_eq!(server.request("GET", "/health/ready", None).await.unwrap().0, 503);
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.start();
    let mut ready = false;
    for _ in 0..100 {
        if server.request("GET", &path, None).await.unwrap().0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the same server process serves again once PostgreSQL is back");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log = writers.finish().await;

    let mut tally = Tally::default();
    check(&server, &log, &goals, &mut tally).await;
    assert!(tally.unknown > 0, "some writes were refused with 503 while the database was down");
    let report = liaison::verify_audit(&liaison::Config::for_database(cluster.url())).await.unwrap();
    assert_eq!(report.broken, None, "the audit chain verifies after the restart");
    println!(
        "PostgreSQL stopped (immediate) and restarted under {} writers: {} writes acknowledged and {} found, \
         {} refused and none visible, {} answered 503 or cut off ({} of them landed whole)",
        crate::crash::WRITERS,
        tally.acknowledged,
        tally.found,
        tally.refused,
        tally.unknown,
        tally.unknown_landed
    );
}
