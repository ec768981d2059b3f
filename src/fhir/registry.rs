//! The resource types Liaison serves and what it supports for each: the single table that drives
//! routing, validation, the CapabilityStatement and (with the search issue) indexing.
//!
//! Adding a resource type is one line in [`SUPPORTED_TYPES`] (and in the extractor's list, to
//! extract its search parameters); its structure and search parameters come from the R4
//! definitions.

use super::definitions::Definitions;
use super::search::SearchParams;

/// The resource types this server holds, in CapabilityStatement order.
pub const SUPPORTED_TYPES: &[&str] = &[
    "CarePlan",
    "CareTeam",
    "Condition",
    "Encounter",
    "Goal",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "QuestionnaireResponse",
    "ServiceRequest",
    "Task",
];

/// The RESTful interactions supported on every type (CapabilityStatement.rest.resource.interaction).
pub const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"];

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
        Self { definitions, search: SearchParams::r4(SUPPORTED_TYPES) }
    }

    /// The supported type named `name`, if any.
    pub fn resource_type(&self, name: &str) -> Option<ResourceType> {
        SUPPORTED_TYPES.iter().find(|t| **t == name).map(|t| ResourceType(t))
    }

    /// All supported types.
    pub fn types(&self) -> impl Iterator<Item = ResourceType> {
        SUPPORTED_TYPES.iter().map(|t| ResourceType(t))
    }
}
