//! Bearer tokens: OAuth2 access tokens as JWTs, signed RS256 or ES256 by the configured issuer,
//! for the configured audience, checked against keys from a JWKS (a file, or an `http(s)` URL),
//! cached and refreshed: on a schedule, and when a token names a key the cache does not hold
//! (key rotation), at most every [`MIN_REFETCH`].

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::labels::Clearance;
use super::{Principal, Scope};

/// The fastest the keys are fetched again because a token named an unknown key (or the
/// refresh interval, when that is shorter).
const MIN_REFETCH: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// Where the issuer's public keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    /// `http://…` or `https://…` is a URL (plain http only on a loopback address); anything
    /// else a file path.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("https://") || text.starts_with("http://") {
            Self::Url(text.to_owned())
        } else {
            Self::File(PathBuf::from(text))
        }
    }
}

/// Settings of token validation.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    /// How long fetched keys are used before they are fetched again.
    pub refresh: Duration,
}

/// Why a token was refused (the text goes into `WWW-Authenticate`; it never quotes the token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not RS256 or ES256")]
    Algorithm,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another issuer or audience")]
    WrongParty,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the issuer's keys could not be loaded")]
    KeysUnavailable,
}

#[derive(Debug, thiserror::Error)]
#[error("loading the JWKS from {source_name}: {reason}")]
pub struct JwksError {
    source_name: String,
    reason: String,
}

struct Keys {
    set: Vec<(Option<String>, Algorithm, DecodingKey)>,
    fetched: Instant,
}

/// Validates bearer tokens.
pub struct Authenticator {
    settings: AuthSettings,
    keys: RwLock<Keys>,
    /// Serialises fetches, so that a burst of requests after expiry fetches once.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("settings", &self.settings).finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    scope: Option<String>,
    /// Some issuers send scopes as an array.
    scp: Option<Vec<String>>,
    client_id: Option<String>,
    azp: Option<String>,
    patient: Option<String>,
    /// SMART's user: `Practitioner/123`, or an absolute URL ending in it.
    #[serde(rename = "fhirUser")]
    fhir_user: Option<String>,
    /// Security-label clearance (`R`, `V`, sensitivity codes such as `PSYTHPN`, and `BTG`):
    /// an array, or a space-separated string.
    clearance: Option<Words>,
    /// Purposes of use (v3 ActReason codes such as `TREAT`, `HPAYMT`); when absent, any
    /// purpose: Consents that deny for a purpose apply, those that permit for one do not.
    purpose_of_use: Option<Words>,
}

/// A claim given as an array of strings or as one space-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Words {
    List(Vec<String>),
    Text(String),
}

impl Words {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::List(list) => list,
            Self::Text(text) => text.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

impl Authenticator {
    /// Loads the keys once; fails when they cannot be had at start-up.
    pub async fn new(settings: AuthSettings) -> Result<Self, JwksError> {
        let set = fetch(&settings.jwks).await?;
        Ok(Self {
            settings,
            keys: RwLock::new(Keys { set, fetched: Instant::now() }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Validates `token` and returns its principal.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(TokenError::Algorithm);
        }
        let stale = self.keys.read().map(|k| k.fetched.elapsed() > self.settings.refresh).unwrap_or(true);
        if stale {
            self.refetch(Duration::ZERO).await;
        }
        let key = match self.key(header.kid.as_deref(), header.alg) {
            Some(key) => key,
            None => {
                // Perhaps the issuer rotated its keys.
                self.refetch(MIN_REFETCH.min(self.settings.refresh)).await;
                self.key(header.kid.as_deref(), header.alg).ok_or(TokenError::UnknownKey)?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => TokenError::Signature,
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer | K::InvalidAudience => TokenError::WrongParty,
                K::MissingRequiredClaim(_) => TokenError::MissingClaim,
                _ => TokenError::Malformed,
            }
        })?;
        let claims = data.claims;
        let scopes = match (claims.scope, claims.scp) {
            (Some(text), _) => text.split_whitespace().filter_map(Scope::parse).collect(),
            (None, Some(list)) => list.iter().filter_map(|s| Scope::parse(s)).collect(),
            (None, None) => Vec::new(),
        };
        Ok(Principal {
            subject: claims.sub,
            client_id: claims.client_id.or(claims.azp),
            patient: claims.patient,
            fhir_user: claims.fhir_user,
            scopes,
            clearance: Clearance::new(claims.clearance.map(Words::into_vec).unwrap_or_default()),
            purposes: claims.purpose_of_use.map(Words::into_vec).unwrap_or_default(),
            ..Principal::default()
        })
    }

    fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().ok()?;
        let usable = |(_, a, _): &&(Option<String>, Algorithm, DecodingKey)| *a == alg;
        let found = match kid {
            Some(kid) => keys.set.iter().filter(usable).find(|(k, _, _)| k.as_deref() == Some(kid)),
            // Without a key id, only an unambiguous key will do.
            None => {
                let mut candidates = keys.set.iter().filter(usable);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        };
        found.map(|(_, _, key)| key.clone())
    }

    /// Fetches the keys again unless they were fetched less than `min_age` ago; a failed fetch
    /// keeps the keys there are.
    async fn refetch(&self, min_age: Duration) {
        let _guard = self.fetching.lock().await;
        let age = self.keys.read().map(|k| k.fetched.elapsed()).unwrap_or(Duration::MAX);
        if age < min_age || (min_age.is_zero() && age <= self.settings.refresh) {
            return;
        }
        match fetch(&self.settings.jwks).await {
            Ok(set) => {
                if let Ok(mut keys) = self.keys.write() {
                    *keys = Keys { set, fetched: Instant::now() };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the issuer's keys failed; keeping the previous ones");
                if let Ok(mut keys) = self.keys.write() {
                    // Try again after MIN_REFETCH, not at once on every request.
                    let back = self.settings.refresh.saturating_sub(MIN_REFETCH);
                    keys.fetched = Instant::now().checked_sub(back).unwrap_or_else(Instant::now);
                }
            }
        }
    }
}

/// Reads the JWKS and keeps its RS256 and ES256 signing keys.
async fn fetch(source: &JwksSource) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, JwksError> {
    let (name, text) = match source {
        JwksSource::File(path) => {
            let name = path.display().to_string();
            let text = tokio::fs::read(path)
                .await
                .map_err(|e| JwksError { source_name: name.clone(), reason: e.to_string() })?;
            (name, text)
        }
        JwksSource::Url(url) => {
            (url.clone(), get(url).await.map_err(|reason| JwksError { source_name: url.clone(), reason })?)
        }
    };
    let error = |reason: String| JwksError { source_name: name.clone(), reason };
    let set: JwkSet = serde_json::from_slice(&text).map_err(|e| error(format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        use jsonwebtoken::jwk::AlgorithmParameters as P;
        let alg = match &jwk.algorithm {
            P::RSA(_) => Algorithm::RS256,
            P::EllipticCurve(ec) if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 => Algorithm::ES256,
            _ => continue,
        };
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
    }
    if keys.is_empty() {
        return Err(error("no RS256 or ES256 signing key in the set".into()));
    }
    Ok(keys)
}

/// GET `url` (http or https, with the system's trusted roots), within 10 s and 1 MiB.
async fn get(url: &str) -> Result<Vec<u8>, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<hyper::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let uri: hyper::Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
    // Keys fetched in the clear could be swapped by anyone on the path: plain HTTP only to this
    // machine (a local identity provider, or a test).
    let loopback = matches!(uri.host(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if uri.scheme_str() != Some("https") && !loopback {
        return Err("the JWKS must be fetched over https (plain http only from a loopback address)".into());
    }
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), 1 << 20);
    let bytes = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_fetched_in_the_clear_only_from_this_machine() {
        let refused = get("http://idp.hospital.example/jwks").await.unwrap_err();
        assert!(refused.contains("https"), "{refused}");
        // Loopback passes the check (and then finds nothing listening on port 9).
        let unreachable = get("http://127.0.0.1:9/jwks").await.unwrap_err();
        assert!(!unreachable.contains("https"), "{unreachable}");
    }
}
