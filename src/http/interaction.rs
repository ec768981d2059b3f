//! The write interactions of R4's REST API — create, update, patch and delete, each also
//! conditional — independent of how they arrived: an HTTP request runs one in its own database
//! transaction, a transaction Bundle runs many in one.
//!
//! Resources are validated before the transaction starts (a patch, whose result depends on the
//! stored version, inside it); the transaction then resolves conditions, applies the changes and
//! checks referential integrity at commit.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::audited::patients_in;
use super::authorize::{compartment_filter, confine_traversed, content_in_compartment, outside, require};
use super::disclose;
use super::negotiate::query_pairs;
use crate::auth::{consent, labels};
use crate::auth::{Access, Perm, Principal};
use crate::error::AppError;
use crate::fhir::outcome::{Issue, IssueType};
use crate::fhir::patch::{Patch, PatchError};
use crate::fhir::registry::ResourceType;
use crate::fhir::search::query::{self, Filter};
use crate::fhir::{validate, workflow};
use crate::state::AppState;
use crate::store::{Change, Derived, Expect, StoreError, Version, WriteTx, Written};
use crate::subscription;

/// One write interaction on a resource of `ty`.
#[derive(Debug)]
pub struct Write {
    pub ty: ResourceType,
    pub kind: WriteKind,
}

/// The resource a write addresses: by id, or by search (a conditional interaction).
#[derive(Debug, Clone)]
pub enum Target {
    Id(String),
    Search(Vec<Filter>),
}

#[derive(Debug)]
pub enum WriteKind {
    /// `id` is assigned by the server before the write (a Bundle rewrites references to it).
    Create {
        id: String,
        resource: Map<String, Value>,
        derived: Derived,
        if_none_exist: Option<Vec<Filter>>,
    },
    Update {
        target: Target,
        resource: Map<String, Value>,
        derived: Derived,
        expect: Expect,
    },
    Patch {
        target: Target,
        patch: Patch,
        expect: Expect,
    },
    Delete {
        target: Target,
        expect: Expect,
    },
}

/// What a write interaction did.
#[derive(Debug)]
pub struct Done {
    /// 201 for a new resource, 200 for a changed or found one, 204 for a delete.
    pub status: StatusCode,
    /// The version stored or found (a deletion for a delete that changed something).
    pub version: Option<Version>,
    /// What happened, in words, for responses without a resource.
    pub message: String,
    /// For the audit trail: the resources touched (`Type/id/_history/v`) and the patients
    /// whose compartment they are in.
    pub entities: Vec<String>,
    pub patients: Vec<String>,
    /// A new version was stored (not a conditional create's existing match, nor a no-op).
    pub changed: bool,
}

impl Done {
    /// The outcome of a write of `ty/id`, whose content is in the compartments of `patients`.
    fn stored(written: Written, ty: ResourceType, id: &str, patients: Vec<String>) -> Self {
        let (status, message, version) = match written {
            Written::Stored { version, .. } if version.is_deleted() => {
                (StatusCode::NO_CONTENT, format!("{ty}/{id} deleted"), Some(version))
            }
            Written::Stored { version, created } => (
                if created { StatusCode::CREATED } else { StatusCode::OK },
                format!("{ty}/{id} version {} stored", version.version_id),
                Some(version),
            ),
            Written::Unchanged => {
                (StatusCode::NO_CONTENT, format!("{ty}/{id} does not exist or is already deleted; nothing to do"), None)
            }
        };
        let entity = match &version {
            Some(v) => format!("{ty}/{id}/_history/{}", v.version_id),
            None => format!("{ty}/{id}"),
        };
        let changed = version.is_some();
        Self { status, version, message, entities: vec![entity], patients, changed }
    }
}

/// Checks a resource a client wants to write: its type matches, its id matches the URL's on
/// update, and it is valid against the R4 definitions. Returns what its write stores besides
/// the content.
pub fn check_resource(
    state: &AppState,
    ty: ResourceType,
    resource: &Map<String, Value>,
    url_id: Option<&str>,
) -> Result<Derived, AppError> {
    if state.registry.server_written(ty.as_str()) {
        return Err(AppError::MethodNotAllowed);
    }
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == ty.as_str() => {}
        Some(_) => {
            return Err(AppError::invalid(
                IssueType::Invalid,
                format!("resourceType does not match the URL: this endpoint takes {ty}"),
            ))
        }
        None => return Err(AppError::invalid(IssueType::Required, "the resource has no resourceType")),
    }
    if let Some(url_id) = url_id {
        // R4 http.html#update: the body must carry the id of the URL.
        match resource.get("id").and_then(Value::as_str) {
            Some(id) if id == url_id => {}
            Some(_) => {
                return Err(AppError::invalid(IssueType::Invalid, "the resource id does not match the id in the URL"))
            }
            None => return Err(AppError::invalid(IssueType::Required, "an update must carry the resource id")),
        }
    }
    let report = validate::validate(&state.registry.definitions, resource);
    if !report.issues.is_empty() {
        return Err(AppError::BadRequest(report.issues));
    }
    if ty.as_str() == "Subscription" {
        subscription::check(state, resource)?;
    }
    if ty.as_str() == "Consent" {
        consent::rules_of(resource, &state.base_url)
            .map_err(|why| AppError::Unprocessable(vec![Issue::error(IssueType::NotSupported, why)]))?;
    }
    let value = Value::Object(resource.clone());
    let mut derived = state.registry.derive(ty.as_str(), &value, report.references, &state.base_url);
    // Labels the rules derive from the content, unless the client gave them.
    let present = labels::labels_of(resource);
    derived.labels = state
        .label_rules
        .labels_for(ty.as_str(), &derived.index)
        .into_iter()
        .filter(|l| !present.contains(l))
        .collect();
    derived.index.extend(labels::label_entries(&derived.labels));
    Ok(derived)
}

/// Parses the search of a conditional interaction (`identifier=http://sys|123`, with or without
/// a leading `Type?`) with the same parser as search. Unknown parameters are errors here:
/// ignoring one would widen the condition. `what` names the source in errors.
pub fn parse_condition(state: &AppState, ty: ResourceType, text: &str, what: &str) -> Result<Vec<Filter>, AppError> {
    let text = text.split_once('?').map_or(text, |(_, q)| q);
    let pairs = query_pairs(text.as_bytes())?;
    let options = state.parse_options(true, 2);
    let parsed = query::parse(&state.registry.search, ty.as_str(), &pairs, options)
        .map_err(|e| AppError::invalid(IssueType::Invalid, format!("{what}: {e}")))?;
    if parsed.filters.is_empty() {
        return Err(AppError::invalid(IssueType::Invalid, format!("{what} must name at least one search parameter")));
    }
    Ok(parsed.filters)
}

/// What the caller may write, applied to one write: scopes per interaction, and for `patient/`
/// scopes, the compartment of both the stored and the new content.
struct Rights<'a>(&'a Principal, &'a AppState);

impl Rights<'_> {
    /// The search of a conditional write, confined to what the caller may act on.
    async fn condition(&self, ty: ResourceType, perm: Perm, filters: &[Filter]) -> Result<Vec<Filter>, AppError> {
        confined_condition(self.1, self.0, ty, perm, filters).await
    }

    /// Update, or Create when `ty/id` does not exist (update as create).
    async fn update_perm(&self, tx: &mut WriteTx, ty: ResourceType, id: &str) -> Result<Perm, AppError> {
        if self.0.unrestricted {
            return Ok(Perm::Update);
        }
        let live = tx.current(ty, id).await?.is_some_and(|v| !v.is_deleted());
        Ok(if live { Perm::Update } else { Perm::Create })
    }

    /// The caller may apply `perm` to the stored `ty/id`.
    async fn existing(&self, tx: &mut WriteTx, ty: ResourceType, id: &str, perm: Perm) -> Result<(), AppError> {
        match require(self.0, ty.as_str(), perm)? {
            Access::Compartment(c) if !tx.in_compartment(ty, id, &c.patient, c.params).await? => {
                Err(outside(ty.as_str(), id))
            }
            _ => self.visible(tx, ty, id).await,
        }
    }

    /// The stored `ty/id` is not withheld from the caller: what it may not see, it may not
    /// change or be answered with either (403).
    async fn visible(&self, tx: &mut WriteTx, ty: ResourceType, id: &str) -> Result<(), AppError> {
        let Some(disclosed) = disclose::disclosure(self.1, self.0).await? else { return Ok(()) };
        let filters = [Filter::Id(vec![id.to_owned()]), Filter::Not(Box::new(disclosed))];
        if tx.find(ty, &filters, 1).await?.is_empty() {
            return Ok(());
        }
        Err(AppError::Forbidden(format!(
            "{ty}/{id} is withheld from this caller by its security labels or the patient's consent"
        )))
    }

    /// The caller may store this content as `ty/id` with `perm`.
    fn content(&self, ty: ResourceType, id: &str, perm: Perm, derived: &Derived) -> Result<(), AppError> {
        match require(self.0, ty.as_str(), perm)? {
            Access::Compartment(c) if !content_in_compartment(&c, ty.as_str(), id, &derived.index) => {
                Err(outside(ty.as_str(), id))
            }
            _ => Ok(()),
        }
    }
}

/// The search of a conditional interaction with `perm`, confined to what `caller` may act on
/// (403 when it may not act on the type at all).
pub async fn confined_condition(
    state: &AppState,
    caller: &Principal,
    ty: ResourceType,
    perm: Perm,
    filters: &[Filter],
) -> Result<Vec<Filter>, AppError> {
    let mut filters = filters.to_vec();
    for filter in &mut filters {
        confine_traversed(caller, filter)?;
    }
    filters.extend(compartment_filter(&require(caller, ty.as_str(), perm)?));
    // A condition sees what a search by the caller would: what is withheld from it neither
    // matches nor counts (a conditional create may then create what it could not see).
    if let Some(disclosed) = disclose::disclosure(state, caller).await? {
        for filter in &mut filters {
            disclose::disclose_traversed(filter, &disclosed);
        }
        filters.push(disclosed);
    }
    Ok(filters)
}

/// Runs one write interaction inside `tx` for `caller`, and queues the Subscription
/// notifications its new version triggers in the same transaction.
pub async fn execute(state: &AppState, caller: &Principal, tx: &mut WriteTx, write: &Write) -> Result<Done, AppError> {
    let done = apply(state, caller, tx, write).await?;
    if let (true, Some(version)) = (done.changed, &done.version) {
        subscription::notify(state, tx, write.ty, version).await?;
        if write.ty.as_str() == "Subscription" {
            // What was queued was for its old criteria and channel.
            tx.drop_queued(&version.id).await?;
        }
    }
    Ok(done)
}

async fn apply(state: &AppState, caller: &Principal, tx: &mut WriteTx, write: &Write) -> Result<Done, AppError> {
    let ty = write.ty;
    if state.registry.server_written(ty.as_str()) {
        return Err(AppError::MethodNotAllowed);
    }
    let rights = Rights(caller, state);
    match &write.kind {
        WriteKind::Create { id, resource, derived, if_none_exist } => {
            rights.content(ty, id, Perm::Create, derived)?;
            if let Some(filters) = if_none_exist {
                let filters = rights.condition(ty, Perm::Create, filters).await?;
                if let Some(found) = find_one(tx, ty, &filters).await? {
                    // R4 http.html#ccreate: one match, the request is ignored and the match returned.
                    let version = tx.current(ty, &found).await?;
                    let entities = vec![format!("{ty}/{found}")];
                    let patients = patients_in(ty.as_str(), &found, &derived.index);
                    let message = format!("{ty}/{found} matched");
                    return Ok(Done { status: StatusCode::OK, version, message, entities, patients, changed: false });
                }
            }
            let follow = referral_rules(state, caller, tx, ty, id, resource).await?;
            let written = tx.write(ty, id, Change::Create(resource.clone()), derived.into()).await?;
            let done = Done::stored(written, ty, id, patients_in(ty.as_str(), id, &derived.index));
            follow_referral(state, tx, follow, done).await
        }
        WriteKind::Update { target, resource, derived, expect } => {
            let body_id = resource.get("id").and_then(Value::as_str);
            // R4 http.html#cond-update: no match creates (with the client's id, if any); one
            // match is updated, and a body id must be that match's.
            let id = match target {
                Target::Id(id) => id.clone(),
                Target::Search(filters) => {
                    match (find_one(tx, ty, &rights.condition(ty, Perm::Update, filters).await?).await?, body_id) {
                        (Some(found), Some(given)) if given != found => {
                            return Err(AppError::invalid(
                                IssueType::Invalid,
                                "the resource id is not the id of the resource the condition matched",
                            ))
                        }
                        (Some(found), _) => found,
                        (None, Some(given)) => given.to_owned(),
                        (None, None) => {
                            let id = crate::fhir::new_id();
                            rights.content(ty, &id, Perm::Create, derived)?;
                            let follow = referral_rules(state, caller, tx, ty, &id, resource).await?;
                            let written = tx.write(ty, &id, Change::Create(resource.clone()), derived.into()).await?;
                            let done = Done::stored(written, ty, &id, patients_in(ty.as_str(), &id, &derived.index));
                            return follow_referral(state, tx, follow, done).await;
                        }
                    }
                }
            };
            let perm = rights.update_perm(tx, ty, &id).await?;
            if perm == Perm::Update {
                rights.existing(tx, ty, &id, perm).await?;
            }
            rights.content(ty, &id, perm, derived)?;
            let mut resource = resource.clone();
            resource.insert("id".into(), Value::from(id.as_str()));
            let follow = referral_rules(state, caller, tx, ty, &id, &resource).await?;
            let written = tx.write(ty, &id, Change::Update { resource, expect: *expect }, derived.into()).await?;
            let done = Done::stored(written, ty, &id, patients_in(ty.as_str(), &id, &derived.index));
            follow_referral(state, tx, follow, done).await
        }
        WriteKind::Patch { target, patch, expect } => {
            let id = match target {
                Target::Id(id) => id.clone(),
                Target::Search(filters) => find_one(tx, ty, &rights.condition(ty, Perm::Update, filters).await?)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("a {ty} matching the condition")))?,
            };
            rights.existing(tx, ty, &id, Perm::Update).await?;
            let current = match tx.current(ty, &id).await? {
                None => return Err(AppError::NotFound(format!("{ty}/{id}"))),
                Some(v) if v.is_deleted() => return Err(AppError::Gone(format!("{ty}/{id}"))),
                Some(v) => v,
            };
            if matches!(expect, Expect::Version(v) if *v != current.version_id) {
                return Err(StoreError::VersionConflict.into());
            }
            let mut content: Value = serde_json::from_str(current.content.as_deref().unwrap_or("{}"))
                .map_err(|_| AppError::Internal(StoreError::Corrupt))?;
            patch.apply(&state.registry.definitions, ty.as_str(), &mut content).map_err(|e| match e {
                PatchError::Malformed(why) => AppError::invalid(IssueType::Invalid, why),
                PatchError::Failed(why) => AppError::Unprocessable(vec![Issue::error(
                    IssueType::Processing,
                    format!("the patch failed: {why}"),
                )]),
            })?;
            let Value::Object(patched) = content else {
                return Err(AppError::Unprocessable(vec![Issue::error(
                    IssueType::Processing,
                    "the patch did not leave a resource",
                )]));
            };
            // An invalid result is the patch's fault, not a malformed request.
            let derived = check_resource(state, ty, &patched, Some(&id)).map_err(|e| match e {
                AppError::BadRequest(issues) => AppError::Unprocessable(issues),
                other => other,
            })?;
            rights.content(ty, &id, Perm::Update, &derived)?;
            let follow = referral_rules(state, caller, tx, ty, &id, &patched).await?;
            let change = Change::Update { resource: patched, expect: Expect::Version(current.version_id) };
            let written = tx.write(ty, &id, change, (&derived).into()).await?;
            let done = Done::stored(written, ty, &id, patients_in(ty.as_str(), &id, &derived.index));
            follow_referral(state, tx, follow, done).await
        }
        WriteKind::Delete { target: Target::Id(id), expect } => {
            rights.existing(tx, ty, id, Perm::Delete).await?;
            let written = tx.write(ty, id, Change::Delete { expect: *expect }, Default::default()).await?;
            Ok(Done::stored(written, ty, id, patients_in(ty.as_str(), id, &[])))
        }
        WriteKind::Delete { target: Target::Search(filters), expect } => {
            // R4 http.html#cdelete: several matches are deleted only where the server is
            // configured to; otherwise they are refused with 412.
            let max = state.limits.max_conditional_deletes.max(1);
            let ids = tx.find(ty, &rights.condition(ty, Perm::Delete, filters).await?, max as i64 + 1).await?;
            if ids.len() > max {
                return Err(AppError::PreconditionFailed(if max == 1 {
                    format!("the condition matched several {ty} resources; it must match at most one")
                } else {
                    format!("the condition matched more than {max} {ty} resources, the most one delete may remove")
                }));
            }
            let mut last = None;
            for id in &ids {
                if let Written::Stored { version, .. } =
                    tx.write(ty, id, Change::Delete { expect: *expect }, Default::default()).await?
                {
                    last = Some(version);
                }
            }
            let message = match ids.len() {
                0 => format!("no {ty} matched the condition; nothing to do"),
                1 => format!("{ty}/{} deleted", ids[0]),
                n => format!("{n} {ty} resources deleted"),
            };
            let entities = ids.iter().map(|id| format!("{ty}/{id}")).collect();
            let patients = ids.iter().flat_map(|id| patients_in(ty.as_str(), id, &[])).collect();
            let version = if ids.len() == 1 { last } else { None };
            Ok(Done { status: StatusCode::NO_CONTENT, version, message, entities, patients, changed: !ids.is_empty() })
        }
    }
}

/// A status the referral's ServiceRequest takes after its Task is written.
struct FollowUp {
    service_request: String,
    status: &'static str,
}

/// The referral workflow's rules for writing Task `id` as `task` (task.html#statemachine), when
/// it carries a referral (its focus, stored or new, is a referral ServiceRequest): the state
/// machine (409 naming both statuses), the reason a rejection or cancellation needs (422), who
/// may make the change (403: the owner accepts or rejects, the requester cancels, judged by the
/// stored version's parties), and that focus and parties stay as they are (409). The caller
/// must be allowed to read the referral, and to update it when the Task moves it along. Returns
/// the status the ServiceRequest must follow with.
async fn referral_rules(
    state: &AppState,
    caller: &Principal,
    tx: &mut WriteTx,
    ty: ResourceType,
    id: &str,
    task: &Map<String, Value>,
) -> Result<Option<FollowUp>, AppError> {
    let Some(service_request_type) = state.registry.resource_type("ServiceRequest") else { return Ok(None) };
    if ty.as_str() != "Task" {
        return Ok(None);
    }
    let stored = tx.live(ty, id).await?.map(|(_, c)| c);
    let referral = |t: &Map<String, Value>| match workflow::focus(t) {
        Some((focus_type, focus_id)) if focus_type == "ServiceRequest" => Some(focus_id),
        _ => None,
    };
    // The stored focus decides when there is one: removing it does not escape the rules.
    let Some(sr_id) = stored.as_ref().and_then(referral).or_else(|| referral(task)) else { return Ok(None) };
    let rights = Rights(caller, state);
    rights.existing(tx, service_request_type, &sr_id, Perm::Read).await?;
    let Some(request) = tx.live(service_request_type, &sr_id).await?.map(|(_, c)| c) else { return Ok(None) };
    if !workflow::is_referral(&request) {
        return Ok(None);
    }
    if let Some(stored) = &stored {
        for element in ["focus", "owner", "requester"] {
            if workflow::local_reference(stored, element) != workflow::local_reference(task, element) {
                return Err(AppError::Conflict(format!("the {element} of a referral Task cannot change")));
            }
        }
    }
    let from = stored.as_ref().map(|t| workflow::status(t).to_owned());
    let to = workflow::status(task);
    workflow::check_transition(from.as_deref(), to, task).map_err(|refusal| match refusal {
        workflow::Refusal::Transition(why) => AppError::Conflict(why),
        workflow::Refusal::MissingReason(why) => {
            AppError::Unprocessable(vec![Issue::at(IssueType::Required, String::from("Task.statusReason"), why)])
        }
    })?;
    if let Some(stored) = &stored {
        if from.as_deref() != Some(to) {
            check_party(state, caller, tx, stored, to).await?;
        }
    }
    let follow = workflow::service_request_status(to)
        .filter(|s| request.get("status").and_then(Value::as_str) != Some(*s))
        .map(|status| FollowUp { service_request: sr_id, status });
    if let Some(follow) = &follow {
        rights.existing(tx, service_request_type, &follow.service_request, Perm::Update).await?;
    }
    Ok(follow)
}

/// Whether the caller may move the referral to `to`: it must act for the party the state
/// machine names, as the token's `fhirUser` says. Callers without a user (system-to-system
/// integration, or a server without authorization) act for the systems they are.
async fn check_party(
    state: &AppState,
    caller: &Principal,
    tx: &mut WriteTx,
    stored: &Map<String, Value>,
    to: &str,
) -> Result<(), AppError> {
    let (element, role) = match workflow::party_for(to) {
        workflow::Party::Owner => ("owner", "the owner (receiver)"),
        workflow::Party::Requester => ("requester", "the requester (sender)"),
        workflow::Party::Either => return Ok(()),
    };
    let Some(user) = caller.user(&state.base_url) else {
        return if caller.unrestricted || caller.is_system() {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "only {role} may make a referral Task {to}; the token names no user of this server (fhirUser)"
            )))
        };
    };
    let party = workflow::local_reference(stored, element);
    if let Some((party_type, party_id)) = &party {
        if acts_for(state, tx, &user, party_type, party_id).await? {
            return Ok(());
        }
    }
    Err(AppError::Forbidden(format!("only {role} may make a referral Task {to}")))
}

/// Whether user `Type/id` acts for `party_type/party_id`: it is the party, or the party is a
/// PractitionerRole of that Practitioner, or an Organization the user's PractitionerRole is in.
async fn acts_for(
    state: &AppState,
    tx: &mut WriteTx,
    user: &(String, String),
    party_type: &str,
    party_id: &str,
) -> Result<bool, AppError> {
    if user.0 == party_type && user.1 == party_id {
        return Ok(true);
    }
    let Some(roles) = state.registry.resource_type("PractitionerRole") else { return Ok(false) };
    let (role_id, element, wanted) = match (user.0.as_str(), party_type) {
        ("Practitioner", "PractitionerRole") => (party_id, "practitioner", ("Practitioner", user.1.as_str())),
        ("PractitionerRole", "Organization") => (user.1.as_str(), "organization", ("Organization", party_id)),
        _ => return Ok(false),
    };
    let role = tx.live(roles, role_id).await?.map(|(_, c)| c);
    Ok(role.and_then(|r| workflow::local_reference(&r, element)).is_some_and(|(t, i)| t == wanted.0 && i == wanted.1))
}

/// Writes the status a referral's ServiceRequest follows its Task with, in the same
/// transaction, and adds it to what the write touched.
async fn follow_referral(
    state: &AppState,
    tx: &mut WriteTx,
    follow: Option<FollowUp>,
    mut done: Done,
) -> Result<Done, AppError> {
    let (Some(follow), Some(ty)) = (follow, state.registry.resource_type("ServiceRequest")) else { return Ok(done) };
    let Some((version_id, mut request)) = tx.live(ty, &follow.service_request).await? else { return Ok(done) };
    request.insert("status".into(), Value::from(follow.status));
    let derived = check_resource(state, ty, &request, Some(&follow.service_request))?;
    let change = Change::Update { resource: request, expect: Expect::Version(version_id) };
    if let Written::Stored { version, .. } = tx.write(ty, &follow.service_request, change, (&derived).into()).await? {
        done.entities.push(format!("{ty}/{}/_history/{}", follow.service_request, version.version_id));
        subscription::notify(state, tx, ty, &version).await?;
    }
    Ok(done)
}

/// The id of the one current resource matching `filters`, if any; 412 when several match.
async fn find_one(tx: &mut WriteTx, ty: ResourceType, filters: &[Filter]) -> Result<Option<String>, AppError> {
    let mut ids = tx.find(ty, filters, 2).await?;
    match ids.len() {
        0 | 1 => Ok(ids.pop()),
        _ => Err(AppError::PreconditionFailed(format!(
            "the condition matched several {ty} resources; it must match at most one"
        ))),
    }
}
