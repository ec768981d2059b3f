//! The audit trail, after IHE Basic Audit Log Patterns (BALP): every interaction — reads and
//! searches, failures and denials included — becomes an AuditEvent with the REST interaction,
//! action, outcome, recorded time, the agents (the token's subject and client, the mutual-TLS
//! subject, the network address), the server as observer, the entities touched (resources, or
//! the query of a search) and the patients concerned.
//!
//! A successful write records its AuditEvent in its own database transaction
//! ([`AuditLog::record_in`]); everything else goes through a writer task that commits whatever
//! is queued in one transaction, several at once ([`AuditLog::record`]), and the request waits
//! for that commit:
//! if the record cannot be stored, the request fails (fail closed). Each record is also logged as
//! a structured line, with types and ids only.

use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::fhir::registry::Registry;
use crate::fhir::search::index::IndexEntry;
use crate::store::{AuditIndex, Store, StoreError, WriteTx};
use crate::{fhir, in_transaction};

const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The most records one audit transaction takes.
const BATCH: usize = 256;

/// What one interaction did, as the audit trail records it.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    /// The `restful-interaction` code (`read`, `search-type`, `create`, `transaction`, …).
    pub interaction: &'static str,
    /// BALP action: `C`reate, `R`ead, `U`pdate, `D`elete, `E`xecute (searches, operations).
    pub action: &'static str,
    /// The HTTP status the request was answered with.
    pub status: u16,
    /// Who called (absent when no valid token was presented).
    pub caller: Option<Principal>,
    /// The network address and mutual-TLS subject, when no principal carries them.
    pub address: Option<String>,
    pub certificate: Option<String>,
    /// The resource type addressed.
    pub resource_type: Option<String>,
    /// Resources touched: `Type/id` or `Type/id/_history/v`.
    pub entities: Vec<String>,
    /// The query of a search (as sent).
    pub query: Option<String>,
    /// Ids of the patients concerned.
    pub patients: Vec<String>,
    /// Resources withheld from the caller by disclosure (labels, Consent).
    pub withheld: Vec<String>,
    /// The caller broke the glass, for this reason.
    pub break_glass: Option<String>,
    /// This record is the security alert of a break-glass access (its entities are everything
    /// disclosed), not the record of the interaction.
    pub alert: bool,
}

/// What a handler tells the audit layer about its request (a response extension).
#[derive(Debug, Clone, Default)]
pub struct AuditDetail {
    pub entities: Vec<String>,
    pub patients: Vec<String>,
    /// Resources withheld from the caller by security labels or Consent (`Type/id[/_history/v]`).
    pub withheld: Vec<String>,
    /// Everything the response disclosed, when the caller broke the glass.
    pub disclosed: Vec<String>,
    /// Overrides the interaction the route implies (a Bundle is a transaction or a batch).
    pub interaction: Option<&'static str>,
}

/// Marks a response whose AuditEvent was already recorded in the request's own transaction.
#[derive(Debug, Clone, Copy)]
pub struct Audited;

impl AuditRecord {
    /// BALP outcome: 0 success, 4 minor failure (the request was refused), 8 serious failure.
    fn outcome(&self) -> &'static str {
        match self.status {
            0..=399 => "0",
            400..=499 => "4",
            _ => "8",
        }
    }

    /// The AuditEvent.
    pub fn to_resource(&self, base_url: &str) -> Map<String, Value> {
        let coding = |system: &str, code: &str| json!({"system": system, "code": code});
        let mut agents = Vec::new();
        let principal = self.caller.as_ref();
        let address = principal.and_then(|p| p.address.clone()).or_else(|| self.address.clone());
        let mut user = json!({
            "type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")]},
            "requestor": true,
        });
        match principal {
            Some(p) if p.unrestricted => {
                user["who"] = json!({"display": "anonymous (authorization not configured)"});
            }
            Some(p) => {
                if let Some(sub) = &p.subject {
                    user["who"] = json!({"identifier": {"value": sub}});
                    user["altId"] = json!(sub);
                    user["name"] = json!(sub);
                }
                if let Some((ty, id)) = p.user(base_url) {
                    user["who"]["reference"] = json!(format!("{ty}/{id}"));
                }
                if let Some(patient) = &p.patient {
                    user["policy"] = json!([format!("urn:liaison:patient-context:{patient}")]);
                }
            }
            None => user["who"] = json!({"display": "unauthenticated"}),
        }
        if let Some(address) = &address {
            user["network"] = json!({"address": address, "type": "2"});
        }
        agents.push(user);
        if let Some(client) = principal.and_then(|p| p.client_id.as_ref()) {
            agents.push(json!({
                "type": {"coding": [coding("http://dicom.nema.org/resources/ontology/DCM", "110150")]},
                "who": {"identifier": {"value": client}},
                "name": client,
                "requestor": false,
            }));
        }
        let certificate = principal.and_then(|p| p.certificate.as_ref()).or(self.certificate.as_ref());
        if let Some(subject) = certificate {
            agents.push(json!({
                "type": {"coding": [coding("http://dicom.nema.org/resources/ontology/DCM", "110153")]},
                "who": {"identifier": {"system": "urn:ietf:rfc:4514", "value": subject}},
                "name": subject,
                "requestor": false,
            }));
        }
        agents.push(json!({
            "type": {"coding": [coding("http://dicom.nema.org/resources/ontology/DCM", "110152")]},
            "who": {"display": "Liaison"},
            "requestor": false,
            "network": {"address": base_url, "type": "5"},
        }));
        let mut entities = Vec::new();
        for what in &self.entities {
            entities.push(json!({
                "what": {"reference": what},
                "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2"),
                "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "4"),
            }));
        }
        if let Some(query) = &self.query {
            let mut entity = json!({
                "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2"),
                "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "24"),
                "query": base64::engine::general_purpose::STANDARD.encode(query),
            });
            if let Some(ty) = &self.resource_type {
                entity["description"] = json!(format!("search of {ty}"));
            }
            entities.push(entity);
        }
        for what in &self.withheld {
            entities.push(json!({
                "what": {"reference": what},
                "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2"),
                "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "4"),
                "description": "withheld by security labels or consent",
                "detail": [{"type": "disclosure", "valueString": "withheld"}],
            }));
        }
        for patient in &self.patients {
            entities.push(json!({
                "what": {"reference": format!("Patient/{patient}")},
                "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1"),
                "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "1"),
            }));
        }
        let mut event = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                "display": "Restful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": self.interaction}],
            "action": self.action,
            "recorded": fhir::format_instant(fhir::now_millis()),
            "outcome": self.outcome(),
            "outcomeDesc": format!("HTTP {}", self.status),
            "agent": agents,
            "source": {
                "observer": {"display": "Liaison"},
                "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4")],
            },
        });
        if !entities.is_empty() {
            event["entity"] = Value::Array(entities);
        }
        if let Some(reason) = &self.break_glass {
            event["purposeOfEvent"] = json!([{"coding": [coding(ACT_REASON, "BTG")], "text": reason}]);
        }
        if self.alert {
            // A distinct record: DICOM "Security Alert", subtype break-the-glass, so that
            // reviewers find every emergency access by its type.
            event["type"] = json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113",
                "display": "Security Alert"});
            event["subtype"] = json!([{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]);
            event["outcomeDesc"] = json!(format!("break-glass access answered with HTTP {}", self.status));
        }
        match event {
            Value::Object(map) => map,
            _ => unreachable!("an AuditEvent is an object"),
        }
    }

    /// The structured log line: types, ids and codes, never clinical content, queries or who.
    fn log(&self, id: &str) {
        if self.alert {
            tracing::warn!(
                target: "liaison::audit",
                audit_event = %id,
                resource_type = self.resource_type.as_deref().unwrap_or(""),
                entities = %self.entities.join(","),
                client = self.caller.as_ref().and_then(|p| p.client_id.as_deref()).unwrap_or(""),
                "break-glass access"
            );
            return;
        }
        tracing::info!(
            target: "liaison::audit",
            audit_event = %id,
            interaction = self.interaction,
            action = self.action,
            outcome = self.outcome(),
            status = self.status,
            resource_type = self.resource_type.as_deref().unwrap_or(""),
            entities = %self.entities.join(","),
            client = self.caller.as_ref().and_then(|p| p.client_id.as_deref()).unwrap_or(""),
            "audit"
        );
    }
}

type Pending = (AuditRecord, oneshot::Sender<bool>);

/// The audit trail's writer.
#[derive(Debug, Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
    registry: Arc<Registry>,
    base_url: String,
}

/// The audit record could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail could not be written")]
pub struct AuditFailed;

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<Store>, registry: Arc<Registry>, base_url: String) -> Self {
        let (queue, pending) = mpsc::channel(4 * BATCH);
        tokio::spawn(writer(pending, store.clone(), registry.clone(), base_url.clone()));
        tokio::spawn(linker(store));
        Self { queue, registry, base_url }
    }

    /// Records `record` and waits until it is committed.
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditFailed> {
        let (done, committed) = oneshot::channel();
        self.queue.send((record, done)).await.map_err(|_| AuditFailed)?;
        match committed.await {
            Ok(true) => Ok(()),
            _ => Err(AuditFailed),
        }
    }

    /// Records `record` in the caller's transaction (a write and its audit commit together):
    /// appended when it commits; if the trail cannot take it, the commit fails.
    pub fn record_in(&self, tx: &mut WriteTx, record: &AuditRecord) {
        let id = crate::fhir::new_id();
        let (registry, base_url) = (self.registry.clone(), self.base_url.clone());
        let index: AuditIndex = Arc::new(move |v: &Value| index_of(&registry, &base_url, v));
        tx.queue_audit(id.clone(), record.to_resource(&self.base_url), index);
        record.log(&id);
    }
}

fn index_of(registry: &Registry, base_url: &str, event: &Value) -> Vec<IndexEntry> {
    registry.search.extract(&registry.definitions, "AuditEvent", event, base_url)
}

/// The AuditEvent of `record` with a new id.
fn prepare(base_url: &str, record: &AuditRecord) -> (String, Map<String, Value>) {
    (crate::fhir::new_id(), record.to_resource(base_url))
}

/// Commits what is queued, a batch per transaction, as many transactions at once as the
/// engine makes progress with ([`Store::concurrent_writers`]), and tells each request how it
/// went.
async fn writer(mut pending: mpsc::Receiver<Pending>, store: Arc<Store>, registry: Arc<Registry>, base_url: String) {
    let writers = Arc::new(tokio::sync::Semaphore::new(store.concurrent_writers()));
    while let Some(first) = pending.recv().await {
        let Ok(permit) = writers.clone().acquire_owned().await else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (store, registry, base_url) = (store.clone(), registry.clone(), base_url.clone());
        tokio::spawn(async move {
            let prepared: Vec<_> = batch.iter().map(|(r, _)| prepare(&base_url, r)).collect();
            let index = |v: &Value| index_of(&registry, &base_url, v);
            let ok = match commit(&store, &prepared, &index).await {
                Ok(()) => {
                    for ((record, _), (id, _)) in batch.iter().zip(&prepared) {
                        record.log(id);
                    }
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, db.code = e.code(), records = batch.len(), "writing the audit trail failed");
                    false
                }
            };
            drop(permit);
            for (_, done) in batch {
                let _ = done.send(ok);
            }
        });
    }
}

/// How often the linker looks for AuditEvents that no write woke it for: those of other
/// replicas, of an earlier run, or of a pass that failed.
const SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Links the AuditEvents that writes queue into the hash chain ([`Store::link_audits`]), on
/// engines whose writes do not link their own ([`Store::links_at_commit`]).
async fn linker(store: Arc<Store>) {
    if store.links_at_commit() {
        return;
    }
    loop {
        tokio::select! {
            () = store.audits_queued() => {}
            () = tokio::time::sleep(SWEEP) => {}
        }
        if let Err(e) = store.link_audits(BATCH as i64).await {
            tracing::error!(error = %e, db.code = e.code(), "linking AuditEvents into the chain failed");
            tokio::time::sleep(SWEEP).await;
        }
    }
}

type Index<'a> = &'a (dyn Fn(&Value) -> Vec<IndexEntry> + Sync);

async fn commit(store: &Store, prepared: &[(String, Map<String, Value>)], index: Index<'_>) -> Result<(), StoreError> {
    in_transaction!(store, |tx| append(&mut tx, prepared, index))
}

async fn append(
    tx: &mut WriteTx,
    prepared: &[(String, Map<String, Value>)],
    index: Index<'_>,
) -> Result<(), StoreError> {
    tx.record_audits(prepared.to_vec(), index).await
}
