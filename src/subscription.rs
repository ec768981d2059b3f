//! R4 Subscriptions with rest-hook channels (subscription.html): what a Subscription must be to
//! be accepted, the notifications a write queues (in its own transaction, in the outbox), and
//! the worker that delivers them — at least once, with a stable notification id, retries with
//! exponential backoff, and the Subscription set to `error` when an endpoint keeps failing.
//!
//! Criteria are search URLs (`Task?owner=PractitionerRole/r1&status=requested`), matched by
//! running that search, restricted to the written resource, inside the write's transaction: the
//! same search code as `GET /Task?…`, so a notification fires exactly when the search would
//! now find the resource. Subscriptions with status `requested` or `active` are live; the
//! worker sets `requested` ones `active`.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::AppError;
use crate::fhir::outcome::{Issue, IssueType};
use crate::fhir::registry::ResourceType;
use crate::fhir::search::query::{self, Filter};
use crate::state::AppState;
use crate::store::{Change, Expect, Notification, StoreError, Version, WriteTx, Written};

/// How long a worker holds claimed notifications before another may take them over.
const LEASE_MS: i64 = 60_000;
/// Notifications one worker claims at a time.
const BATCH: i64 = 16;
/// How long an idle worker waits before looking again.
const IDLE: Duration = Duration::from_millis(250);
/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Checks a Subscription a client writes: a rest-hook channel with an endpoint this server may
/// call, and criteria that are a search of a served type this server understands (422
/// otherwise, naming the element).
pub fn check(state: &AppState, subscription: &Map<String, Value>) -> Result<(), AppError> {
    let refuse =
        |at: &str, why: String| AppError::Unprocessable(vec![Issue::at(IssueType::Invalid, at.to_owned(), why)]);
    let channel = subscription.get("channel").cloned().unwrap_or_default();
    match channel.get("type").and_then(Value::as_str) {
        Some("rest-hook") => {}
        other => {
            return Err(refuse(
                "Subscription.channel.type",
                format!("only rest-hook channels are supported, not {}", other.unwrap_or("none")),
            ))
        }
    }
    let endpoint = channel.get("endpoint").and_then(Value::as_str).unwrap_or_default();
    let allowed =
        endpoint.starts_with("https://") || (state.subscriptions.allow_http && endpoint.starts_with("http://"));
    if !allowed || endpoint.parse::<hyper::Uri>().is_err() {
        let need = if state.subscriptions.allow_http { "an http(s):// URL" } else { "an https:// URL" };
        return Err(refuse("Subscription.channel.endpoint", format!("the endpoint must be {need}")));
    }
    let criteria = subscription.get("criteria").and_then(Value::as_str).unwrap_or_default();
    criteria_filters(state, criteria).map_err(|why| refuse("Subscription.criteria", why))?;
    Ok(())
}

/// The type and filters of a criteria search URL.
fn criteria_filters(state: &AppState, criteria: &str) -> Result<(ResourceType, Vec<Filter>), String> {
    let (ty, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    let ty = state
        .registry
        .resource_type(ty)
        .filter(|t| !state.registry.server_written(t.as_str()) && t.as_str() != "Subscription")
        .ok_or_else(|| format!("the criteria must search a type this server holds, not '{ty}'"))?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|_| "the criteria's query is malformed")?;
    let options = query::ParseOptions { base_url: &state.base_url, strict: true, max_count: 1 };
    let q = query::parse(&state.registry.search, ty.as_str(), &pairs, options)
        .map_err(|e| format!("criteria parameter '{}' {}", e.param, e.reason))?;
    Ok((ty, q.filters))
}

/// Queues a notification for every live Subscription whose criteria the version just written
/// of `ty/id` matches, in the write's transaction.
pub async fn notify(state: &AppState, tx: &mut WriteTx, ty: ResourceType, version: &Version) -> Result<(), AppError> {
    if version.is_deleted() || state.registry.server_written(ty.as_str()) || ty.as_str() == "Subscription" {
        return Ok(());
    }
    let mut queued = Vec::new();
    for (subscription_id, content) in tx.live_subscriptions().await? {
        let Ok(subscription) = serde_json::from_str::<Map<String, Value>>(&content) else { continue };
        let criteria = subscription.get("criteria").and_then(Value::as_str).unwrap_or_default();
        let Ok((watched, filters)) = criteria_filters(state, criteria) else { continue };
        if watched == ty && tx.matches(ty, &version.id, &filters).await? {
            queued.push(Notification {
                id: uuid::Uuid::new_v4().to_string(),
                subscription_id,
                resource_type: ty.as_str().to_owned(),
                resource_id: version.id.clone(),
                version_id: version.version_id,
                attempts: 0,
            });
        }
    }
    tx.enqueue(&queued).await?;
    Ok(())
}

/// Delivers queued notifications until the process ends. Any number of workers (one per
/// replica) may run against one database: each notification is claimed by one at a time.
pub async fn deliver(state: AppState) {
    let client = client();
    loop {
        let claimed = match state.store.claim_notifications(LEASE_MS, BATCH).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming subscription notifications failed");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            activate_requested(&state).await;
            tokio::time::sleep(IDLE).await;
            continue;
        }
        for notification in claimed {
            if let Err(e) = deliver_one(&state, &client, &notification).await {
                tracing::warn!(error = %e, subscription = %notification.subscription_id, "subscription bookkeeping failed");
            }
        }
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client() -> Client {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .unwrap_or_else(|_| {
            // No system roots: https endpoints will fail to verify and be retried, logged.
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
        })
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// Sends one notification and records the outcome.
async fn deliver_one(state: &AppState, client: &Client, n: &Notification) -> Result<(), StoreError> {
    let Some(subscription_type) = state.registry.resource_type("Subscription") else { return Ok(()) };
    let subscription = match state.store.read(subscription_type, &n.subscription_id).await? {
        Some(v) if !v.is_deleted() => v.content.and_then(|c| serde_json::from_str::<Map<String, Value>>(&c).ok()),
        _ => None,
    };
    let live = subscription
        .as_ref()
        .and_then(|s| s.get("status").and_then(Value::as_str))
        .is_some_and(|s| s == "requested" || s == "active");
    let (Some(subscription), true) = (subscription, live) else {
        // Switched off, failed for good or deleted: nothing more is sent for it.
        state.store.drop_notifications(&n.subscription_id).await?;
        return Ok(());
    };
    let payload = match state.registry.resource_type(&n.resource_type) {
        Some(ty) => state.store.vread(ty, &n.resource_id, n.version_id).await?.and_then(|v| v.content),
        None => None,
    };
    match send(state, client, &subscription, n, payload).await {
        Ok(()) => state.store.notification_delivered(&n.id).await,
        Err(reason) => {
            let attempts = n.attempts as u32 + 1;
            tracing::warn!(subscription = %n.subscription_id, attempts, reason = %reason, "notification not delivered");
            if attempts >= state.subscriptions.max_attempts {
                let why = format!("{attempts} deliveries failed; the last: {reason}");
                set_status(state, subscription_type, &n.subscription_id, "error", Some(&why)).await?;
                state.store.drop_notifications(&n.subscription_id).await?;
                return Ok(());
            }
            let delay = state.subscriptions.retry.saturating_mul(1 << attempts.min(20)).min(MAX_DELAY);
            let next = crate::fhir::now_millis() + delay.as_millis() as i64;
            state.store.notification_failed(&n.id, next, &reason).await
        }
    }
}

/// POSTs a notification to the subscription's endpoint: the resource as FHIR JSON when the
/// channel has a payload type, an empty body otherwise; the channel's headers; the notification
/// id; and the HMAC signature when a secret is configured. `Err` with a reason (a status code or
/// a transport error; never the payload).
async fn send(
    state: &AppState,
    client: &Client,
    subscription: &Map<String, Value>,
    n: &Notification,
    payload: Option<String>,
) -> Result<(), String> {
    let channel = subscription.get("channel").cloned().unwrap_or_default();
    let endpoint = channel.get("endpoint").and_then(Value::as_str).unwrap_or_default();
    if !(endpoint.starts_with("https://") || (state.subscriptions.allow_http && endpoint.starts_with("http://"))) {
        return Err("the endpoint is not an allowed URL".into());
    }
    let body = match channel.get("payload").and_then(Value::as_str) {
        Some(_) => payload.unwrap_or_default(),
        None => String::new(),
    };
    let mut request = hyper::Request::post(endpoint)
        .header("x-liaison-notification-id", &n.id)
        .header("x-liaison-subscription", format!("Subscription/{}", n.subscription_id))
        .header("x-liaison-focus", format!("{}/{}/_history/{}", n.resource_type, n.resource_id, n.version_id));
    if !body.is_empty() {
        request = request.header("content-type", "application/fhir+json");
    }
    for line in channel.get("header").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if let Some((name, value)) = line.split_once(':') {
            request = request.header(name.trim(), value.trim());
        }
    }
    if let Some(secret) = &state.subscriptions.hmac_secret {
        let signed = [n.id.as_bytes(), b".", body.as_bytes()].concat();
        request =
            request.header("x-liaison-signature", format!("sha256={}", hex(&hmac_sha256(secret.as_bytes(), &signed))));
    }
    let request =
        request.body(Full::new(Bytes::from(body))).map_err(|_| "the endpoint or a channel header is invalid")?;
    let response = tokio::time::timeout(DELIVERY_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("transport error: {e}"))?;
    let status = response.status();
    // Drain the answer so the connection can be reused; its content does not matter.
    let _ = tokio::time::timeout(DELIVERY_TIMEOUT, response.into_body().collect()).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {status}"))
    }
}

/// Sets a `requested` Subscription `active` (subscription.html: the server activates it).
async fn activate_requested(state: &AppState) {
    let Some(ty) = state.registry.resource_type("Subscription") else { return };
    let requested = match state.store.begin().await {
        Ok(mut tx) => {
            let found = tx.live_subscriptions().await;
            let _ = tx.finish::<(), StoreError>(Ok(())).await;
            found.unwrap_or_default()
        }
        Err(_) => return,
    };
    for (id, content) in requested {
        if content.contains("\"status\":\"requested\"") {
            if let Err(e) = set_status(state, ty, &id, "active", None).await {
                tracing::warn!(error = %e, subscription = %id, "activating a subscription failed");
            }
        }
    }
}

/// Writes a Subscription's status (and `error`) as a new version.
async fn set_status(
    state: &AppState,
    ty: ResourceType,
    id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let mut tx = state.store.begin().await?;
    let result = async {
        let Some(current) = tx.current(ty, id).await?.filter(|v| !v.is_deleted()) else { return Ok(()) };
        let mut content: Map<String, Value> =
            serde_json::from_str(current.content.as_deref().unwrap_or("{}")).map_err(|_| StoreError::Corrupt)?;
        content.insert("status".into(), Value::from(status));
        if let Some(error) = error {
            content.insert("error".into(), Value::from(error));
        }
        let derived = state.registry.derive(ty.as_str(), &Value::Object(content.clone()), Vec::new(), &state.base_url);
        let change = Change::Update { resource: content, expect: Expect::Version(current.version_id) };
        match tx.write(ty, id, change, (&derived).into()).await? {
            Written::Stored { .. } | Written::Unchanged => Ok(()),
        }
    }
    .await;
    tx.finish(result).await
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
