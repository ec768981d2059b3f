//! HTTPS with rustls: real handshakes against a test certificate authority made here, TLS 1.0
//! and 1.1 refused, mutual TLS, certificates reloaded without a restart, and the refusal to
//! expose an unprotected server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::helpers::TestApp;

struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str], common_name: &str) -> Pair {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "Test Clinic");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }
}

struct Server {
    addr: SocketAddr,
    tls: Arc<liaison::tls::Tls>,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(app: &TestApp, server: &Pair, client_ca: Option<&Authority>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = liaison::Config::for_database(&app.database_url);
    config.tls_cert = Some(write(dir.path(), "cert.pem", &server.cert));
    config.tls_key = Some(write(dir.path(), "key.pem", &server.key));
    config.tls_client_ca = client_ca.map(|ca| write(dir.path(), "ca.pem", &ca.pem()));
    let tls = liaison::load_tls(&config).unwrap().expect("TLS configured");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(liaison::serve(listener, app.router.clone(), Some(tls.clone()), Default::default(), async {
        let _ = stopped.await;
    }));
    Server { addr, tls, dir, stop: Some(stop) }
}

fn client(
    ca: &Authority,
    versions: &[&'static rustls::SupportedProtocolVersion],
    identity: Option<&Pair>,
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(pair) => {
            let chain = vec![CertificateDer::from_pem_slice(pair.cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// One HTTP request over TLS: the status line and the server certificate's subject, or the
/// error that stopped it.
async fn request(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> Result<(String, String, rustls::ProtocolVersion), String> {
    send(connector, addr, b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await
}

/// Sends one raw HTTP/1.1 request over TLS: the status line, the server certificate's subject
/// and the protocol version.
async fn send(
    connector: &TlsConnector,
    addr: SocketAddr,
    raw_request: &[u8],
) -> Result<(String, String, rustls::ProtocolVersion), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = stream.get_ref();
    let version = session.protocol_version().unwrap();
    let subject = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(liaison::tls::certificate_subject)
        .unwrap_or_default();
    stream.write_all(raw_request).await.map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.lines().next().unwrap_or("").to_owned();
    if status.is_empty() {
        return Err("no response".into());
    }
    Ok((status, subject, version))
}

/// A ClientHello that offers only `version` (0x0301 TLS 1.0, 0x0302 TLS 1.1), sent raw: the
/// server must answer with an alert, never a ServerHello.
async fn legacy_hello(addr: SocketAddr, version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version); // client_version
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0x00, 0x2f, 0xc0, 0x13]); // two CBC suites TLS 1.0 offered
    body.extend_from_slice(&[1, 0]); // null compression
    let mut handshake = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, (handshake.len() >> 8) as u8, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    answer
}

pub async fn https_with_tls_12_and_13_only(app: TestApp) {
    let ca = Authority::new("Liaison Test CA");
    let server = start(&app, &ca.issue(&["localhost", "127.0.0.1"], "liaison.test"), None).await;
    let (status, subject, version) =
        request(&client(&ca, &[&rustls::version::TLS13], None), server.addr).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(subject.contains("CN=liaison.test"), "{subject}");
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    let (status, _, version) = request(&client(&ca, &[&rustls::version::TLS12], None), server.addr).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    for legacy in [[3, 1], [3, 2]] {
        let answer = legacy_hello(server.addr, legacy).await;
        assert_eq!(answer.first(), Some(&0x15), "TLS {legacy:?} must get an alert: {answer:?}");
    }
    // A client that does not trust the server's CA does not get through.
    let stranger = Authority::new("Other CA");
    assert!(request(&client(&stranger, &[&rustls::version::TLS13], None), server.addr).await.is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

pub async fn mutual_tls_requires_a_client_certificate(app: TestApp) {
    let ca = Authority::new("Liaison Test CA");
    let clients = Authority::new("Referral Partners CA");
    let server = start(&app, &ca.issue(&["localhost"], "liaison.test"), Some(&clients)).await;
    assert!(server.tls.mutual());
    let partner = clients.issue(&["referrals.example.org"], "referrals.example.org");
    let (status, _, _) = request(&client(&ca, &[&rustls::version::TLS13], Some(&partner)), server.addr).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (status, _, _) = request(&client(&ca, &[&rustls::version::TLS12], Some(&partner)), server.addr).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    // No certificate, or one from another authority: refused.
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let r = request(&client(&ca, &[versions], None), server.addr).await;
        assert!(r.is_err(), "no client certificate must be refused: {r:?}");
    }
    // A batch whose entries run through the router as requests of their own.
    let batch =
        r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient?_count=1"}}]}"#;
    let raw = format!(
        "POST /fhir HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{batch}",
        batch.len()
    );
    let partner_client = client(&ca, &[&rustls::version::TLS13], Some(&partner));
    assert_eq!(send(&partner_client, server.addr, raw.as_bytes()).await.unwrap().0, "HTTP/1.1 200 OK");
    // The client certificate's subject and the address are in the audit trail, for the batch
    // entry too.
    for subtype in ["capabilities", "search-type"] {
        let trail = app.get(&format!("AuditEvent?subtype={subtype}&_count=10")).await.json;
        let agents: Vec<String> = trail["entry"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["resource"]["agent"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["name"].as_str().map(str::to_owned))
            .collect();
        assert!(agents.iter().any(|n| n.contains("CN=referrals.example.org")), "{subtype}: {agents:?}");
        assert!(trail.to_string().contains("127.0.0.1"), "{subtype}: the network address is recorded");
    }
    let rogue = Authority::new("Rogue CA").issue(&["rogue"], "rogue");
    let r = request(&client(&ca, &[&rustls::version::TLS13], Some(&rogue)), server.addr).await;
    assert!(r.is_err(), "an untrusted client certificate must be refused: {r:?}");
}

pub async fn certificates_reload_without_restart(app: TestApp) {
    let ca = Authority::new("Liaison Test CA");
    let server = start(&app, &ca.issue(&["localhost"], "first.liaison.test"), None).await;
    let connector = client(&ca, &[&rustls::version::TLS13], None);
    let (_, subject, _) = request(&connector, server.addr).await.unwrap();
    assert!(subject.contains("CN=first.liaison.test"), "{subject}");
    assert!(!server.tls.reload_if_changed().unwrap(), "nothing changed yet");
    // A half-written replacement is refused and the old certificate stays.
    write(server.dir.path(), "cert.pem", "-----BEGIN CERTIFICATE-----\ngarbage\n");
    assert!(server.tls.reload().is_err());
    assert!(request(&connector, server.addr).await.unwrap().1.contains("CN=first.liaison.test"));
    let renewed = ca.issue(&["localhost"], "second.liaison.test");
    write(server.dir.path(), "cert.pem", &renewed.cert);
    write(server.dir.path(), "key.pem", &renewed.key);
    // Stamped later than the first files, whatever the file system's clock granularity.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    for name in ["cert.pem", "key.pem"] {
        std::fs::File::options().write(true).open(server.dir.path().join(name)).unwrap().set_modified(later).unwrap();
    }
    assert!(server.tls.reload_if_changed().unwrap(), "the change is picked up");
    assert!(!server.tls.reload_if_changed().unwrap(), "and only once");
    let (status, subject, _) = request(&connector, server.addr).await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(subject.contains("CN=second.liaison.test"), "{subject}");
}

pub async fn unprotected_exposure_is_refused(app: TestApp) {
    let mut config = liaison::Config::for_database(&app.database_url);
    let warning = config.check_exposure().unwrap().expect("a loud warning without authorization");
    assert!(warning.contains("NO AUTHORIZATION"), "{warning}");
    config.listen_addr = "0.0.0.0:8080".parse().unwrap();
    let refusal = config.check_exposure().unwrap_err();
    assert!(refusal.contains("without TLS and authorization"), "{refusal}");
    config.tls_cert = Some("cert.pem".into());
    assert!(config.check_exposure().unwrap_err().contains("without authorization"));
    config.allow_insecure_exposure = true;
    assert!(config.check_exposure().unwrap().unwrap().contains("--allow-insecure-exposure"));
}

/// A server over `app` that takes only callers with a client certificate of a partner
/// authority (mutual TLS), and one partner's connection to it.
pub struct MutualTls {
    server: Server,
    connector: TlsConnector,
}

impl MutualTls {
    pub async fn start(app: &TestApp, partner: &str) -> Self {
        let ca = Authority::new("Liaison Test CA");
        let partners = Authority::new("Referral Partners CA");
        let server = start(app, &ca.issue(&["localhost"], "liaison.test"), Some(&partners)).await;
        let identity = partners.issue(&[partner], partner);
        Self { server, connector: client(&ca, &[&rustls::version::TLS13], Some(&identity)) }
    }

    /// `GET /fhir/{path}` with a bearer token: the status code and the body.
    pub async fn get(&self, path: &str, token: &str) -> (u16, String) {
        let raw = format!(
            "GET /fhir/{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let tcp = TcpStream::connect(self.server.addr).await.unwrap();
        let mut stream = self.connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }
}
