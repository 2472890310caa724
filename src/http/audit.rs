//! `GET /v1/audit/export?format=jsonl|csv&from=&to=`: the log with its hash chain, streamed
//! a page at a time (memory does not grow with the log), ending with the export's trailer.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::Query;
use super::reads::Reader;
use super::AppState;
use crate::audit::{self, Format};
use crate::domain::stream::Position;
use crate::store;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `jsonl` (default) or `csv`.
    #[param(value_type = Option<String>)]
    format: Option<Format>,
    /// First position (default 1).
    #[param(minimum = 1)]
    from: Option<i64>,
    /// Last position, not below `from` (default: the head when the request arrives).
    #[param(minimum = 1)]
    to: Option<i64>,
}

#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", params(ExportQuery),
    responses((status = 200, description = "JSON Lines or CSV: position, id, stream, stream_version, type, schema_version, recorded_at, data, metadata, prev_hash, hash"),
              (status = 400)),
    security(("bearer" = [])))]
pub async fn export(
    State(s): State<AppState>,
    Reader(mut read): Reader,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.unwrap_or(Format::Jsonl);
    let from = q.from.unwrap_or(1);
    if from < 1 {
        return Err(ApiError::bad_request(
            "invalid_from",
            "from: must be a position (1 or more)",
        ));
    }
    let to = match q.to {
        Some(t) if t < from => {
            return Err(ApiError::bad_request(
                "invalid_to",
                "to: must not be below from",
            ))
        }
        Some(t) => {
            // A replica that has not reached `to` yet would end the export short of it.
            if t > read.known_head().0 {
                read = s.read_pool.reaching(Position(t)).await;
            }
            t
        }
        None => store::head(read.pool()).await?.0,
    };
    let pool = read.pool().clone();
    let export = audit::Export::new(format, from, to);
    let body = futures::stream::unfold(Some((export, pool)), |state| async move {
        let (mut export, pool) = state?;
        match export.next_chunk(&pool).await {
            Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), Some((export, pool)))),
            Ok(None) => None,
            Err(e) => {
                // The status is sent already: end the body early, without the trailer;
                // verify-log reports the file truncated.
                tracing::error!(error = %e, "audit export failed mid-stream");
                Some((Err(std::io::Error::other("database error")), None))
            }
        }
    });
    let filename = match format {
        Format::Jsonl => "chainledger-audit.jsonl",
        Format::Csv => "chainledger-audit.csv",
    };
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
