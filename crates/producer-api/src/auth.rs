//! API keys: who is calling, compared in constant time.
//!
//! A caller is identified by the SHA-256 fingerprint of its key. Stream
//! ownership is recorded with the fingerprint, never the key, so the
//! ownership topic can be read by operators without leaking credentials.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::AppError;
use crate::AppState;

/// The configured keys, held as SHA-256 digests: every comparison is of
/// 32 bytes, so neither the content nor the length of a key shows in the
/// time a check takes.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<Vec<([u8; 32], Arc<str>)>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// Keys as configured; blank ones are ignored.
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let keys = keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .map(|k| {
                let fingerprint: Arc<str> = fingerprint(&k).into();
                (digest(&k), fingerprint)
            })
            .collect();
        Self { keys: Arc::new(keys) }
    }

    /// The fingerprint of `presented` if it is a configured key. Every
    /// configured key is compared, in constant time, so the time taken does
    /// not tell which key (or how much of one) matched.
    pub fn check(&self, presented: &str) -> Option<Arc<str>> {
        let presented = digest(presented);
        let mut found = None;
        for (key, fingerprint) in self.keys.iter() {
            if bool::from(key.ct_eq(&presented)) {
                found = Some(fingerprint.clone());
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::new().chain_update(b"streamkit-api-key:").chain_update(key.as_bytes()).finalize().into()
}

/// Hex SHA-256 of an API key, domain-separated so the value is useless as a
/// generic hash lookup.
pub fn fingerprint(key: &str) -> String {
    digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

/// An authenticated caller: the handler argument that enforces auth.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Fingerprint of the caller's key; owners of streams are recorded by it.
    pub owner: Arc<str>,
}

/// The key a request presents: `X-API-Key`, `Authorization: Bearer`, or,
/// on a GET only (a browser's WebSocket or EventSource, which cannot set
/// headers), `?api_key=`: a write never takes its key from a URL, which
/// proxies and access logs keep.
/// An `Authorization` header that is not a Bearer token presents no key,
/// even beside a good `X-API-Key`: a malformed credential is refused, not
/// ignored.
fn presented_key(parts: &Parts) -> Option<Cow<'_, str>> {
    let bearer = match parts.headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
            let token = token.trim();
            if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
                return None;
            }
            Some(token)
        }
        None => None,
    };
    if let Some(value) = parts.headers.get("x-api-key") {
        return value.to_str().ok().map(|key| Cow::Borrowed(key.trim()));
    }
    if let Some(token) = bearer {
        return Some(Cow::Borrowed(token));
    }
    if parts.method != axum::http::Method::GET {
        return None;
    }
    // Percent-decoded, as a page's encodeURIComponent wrote it; a '+' stays
    // a '+' (not a form's space), so a key sent unencoded still matches.
    let raw = parts.uri.query()?.split('&').find_map(|pair| pair.strip_prefix("api_key="))?;
    percent_encoding::percent_decode_str(raw).decode_utf8().ok()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let key = presented_key(parts).ok_or(AppError::Unauthorized)?;
        let owner = state.keys.check(&key).ok_or(AppError::Unauthorized)?;
        Ok(Caller { owner })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(builder: axum::http::request::Builder) -> Parts {
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn accepts_configured_keys_only() {
        let keys = ApiKeys::new(["alpha".to_string(), "beta".to_string(), String::new()]);
        assert_eq!(keys.check("alpha").as_deref(), Some(fingerprint("alpha").as_str()));
        assert!(keys.check("beta").is_some());
        assert!(keys.check("alph").is_none());
        assert!(keys.check("").is_none());
        assert_ne!(fingerprint("alpha"), fingerprint("beta"));
        assert_eq!(fingerprint("alpha").len(), 64);
    }

    #[test]
    fn key_sources() {
        let p = parts(Request::builder().header("X-API-Key", " k1 "));
        assert_eq!(presented_key(&p).as_deref(), Some("k1"));
        let p = parts(Request::builder().header("Authorization", "Bearer k2"));
        assert_eq!(presented_key(&p).as_deref(), Some("k2"));
        let p = parts(Request::builder().header("Authorization", "Basic k2"));
        assert_eq!(presented_key(&p), None);
        // A malformed Authorization beside a good X-API-Key is refused.
        for bad in ["zId.j)", "Basic k2", "Bearer", "Bearer  "] {
            let p = parts(Request::builder().header("X-API-Key", "k1").header("Authorization", bad));
            assert_eq!(presented_key(&p), None, "{bad:?}");
        }
        let p = parts(Request::builder().header("X-API-Key", "k1").header("Authorization", "bearer k2"));
        assert_eq!(presented_key(&p).as_deref(), Some("k1"), "X-API-Key wins over a well-formed Bearer token");
        let p = parts(Request::builder().uri("/stream/s/results?x=1&api_key=k3"));
        assert_eq!(presented_key(&p).as_deref(), Some("k3"));
        // As encodeURIComponent writes a key with reserved characters.
        let p = parts(Request::builder().uri("/stream/s/results?api_key=a%2Bb%2F%3Dc%26d%20e&x=1"));
        assert_eq!(presented_key(&p).as_deref(), Some("a+b/=c&d e"));
        let p = parts(Request::builder().uri("/stream/s/results?api_key=a+b/c"));
        assert_eq!(presented_key(&p).as_deref(), Some("a+b/c"), "an unencoded '+' is a '+'");
        assert_eq!(presented_key(&parts(Request::builder())), None);
        for method in ["POST", "DELETE", "PUT", "HEAD"] {
            let p = parts(Request::builder().method(method).uri("/stream/s/send?api_key=k3"));
            assert_eq!(presented_key(&p), None, "{method} takes no key from the URL");
        }
    }
}
