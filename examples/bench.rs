//! Liaison's benchmark: starts the server (this binary, re-run in server mode, so that the
//! server's own peak memory can be read) on a fresh database, loads synthetic care-coordination
//! data over HTTP, then drives workloads with concurrent clients and prints, per workload,
//! throughput and latency percentiles, and the server's peak RSS.
//!
//!     cargo run --release --example bench -- --patients 2000
//!     cargo run --release --example bench -- --engine postgres --patients 66667   # ≈ 1,000,000 resources
//!     cargo run --release --example bench -- --packets-only --packets 100          # transaction Bundles
//!
//! Each patient brings 15 resources (a condition, three encounters, two PHQ-9 observations, a
//! questionnaire response, two goals, a care team, two care plans, a referral and its task);
//! 20 organisations, 200 practitioners and 200 practitioner roles are shared.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Patients to generate (15 resources each).
    #[arg(long, default_value_t = 2000)]
    patients: usize,
    /// Storage engine: sqlite (a fresh file) or postgres (a fresh database).
    #[arg(long, default_value = "sqlite")]
    engine: String,
    /// PostgreSQL server for `--engine postgres`; the database `--pg-database` is created there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// The PostgreSQL database the benchmark (re)creates.
    #[arg(long, default_value = "liaison_bench")]
    pg_database: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests per workload.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Measure a database a previous run loaded with the same `--patients`, without loading
    /// again: PostgreSQL's `liaison_bench`, or the SQLite file given by `--sqlite-file`.
    #[arg(long)]
    reuse: bool,
    /// The SQLite database file (default: a fresh one in a temporary directory).
    #[arg(long)]
    sqlite_file: Option<std::path::PathBuf>,
    /// Referral packets (transaction Bundles of 15 resources each, linked by urn:uuid) in the
    /// transaction workload, or loaded by `--packets-only`.
    #[arg(long, default_value_t = 100)]
    packets: usize,
    /// Load patients in transaction Bundles of this many patients each (PUT entries, the same
    /// ids as the one-by-one load), to load large databases faster; 1 loads one PUT at a time.
    #[arg(long, default_value_t = 1)]
    load_batch: usize,
    /// Load only the shared resources and the transaction packets, then stop.
    #[arg(long)]
    packets_only: bool,
    /// Record this run's figures (each workload's throughput relative to the reference
    /// workload's) as the engine's baseline in this file.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// Compare this run with the engine's baseline in this file, and exit with 1 when a
    /// workload fell far below it (see `--tolerance`) or had errors.
    #[arg(long, conflicts_with = "record")]
    check: Option<std::path::PathBuf>,
    /// The share of its baseline ratio below which a workload fails the check.
    #[arg(long, default_value_t = 0.5)]
    tolerance: f64,
    /// Run only the workloads whose names contain this text (and the reference), e.g. `read`
    /// while profiling one of them.
    #[arg(long, conflicts_with_all = ["record", "check"])]
    only: Option<String>,
    /// Internal: run as the server, on this database URL.
    #[arg(long, hide = true)]
    serve: Option<String>,
}

const ORGS: usize = 20;
const ROLES: usize = 200;

fn main() {
    let args = Args::parse();
    if let Some(url) = &args.serve {
        return serve(url);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(args));
}

/// Server mode: the real router on a real socket, as `liaison` runs it.
fn serve(database_url: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut config = liaison::Config::for_database(database_url);
        config.listen_addr = listener.local_addr().expect("address");
        config.db_max_connections = 16;
        let state = liaison::build_state(&config).await.expect("database opens");
        println!("{}", config.listen_addr);
        let app = liaison::app(state);
        liaison::serve(listener, app, None, Default::default(), std::future::pending()).await.expect("serve");
    });
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One request of a workload. A path is relative to the FHIR base, or to the server's root when
/// it starts with `/`.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
    if_match: Option<String>,
}

impl Call {
    fn get(path: String) -> Self {
        Self { method: "GET", path, body: None, if_match: None }
    }
    fn post(path: &str, body: Value) -> Self {
        Self { method: "POST", path: path.to_owned(), body: Some(body), if_match: None }
    }
}

/// Makes request number `i` of a workload.
type MakeRequest = Box<dyn Fn(usize) -> Call + Send + Sync>;

struct Target {
    client: HttpClient,
    root: String,
    base: String,
}

impl Target {
    async fn send(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<(u16, Bytes), String> {
        self.request(method, path, body, None).await
    }

    async fn call(&self, call: &Call) -> Result<(u16, Bytes), String> {
        self.request(call.method, &call.path, call.body.as_ref(), call.if_match.as_deref()).await
    }

    async fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        let uri = match path {
            "" => self.base.clone(),
            p if p.starts_with('/') => format!("{}{p}", self.root),
            p => format!("{}/{p}", self.base),
        };
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/fhir+json");
        }
        if let Some(version) = if_match {
            req = req.header("if-match", format!("W/\"{version}\""));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, bytes))
    }
}

async fn run(args: Args) {
    let (database_url, _guard) = match args.engine.as_str() {
        "sqlite" => match &args.sqlite_file {
            Some(file) => (format!("sqlite://{}?mode=rwc", file.display()), None),
            None => {
                let dir = tempfile::tempdir().expect("temporary directory");
                (format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display()), Some(dir))
            }
        },
        "postgres" => {
            use sqlx::Connection;
            if !args.reuse {
                let mut conn = sqlx::PgConnection::connect(&args.postgres_url).await.expect("PostgreSQL reachable");
                let name = &args.pg_database;
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "a plain database name");
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut conn).await.expect("drop");
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create");
            }
            let base = args.postgres_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&args.postgres_url);
            (format!("{base}/{}", args.pg_database), None)
        }
        other => panic!("unknown engine {other}"),
    };
    let exe = std::env::current_exe().expect("own path");
    let mut child = std::process::Command::new(exe)
        .args(["--serve", &database_url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
        .expect("server prints its address");
    let addr: SocketAddr = line.trim().parse().expect("an address");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(args.concurrency * 2).build(connector);
    let target = Arc::new(Target { client, root: format!("http://{addr}"), base: format!("http://{addr}/fhir") });
    println!("server idle RSS: {}", rss(child.id(), "VmRSS:"));

    println!(
        "Liaison benchmark: engine {}, {} patients ({} resources), {} clients, {} requests per workload",
        args.engine,
        args.patients,
        args.patients * 15 + ORGS + 2 * ROLES,
        args.concurrency,
        args.requests
    );
    if args.packets_only {
        for r in shared() {
            put(&target, &r).await;
        }
        print_header();
        let measured = measure(&target, PACKETS, args.packets, args.concurrency, packets(&args)).await;
        print_stored(&measured);
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    if args.reuse {
        println!("load: reusing the loaded database");
    } else {
        let started = Instant::now();
        load(&target, &args).await;
        let loaded = args.patients * 15 + ORGS + 2 * ROLES;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "load: {loaded} resources in {secs:.1} s = {:.0} resources/s ({})",
            loaded as f64 / secs,
            if args.load_batch > 1 {
                format!("transaction Bundles of {} patients' PUTs", args.load_batch)
            } else {
                "PUT, one resource per request".into()
            }
        );
    }
    analyze(&database_url).await;
    print_header();

    let (n, requests, clients) = (args.patients, args.requests, args.concurrency);
    // Spread over the data set: consecutive requests hit different patients.
    let pick = move |i: usize| scramble(i) % n;
    let mut results = Vec::new();
    let only = args.only.clone();
    let mut run = async |name: &str, requests: usize, make: MakeRequest| {
        if name == REFERENCE || only.as_deref().is_none_or(|o| name.contains(o)) {
            results.push(measure(&target, name, requests, clients, make).await);
        }
    };
    // The reference is cheap: measured over more requests, so that its figure is steady.
    run(REFERENCE, requests * 10, Box::new(|_| Call::get("/health/live".into()))).await;
    run("read Patient by id", requests, Box::new(move |i| Call::get(format!("Patient/pat-{}", pick(i))))).await;
    run(
        "create Observation",
        requests,
        Box::new(move |i| Call::post("Observation", phq9(pick(i), 9_000 + i, (i % 27) as i64))),
    )
    .await;
    // Each request updates a different goal, with the version it was read at.
    let goals = current_versions(&target, (0..requests.min(n)).map(|k| format!("Goal/goal-{k}-1")).collect()).await;
    run(
        "update Goal with If-Match",
        goals.len(),
        Box::new(move |i| {
            let (resource, version) = &goals[i];
            let mut body = resource.clone();
            body["note"] = json!([{"text": format!("reviewed ({i})")}]);
            Call {
                method: "PUT",
                path: format!("Goal/{}", body["id"].as_str().unwrap_or_default()),
                body: Some(body),
                if_match: Some(version.clone()),
            }
        }),
    )
    .await;
    run(
        "search: patient's active care plans",
        requests,
        Box::new(move |i| Call::get(format!("CarePlan?patient=pat-{}&status=active", pick(i)))),
    )
    .await;
    run(
        "search: open referrals for a performer",
        requests,
        Box::new(move |i| {
            Call::get(format!("ServiceRequest?performer=PractitionerRole/role-{}&status=active", scramble(i) % ROLES))
        }),
    )
    .await;
    run(
        "search: encounters in a week, _include subject",
        requests,
        Box::new(move |i| {
            let day = 1 + (scramble(i) % 20);
            Call::get(format!(
                "Encounter?date=ge2024-03-{day:02}&date=lt2024-03-{:02}&_include=Encounter:subject&_count=20",
                day + 7
            ))
        }),
    )
    .await;
    run(
        "search: chained subject:Patient.identifier",
        requests,
        Box::new(move |i| Call::get(format!("CarePlan?subject:Patient.identifier=urn:mrn|MRN{}", pick(i)))),
    )
    .await;
    // A patient's access log, newest first (every read above left a record): sorted by a
    // search parameter, which reads each match's sort value from the index.
    run(
        "search: a patient's audit trail, newest first",
        requests,
        Box::new(move |i| Call::get(format!("AuditEvent?entity=Patient/pat-{}&_sort=-date&_count=20", pick(i)))),
    )
    .await;
    run(
        "history of one resource",
        requests,
        Box::new(move |i| Call::get(format!("CarePlan/cp-{}-0/_history", pick(i)))),
    )
    .await;
    run("Patient $everything", requests, Box::new(move |i| Call::get(format!("Patient/pat-{}/$everything", pick(i)))))
        .await;
    run(PACKETS, args.packets, packets(&args)).await;
    // The reference once more, so that the check compares with both ends of the run.
    run(REFERENCE, requests * 10, Box::new(|_| Call::get("/health/live".into()))).await;
    if let Some(r) = results.iter().find(|r| r.name == PACKETS) {
        print_stored(r);
    }
    println!("server peak RSS: {}", rss(child.id(), "VmHWM:"));
    let _ = child.kill();
    let _ = child.wait();
    let settings = json!({
        "patients": args.patients, "requests": args.requests, "concurrency": args.concurrency,
        "packets": args.packets, "build": if cfg!(debug_assertions) { "dev" } else { "release" },
    });
    let passed = match (&args.record, &args.check) {
        (Some(file), _) => record_baseline(file, &args.engine, &settings, &results),
        (None, Some(file)) => check_baseline(file, &args.engine, &settings, &results, args.tolerance),
        (None, None) => true,
    };
    if !passed {
        std::process::exit(1);
    }
}

/// Planner statistics after the bulk load, as PostgreSQL's autovacuum (or the server's periodic
/// SQLite `PRAGMA optimize`) would gather them shortly after; on PostgreSQL also the vacuum
/// that autovacuum runs after many inserts, which sets the visibility map that index-only
/// scans rely on.
async fn analyze(database_url: &str) {
    use sqlx::Connection;
    if database_url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.expect("connect");
        sqlx::query("ANALYZE").execute(&mut conn).await.expect("ANALYZE");
    } else {
        let mut conn = sqlx::PgConnection::connect(database_url).await.expect("connect");
        sqlx::query("VACUUM ANALYZE").execute(&mut conn).await.expect("VACUUM ANALYZE");
    }
}

/// The workload every other is measured against in a regression check: the liveness endpoint,
/// the server's HTTP stack with nothing behind it.
const REFERENCE: &str = "reference: GET /health/live";
const PACKETS: &str = "transaction Bundle: referral packet (15 resources)";

/// What one workload measured.
struct Measured {
    name: String,
    per_second: f64,
    errors: usize,
}

/// Reads each resource's current content and version (untimed), for updates with If-Match.
async fn current_versions(target: &Arc<Target>, paths: Vec<String>) -> Arc<Vec<(Value, String)>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(64) {
        let reads = chunk.iter().map(|path| {
            let target = target.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let (status, body) = target.send("GET", &path, None).await.expect("read for update");
                assert_eq!(status, 200, "reading {path}");
                let resource: Value = serde_json::from_slice(&body).expect("JSON");
                let version = resource["meta"]["versionId"].as_str().expect("a version").to_owned();
                (resource, version)
            })
        });
        for read in reads.collect::<Vec<_>>() {
            out.push(read.await.expect("reader"));
        }
    }
    Arc::new(out)
}

/// A line of `/proc/<pid>/status` (`VmRSS:` now, `VmHWM:` at its peak).
fn rss(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(|l| l.trim_start_matches(key).trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// Each workload's throughput as a share of the reference workload's in the same run (the mean
/// of its measurements, at the start and at the end).
fn ratios(results: &[Measured]) -> serde_json::Map<String, Value> {
    let references: Vec<f64> = results.iter().filter(|r| r.name == REFERENCE).map(|r| r.per_second).collect();
    let reference = (references.iter().sum::<f64>() / references.len().max(1) as f64).max(1e-9);
    results.iter().filter(|r| r.name != REFERENCE).map(|r| (r.name.clone(), json!(r.per_second / reference))).collect()
}

/// Writes this run's ratios, with the settings they were measured with, as the baseline of
/// `engine` in `file`, keeping other engines'. A run with failed requests is no baseline.
fn record_baseline(file: &std::path::Path, engine: &str, settings: &Value, results: &[Measured]) -> bool {
    if let Some(r) = results.iter().find(|r| r.errors > 0) {
        println!("not recorded: {} had {} failed requests", r.name, r.errors);
        return false;
    }
    let mut all: Value =
        std::fs::read_to_string(file).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(json!({}));
    all[engine] = json!({"settings": settings, "ratios": ratios(results)});
    std::fs::write(file, serde_json::to_string_pretty(&all).expect("JSON") + "\n").expect("baseline written");
    println!("baseline for {engine} recorded in {}", file.display());
    true
}

/// Compares this run's ratios with the baseline of `engine` in `file`, which must have been
/// measured with the same settings: a workload fails when it had errors, or when its ratio fell
/// below `tolerance` times the recorded one.
fn check_baseline(
    file: &std::path::Path,
    engine: &str,
    settings: &Value,
    results: &[Measured],
    tolerance: f64,
) -> bool {
    let all: Value = match std::fs::read_to_string(file).map(|t| serde_json::from_str(&t)) {
        Ok(Ok(all)) => all,
        _ => {
            println!("FAILED: no baseline file {} (or not JSON)", file.display());
            return false;
        }
    };
    let (Some(baseline), recorded) = (all[engine]["ratios"].as_object(), &all[engine]["settings"]) else {
        println!("FAILED: no baseline for {engine} in {}", file.display());
        return false;
    };
    if recorded != settings {
        println!("FAILED: the baseline was measured with {recorded}, this run with {settings}");
        return false;
    }
    let now = ratios(results);
    let mut ok = true;
    println!("regression check against {} (fails below {tolerance} × the recorded ratio):", file.display());
    for r in results.iter().filter(|r| r.name != REFERENCE) {
        let ratio = now[&r.name].as_f64().unwrap_or(0.0);
        let verdict = match baseline.get(&r.name).and_then(Value::as_f64) {
            _ if r.errors > 0 => format!("FAILED: {} errors", r.errors),
            Some(base) if ratio < base * tolerance => format!("FAILED: {ratio:.5} < {tolerance} × {base:.5}"),
            Some(base) => format!("ok: {:.2} × the baseline", ratio / base),
            None => "FAILED: no baseline recorded".into(),
        };
        ok &= verdict.starts_with("ok");
        println!("  {:<48} {verdict}", r.name);
    }
    ok
}

async fn measure(target: &Arc<Target>, name: &str, requests: usize, concurrency: usize, make: MakeRequest) -> Measured {
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (target, make, next, errors, name) =
            (target.clone(), make.clone(), next.clone(), errors.clone(), name.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let call = make(i);
                let t = Instant::now();
                match target.call(&call).await {
                    Ok((status, _)) if status < 300 => {}
                    failed => {
                        // The first failure of a workload is shown, so that a figure with errors
                        // says what they were (the data is synthetic).
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            let what = match failed {
                                Ok((status, body)) => format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                                Err(e) => e,
                            };
                            eprintln!("{name}: first error: {} {}: {what}", call.method, call.path);
                        }
                    }
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all: Vec<Duration> = Vec::with_capacity(requests);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let (per_second, errors) = (all.len() as f64 / secs, errors.load(Ordering::Relaxed));
    println!(
        "{name:<48} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7}",
        all.len(),
        per_second,
        pct(0.50),
        pct(0.95),
        pct(0.99),
        errors
    );
    Measured { name: name.to_owned(), per_second, errors }
}

/// Spreads consecutive request numbers over the data set (a fixed permutation, repeatable).
fn scramble(i: usize) -> usize {
    (i.wrapping_mul(2_654_435_761)) % 1_000_000_007
}

const GIVEN: &[&str] =
    &["Alex", "Sam", "Maria", "Jonas", "Aisha", "Wei", "Lena", "Omar", "Zoë", "Ivan", "Fatima", "Noah"];
const FAMILY: &[&str] =
    &["Müller", "Okafor", "García", "Nguyen", "Smith", "Kowalski", "Haddad", "Johansson", "Rossi", "Brown"];

fn date(i: usize, salt: usize) -> String {
    let day = (i * 7 + salt * 13) % 365;
    let (month, dom) = (1 + day / 31 % 12, 1 + day % 28);
    format!("2024-{month:02}-{dom:02}")
}

fn phq9(patient: usize, n: usize, score: i64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6", "display": "PHQ-9 total score"}]},
        "subject": {"reference": format!("Patient/pat-{patient}")},
        "effectiveDateTime": format!("{}T09:00:00Z", date(patient, n)),
        "valueQuantity": {"value": score, "system": "http://unitsofmeasure.org", "code": "{score}"}})
}

/// The resources of one patient, in an order that satisfies referential integrity.
fn patient_bundle(i: usize) -> Vec<Value> {
    let pat = format!("Patient/pat-{i}");
    let role = |k: usize| format!("PractitionerRole/role-{}", (i * 3 + k) % ROLES);
    let mut out = vec![json!({"resourceType": "Patient", "id": format!("pat-{i}"), "active": true,
        "identifier": [{"system": "urn:mrn", "value": format!("MRN{i}")}],
        "name": [{"family": FAMILY[i % FAMILY.len()], "given": [GIVEN[i % GIVEN.len()]]}],
        "gender": (["female", "male", "other"][i % 3]), "birthDate": format!("{}-0{}-1{}", 1950 + i % 55, 1 + i % 9, i % 10),
        "managingOrganization": {"reference": format!("Organization/org-{}", i % ORGS)}})];
    out.push(json!({"resourceType": "Condition", "id": format!("cond-{i}"),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007", "display": "Depressive disorder"}]},
        "subject": {"reference": pat}, "onsetDateTime": date(i, 1)}));
    for k in 0..3 {
        out.push(json!({"resourceType": "Encounter", "id": format!("enc-{i}-{k}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": pat}, "participant": [{"individual": {"reference": role(k)}}],
            "period": {"start": format!("{}T10:00:00Z", date(i, k + 2)), "end": format!("{}T11:00:00Z", date(i, k + 2))}}));
    }
    for k in 0..2 {
        let mut obs = phq9(i, k + 5, ((i + k * 7) % 27) as i64);
        obs["id"] = json!(format!("obs-{i}-{k}"));
        obs["encounter"] = json!({"reference": format!("Encounter/enc-{i}-{k}")});
        out.push(obs);
    }
    out.push(json!({"resourceType": "QuestionnaireResponse", "id": format!("qr-{i}"), "status": "completed",
        "subject": {"reference": pat}, "authored": format!("{}T09:30:00Z", date(i, 7)),
        "item": [{"linkId": "1", "text": "Little interest or pleasure in doing things", "answer": [{"valueInteger": (i % 4) as i64}]}]}));
    for k in 0..2 {
        out.push(json!({"resourceType": "Goal", "id": format!("goal-{i}-{k}"),
            "lifecycleStatus": if k == 0 { "active" } else { "completed" },
            "description": {"text": (["Sleep seven hours a night", "Return to work part-time"][k])},
            "subject": {"reference": pat}, "target": [{"dueDate": date(i, k + 9)}]}));
    }
    out.push(
        json!({"resourceType": "CareTeam", "id": format!("ct-{i}"), "status": "active", "subject": {"reference": pat},
        "participant": [{"member": {"reference": role(0)}}, {"member": {"reference": role(1)}}]}),
    );
    for k in 0..2 {
        out.push(json!({"resourceType": "CarePlan", "id": format!("cp-{i}-{k}"),
            "status": if k == 0 { "active" } else { "completed" }, "intent": "plan",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "736353004"}]}],
            "subject": {"reference": pat}, "careTeam": [{"reference": format!("CareTeam/ct-{i}")}],
            "addresses": [{"reference": format!("Condition/cond-{i}")}], "goal": [{"reference": format!("Goal/goal-{i}-{k}")}],
            "period": {"start": date(i, k + 11)}}));
    }
    out.push(json!({"resourceType": "ServiceRequest", "id": format!("sr-{i}"),
        "status": if i.is_multiple_of(3) { "completed" } else { "active" }, "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}]}],
        "subject": {"reference": pat}, "requester": {"reference": role(0)}, "performer": [{"reference": role(2)}],
        "authoredOn": format!("{}T08:00:00Z", date(i, 13))}));
    out.push(task(i, "requested"));
    out
}

/// Patient `i`'s referral Task with `status`.
fn task(i: usize, status: &str) -> Value {
    let role = |r: usize| format!("PractitionerRole/role-{}", (i * 3 + r) % ROLES);
    json!({"resourceType": "Task", "id": format!("task-{i}"), "status": status, "intent": "order",
        "focus": {"reference": format!("ServiceRequest/sr-{i}")}, "for": {"reference": format!("Patient/pat-{i}")},
        "requester": {"reference": role(0)}, "owner": {"reference": role(2)},
        "authoredOn": format!("{}T08:05:00Z", date(i, 13))})
}

/// The moves patient `i`'s referral makes after it was sent (`requested`), through the task
/// state machine: a third stay requested, a third are accepted, a third completed.
fn task_moves(i: usize) -> Vec<Value> {
    let steps = [0, 2, 4][i % 3];
    ["received", "accepted", "in-progress", "completed"].iter().take(steps).map(|s| task(i, s)).collect()
}

fn shared() -> Vec<Value> {
    let mut out = Vec::new();
    for o in 0..ORGS {
        out.push(json!({"resourceType": "Organization", "id": format!("org-{o}"), "name": format!("Community Mental Health Service {o}")}));
    }
    for r in 0..ROLES {
        out.push(json!({"resourceType": "Practitioner", "id": format!("prac-{r}"),
            "name": [{"family": FAMILY[r % FAMILY.len()], "given": [GIVEN[(r + 3) % GIVEN.len()]]}]}));
        out.push(json!({"resourceType": "PractitionerRole", "id": format!("role-{r}"), "active": true,
            "practitioner": {"reference": format!("Practitioner/prac-{r}")},
            "organization": {"reference": format!("Organization/org-{}", r % ORGS)},
            "code": [{"coding": [{"system": "http://snomed.info/sct", "code": (["80584001", "59944000", "106328005"][r % 3])}]}]}));
    }
    out
}

async fn put(target: &Target, resource: &Value) {
    let path = format!("{}/{}", resource["resourceType"].as_str().unwrap_or(""), resource["id"].as_str().unwrap_or(""));
    match target.send("PUT", &path, Some(resource)).await {
        Ok((status, _)) if status < 300 => {}
        Ok((status, body)) => panic!("loading {path}: {status} {}", String::from_utf8_lossy(&body)),
        Err(e) => panic!("loading {path}: {e}"),
    }
}

/// A transaction entry that PUTs `r` at its id.
fn put_entry(r: Value) -> Value {
    let url = format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""));
    json!({"resource": r, "request": {"method": "PUT", "url": url}})
}

/// Posts a transaction Bundle of `entries`; it must succeed.
async fn transaction(target: &Target, entries: Vec<Value>) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    match target.send("POST", "", Some(&bundle)).await {
        Ok((200, _)) => {}
        Ok((status, body)) => panic!("loading a batch: {status} {}", String::from_utf8_lossy(&body)),
        Err(e) => panic!("loading a batch: {e}"),
    }
}

async fn load(target: &Arc<Target>, args: &Args) {
    for r in shared() {
        put(target, &r).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (target, next, patients, batch) = (target.clone(), next.clone(), args.patients, args.load_batch.max(1));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= patients {
                    break;
                }
                if batch > 1 {
                    // Claim `batch` patients at once (the first was claimed above).
                    let more = next.fetch_add(batch - 1, Ordering::Relaxed);
                    let ids = std::iter::once(i).chain(more..(more + batch - 1)).filter(|&k| k < patients);
                    let entries: Vec<Value> = ids.flat_map(patient_bundle).map(put_entry).collect();
                    transaction(&target, entries).await;
                    // Then the referrals move on, a step per Bundle.
                    for step in 0..4 {
                        let ids = std::iter::once(i).chain(more..(more + batch - 1)).filter(|&k| k < patients);
                        let moves: Vec<Value> =
                            ids.filter_map(|k| task_moves(k).get(step).cloned()).map(put_entry).collect();
                        if !moves.is_empty() {
                            transaction(&target, moves).await;
                        }
                    }
                    continue;
                }
                for r in patient_bundle(i).iter().chain(&task_moves(i)) {
                    put(&target, r).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader");
    }
}

/// Patient `i`'s resources as a transaction Bundle of POSTs, as a referring system sends them:
/// server-assigned ids, references between them by urn:uuid.
fn packet(i: usize) -> Value {
    let resources = patient_bundle(i);
    let urn = |k: usize| format!("urn:uuid:00000000-0000-4000-8000-{:06}{:06}", i % 1_000_000, k);
    let local: std::collections::HashMap<String, String> = resources
        .iter()
        .enumerate()
        .map(|(k, r)| {
            (format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")), urn(k))
        })
        .collect();
    let entries: Vec<Value> = resources
        .into_iter()
        .enumerate()
        .map(|(k, mut r)| {
            let ty = r["resourceType"].as_str().unwrap_or("").to_owned();
            r.as_object_mut().map(|o| o.remove("id"));
            let mut text = r.to_string();
            for (reference, full_url) in &local {
                text =
                    text.replace(&format!("\"reference\":\"{reference}\""), &format!("\"reference\":\"{full_url}\""));
            }
            let resource: Value = serde_json::from_str(&text).expect("JSON");
            json!({"fullUrl": urn(k), "resource": resource, "request": {"method": "POST", "url": ty}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// The transaction workload: referral packets (15 resources each, new ones every run) posted
/// as transaction Bundles.
fn packets(args: &Args) -> MakeRequest {
    let first = 1_000_000 + args.patients + std::process::id() as usize * 10_000;
    Box::new(move |i| Call::post("", packet(first + i)))
}

/// The resources per second that the transaction workload stored.
fn print_stored(packets: &Measured) {
    println!("  = {:.0} resources/s in transaction Bundles", packets.per_second * 15.0);
}

fn print_header() {
    println!(
        "{:<48} {:>8} {:>10} {:>8} {:>8} {:>8} {:>7}",
        "workload", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"
    );
}
