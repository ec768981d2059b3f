//! The test harness: a real router over a real database, one fresh database per test.
//!
//! SQLite tests use a file in a temporary directory. PostgreSQL tests use a fresh schema in the
//! server named by `LIAISON_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped when the test ends. Outside CI, PostgreSQL tests are reported as ignored when no
//! server answers; with `CI` set they run, and fail if PostgreSQL is missing.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use futures::FutureExt;
use http_body_util::BodyExt;
use liaison::Config;
use serde_json::Value;
use sqlx::Connection;
use tower::ServiceExt;

/// The base URL the test server believes it has.
pub const BASE: &str = "http://liaison.test/fhir";

/// A test body: takes the app, runs its assertions.
pub type TestFn = fn(TestApp) -> Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

pub fn postgres_url() -> String {
    std::env::var("LIAISON_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether a PostgreSQL server answers at [`postgres_url`]; `Err` says why not.
pub fn postgres_available() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let connect = sqlx::PgConnection::connect(&postgres_url());
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connection timed out".into()),
        }
    })
}

/// Runs one test body against a fresh database of `backend`.
pub fn run(backend: Backend, test: TestFn) -> Result<(), libtest_mimic::Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let (app, cleanup) = TestApp::start(backend).await;
        let outcome = AssertUnwindSafe(test(app)).catch_unwind().await;
        cleanup.run().await;
        outcome.map_err(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "test panicked".into());
            libtest_mimic::Failed::from(text)
        })
    })
}

/// What to remove when a test ends.
pub enum Cleanup {
    TempDir(#[allow(dead_code)] tempfile::TempDir),
    Schema(String),
}

impl Cleanup {
    async fn run(self) {
        if let Self::Schema(schema) = self {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn).await;
            }
        }
    }
}

/// The application under test.
#[derive(Clone)]
pub struct TestApp {
    pub router: Router,
    pub backend: Backend,
    /// The database URL, to start a second server on the same data.
    pub database_url: String,
    /// The server's state, for background work a test starts itself (notification delivery).
    pub state: liaison::state::AppState,
}

/// A response, with the body read and parsed when it is JSON.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The expressions of all OperationOutcome issues.
    pub fn issue_expressions(&self) -> Vec<String> {
        self.issues()
            .iter()
            .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect()
    }

    /// The issues of an OperationOutcome body (asserting that it is one).
    pub fn issues(&self) -> Vec<Value> {
        assert_eq!(self.json["resourceType"], "OperationOutcome", "expected an OperationOutcome, got {}", self.text);
        self.json["issue"].as_array().cloned().unwrap_or_default()
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        self
    }
}

impl TestApp {
    async fn start(backend: Backend) -> (Self, Cleanup) {
        let (database_url, cleanup) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("liaison.db").display());
                (url, Cleanup::TempDir(dir))
            }
            Backend::Postgres => {
                let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&postgres_url()).await.expect("PostgreSQL is reachable");
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.expect("create schema");
                let sep = if postgres_url().contains('?') { '&' } else { '?' };
                (format!("{}{sep}options[search_path]={schema}", postgres_url()), Cleanup::Schema(schema))
            }
        };
        let app = Self::connect(backend, &database_url).await;
        (app, cleanup)
    }

    /// A server on the database at `database_url` (migrated on connect).
    pub async fn connect(backend: Backend, database_url: &str) -> Self {
        Self::connect_with(backend, database_url, |_| {}).await
    }

    /// Like [`Self::connect`], with settings changed by `configure`.
    pub async fn connect_with(backend: Backend, database_url: &str, configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::for_database(database_url);
        config.base_url = Some(BASE.into());
        config.max_body_bytes = 256 * 1024;
        config.db_max_connections = 4;
        configure(&mut config);
        let state = liaison::build_state(&config).await.expect("store opens and migrates");
        let router = liaison::app(state.clone());
        Self { router, backend, database_url: database_url.to_owned(), state }
    }

    /// Runs SQL statements directly on this test's database (to set up states the API cannot).
    pub async fn execute_sql(&self, statements: &[&str]) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url).await.expect("connect");
                for s in statements {
                    sqlx::query(s).execute(&mut conn).await.expect("statement runs");
                }
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url).await.expect("connect");
                for s in statements {
                    sqlx::query(s).execute(&mut conn).await.expect("statement runs");
                }
            }
        }
    }

    /// Sends a request; `body` is sent as FHIR JSON unless `headers` set a Content-Type.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> TestResponse {
        self.send_bytes(method, path, headers, body.map(String::into_bytes)).await
    }

    /// Like [`Self::send`], with a body that need not be UTF-8.
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> TestResponse {
        let uri = if path.starts_with('/') { path.to_owned() } else { format!("/fhir/{path}") };
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/fhir+json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty)).expect("request builds");
        let response = self.router.clone().oneshot(req).await.expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body reads").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        TestResponse { status, headers, text, json }
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> TestResponse {
        self.send(Method::POST, path, &[], Some(body.to_string())).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> TestResponse {
        self.send(Method::PUT, path, &[], Some(body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> TestResponse {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// Creates `resource` and returns the stored resource.
    #[track_caller]
    pub fn create(&self, resource: Value) -> impl Future<Output = Value> + '_ {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_owned();
        async move {
            let r = self.post(&ty, &resource).await;
            assert_eq!(r.status, StatusCode::CREATED, "create {ty}: {}", r.text);
            r.json
        }
    }
}

/// Test fixtures.
pub mod fixtures {
    use serde_json::{json, Value};

    pub fn patient() -> Value {
        json!({"resourceType": "Patient", "name": [{"family": "Test", "given": ["Pat"]}], "birthDate": "1980-04-01"})
    }

    pub fn care_plan(patient_id: &str) -> Value {
        care_plan_subject(&format!("Patient/{patient_id}"))
    }

    /// A valid CarePlan whose subject is `reference`.
    pub fn care_plan_subject(reference: &str) -> Value {
        json!({
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "title": "Initial treatment plan",
            "subject": {"reference": reference},
            "activity": [{"detail": {"status": "scheduled", "kind": "ServiceRequest",
                "_status": {"extension": [{"url": "http://example.org/ext", "valueString": "note"}]}}}]
        })
    }
}

/// A `liaison` server process (the real binary) on `app`'s database, listening on a free port.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<hyper::body::Bytes>,
    >,
}

impl ServerProcess {
    /// Starts the binary with `args` besides the address and database, and waits until ready.
    pub async fn start(app: &TestApp, args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["--listen-addr", &format!("127.0.0.1:{port}"), "--database-url", &app.database_url])
            .args(["--log-level", "error"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the liaison binary starts");
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let process = Self { child, base: format!("http://127.0.0.1:{port}"), client };
        for _ in 0..200 {
            if process.request("GET", "/health/ready", None).await.is_ok_and(|(status, _)| status == 200) {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    /// A request with a FHIR JSON body: the status and the JSON answer.
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        self.send(method, path, &[], body).await.map(|(status, _, json)| (status, json))
    }

    /// A request with headers: the status, the answer's headers and its JSON.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<(u16, HeaderMap, Value), String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/fhir+json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(http_body_util::Full::new(body.map(|b| b.to_string()).unwrap_or_default().into()))
            .map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
