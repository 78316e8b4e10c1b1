//! Request extractors whose rejections speak [`AppError`].

use axum::extract::{FromRequest, Request};
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
