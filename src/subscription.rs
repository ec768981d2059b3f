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
use tracing::Instrument;

use crate::audit::AuditRecord;
use crate::auth::Principal;
use crate::error::AppError;
use crate::fhir::outcome::{Issue, IssueType};
use crate::fhir::registry::ResourceType;
use crate::fhir::search::query::{self, Filter};
use crate::state::AppState;
use crate::store::{Change, Expect, Notification, StoreError, Version, WriteTx, Written};

/// Notifications one worker claims at a time; they are delivered concurrently, so a batch
/// takes as long as its slowest delivery (at most [`DELIVERY_TIMEOUT`] and [`DRAIN_TIMEOUT`]),
/// well inside the lease.
const BATCH: i64 = 8;
/// How long an idle worker waits before looking again.
const IDLE: Duration = Duration::from_millis(250);
/// How long one delivery may take to be answered.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading the answer's body may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
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
    endpoint_allowed(state, endpoint).map_err(|why| refuse("Subscription.channel.endpoint", why))?;
    let criteria = subscription.get("criteria").and_then(Value::as_str).unwrap_or_default();
    criteria_filters(state, criteria).map_err(|why| refuse("Subscription.criteria", why))?;
    Ok(())
}

/// Whether the server may call `endpoint`: an `https://` URL of a host that is not this
/// machine or a private network (so that a Subscription cannot make the server probe the
/// network it sits in), unless `--subscription-allow-http` opens plain http and local
/// addresses for development.
fn endpoint_allowed(state: &AppState, endpoint: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = endpoint.parse().map_err(|_| "the endpoint is not a URL".to_owned())?;
    let open = state.subscriptions.allow_http;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if open => {}
        _ => {
            return Err(
                if open { "the endpoint must be an http(s) URL" } else { "the endpoint must be an https URL" }.into()
            )
        }
    }
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the endpoint has no host".into());
    }
    let local = host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(internal);
    if local && !open {
        return Err("the endpoint must not be this machine or a private network address".into());
    }
    Ok(uri)
}

/// Loopback, private, link-local, unspecified or otherwise non-public addresses.
fn internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]) // carrier-grade NAT
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || v6.to_ipv4_mapped().is_some_and(|v4| internal(std::net::IpAddr::V4(v4)))
        }
    }
}

/// Refuses an endpoint whose host resolves to an internal address (checked at delivery, since
/// names can change what they point at).
async fn resolves_publicly(state: &AppState, uri: &hyper::Uri) -> Result<(), String> {
    if state.subscriptions.allow_http {
        return Ok(());
    }
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let addresses = tokio::net::lookup_host((host, port)).await.map_err(|_| "the endpoint's host does not resolve")?;
    for address in addresses {
        if internal(address.ip()) {
            return Err("the endpoint resolves to an internal address".into());
        }
    }
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
    let options = state.parse_options(true, 1);
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
    let mut anyone = None;
    for (subscription_id, content) in tx.live_subscriptions(ty).await? {
        let Ok(subscription) = serde_json::from_str::<Map<String, Value>>(&content) else { continue };
        let criteria = subscription.get("criteria").and_then(Value::as_str).unwrap_or_default();
        let Ok((watched, mut filters)) = criteria_filters(state, criteria) else { continue };
        // Chains and `_has` in criteria see only what anyone may see: a criteria such as
        // `Patient?_has:Observation:code=<psychotherapy note>` must not reveal withheld records.
        if filters.iter().any(|f| matches!(f, Filter::Chain { .. } | Filter::Has { .. })) {
            if anyone.is_none() {
                anyone = Some(crate::http::disclose::anonymous(state).await?);
            }
            if let Some(anyone) = &anyone {
                for f in &mut filters {
                    crate::http::disclose::disclose_traversed(f, anyone);
                }
            }
        }
        if watched == ty && tx.matches(ty, &version.id, &filters).await? {
            queued.push(Notification {
                id: crate::fhir::new_id(),
                subscription_id,
                resource_type: ty.as_str().to_owned(),
                resource_id: version.id.clone(),
                version_id: version.version_id,
                attempts: 0,
                traceparent: crate::telemetry::traceparent(),
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
    let lease = state.subscriptions.lease.as_millis() as i64;
    loop {
        let (until, claimed) = match state.store.claim_notifications(lease, BATCH).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming subscription notifications failed");
                (0, Vec::new())
            }
        };
        if claimed.is_empty() {
            activate_requested(&state).await;
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let mut batch = tokio::task::JoinSet::new();
        for notification in claimed {
            let (state, client) = (state.clone(), client.clone());
            batch.spawn(async move {
                if let Err(e) = deliver_one(&state, &client, &notification, until).await {
                    let subscription = &notification.subscription_id;
                    tracing::warn!(error = %e, subscription = %subscription, "subscription bookkeeping failed");
                }
            });
        }
        while batch.join_next().await.is_some() {}
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
async fn deliver_one(state: &AppState, client: &Client, n: &Notification, lease: i64) -> Result<(), StoreError> {
    // The delivery continues the trace of the write that queued it.
    let span =
        tracing::info_span!("subscription.deliver", subscription = %n.subscription_id, focus_type = %n.resource_type);
    crate::telemetry::continue_from(&span, n.traceparent.as_deref());
    deliver_traced(state, client, n, lease).instrument(span).await
}

async fn deliver_traced(state: &AppState, client: &Client, n: &Notification, lease: i64) -> Result<(), StoreError> {
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
    let version = match state.registry.resource_type(&n.resource_type) {
        Some(ty) => state.store.vread(ty, &n.resource_id, n.version_id).await?,
        None => None,
    };
    // The receiver is no caller whose clearance is known: a labelled resource, or one a
    // patient's Consent withholds from anyone unnamed, is announced without its content (the
    // receiver reads it with its own token).
    let anyone = crate::http::disclose::anonymous(state).await?;
    let (shown, _) = crate::http::disclose::keep_disclosed(state, Some(&anyone), version.into_iter().collect()).await?;
    let payload = shown.into_iter().next().and_then(|v| v.content);
    match send(state, client, &subscription, n, payload).await {
        Ok(()) => {
            state.metrics.delivered();
            state.store.notification_delivered(&n.id, lease).await
        }
        Err(reason) => {
            state.metrics.delivery_failed();
            let attempts = n.attempts as u32 + 1;
            tracing::warn!(subscription = %n.subscription_id, attempts, reason = %reason, "notification not delivered");
            if attempts >= state.subscriptions.max_attempts {
                let why = format!("{attempts} deliveries failed; the last: {reason}");
                let live = ["requested", "active"];
                set_status(state, subscription_type, &n.subscription_id, &live, "error", Some(&why)).await?;
                state.store.drop_notifications(&n.subscription_id).await?;
                return Ok(());
            }
            let delay = state.subscriptions.retry.saturating_mul(1 << attempts.min(20)).min(MAX_DELAY);
            let next = crate::fhir::now_millis() + delay.as_millis() as i64;
            state.store.notification_failed(&n.id, lease, next, &reason).await
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
    let uri = endpoint_allowed(state, endpoint)?;
    resolves_publicly(state, &uri).await?;
    let body = match channel.get("payload").and_then(Value::as_str) {
        Some(_) => payload.unwrap_or_default(),
        None => String::new(),
    };
    let subscription_ref = format!("Subscription/{}", n.subscription_id);
    let focus = format!("{}/{}/_history/{}", n.resource_type, n.resource_id, n.version_id);
    let mut request = hyper::Request::post(uri)
        .header("x-liaison-notification-id", &n.id)
        .header("x-liaison-subscription", &subscription_ref)
        .header("x-liaison-focus", &focus);
    if !body.is_empty() {
        request = request.header("content-type", "application/fhir+json");
    }
    for line in channel.get("header").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if let Some((name, value)) = line.split_once(':') {
            request = request.header(name.trim(), value.trim());
        }
    }
    if let Some(secret) = &state.subscriptions.hmac_secret {
        // Over the id, the subscription, the focus and the body, so none can be swapped.
        let signed = format!("{}.{subscription_ref}.{focus}.{body}", n.id);
        let mac = hmac_sha256(secret.as_bytes(), signed.as_bytes());
        request = request.header("x-liaison-signature", format!("sha256={}", hex(&mac)));
    }
    let mut request =
        request.body(Full::new(Bytes::from(body))).map_err(|_| "the endpoint or a channel header is invalid")?;
    // The delivery's trace context goes with it (W3C `traceparent`).
    crate::telemetry::propagate(request.headers_mut());
    let response = tokio::time::timeout(DELIVERY_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        // The error's text may carry addresses of the network the server sits in: a category only.
        .map_err(
            |e| if e.is_connect() { "could not connect".to_owned() } else { "the connection failed".to_owned() },
        )?;
    let status = response.status();
    // Drain the answer so the connection can be reused; its content does not matter.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, response.into_body().collect()).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {status}"))
    }
}

/// Sets `requested` Subscriptions `active` (subscription.html: the server activates them).
async fn activate_requested(state: &AppState) {
    let Some(ty) = state.registry.resource_type("Subscription") else { return };
    for id in state.store.requested_subscriptions().await.unwrap_or_default() {
        if let Err(e) = set_status(state, ty, &id, &["requested"], "active", None).await {
            tracing::warn!(error = %e, subscription = %id, "activating a subscription failed");
        }
    }
}

/// Writes a Subscription's status (and `error`) as a new version, if its status is still one
/// of `from` (a client may have switched it off meanwhile).
async fn set_status(
    state: &AppState,
    ty: ResourceType,
    id: &str,
    from: &[&str],
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let mut tx = state.store.begin().await?;
    let result = async {
        let Some((version_id, mut content)) = tx.live(ty, id).await? else { return Ok(()) };
        if !content.get("status").and_then(Value::as_str).is_some_and(|s| from.contains(&s)) {
            return Ok(());
        }
        content.insert("status".into(), Value::from(status));
        if let Some(error) = error {
            content.insert("error".into(), Value::from(error));
        }
        let derived = state.registry.derive(ty.as_str(), &Value::Object(content.clone()), Vec::new(), &state.base_url);
        let change = Change::Update { resource: content, expect: Expect::Version(version_id) };
        if let Written::Stored { version, .. } = tx.write(ty, id, change, (&derived).into()).await? {
            // The server's own change is in the audit trail like any other, in its transaction.
            let worker = Principal { subject: Some("liaison:subscription-worker".into()), ..Principal::default() };
            let record = AuditRecord {
                interaction: "update",
                action: "U",
                status: 200,
                caller: Some(worker),
                resource_type: Some(ty.as_str().to_owned()),
                entities: vec![format!("{ty}/{id}/_history/{}", version.version_id)],
                ..AuditRecord::default()
            };
            state.audit.record_in(&mut tx, &record);
        }
        Ok(())
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
    fn internal_addresses_are_told_apart() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["203.0.113.7", "8.8.8.8", "2001:db8::1"] {
            assert!(!internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
