//! Extractors whose rejections are [`ApiError`]s, so a malformed body, query or path gets
//! the same JSON error shape as everything else, and whose text is checked for what
//! PostgreSQL cannot store ([`super::text`]) before any handler sees it.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::text;

/// A JSON body: parsed, every string checked, then deserialised into `T` (a type error
/// names the field's path, as axum's `Json` does).
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(|r: JsonRejection| ApiError::from(r))?;
        text::check_json(&value)?;
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("Failed to deserialize the JSON body into the target type: {e}"),
                )
            })
    }
}

/// The query string: every name and value checked, then deserialised into `T`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(query) = parts.uri.query() {
            text::check_form(query.as_bytes())?;
        }
        let axum::extract::Query(q) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(q))
    }
}

/// Path parameters, percent-decoded and checked, then deserialised into `T`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::bad_request("invalid_path", r.body_text()))?;
        for (name, value) in &raw {
            text::check(name, value)?;
        }
        let axum::extract::Path(p) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(p))
    }
}
