//! The referral workflow (R4 workflow-management.html, task.html#statemachine): a referral is a
//! ServiceRequest with category referral (SNOMED CT 3457005), and a Task whose focus is that
//! ServiceRequest carries it between sender (`Task.requester`) and receiver (`Task.owner`).
//!
//! The rules here are pure: which status changes the task state machine allows, who may make
//! them, what they require, and which status the ServiceRequest follows with. The write path
//! (`http::interaction`) applies them to referral Tasks only; other Tasks are free-form.

use serde_json::{Map, Value};

/// SNOMED CT "Patient referral" (3457005), the category that makes a ServiceRequest a referral.
pub const REFERRAL_CATEGORY: (&str, &str) = ("http://snomed.info/sct", "3457005");

/// The statuses a referral Task may be created with.
pub const INITIAL: &[&str] = &["draft", "requested"];

/// The statuses a referral Task may move to from `from` (task.html#statemachine); a terminal
/// status (completed, rejected, cancelled, failed, entered-in-error) allows none.
pub fn next_statuses(from: &str) -> &'static [&'static str] {
    match from {
        "draft" => &["requested", "cancelled", "entered-in-error"],
        "requested" => &["received", "accepted", "rejected", "cancelled", "entered-in-error"],
        "received" => &["accepted", "rejected", "cancelled", "entered-in-error"],
        "accepted" => &["ready", "in-progress", "cancelled", "entered-in-error"],
        "ready" => &["in-progress", "cancelled", "failed", "entered-in-error"],
        "in-progress" => &["on-hold", "completed", "failed", "entered-in-error"],
        "on-hold" => &["in-progress", "cancelled", "failed", "entered-in-error"],
        _ => &[],
    }
}

/// Which party of a referral may move its Task to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// `Task.owner`, the receiver: accepts or rejects.
    Owner,
    /// `Task.requester`, the sender: cancels.
    Requester,
    /// Either of them.
    Either,
}

pub fn party_for(status: &str) -> Party {
    match status {
        "accepted" | "rejected" => Party::Owner,
        "cancelled" => Party::Requester,
        _ => Party::Either,
    }
}

/// Statuses that need `Task.statusReason` saying why.
pub fn needs_reason(status: &str) -> bool {
    matches!(status, "rejected" | "cancelled")
}

/// The status a referral's ServiceRequest takes when its Task reaches `task_status`.
pub fn service_request_status(task_status: &str) -> Option<&'static str> {
    match task_status {
        "completed" => Some("completed"),
        "rejected" | "cancelled" | "failed" => Some("revoked"),
        _ => None,
    }
}

/// Whether a ServiceRequest is a referral (its category has the referral code).
pub fn is_referral(service_request: &Map<String, Value>) -> bool {
    let (system, code) = REFERRAL_CATEGORY;
    service_request.get("category").and_then(Value::as_array).into_iter().flatten().any(|c| {
        c.get("coding").and_then(Value::as_array).into_iter().flatten().any(|coding| {
            coding.get("system").and_then(Value::as_str) == Some(system)
                && coding.get("code").and_then(Value::as_str) == Some(code)
        })
    })
}

/// The local `Type/id` a Reference element names, if it names one.
pub fn local_reference(resource: &Map<String, Value>, element: &str) -> Option<(String, String)> {
    let text = resource.get(element)?.get("reference")?.as_str()?;
    let path = text.split("/_history/").next().unwrap_or(text);
    match path.split('/').collect::<Vec<_>>().as_slice() {
        [ty, id] => Some(((*ty).to_owned(), (*id).to_owned())),
        _ => None,
    }
}

/// The first local `Type/id` of `Task.focus`.
pub fn focus(task: &Map<String, Value>) -> Option<(String, String)> {
    local_reference(task, "focus")
}

/// A Task's status.
pub fn status(task: &Map<String, Value>) -> &str {
    task.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Checks that a referral Task may go from `from` (`None` when it is being created) to `to`:
/// an `Err` with the reason when the state machine does not allow it (409), or when a reason
/// the new status needs is missing (422).
pub fn check_transition(from: Option<&str>, to: &str, task: &Map<String, Value>) -> Result<(), Refusal> {
    match from {
        None if !INITIAL.contains(&to) => {
            return Err(Refusal::Transition(format!(
                "a referral Task starts as draft or requested, not {to} (task.html#statemachine)"
            )))
        }
        Some(from) if from != to && !next_statuses(from).contains(&to) => {
            return Err(Refusal::Transition(format!(
                "a referral Task cannot move from {from} to {to} (task.html#statemachine)"
            )))
        }
        _ => {}
    }
    if from != Some(to) && needs_reason(to) && task.get("statusReason").is_none() {
        return Err(Refusal::MissingReason(format!("a referral Task that is {to} needs a statusReason")));
    }
    Ok(())
}

/// Why a referral Task change is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The state machine does not allow it (409).
    Transition(String),
    /// A required element is missing (422).
    MissingReason(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(status: &str, reason: bool) -> Map<String, Value> {
        let mut t = json!({"resourceType": "Task", "status": status, "intent": "order"});
        if reason {
            t["statusReason"] = json!({"text": "no capacity"});
        }
        t.as_object().unwrap().clone()
    }

    #[test]
    fn the_state_machine_allows_the_referral_path_only() {
        let path = ["requested", "received", "accepted", "in-progress", "completed"];
        for pair in path.windows(2) {
            assert_eq!(check_transition(Some(pair[0]), pair[1], &task(pair[1], false)), Ok(()), "{pair:?}");
        }
        assert!(check_transition(None, "requested", &task("requested", false)).is_ok());
        assert!(matches!(check_transition(None, "accepted", &task("accepted", false)), Err(Refusal::Transition(_))));
        let skip = check_transition(Some("requested"), "completed", &task("completed", false));
        assert!(
            matches!(&skip, Err(Refusal::Transition(why)) if why.contains("requested") && why.contains("completed"))
        );
        assert!(matches!(
            check_transition(Some("completed"), "in-progress", &task("x", false)),
            Err(Refusal::Transition(_))
        ));
        assert!(check_transition(Some("accepted"), "accepted", &task("accepted", false)).is_ok(), "no change");
    }

    #[test]
    fn rejection_and_cancellation_need_a_reason() {
        assert!(matches!(
            check_transition(Some("requested"), "rejected", &task("rejected", false)),
            Err(Refusal::MissingReason(_))
        ));
        assert!(check_transition(Some("requested"), "rejected", &task("rejected", true)).is_ok());
        assert!(check_transition(Some("accepted"), "cancelled", &task("cancelled", true)).is_ok());
        assert_eq!(party_for("accepted"), Party::Owner);
        assert_eq!(party_for("cancelled"), Party::Requester);
        assert_eq!(service_request_status("rejected"), Some("revoked"));
        assert_eq!(service_request_status("accepted"), None);
    }

    #[test]
    fn referrals_are_told_by_their_category() {
        let sr = json!({"resourceType": "ServiceRequest",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}]});
        assert!(is_referral(sr.as_object().unwrap()));
        let lab = json!({"resourceType": "ServiceRequest",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}]});
        assert!(!is_referral(lab.as_object().unwrap()));
        let t = json!({"focus": {"reference": "ServiceRequest/r1"}});
        assert_eq!(focus(t.as_object().unwrap()), Some(("ServiceRequest".into(), "r1".into())));
    }
}
