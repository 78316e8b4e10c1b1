//! Request extractors whose rejections speak [`AppError`].

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// `Json<T>` whose failures become 400 (syntax), 413 (too large), 415 (no
/// JSON content type) or 422 (wrong shape) in the API's error format.
#[derive(Debug, Clone)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// The `{id}` of a stream route. A segment that cannot be decoded (say,
/// percent-encoded bytes that are not UTF-8) names no stream: 404 in the
/// API's error format rather than axum's plain-text 400.
#[derive(Debug, Clone)]
pub struct StreamPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(_) => {
                let raw = parts.uri.path().split('/').nth(2).unwrap_or_default();
                Err(AppError::UnknownStream(String::from_utf8_lossy(raw.as_bytes()).into_owned()))
            }
        }
    }
}
