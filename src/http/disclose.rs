//! Disclosure: of what a caller's scopes reach, what its clearance and the patients' Consents
//! let it see ([`crate::auth::labels`], [`crate::auth::consent`]). Every path data leaves by —
//! read, vread, search and its includes, chains and `_has`, history, `$everything`, Bundle
//! entries (dispatched as requests), notifications — applies the one [`Filter::Disclosed`]:
//! searches in SQL, so that totals and paging count only what is shown; single versions
//! also by their own labels, since labels may differ between versions.
//!
//! A caller that breaks the glass (header [`BREAK_GLASS_HEADER`] with a reason, and `BTG` in
//! its clearance) sees past labels and Consents; the audit layer records that as a distinct
//! security alert listing what was disclosed.

use std::collections::HashSet;

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::audit::AuditDetail;
use crate::auth::consent::Asking;
use crate::auth::labels;
use crate::auth::Principal;
use crate::error::AppError;
use crate::fhir::search::query::Filter;
use crate::fhir::{self};
use crate::http::audited::patients_of;
use crate::state::AppState;
use crate::store::{StoreError, Version};

/// The request header that breaks the glass; its value is the reason.
pub const BREAK_GLASS_HEADER: &str = "x-break-glass-reason";
/// The response header that marks an answer given by breaking the glass.
pub const BREAK_GLASS_MARK: &str = "x-break-glass";

const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The filter that keeps out what `caller` may not see; `None` when nothing is withheld from
/// it (no authorization configured, or the glass broken).
pub async fn disclosure(state: &AppState, caller: &Principal) -> Result<Option<Filter>, StoreError> {
    if caller.unrestricted || caller.break_glass.is_some() {
        return Ok(None);
    }
    let filter = caller
        .disclosure
        .get_or_try_init(|| async {
            let consent = asking(state, caller).await?;
            Ok::<_, StoreError>(Some(Filter::Disclosed { withheld: caller.clearance.withheld(), consent }))
        })
        .await?;
    Ok(filter.clone())
}

/// Who is asking, for Consents; `None` when no Consent is stored (nothing to evaluate).
async fn asking(state: &AppState, caller: &Principal) -> Result<Option<Asking>, StoreError> {
    if !state.store.has_consent_rules().await? {
        return Ok(None);
    }
    let user = caller.user(&state.base_url);
    let actors = match &user {
        Some((ty, id)) => state.store.actors_of(ty, id).await?,
        None => Vec::new(),
    };
    let purposes =
        caller.purposes.iter().map(|p| if p.contains('|') { p.clone() } else { format!("{ACT_REASON}|{p}") }).collect();
    let own_patient = user.filter(|(ty, _)| ty == "Patient").map(|(_, id)| id);
    Ok(Some(Asking { actors, purposes, now: fhir::now_millis(), own_patient, anyone: false }))
}

/// What anybody may see: a notification's payload leaves the server only when it carries no
/// controlling label and no Consent of its patient could withhold it from its receiver.
pub async fn anonymous(state: &AppState) -> Result<Filter, StoreError> {
    let nobody = Principal { purposes: Vec::new(), ..Principal::default() };
    let consent = asking(state, &nobody).await?.map(|a| Asking { anyone: true, ..a });
    Ok(Filter::Disclosed { withheld: nobody.clearance.withheld(), consent })
}

/// Adds `disclosed` to every level of chains and `_has`, so that what a caller may not see
/// cannot decide what it finds (`Patient?_has:Observation:subject:code=<psychotherapy note>`).
pub fn disclose_traversed(filter: &mut Filter, disclosed: &Filter) {
    if let Filter::Chain { inner, .. } | Filter::Has { inner, .. } = filter {
        for f in inner.iter_mut() {
            disclose_traversed(f, disclosed);
        }
        inner.push(disclosed.clone());
    }
}

/// The ids among `ids` (current resources of `ty`) that `disclosed` withholds.
async fn withheld_ids(
    state: &AppState,
    ty: &str,
    ids: &[String],
    disclosed: &Filter,
) -> Result<HashSet<String>, StoreError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let filters = [Filter::Id(ids.to_vec()), Filter::Not(Box::new(disclosed.clone()))];
    Ok(state.store.ids(ty, &filters, ids.len() as i64).await?.into_iter().collect())
}

/// Whether this version may be shown: its own labels, and the resource as it is now.
fn version_clears(version: &Version, disclosed: &Filter) -> bool {
    match (disclosed, &version.content) {
        (Filter::Disclosed { withheld, .. }, Some(content)) => labels::clears(content, withheld),
        _ => true,
    }
}

/// Splits `versions` into those `disclosed` lets through and the references of those it
/// withholds (`Type/id/_history/v`).
pub async fn keep_disclosed(
    state: &AppState,
    disclosed: Option<&Filter>,
    versions: Vec<Version>,
) -> Result<(Vec<Version>, Vec<String>), StoreError> {
    let Some(disclosed) = disclosed else { return Ok((versions, Vec::new())) };
    let mut types: Vec<&str> = versions.iter().map(|v| v.resource_type.as_str()).collect();
    types.sort();
    types.dedup();
    let mut hidden: HashSet<(String, String)> = HashSet::new();
    let mut gone: HashSet<(String, String)> = HashSet::new();
    for ty in types {
        let mut ids: Vec<String> = versions.iter().filter(|v| v.resource_type == ty).map(|v| v.id.clone()).collect();
        ids.sort();
        ids.dedup();
        hidden.extend(withheld_ids(state, ty, &ids, disclosed).await?.into_iter().map(|id| (ty.to_owned(), id)));
        let live: HashSet<String> =
            state.store.ids(ty, &[Filter::Id(ids.clone())], ids.len() as i64).await?.into_iter().collect();
        gone.extend(ids.into_iter().filter(|id| !live.contains(id)).map(|id| (ty.to_owned(), id)));
    }
    // A deleted resource has no index rows for the database to judge it by: its versions are
    // judged by their own content (a deletion by the version before it), and withheld when
    // its patient has Consents.
    let mut judged: Vec<Version> = Vec::with_capacity(versions.len());
    for v in &versions {
        let deletion = v.content.is_none() && gone.contains(&(v.resource_type.clone(), v.id.clone()));
        let before = match (deletion, state.registry.resource_type(&v.resource_type)) {
            (true, Some(ty)) if v.version_id > 1 => state.store.vread(ty, &v.id, v.version_id - 1).await?,
            _ => None,
        };
        judged.push(before.unwrap_or_else(|| v.clone()));
    }
    // The patients of each deleted resource's version, when Consents are evaluated (the
    // caller's own are not: a patient's Consents do not restrict the patient).
    let own = match disclosed {
        Filter::Disclosed { consent: Some(asking), .. } => Some(asking.own_patient.as_deref()),
        _ => None,
    };
    let patients: Vec<Vec<String>> = judged
        .iter()
        .map(|v| match own {
            Some(own) if gone.contains(&(v.resource_type.clone(), v.id.clone())) => {
                patients_of(state, &v.resource_type, &v.id, v.content.as_deref())
                    .into_iter()
                    .filter(|p| Some(p.as_str()) != own)
                    .collect()
            }
            _ => Vec::new(),
        })
        .collect();
    let mut all: Vec<String> = patients.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    let consented = state.store.consent_patients(&all).await?;
    let (mut kept, mut withheld) = (Vec::new(), Vec::new());
    for ((v, judged), patients) in versions.into_iter().zip(&judged).zip(&patients) {
        let key = (v.resource_type.clone(), v.id.clone());
        let consent_governed = patients.iter().any(|p| consented.contains(p));
        if hidden.contains(&key) || consent_governed || !version_clears(judged, disclosed) {
            withheld.push(format!("{}/{}/_history/{}", v.resource_type, v.id, v.version_id));
        } else {
            kept.push(v);
        }
    }
    Ok((kept, withheld))
}

/// Checks that `caller` may see `version`: 403 otherwise, as a response that tells the audit
/// trail what was withheld.
pub async fn check_version(state: &AppState, caller: &Principal, version: &Version) -> Result<(), Response> {
    let refused = |e: StoreError| AppError::from(e).into_response();
    let disclosed = disclosure(state, caller).await.map_err(refused)?;
    let (_, withheld) = keep_disclosed(state, disclosed.as_ref(), vec![version.clone()]).await.map_err(refused)?;
    if withheld.is_empty() {
        return Ok(());
    }
    Err(refusal(&version.resource_type, &version.id, withheld))
}

/// The 403 for a resource withheld from the caller, naming it for the audit trail.
pub fn refusal(ty: &str, id: &str, withheld: Vec<String>) -> Response {
    let error = AppError::Forbidden(format!(
        "{ty}/{id} is withheld from this caller by its security labels or the patient's consent"
    ));
    let mut response = error.into_response();
    response.extensions_mut().insert(AuditDetail { withheld, ..AuditDetail::default() });
    response
}

/// The reason a request gives for breaking the glass: `Ok(None)` without the header; 403 when
/// the caller's clearance does not permit it, 400 when the reason is empty.
pub fn break_glass(caller: &Principal, value: Option<&HeaderValue>) -> Result<Option<String>, AppError> {
    let Some(value) = value else { return Ok(None) };
    let reason = value.to_str().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err(AppError::invalid(
            crate::fhir::outcome::IssueType::Required,
            "X-Break-Glass-Reason needs a reason for the emergency access",
        ));
    }
    if !caller.unrestricted && !caller.clearance.break_glass() {
        return Err(AppError::Forbidden("this caller may not break the glass (its clearance lacks BTG)".into()));
    }
    Ok(Some(reason.chars().take(500).collect()))
}
