//! The rebuild's checks: rebuilt balances against an independent aggregate over the log,
//! and each rebuilt table against the live one (digests, differing keys).

use sqlx::PgConnection;
use uuid::Uuid;

use super::{exists, SCHEMA, SHOW_KEYS};

/// A live table compared with its rebuilt twin.
#[derive(Debug)]
pub struct TableDiff {
    pub table: &'static str,
    /// `None` when the live table is missing.
    pub live_digest: Option<String>,
    pub rebuilt_digest: String,
    /// Keys of rows that differ (present on one side only, or different), the first few.
    pub keys: Vec<String>,
    pub more: bool,
}

impl TableDiff {
    pub fn identical(&self) -> bool {
        self.live_digest.as_deref() == Some(self.rebuilt_digest.as_str())
    }
}

/// Rebuilt balances (at `position`) against an independent aggregate over the log: for
/// each deposit and withdrawal stream its last event's state, summed per account by the
/// documented rules (withdrawals not dropped or replaced debit `credited`).
pub(super) async fn check_balances(
    conn: &mut PgConnection,
    position: i64,
) -> anyhow::Result<(Vec<String>, i64)> {
    let rows: Vec<(Uuid, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        r#"WITH last AS (
               SELECT DISTINCT ON (stream) data FROM public.events
               WHERE position <= $1 AND stream LIKE 'deposit-%'
               ORDER BY stream, stream_version DESC),
           agg_d AS (
               SELECT (data->>'account_id')::uuid AS account_id,
                 coalesce(sum((data->>'amount_sats')::bigint) FILTER (WHERE (data->>'credited')::boolean), 0) AS credited,
                 coalesce(sum((data->>'amount_sats')::bigint) FILTER (WHERE NOT (data->>'credited')::boolean
                     AND (data->>'confirmations')::int >= 1), 0) AS pending,
                 coalesce(sum((data->>'amount_sats')::bigint) FILTER (WHERE (data->>'confirmations')::int = 0
                     AND data->>'status' IN ('mempool', 'reorged')), 0) AS unconfirmed
               FROM last GROUP BY 1),
           last_w AS (
               SELECT DISTINCT ON (stream) data FROM public.events
               WHERE position <= $1 AND stream LIKE 'withdrawal-%'
               ORDER BY stream, stream_version DESC),
           agg_w AS (
               SELECT (data->>'account_id')::uuid AS account_id,
                 coalesce(sum((data->>'amount_sats')::bigint)
                     FILTER (WHERE data->>'status' NOT IN ('dropped', 'replaced')), 0) AS spent
               FROM last_w GROUP BY 1),
           agg AS (
               SELECT coalesce(d.account_id, w.account_id) AS account_id,
                      coalesce(d.credited, 0) - coalesce(w.spent, 0) AS credited,
                      coalesce(d.pending, 0) AS pending, coalesce(d.unconfirmed, 0) AS unconfirmed
               FROM agg_d d FULL JOIN agg_w w ON d.account_id = w.account_id)
           SELECT coalesce(a.account_id, b.account_id),
                  coalesce(a.credited, 0)::bigint, coalesce(a.pending, 0)::bigint, coalesce(a.unconfirmed, 0)::bigint,
                  coalesce(b.credited_sats, 0), coalesce(b.pending_sats, 0), coalesce(b.unconfirmed_sats, 0)
           FROM agg a FULL JOIN {SCHEMA}.balances b ON a.account_id = b.account_id"#
    ))
    .bind(position)
    .fetch_all(&mut *conn)
    .await?;
    let accounts = rows.len() as i64;
    let mismatches = rows
        .into_iter()
        .filter(|(_, a, b, c, x, y, z)| (a, b, c) != (x, y, z))
        .map(|(id, a, b, c, x, y, z)| {
            format!(
                "{id}: log says credited/pending/unconfirmed {a}/{b}/{c} sats, rebuilt {x}/{y}/{z}"
            )
        })
        .collect();
    Ok((mismatches, accounts))
}

/// Digests of the live and rebuilt table (rows as text, ordered by key) and the keys of
/// the rows that differ.
pub(super) async fn diff(
    conn: &mut PgConnection,
    table: &'static str,
    keys: &[&str],
) -> anyhow::Result<TableDiff> {
    let order = keys.join(", ");
    let digest = |schema: &str| {
        format!(
            "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {order}), '')) FROM {schema}.{table} t"
        )
    };
    let rebuilt_digest: String = sqlx::query_scalar(&digest(SCHEMA))
        .fetch_one(&mut *conn)
        .await?;
    if !exists(&mut *conn, "public", table).await? {
        return Ok(TableDiff {
            table,
            live_digest: None,
            rebuilt_digest,
            keys: Vec::new(),
            more: false,
        });
    }
    let live_digest: String = sqlx::query_scalar(&digest("public"))
        .fetch_one(&mut *conn)
        .await?;
    let mut differing = Vec::new();
    if live_digest != rebuilt_digest {
        let key_text = keys
            .iter()
            .map(|k| format!("coalesce(a.{k}, b.{k})::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let join = keys
            .iter()
            .map(|k| format!("a.{k} = b.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        differing = sqlx::query_scalar(&format!(
            "SELECT concat_ws(':', {key_text}) FROM public.{table} a FULL JOIN {SCHEMA}.{table} b ON {join}
             WHERE a::text IS DISTINCT FROM b::text ORDER BY 1 LIMIT {}",
            SHOW_KEYS + 1
        ))
        .fetch_all(&mut *conn)
        .await?;
    }
    let more = differing.len() > SHOW_KEYS;
    differing.truncate(SHOW_KEYS);
    Ok(TableDiff {
        table,
        live_digest: Some(live_digest),
        rebuilt_digest,
        keys: differing,
        more,
    })
}
