//! Shared application state: immutable after start-up, so any replica can serve any request.

use std::ops::Deref;
use std::sync::Arc;

use crate::fhir::registry::Registry;
use crate::store::Store;

/// Cheap to clone; handlers take it as `State<AppState>`.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// What every handler may use.
#[derive(Debug)]
pub struct Inner {
    pub store: Store,
    pub registry: Registry,
    /// Public base URL of the FHIR API, without a trailing slash.
    pub base_url: String,
}

impl AppState {
    pub fn new(store: Store, registry: Registry, base_url: String) -> Self {
        Self(Arc::new(Inner { store, registry, base_url }))
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
