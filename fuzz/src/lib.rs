//! What the fuzz targets share: the R4 registry, and a real server (the HTTP router over a
//! SQLite file) that takes one request at a time and must never answer 5xx or panic.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use liaison::fhir::registry::Registry;
use tower::ServiceExt;

mod inputs;
pub use inputs::search_path;

/// The R4 definitions and search parameters, loaded once.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::r4)
}

struct Server {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        // `run.sh` points this at memory when there is room (every request commits an audit
        // record, and the fuzzer is after wrong answers, not durability).
        let dir = std::env::var_os("LIAISON_FUZZ_DB_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
        // Files of earlier runs whose process is gone are removed.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("liaison-fuzz-").and_then(|rest| rest.split('.').next());
            if pid.is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let file = dir.join(format!("liaison-fuzz-{}.db", std::process::id()));
        let mut config = liaison::Config::for_database(format!("sqlite://{}?mode=rwc", file.display()));
        config.base_url = Some("http://fuzz.test/fhir".into());
        config.db_max_connections = 2;
        let router = runtime.block_on(async {
            let state = liaison::build_state(&config).await.expect("the fuzz database opens");
            liaison::app(state)
        });
        let server = Server { runtime, router };
        for (path, body) in inputs::SEED {
            let status = server.send("PUT", path, body.as_bytes().to_vec());
            assert!(status < 300, "seeding {path}: {status}");
        }
        server
    })
}

impl Server {
    fn send(&self, method: &str, uri: &str, body: Vec<u8>) -> u16 {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/fhir+json")
            .body(Body::from(body))
            .expect("the target builds valid requests");
        self.runtime.block_on(async {
            let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            status
        })
    }
}

/// Sends one request to the shared server and fails (aborts the fuzz run) on a 5xx.
pub fn request(method: &str, uri: &str, body: Vec<u8>) {
    let status = server().send(method, uri, body);
    assert!(status < 500, "{method} {uri} answered {status}");
}
