//! Authorization in the style of SMART on FHIR v2: who is calling ([`Principal`], from a
//! validated bearer token, see [`jwt`]) and what their scopes allow ([`Principal::access`]).
//!
//! Scopes: `system/`, `user/` and `patient/` with v2 permissions (`.cruds`, any subset in that
//! order) or v1 ones (`.read` = `rs`, `.write` = `cud`, `.*` = `cruds`); the resource part may be
//! a type or `*`. `patient/` scopes confine the caller to the compartment of the token's
//! `patient` claim (R4's Patient CompartmentDefinition); types outside every compartment
//! (Practitioner, Organization, …) are not patient data and are not confined. `*` never covers
//! AuditEvent: the audit trail needs a scope that names it. Scopes with v2 search-parameter
//! constraints (`patient/Observation.rs?category=…`) are not supported and grant nothing.

pub mod consent;
pub mod jwt;
pub mod labels;

use std::collections::HashMap;
use std::sync::OnceLock;

/// One interaction class of SMART v2 (`c r u d s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn bit(self) -> u8 {
        match self {
            Self::Create => 1,
            Self::Read => 2,
            Self::Update => 4,
            Self::Delete => 8,
            Self::Search => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Search => "search",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Patient,
    User,
    System,
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// A resource type, or `*`.
    pub resource: String,
    perms: u8,
}

impl Scope {
    /// Parses one scope; `None` for scopes that are not resource scopes (`openid`, `launch`,
    /// …) or that this server does not support.
    pub fn parse(text: &str) -> Option<Self> {
        let (context, rest) = text.split_once('/')?;
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        };
        let (resource, perms) = rest.split_once('.')?;
        if resource.is_empty() || !(resource == "*" || resource.chars().all(|c| c.is_ascii_alphabetic())) {
            return None;
        }
        let perms = match perms {
            "read" => Perm::Read.bit() | Perm::Search.bit(),
            "write" => Perm::Create.bit() | Perm::Update.bit() | Perm::Delete.bit(),
            "*" => 31,
            v2 => {
                // `cruds` letters, each at most once and in that order.
                let mut bits = 0;
                let mut last = None;
                for c in v2.chars() {
                    let i = "cruds".find(c)?;
                    if last.is_some_and(|l| i <= l) {
                        return None;
                    }
                    last = Some(i);
                    bits |= 1 << i;
                }
                if bits == 0 {
                    return None;
                }
                bits
            }
        };
        Some(Self { context, resource: resource.to_owned(), perms })
    }

    fn covers(&self, ty: &str, perm: Perm) -> bool {
        // The audit trail and the Subscriptions (which carry receivers' credentials and can
        // watch every patient's data) are granted only by scopes that name them, and never to
        // a patient-facing app.
        let named_only = matches!(ty, "AuditEvent" | "Subscription");
        if named_only && self.context == Context::Patient {
            return false;
        }
        let resource = self.resource == ty || (self.resource == "*" && !named_only);
        resource && self.perms & perm.bit() != 0
    }
}

/// The caller of a request.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: Option<String>,
    /// The token's `client_id` (or `azp`).
    pub client_id: Option<String>,
    /// The token's `patient` claim: the compartment `patient/` scopes confine to.
    pub patient: Option<String>,
    /// The token's `fhirUser` claim (`Practitioner/123`, or an absolute URL): who the user is,
    /// for the referral workflow's rules; see [`Principal::user`].
    pub fhir_user: Option<String>,
    pub scopes: Vec<Scope>,
    /// No authorization is configured: everything is allowed (loopback development only).
    pub unrestricted: bool,
    /// The network address the request came from.
    pub address: Option<String>,
    /// The subject of the verified TLS client certificate (mutual TLS).
    pub certificate: Option<String>,
    /// The security labels the caller may see (see [`labels`]).
    pub clearance: labels::Clearance,
    /// Purposes of use (v3 ActReason codes), for Consents that name purposes.
    pub purposes: Vec<String>,
    /// The reason given for breaking the glass, when the caller did (and may).
    pub break_glass: Option<String>,
    /// What is withheld from this caller, worked out once per request (see
    /// `http::disclose::disclosure`).
    pub disclosure: std::sync::Arc<tokio::sync::OnceCell<Option<crate::fhir::search::query::Filter>>>,
}

/// What a principal may do with one type and interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every resource of the type.
    Full,
    /// Only resources in this patient's compartment.
    Compartment(Confinement),
    Denied,
}

/// A patient compartment: the patient, and the search parameters (of one type) that make a
/// resource a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    pub patient: String,
    pub params: &'static [String],
}

impl Principal {
    /// The principal of a server without authorization.
    pub fn unrestricted() -> Self {
        Self { unrestricted: true, ..Self::default() }
    }

    /// The user as a resource of this server (`Type`, `id`): a relative `fhirUser`, or an
    /// absolute one under `base_url`. A user of another server is none of this server's.
    pub fn user(&self, base_url: &str) -> Option<(String, String)> {
        let claim = self.fhir_user.as_deref()?;
        let local = match claim.strip_prefix(base_url) {
            Some(rest) => rest.strip_prefix('/')?,
            None if claim.contains("://") => return None,
            None => claim,
        };
        match local.split('/').collect::<Vec<_>>().as_slice() {
            [ty, id] if ty.starts_with(|c: char| c.is_ascii_uppercase()) && !id.is_empty() => {
                Some(((*ty).to_owned(), (*id).to_owned()))
            }
            _ => None,
        }
    }

    /// Whether the token acts for a system rather than a user (only `system/` scopes).
    pub fn is_system(&self) -> bool {
        !self.scopes.is_empty() && self.scopes.iter().all(|s| s.context == Context::System)
    }

    /// What this principal may do with `perm` on resources of type `ty`.
    pub fn access(&self, ty: &str, perm: Perm) -> Access {
        if self.unrestricted {
            return Access::Full;
        }
        let mut confined = false;
        for scope in self.scopes.iter().filter(|s| s.covers(ty, perm)) {
            match scope.context {
                Context::System | Context::User => return Access::Full,
                Context::Patient => confined = true,
            }
        }
        if !confined {
            return Access::Denied;
        }
        match (compartment_params(ty), &self.patient) {
            // Not patient data: not confined.
            (None, _) => Access::Full,
            (Some(params), Some(patient)) => Access::Compartment(Confinement { patient: patient.clone(), params }),
            // A patient scope without a patient to confine to grants nothing.
            (Some(_), None) => Access::Denied,
        }
    }

    /// Who the caller is, for audit and logs: the token subject, else the client.
    pub fn who(&self) -> Option<&str> {
        self.subject.as_deref().or(self.client_id.as_deref())
    }
}

/// The search parameters that put a resource of type `ty` in a Patient's compartment; `None`
/// when no resource of the type is ever in one (the type is not patient data).
pub fn compartment_params(ty: &str) -> Option<&'static [String]> {
    static TABLE: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        serde_json::from_str(include_str!("../fhir/definitions/patient-compartment.json"))
            .expect("the embedded compartment definition is valid JSON")
    });
    match table.get(ty) {
        // Patient itself is in its own compartment (by id), whatever its parameters.
        Some(params) if !params.is_empty() || ty == "Patient" => Some(params.as_slice()),
        // AuditEvent: its `patient` parameter.
        None if ty == "AuditEvent" => {
            static AUDIT: OnceLock<Vec<String>> = OnceLock::new();
            Some(AUDIT.get_or_init(|| vec!["patient".to_owned()]).as_slice())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_user_names_a_resource_of_this_server_only() {
        let user = |claim: &str| {
            Principal { fhir_user: Some(claim.into()), ..Principal::default() }.user("https://fhir.example/fhir")
        };
        assert_eq!(user("Practitioner/p1"), Some(("Practitioner".into(), "p1".into())));
        assert_eq!(
            user("https://fhir.example/fhir/PractitionerRole/r-2"),
            Some(("PractitionerRole".into(), "r-2".into()))
        );
        assert_eq!(user("https://other-ehr.example/fhir/Practitioner/p1"), None);
        assert_eq!(user("p1"), None);
    }

    #[test]
    fn patient_apps_never_reach_subscriptions_or_the_audit_trail() {
        let scope = |text: &str| Scope::parse(text).unwrap();
        assert!(!scope("patient/Subscription.cruds").covers("Subscription", Perm::Read));
        assert!(!scope("user/*.cruds").covers("Subscription", Perm::Create));
        assert!(scope("user/Subscription.cruds").covers("Subscription", Perm::Create));
        assert!(!scope("system/*.rs").covers("AuditEvent", Perm::Search));
    }

    fn principal(scopes: &str, patient: Option<&str>) -> Principal {
        Principal {
            scopes: scopes.split(' ').filter_map(Scope::parse).collect(),
            patient: patient.map(str::to_owned),
            ..Principal::default()
        }
    }

    #[test]
    fn parses_v1_and_v2_scopes() {
        assert_eq!(Scope::parse("patient/Observation.rs").map(|s| s.perms), Some(2 | 16));
        assert_eq!(Scope::parse("user/*.cruds").map(|s| s.perms), Some(31));
        assert_eq!(Scope::parse("system/Patient.read").map(|s| s.perms), Some(2 | 16));
        assert_eq!(Scope::parse("user/CarePlan.write").map(|s| s.perms), Some(1 | 4 | 8));
        assert_eq!(Scope::parse("patient/*.*").map(|s| s.perms), Some(31));
        for bad in [
            "openid",
            "launch/patient",
            "user/Patient.sr",
            "user/Patient.rr",
            "user/.r",
            "x/Patient.r",
            "user/Patient.rs?category=x",
        ] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn decides_access_per_type_and_interaction() {
        let p = principal("patient/CarePlan.rs patient/Practitioner.r user/Goal.c openid", Some("p1"));
        assert!(matches!(p.access("CarePlan", Perm::Read), Access::Compartment(c) if c.patient == "p1"));
        assert_eq!(p.access("CarePlan", Perm::Update), Access::Denied);
        assert_eq!(p.access("Practitioner", Perm::Read), Access::Full, "not patient data");
        assert_eq!(p.access("Goal", Perm::Create), Access::Full);
        assert_eq!(p.access("Goal", Perm::Read), Access::Denied);
        let no_patient = principal("patient/CarePlan.rs", None);
        assert_eq!(no_patient.access("CarePlan", Perm::Read), Access::Denied);
        let wildcard = principal("system/*.cruds", None);
        assert_eq!(wildcard.access("Task", Perm::Delete), Access::Full);
        assert_eq!(wildcard.access("AuditEvent", Perm::Search), Access::Denied, "audit needs its own scope");
        assert_eq!(principal("system/AuditEvent.rs", None).access("AuditEvent", Perm::Search), Access::Full);
        assert_eq!(Principal::unrestricted().access("AuditEvent", Perm::Search), Access::Full);
    }
}
