//! SMART on FHIR authorization: tokens signed here (ES256 with a key made per test, RS256 with a
//! throw-away fixture key), validated against a JWKS file or URL; the scope matrix; and the
//! patient compartment that `patient/` scopes confine every read, search, include, chain,
//! `_has`, write and Bundle to.

use std::sync::{Arc, Mutex};

use axum::http::Method;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::{fixtures, TestApp, TestResponse};

const ISSUER: &str = "https://idp.example.org/realms/hospital";
const AUDIENCE: &str = "https://liaison.example.org/fhir";

/// Signing keys and the JWKS that publishes them.
struct Keys {
    ec_der: Vec<u8>,
    ec_jwk: Value,
    rsa_der: Vec<u8>,
    rsa_jwk: Value,
}

impl Keys {
    fn new(ec_kid: &str) -> Self {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let ec = rcgen::KeyPair::generate().unwrap();
        let point = ec.public_key_raw();
        let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": ec_kid, "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        let fixture: Value =
            serde_json::from_str(include_str!("fixtures/rs256-test-key.json")).expect("the RSA fixture is JSON");
        let rsa_der = base64::engine::general_purpose::STANDARD
            .decode(fixture["private_pkcs1_der_base64"].as_str().unwrap())
            .unwrap();
        Self { ec_der: ec.serialize_der(), ec_jwk, rsa_der, rsa_jwk: fixture["jwk"].clone() }
    }

    fn jwks(&self) -> String {
        json!({"keys": [self.ec_jwk, self.rsa_jwk]}).to_string()
    }

    fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let (key, kid) = match alg {
            Algorithm::ES256 => (EncodingKey::from_ec_der(&self.ec_der), self.ec_jwk["kid"].as_str()),
            _ => (EncodingKey::from_rsa_der(&self.rsa_der), self.rsa_jwk["kid"].as_str()),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims(scope: &str, patient: Option<&str>) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "dr-rivera", "client_id": "ehr-1",
        "exp": now() + 300, "iat": now(), "scope": scope});
    if let Some(p) = patient {
        c["patient"] = json!(p);
    }
    c
}

/// A server with authorization on, over `app`'s database, its JWKS in a file.
pub struct Secured {
    pub app: TestApp,
    keys: Keys,
    _dir: tempfile::TempDir,
}

impl Secured {
    pub async fn new(app: &TestApp) -> Self {
        Self::with(app, |_| {}).await
    }

    /// Like [`Self::new`], with settings changed by `configure`.
    pub async fn with(app: &TestApp, configure: impl FnOnce(&mut liaison::config::Config)) -> Self {
        let keys = Keys::new("ec-1");
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, keys.jwks()).unwrap();
        let secured = TestApp::connect_with(app.backend, &app.database_url, |c| {
            c.auth_issuer = Some(ISSUER.into());
            c.auth_audience = Some(AUDIENCE.into());
            c.auth_jwks = Some(jwks.display().to_string());
            c.auth_token_endpoint = Some(format!("{ISSUER}/token"));
            configure(c);
        })
        .await;
        Self { app: secured, keys, _dir: dir }
    }

    /// A token with `scope` and these further claims (`fhirUser`, `patient`, `clearance`, …).
    pub fn token_with(&self, scope: &str, extra: Value) -> String {
        let mut c = claims(scope, None);
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        self.keys.sign(Algorithm::ES256, &c)
    }

    pub fn token(&self, scope: &str, patient: Option<&str>) -> String {
        self.keys.sign(Algorithm::ES256, &claims(scope, patient))
    }

    /// A token of a user who is `fhir_user` (`Practitioner/…`, an absolute URL, …).
    pub fn user_token(&self, scope: &str, fhir_user: &str) -> String {
        let mut c = claims(scope, None);
        c["fhirUser"] = json!(fhir_user);
        self.keys.sign(Algorithm::ES256, &c)
    }

    pub async fn send(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> TestResponse {
        let auth = format!("Bearer {token}");
        self.app.send(method, path, &[("authorization", &auth)], body.map(|b| b.to_string())).await
    }

    pub async fn get(&self, token: &str, path: &str) -> TestResponse {
        self.send(token, Method::GET, path, None).await
    }
}

fn ids(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some(format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?))
                })
                .filter(|s| !s.starts_with("OperationOutcome"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub async fn tokens_are_required_and_validated(app: TestApp) {
    let s = Secured::new(&app).await;
    let r = s.app.get("Patient").await;
    r.expect(401);
    assert_eq!(r.issues()[0]["code"], "login");
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="liaison""#));
    let scope = "user/*.cruds";
    let good_es = s.token(scope, None);
    let good_rs = s.keys.sign(Algorithm::RS256, &claims(scope, None));
    s.get(&good_es, "Patient").await.expect(200);
    s.get(&good_rs, "Patient").await.expect(200);
    let mut expired = claims(scope, None);
    expired["exp"] = json!(now() - 3600);
    let mut early = claims(scope, None);
    early["nbf"] = json!(now() + 3600);
    let mut other_issuer = claims(scope, None);
    other_issuer["iss"] = json!("https://evil.example.org");
    let mut other_audience = claims(scope, None);
    other_audience["aud"] = json!("https://other-server.example.org/fhir");
    let stranger = Keys::new("ec-1").sign(Algorithm::ES256, &claims(scope, None));
    let hs256 =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(scope, None), &EncodingKey::from_secret(b"guess"))
            .unwrap();
    let refused = [
        ("garbage".to_owned(), "well-formed"),
        (s.keys.sign(Algorithm::ES256, &expired), "expired"),
        (s.keys.sign(Algorithm::ES256, &early), "not valid yet"),
        (s.keys.sign(Algorithm::ES256, &other_issuer), "issuer"),
        (s.keys.sign(Algorithm::ES256, &other_audience), "audience"),
        (stranger, "signature"),
        (hs256, "algorithm"),
    ];
    for (token, why) in refused {
        let r = s.get(&token, "Patient").await;
        r.expect(401);
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains(r#"error="invalid_token""#) && challenge.contains(why), "{why}: {challenge}");
    }
    let basic = s.app.send(Method::GET, "Patient", &[("authorization", "Basic dXNlcjpwdw==")], None).await;
    basic.expect(401);
    // Public: the capability statement (with its security section) and the SMART configuration.
    let cs = s.app.get("metadata").await;
    cs.expect(200);
    assert_eq!(cs.json["rest"][0]["security"]["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let smart = s.app.get(".well-known/smart-configuration").await;
    smart.expect(200);
    assert_eq!(smart.json["issuer"], ISSUER);
    assert_eq!(smart.json["token_endpoint"], format!("{ISSUER}/token"));
    assert!(smart.json["capabilities"].as_array().unwrap().iter().any(|c| c == "permission-v2"));
    app.get(".well-known/smart-configuration").await.expect(404);
}

pub async fn scopes_allow_exactly_their_interactions(app: TestApp) {
    let s = Secured::new(&app).await;
    let pid = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let plan = app.create(fixtures::care_plan(&pid)).await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    let mut updated = plan.clone();
    updated["status"] = json!("on-hold");
    let patch = json!([{"op": "replace", "path": "/title", "value": "Revised"}]);
    // What each scope allows: create, read, search, update, patch, delete.
    let matrix: &[(&str, [bool; 6])] = &[
        ("user/CarePlan.c", [true, false, false, false, false, false]),
        ("user/CarePlan.r", [false, true, false, false, false, false]),
        ("user/CarePlan.s", [false, false, true, false, false, false]),
        ("user/CarePlan.u", [false, false, false, true, true, false]),
        ("user/CarePlan.d", [false, false, false, false, false, true]),
        ("user/CarePlan.rs", [false, true, true, false, false, false]),
        ("system/CarePlan.cruds", [true, true, true, true, true, true]),
        ("user/CarePlan.read", [false, true, true, false, false, false]),
        ("user/CarePlan.write", [true, false, false, true, true, true]),
        ("user/*.*", [true, true, true, true, true, true]),
        ("user/Goal.cruds openid fhirUser", [false, false, false, false, false, false]),
        ("user/CarePlan.rs?status=active", [false, false, false, false, false, false]),
    ];
    for (scope, allowed) in matrix {
        let t = s.token(scope, None);
        let statuses = [
            s.send(&t, Method::POST, "CarePlan", Some(fixtures::care_plan(&pid))).await.status.as_u16(),
            s.get(&t, &format!("CarePlan/{plan_id}")).await.status.as_u16(),
            s.get(&t, "CarePlan?status=active,on-hold").await.status.as_u16(),
            s.send(&t, Method::PUT, &format!("CarePlan/{plan_id}"), Some(updated.clone())).await.status.as_u16(),
            {
                let auth = format!("Bearer {t}");
                let headers = [("authorization", auth.as_str()), ("content-type", "application/json-patch+json")];
                s.app
                    .send(Method::PATCH, &format!("CarePlan/{plan_id}"), &headers, Some(patch.to_string()))
                    .await
                    .status
                    .as_u16()
            },
            // Delete a plan made for the purpose, so the others stay.
            {
                let victim = app.create(fixtures::care_plan(&pid)).await["id"].as_str().unwrap().to_owned();
                s.send(&t, Method::DELETE, &format!("CarePlan/{victim}"), None).await.status.as_u16()
            },
        ];
        for (i, (status, allow)) in statuses.iter().zip(allowed).enumerate() {
            let op = ["create", "read", "search", "update", "patch", "delete"][i];
            if *allow {
                assert!((200..300).contains(status), "{scope} {op}: {status}");
            } else {
                assert_eq!(*status, 403, "{scope} {op}");
            }
        }
    }
    // Update as create needs create as well.
    let mut fresh = fixtures::care_plan(&pid);
    fresh["id"] = json!("new-by-put");
    let t = s.token("user/CarePlan.u", None);
    s.send(&t, Method::PUT, "CarePlan/new-by-put", Some(fresh.clone())).await.expect(403);
    let t = s.token("user/CarePlan.cu", None);
    s.send(&t, Method::PUT, "CarePlan/new-by-put", Some(fresh)).await.expect(201);
    // System history needs every type; a 403 is an OperationOutcome.
    let r = s.get(&s.token("user/CarePlan.rs", None), "_history").await;
    r.expect(403);
    assert_eq!(r.issues()[0]["code"], "forbidden");
    // It shows Subscriptions too, which `*` does not cover: they must be named.
    s.get(&s.token("system/*.rs", None), "_history").await.expect(403);
    s.get(&s.token("system/*.rs system/Subscription.rs", None), "_history").await.expect(200);
}

pub async fn patient_scopes_confine_to_the_compartment(app: TestApp) {
    let s = Secured::new(&app).await;
    let mut a = fixtures::patient();
    a["name"] = json!([{"family": "Ashby"}]);
    let mut b = fixtures::patient();
    b["name"] = json!([{"family": "Brook"}]);
    let a = app.create(a).await["id"].as_str().unwrap().to_owned();
    let b = app.create(b).await["id"].as_str().unwrap().to_owned();
    let doctor = app.create(json!({"resourceType": "Practitioner", "name": [{"family": "Okafor"}]})).await;
    let doctor = doctor["id"].as_str().unwrap().to_owned();
    let plan_a = app.create(fixtures::care_plan(&a)).await["id"].as_str().unwrap().to_owned();
    let plan_b = app.create(fixtures::care_plan(&b)).await["id"].as_str().unwrap().to_owned();
    let t = s.token("patient/*.rs", Some(&a));
    // Reads.
    s.get(&t, &format!("Patient/{a}")).await.expect(200);
    s.get(&t, &format!("CarePlan/{plan_a}")).await.expect(200);
    s.get(&t, &format!("CarePlan/{plan_a}/_history")).await.expect(200);
    s.get(&t, &format!("CarePlan/{plan_a}/_history/1")).await.expect(200);
    for path in [
        format!("Patient/{b}"),
        format!("CarePlan/{plan_b}"),
        format!("CarePlan/{plan_b}/_history"),
        format!("CarePlan/{plan_b}/_history/1"),
    ] {
        s.get(&t, &path).await.expect(403);
    }
    s.get(&t, &format!("Practitioner/{doctor}")).await.expect(200);
    // Searches, includes, chains and _has see the compartment only.
    assert_eq!(ids(&s.get(&t, "CarePlan").await.json), [format!("CarePlan/{plan_a}")]);
    assert_eq!(ids(&s.get(&t, "Patient").await.json), [format!("Patient/{a}")]);
    assert!(ids(&s.get(&t, &format!("CarePlan?subject=Patient/{b}")).await.json).is_empty());
    let included = s.get(&t, "CarePlan?_include=CarePlan:subject").await.json;
    assert_eq!(ids(&included), [format!("CarePlan/{plan_a}"), format!("Patient/{a}")]);
    let rev = s.get(&t, &format!("Patient?_id={a},{b}&_revinclude=CarePlan:subject")).await.json;
    assert_eq!(ids(&rev), [format!("CarePlan/{plan_a}"), format!("Patient/{a}")]);
    let iterated = s
        .get(&t, &format!("Patient?_id={a}&_revinclude:iterate=CarePlan:subject&_include:iterate=CarePlan:subject"))
        .await
        .json;
    assert!(!ids(&iterated).iter().any(|i| i.contains(&b) || i.contains(&plan_b)), "{iterated}");
    assert!(ids(&s.get(&t, "CarePlan?subject:Patient.name=Brook").await.json).is_empty());
    assert_eq!(ids(&s.get(&t, "CarePlan?subject:Patient.name=Ashby").await.json), [format!("CarePlan/{plan_a}")]);
    let has = s.get(&t, "Patient?_has:CarePlan:subject:status=active").await.json;
    assert_eq!(ids(&has), [format!("Patient/{a}")]);
    // `_has` from a type outside the compartment looks only at the compartment: which
    // clinicians treat another patient stays hidden.
    let other_doctor = app.create(json!({"resourceType": "Practitioner", "name": [{"family": "Vance"}]})).await;
    let other_doctor = other_doctor["id"].as_str().unwrap().to_owned();
    for (patient, performer) in [(&a, &doctor), (&b, &other_doctor)] {
        app.create(json!({"resourceType": "Observation", "status": "final", "code": {"text": "PHQ-9"},
            "subject": {"reference": format!("Patient/{patient}")},
            "performer": [{"reference": format!("Practitioner/{performer}")}]}))
            .await;
    }
    let treating = s.get(&t, "Practitioner?_has:Observation:performer:status=final").await.json;
    assert_eq!(ids(&treating), [format!("Practitioner/{doctor}")]);
    let probe = format!("Practitioner?_has:Observation:performer:subject=Patient/{b}");
    assert!(ids(&s.get(&t, &probe).await.json).is_empty());
    assert_eq!(ids(&app.get(&probe).await.json), [format!("Practitioner/{other_doctor}")], "unconfined sees it");
    // Chains into types the token may not search are refused.
    let narrow = s.token("patient/CarePlan.rs", Some(&a));
    s.get(&narrow, "CarePlan?subject:Patient.name=Brook").await.expect(403);
    s.get(&narrow, "CarePlan?_include=CarePlan:subject").await.expect(200);
    assert_eq!(ids(&s.get(&narrow, "CarePlan?_include=CarePlan:subject").await.json), [format!("CarePlan/{plan_a}")]);
    // Whole-type and system history are not confined, so not allowed.
    s.get(&t, "CarePlan/_history").await.expect(403);
    s.get(&t, "_history").await.expect(403);
    // A patient scope without a patient grants nothing.
    s.get(&s.token("patient/*.rs", None), "CarePlan").await.expect(403);

    // Writes.
    let w = s.token("patient/*.cruds", Some(&a));
    s.send(&w, Method::POST, "CarePlan", Some(fixtures::care_plan(&a))).await.expect(201);
    s.send(&w, Method::POST, "CarePlan", Some(fixtures::care_plan(&b))).await.expect(403);
    let mut stolen = fixtures::care_plan(&b);
    stolen["id"] = json!(plan_b);
    s.send(&w, Method::PUT, &format!("CarePlan/{plan_b}"), Some(stolen)).await.expect(403);
    let mut moved = fixtures::care_plan(&b);
    moved["id"] = json!(plan_a);
    s.send(&w, Method::PUT, &format!("CarePlan/{plan_a}"), Some(moved)).await.expect(403);
    s.send(&w, Method::DELETE, &format!("CarePlan/{plan_b}"), None).await.expect(403);
    // Conditional writes match within the compartment only.
    let r = s.send(&w, Method::DELETE, &format!("CarePlan?subject=Patient/{b}"), None).await;
    r.expect(204);
    app.get(&format!("CarePlan/{plan_b}")).await.expect(200);
    // Bundles: a transaction entry outside the compartment fails it whole; batch GETs run as
    // the caller.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "CarePlan"}, "resource": fixtures::care_plan(&a)},
        {"request": {"method": "POST", "url": "CarePlan"}, "resource": fixtures::care_plan(&b)},
    ]});
    let r = s.send(&w, Method::POST, "/fhir", Some(tx)).await;
    r.expect(403);
    assert!(r.text.contains("Bundle.entry[1]"), "{}", r.text);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{a}")}},
        {"request": {"method": "GET", "url": format!("Patient/{b}")}},
    ]});
    let r = s.send(&t, Method::POST, "/fhir", Some(batch)).await;
    r.expect(200);
    let statuses: Vec<&str> =
        r.json["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "403 Forbidden"]);
    assert_eq!(app.get(&format!("CarePlan?subject=Patient/{a}")).await.json["total"], 2);
}

pub async fn keys_come_from_a_jwks_url_and_rotate(app: TestApp) {
    // A tiny identity provider publishing its JWKS over HTTP.
    let first = Keys::new("ec-1");
    let published = Arc::new(Mutex::new(first.jwks()));
    let served = published.clone();
    let idp = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let served = served.clone();
            async move { served.lock().unwrap().clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, idp).await });
    let secured = TestApp::connect_with(app.backend, &app.database_url, |c| {
        c.auth_issuer = Some(ISSUER.into());
        c.auth_audience = Some(AUDIENCE.into());
        c.auth_jwks = Some(format!("http://{addr}/jwks"));
        c.auth_jwks_refresh_seconds = 1;
    })
    .await;
    let get = |token: String| {
        let secured = &secured;
        async move { secured.send(Method::GET, "Patient", &[("authorization", &format!("Bearer {token}"))], None).await }
    };
    get(first.sign(Algorithm::ES256, &claims("user/*.rs", None))).await.expect(200);
    // The issuer rotates to a new key: tokens signed with it work once the server refetches.
    let second = Keys::new("ec-2");
    *published.lock().unwrap() = second.jwks();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    get(second.sign(Algorithm::ES256, &claims("user/*.rs", None))).await.expect(200);
    get(first.sign(Algorithm::ES256, &claims("user/*.rs", None))).await.expect(401);
}
