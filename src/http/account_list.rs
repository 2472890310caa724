//! `GET /v1/accounts?after=&limit=`: every account with its balance, oldest first, a page
//! at a time (keyset: `after` is the last page's `next_after`). For the dashboard and for
//! reconciliation scripts that walk all accounts.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Query;
use super::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Accounts created after this (the previous page's `next_after`; default 0).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AccountSummary {
    id: Uuid,
    label: String,
    credit_confirmations: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    descriptor: Option<String>,
    addresses: i64,
    credited_sats: i64,
    pending_sats: i64,
    unconfirmed_sats: i64,
}

#[derive(Serialize, ToSchema)]
pub struct AccountPage {
    accounts: Vec<AccountSummary>,
    /// Pass as `after` for the next page; null when this was the last.
    next_after: Option<i64>,
}

#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(ListQuery),
    responses((status = 200, body = AccountPage)), security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<AccountPage>, ApiError> {
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if after < 0 {
        return Err(ApiError::bad_request(
            "invalid_after",
            "after: must be 0 or more",
        ));
    }
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit: must be between 1 and 1000",
        ));
    }
    let rows = sqlx::query!(
        r#"SELECT a.account_id, a.label, a.credit_confirmations, a.descriptor, a.created_position,
                  (SELECT count(*) FROM addresses d WHERE d.account_id = a.account_id) AS "addresses!",
                  COALESCE(b.credited_sats, 0) AS "credited_sats!",
                  COALESCE(b.pending_sats, 0) AS "pending_sats!",
                  COALESCE(b.unconfirmed_sats, 0) AS "unconfirmed_sats!"
           FROM accounts a LEFT JOIN balances b USING (account_id)
           WHERE a.created_position > $1
           ORDER BY a.created_position LIMIT $2"#,
        after,
        limit + 1
    )
    .fetch_all(&s.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let mut next_after = None;
    let accounts = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| {
            next_after = Some(r.created_position);
            AccountSummary {
                id: r.account_id,
                label: r.label,
                credit_confirmations: r.credit_confirmations,
                descriptor: r.descriptor,
                addresses: r.addresses,
                credited_sats: r.credited_sats,
                pending_sats: r.pending_sats,
                unconfirmed_sats: r.unconfirmed_sats,
            }
        })
        .collect();
    Ok(axum::Json(AccountPage {
        accounts,
        next_after: next_after.filter(|_| more),
    }))
}
