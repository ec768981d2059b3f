//! The resource types Liaison serves and what it supports for each: the single table that drives
//! routing, validation, the CapabilityStatement and (with the search issue) indexing.
//!
//! Adding a resource type is one line in [`SUPPORTED_TYPES`] (and in the extractor's list, to
//! extract its search parameters); its structure and search parameters come from the R4
//! definitions.

use serde_json::Value;

use crate::auth::consent::ConsentRule;
use crate::auth::labels::Label;

use super::definitions::Definitions;
use super::search::index::IndexEntry;
use super::search::SearchParams;
use super::validate::LocalReference;

/// The resource types this server holds, in CapabilityStatement order.
pub const SUPPORTED_TYPES: &[&str] = &[
    "AuditEvent",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Consent",
    "Encounter",
    "Goal",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "QuestionnaireResponse",
    "ServiceRequest",
    "Subscription",
    "Task",
];

/// The RESTful interactions supported on the types clients write
/// (CapabilityStatement.rest.resource.interaction).
pub const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// Types only the server writes: the audit trail. Clients may read and search them (with a
/// scope that names them), never write them, and they have no history.
pub const SERVER_WRITTEN: &[&str] = &["AuditEvent"];

/// The interactions on server-written types.
pub const SERVER_WRITTEN_INTERACTIONS: &[&str] = &["read", "search-type"];

/// A resource type the registry knows; obtained only through [`Registry::resource_type`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceType(&'static str);

impl ResourceType {
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The supported types together with the R4 definitions they are validated against.
#[derive(Debug)]
pub struct Registry {
    pub definitions: Definitions,
    pub search: SearchParams,
}

impl Registry {
    /// The registry of the R4 definitions embedded in the binary.
    pub fn r4() -> Self {
        let definitions = Definitions::r4();
        debug_assert!(SUPPORTED_TYPES.iter().all(|t| definitions.is_resource_type(t)));
        Self { search: SearchParams::r4(&definitions, SUPPORTED_TYPES), definitions }
    }

    /// The supported type named `name`, if any.
    pub fn resource_type(&self, name: &str) -> Option<ResourceType> {
        SUPPORTED_TYPES.iter().find(|t| **t == name).map(|t| ResourceType(t))
    }

    /// What a stored resource of type `ty` brings besides its content: its search index entries,
    /// and those of its local `references` (from validation) that point at served types, which
    /// the store resolves and records. Writes and the start-up re-index both use it.
    pub fn derive(&self, ty: &str, resource: &Value, references: Vec<LocalReference>, base_url: &str) -> Derived {
        // The audit trail references what it records, but must never keep it from being deleted.
        let references = match self.server_written(ty) {
            true => Vec::new(),
            false => references.into_iter().filter(|r| self.resource_type(&r.resource_type).is_some()).collect(),
        };
        // A Consent the rules cannot express was refused when it was written.
        let consent = match (ty, resource.as_object()) {
            ("Consent", Some(consent)) => crate::auth::consent::rules_of(consent, base_url).unwrap_or_default(),
            _ => Vec::new(),
        };
        Derived {
            index: self.search.extract(&self.definitions, ty, resource, base_url),
            references,
            consent,
            labels: Vec::new(),
        }
    }

    /// Whether only the server writes resources of `ty`.
    pub fn server_written(&self, ty: &str) -> bool {
        SERVER_WRITTEN.contains(&ty)
    }

    /// The interactions clients may use on `ty`.
    pub fn interactions(&self, ty: &str) -> &'static [&'static str] {
        if self.server_written(ty) {
            SERVER_WRITTEN_INTERACTIONS
        } else {
            TYPE_INTERACTIONS
        }
    }

    /// All supported types.
    pub fn types(&self) -> impl Iterator<Item = ResourceType> {
        SUPPORTED_TYPES.iter().map(|t| ResourceType(t))
    }
}

/// What the server derives from a resource it stores: search index entries, the local
/// references to served types, a Consent's rules, and the security labels that label rules add.
#[derive(Debug, Default)]
pub struct Derived {
    pub index: Vec<IndexEntry>,
    pub references: Vec<LocalReference>,
    pub consent: Vec<ConsentRule>,
    /// Labels to add to `meta.security` as the version is stored (their index entries are in
    /// `index` already).
    pub labels: Vec<Label>,
}
