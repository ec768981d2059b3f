//! Bundles Liaison returns (bundle.html). Stored resources are embedded as raw JSON, so a
//! Bundle costs no re-parsing of the resources it carries.

use serde::Serialize;
use serde_json::value::RawValue;

/// A Bundle under construction.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle<'a> {
    resource_type: &'static str,
    id: String,
    meta: BundleMeta,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<Entry<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleMeta {
    last_updated: String,
}

/// `Bundle.link`: `self`, `next`, …
#[derive(Debug, Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

/// One `Bundle.entry`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<'a> {
    pub full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<EntrySearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<EntryResponse>,
}

/// `Bundle.entry.search`: why the entry is in a searchset (match, include or outcome).
#[derive(Debug, Serialize)]
pub struct EntrySearch {
    pub mode: &'static str,
}

impl<'a> Entry<'a> {
    /// A searchset entry.
    pub fn search(full_url: String, resource: &'a RawValue, mode: &'static str) -> Self {
        Self { full_url, resource: Some(resource), search: Some(EntrySearch { mode }), request: None, response: None }
    }
}

/// `Bundle.entry.request`.
#[derive(Debug, Serialize)]
pub struct EntryRequest {
    pub method: &'static str,
    pub url: String,
}

/// `Bundle.entry.response`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryResponse {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl<'a> Bundle<'a> {
    /// An empty Bundle of `bundle_type` (`history`, `searchset`, …).
    pub fn new(bundle_type: &'static str) -> Self {
        Self {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: BundleMeta { last_updated: super::format_instant(super::now_millis()) },
            bundle_type,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    pub fn total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }

    pub fn link(mut self, relation: &'static str, url: String) -> Self {
        self.link.push(Link { relation, url });
        self
    }

    pub fn push(&mut self, entry: Entry<'a>) {
        self.entry.push(entry);
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Bundle always serialises")
    }
}
