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
    pub limits: Limits,
}

/// Configured bounds on the work one request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest search page (`_count`).
    pub max_page_size: u32,
    /// With `_total=estimate`, searches count at most this many matches for `Bundle.total`.
    pub total_count_cap: i64,
    /// The most resources one conditional delete may remove (1: only single matches).
    pub max_conditional_deletes: usize,
    /// The most entries of a batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// The largest request body, in bytes (the entries of a batch are dispatched with it).
    pub max_body_bytes: usize,
}

impl AppState {
    pub fn new(store: Store, registry: Registry, base_url: String, limits: Limits) -> Self {
        Self(Arc::new(Inner { store, registry, base_url, limits }))
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
