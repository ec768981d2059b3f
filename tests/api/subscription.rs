//! rest-hook Subscriptions: notifications written with the change that triggers them, delivered
//! by the worker to a real HTTP receiver, retried with backoff, signed, never lost across a
//! restart, delivered once per notification with two workers on one database, and a failing
//! endpoint setting its Subscription to error.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{fixtures, ServerProcess, TestApp};

/// What the receiver saw: the notification id, the other headers it checks, and the body.
#[derive(Debug, Clone)]
pub struct Received {
    id: String,
    focus: String,
    signature: Option<String>,
    authorization: Option<String>,
    /// The W3C trace context the notification carried.
    pub traceparent: Option<String>,
    pub body: String,
}

/// An HTTP endpoint on this machine that records notifications and answers with the status in
/// `answer`.
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<u16>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answer = Arc::new(Mutex::new(200u16));
        let (s, a) = (seen.clone(), answer.clone());
        let hook = axum::routing::post(move |headers: HeaderMap, body: String| {
            let (seen, answer) = (s.clone(), a.clone());
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let status = *answer.lock().unwrap();
                if status < 300 {
                    seen.lock().unwrap().push(Received {
                        id: header("x-liaison-notification-id").unwrap_or_default(),
                        focus: header("x-liaison-focus").unwrap_or_default(),
                        signature: header("x-liaison-signature"),
                        authorization: header("authorization"),
                        traceparent: header("traceparent"),
                        body,
                    });
                }
                StatusCode::from_u16(status).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().route("/hook", hook)).await });
        Self { url, seen, answer }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` notifications arrived (at most thirty seconds).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..600 {
            if self.seen().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.seen()
    }
}

/// Waits until the outbox is empty (a delivery is settled just after the receiver answers);
/// how many notifications are left after at most ten seconds.
async fn drained(app: &TestApp) -> i64 {
    let mut depth = app.state.store.outbox_depth().await.unwrap();
    for _ in 0..200 {
        if depth == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        depth = app.state.store.outbox_depth().await.unwrap();
    }
    depth
}

/// A server on `app`'s database that may notify plain-http endpoints, retries fast and signs.
pub async fn notifying(app: &TestApp, max_attempts: u32) -> TestApp {
    TestApp::connect_with(app.backend, &app.database_url, |c| {
        c.subscription_allow_http = true;
        c.subscription_retry_ms = 20;
        c.subscription_max_attempts = max_attempts;
        c.subscription_hmac_secret = Some("test-secret".into());
    })
    .await
}

pub fn subscription(criteria: &str, endpoint: &str, status: &str) -> Value {
    json!({"resourceType": "Subscription", "status": status, "reason": "Referrals for the psychiatry clinic",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
            "header": ["Authorization: Bearer receiver-token"]}})
}

fn task(patient: &str, owner: &str, status: &str) -> Value {
    json!({"resourceType": "Task", "status": status, "intent": "order",
        "for": {"reference": format!("Patient/{patient}")},
        "owner": {"reference": format!("Organization/{owner}")}})
}

pub async fn notifications_reach_a_rest_hook(app: TestApp) {
    let receiver = Receiver::start().await;
    let server = notifying(&app, 10).await;
    let clinic = server.create(json!({"resourceType": "Organization", "name": "Psychiatry"})).await;
    let other = server.create(json!({"resourceType": "Organization", "name": "Elsewhere"})).await;
    let (clinic, other) = (clinic["id"].as_str().unwrap(), other["id"].as_str().unwrap());
    let patient = server.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    // Only rest-hook channels with an allowed endpoint and understood criteria are accepted.
    let mut email = subscription("Task?status=requested", &receiver.url, "requested");
    email["channel"]["type"] = json!("email");
    server.post("Subscription", &email).await.expect(422);
    server.post("Subscription", &subscription("Task?colour=blue", &receiver.url, "requested")).await.expect(422);
    app.post("Subscription", &subscription("Task?status=requested", &receiver.url, "requested")).await.expect(422);
    // Without the development flag, only https endpoints outside this machine and its networks.
    for endpoint in
        ["https://10.0.0.5/hook", "https://localhost:8443/hook", "https://[::1]/hook", "https://169.254.169.254/"]
    {
        let r = app.post("Subscription", &subscription("Task?status=requested", endpoint, "requested")).await;
        r.expect(422);
        assert!(r.text.contains("Subscription.channel.endpoint"), "{endpoint}: {}", r.text);
    }
    app.post("Subscription", &subscription("Task?status=requested", "https://hooks.example.org/x", "off"))
        .await
        .expect(201);
    // Subscriptions are for systems and users whose scopes name them, never patient apps.
    let s = crate::auth::Secured::new(&app).await;
    let open = subscription("Observation", "https://hooks.example.org/all", "requested");
    let patient_app = s.token("patient/*.cruds patient/Subscription.cruds", Some(&patient));
    s.send(&patient_app, axum::http::Method::POST, "Subscription", Some(open.clone())).await.expect(403);
    s.send(&s.token("user/*.cruds", None), axum::http::Method::POST, "Subscription", Some(open.clone()))
        .await
        .expect(403);
    let integration = s.token("system/Subscription.cruds", None);
    s.send(&integration, axum::http::Method::POST, "Subscription", Some(open)).await.expect(201);
    let criteria = format!("Task?owner=Organization/{clinic}&status=requested");
    let sub = server.post("Subscription", &subscription(&criteria, &receiver.url, "requested")).await;
    sub.expect(201);
    let sub_id = sub.json["id"].as_str().unwrap().to_owned();
    tokio::spawn(liaison::subscription::deliver(server.state.clone()));

    // A matching write notifies; one for another owner, or not requested, does not.
    let referral = server.post("Task", &task(&patient, clinic, "requested")).await.json;
    server.post("Task", &task(&patient, other, "requested")).await.expect(201);
    server.post("Task", &task(&patient, clinic, "draft")).await.expect(201);
    let got = receiver.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["id"], referral["id"]);
    assert_eq!(got[0].focus, format!("Task/{}/_history/1", referral["id"].as_str().unwrap()));
    assert_eq!(got[0].authorization.as_deref(), Some("Bearer receiver-token"), "the channel's headers");
    assert!(got[0].signature.as_deref().is_some_and(|s| s.starts_with("sha256=") && s.len() == 71));
    // The worker activated the subscription.
    for _ in 0..100 {
        if server.get(&format!("Subscription/{sub_id}")).await.json["status"] == "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.get(&format!("Subscription/{sub_id}")).await.json["status"], "active");
    let trail = server.get(&format!("AuditEvent?entity=Subscription/{sub_id}&subtype=update")).await.json;
    let worker = &trail["entry"][0]["resource"]["agent"][0]["who"]["identifier"]["value"];
    assert_eq!(worker, "liaison:subscription-worker", "the activation is audited: {trail}");

    // A failing endpoint is retried until it accepts; the notification keeps its id.
    *receiver.answer.lock().unwrap() = 503;
    let mut changed = referral.clone();
    changed["description"] = json!("Medication review, urgent");
    server.put(&format!("Task/{}", referral["id"].as_str().unwrap()), &changed).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 1, "nothing accepted while the endpoint fails");
    *receiver.answer.lock().unwrap() = 200;
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[1].focus.ends_with("/_history/2"));
    assert_ne!(got[0].id, got[1].id);
    assert_eq!(drained(&server).await, 0);
}

pub async fn notifications_survive_a_restart(app: TestApp) {
    let receiver = Receiver::start().await;
    let first = notifying(&app, 10).await;
    let patient = first.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let clinic = first.create(json!({"resourceType": "Organization", "name": "Psychiatry"})).await;
    let clinic = clinic["id"].as_str().unwrap().to_owned();
    let criteria = format!("Task?owner=Organization/{clinic}");
    first.post("Subscription", &subscription(&criteria, &receiver.url, "active")).await.expect(201);
    // Written and acknowledged while no worker runs: the notifications wait in the database.
    for _ in 0..3 {
        first.post("Task", &task(&patient, &clinic, "requested")).await.expect(201);
    }
    assert_eq!(first.state.store.outbox_depth().await.unwrap(), 3);
    drop(first);
    // A new server process on the same database delivers every one.
    let second = notifying(&app, 10).await;
    tokio::spawn(liaison::subscription::deliver(second.state.clone()));
    let got = receiver.wait_for(3).await;
    assert_eq!(got.len(), 3);
    assert_eq!(drained(&second).await, 0);
}

pub async fn two_workers_deliver_each_notification_once(app: TestApp) {
    let receiver = Receiver::start().await;
    let a = notifying(&app, 10).await;
    let b = notifying(&app, 10).await;
    let patient = a.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let clinic = a.create(json!({"resourceType": "Organization", "name": "Psychiatry"})).await;
    let clinic = clinic["id"].as_str().unwrap().to_owned();
    a.post("Subscription", &subscription(&format!("Task?owner=Organization/{clinic}"), &receiver.url, "active"))
        .await
        .expect(201);
    for i in 0..20 {
        let server = if i % 2 == 0 { &a } else { &b };
        server.post("Task", &task(&patient, &clinic, "requested")).await.expect(201);
    }
    tokio::spawn(liaison::subscription::deliver(a.state.clone()));
    tokio::spawn(liaison::subscription::deliver(b.state.clone()));
    let got = receiver.wait_for(20).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ids: std::collections::BTreeSet<String> = receiver.seen().iter().map(|r| r.id.clone()).collect();
    assert_eq!(got.len(), 20);
    assert_eq!(ids.len(), 20, "each notification delivered once");
    assert_eq!(receiver.seen().len(), 20);
}

pub async fn a_failing_endpoint_sets_the_subscription_to_error(app: TestApp) {
    let receiver = Receiver::start().await;
    *receiver.answer.lock().unwrap() = 500;
    let server = notifying(&app, 3).await;
    let patient = server.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let clinic = server.create(json!({"resourceType": "Organization", "name": "Psychiatry"})).await;
    let clinic = clinic["id"].as_str().unwrap().to_owned();
    let sub = server
        .post("Subscription", &subscription(&format!("Task?owner=Organization/{clinic}"), &receiver.url, "active"))
        .await;
    let sub_id = sub.json["id"].as_str().unwrap().to_owned();
    tokio::spawn(liaison::subscription::deliver(server.state.clone()));
    server.post("Task", &task(&patient, &clinic, "requested")).await.expect(201);
    let mut status = Value::Null;
    for _ in 0..200 {
        let current = server.get(&format!("Subscription/{sub_id}")).await.json;
        status = current["status"].clone();
        if status == "error" {
            assert!(current["error"].as_str().unwrap().contains("500"), "{current}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "error");
    assert_eq!(drained(&server).await, 0, "its notifications are dropped");
    // An errored subscription no longer fires.
    server.post("Task", &task(&patient, &clinic, "requested")).await.expect(201);
    assert_eq!(server.state.store.outbox_depth().await.unwrap(), 0);
}

/// A server process that notifies this machine's receivers quickly.
struct Process;

impl Process {
    async fn start(app: &TestApp) -> ServerProcess {
        let args =
            ["--subscription-allow-http", "--subscription-retry-ms", "20", "--subscription-max-attempts", "1000"];
        // Claims of a killed process pass to the next one after a second.
        ServerProcess::start(app, &[&args[..], &["--subscription-lease-seconds", "1"]].concat()).await
    }
}

/// A server process is killed (SIGKILL) while the notifications of writes it acknowledged are
/// still pending; the next process delivers every one.
pub async fn notifications_outlive_a_killed_server(app: TestApp) {
    let receiver = Receiver::start().await;
    *receiver.answer.lock().unwrap() = 503;
    let patient = app.create(fixtures::patient()).await["id"].as_str().unwrap().to_owned();
    let clinic = app.create(json!({"resourceType": "Organization", "name": "Psychiatry"})).await;
    let clinic = clinic["id"].as_str().unwrap().to_owned();
    let mut first = Process::start(&app).await;
    let criteria = format!("Task?owner=Organization/{clinic}");
    let (status, _) = first
        .request("POST", "/fhir/Subscription", Some(subscription(&criteria, &receiver.url, "active")))
        .await
        .unwrap();
    assert_eq!(status, 201);
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let (status, task) =
            first.request("POST", "/fhir/Task", Some(task(&patient, &clinic, "requested"))).await.unwrap();
        assert_eq!(status, 201);
        acknowledged.push(task["id"].as_str().unwrap().to_owned());
    }
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    assert!(receiver.seen().is_empty(), "the endpoint refused everything so far");

    *receiver.answer.lock().unwrap() = 200;
    let mut second = Process::start(&app).await;
    let got = receiver.wait_for(5).await;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let delivered: std::collections::BTreeSet<String> = got
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, acknowledged.into_iter().collect(), "every acknowledged change was notified");
}
