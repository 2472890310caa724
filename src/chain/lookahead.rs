//! The look-ahead window of accounts with a descriptor: their derived addresses are watched
//! `lookahead` indexes past the highest one handed out or paid, so payments to addresses
//! handed out elsewhere are caught. The window only grows, and only by `address.watched`
//! events, so the watched set stays a function of the log.

use std::collections::BTreeMap;

use bitcoin::Network;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::descriptor::AccountDescriptor;
use crate::domain::events::{self, NewEvent};

/// `address.watched` events for indexes `watched_to..need` of one account, chained on its
/// stream from `version`; returns them and the stream's new version.
pub fn window_events(
    account_id: Uuid,
    descriptor: &AccountDescriptor,
    watched_to: i32,
    need: i32,
    mut version: i32,
    metadata: &Value,
) -> Result<(Vec<NewEvent>, i32), String> {
    let mut out = Vec::new();
    for index in watched_to.max(0)..need {
        let d = descriptor.derive(index as u32)?;
        out.push(NewEvent {
            stream: events::account_stream(account_id),
            expected_version: Some(version),
            kind: events::ADDRESS_WATCHED,
            data: json!({
                "account_id": account_id, "address": d.address,
                "script_pubkey": hex::encode(d.script_pubkey.as_bytes()), "index": index,
            }),
            metadata: metadata.clone(),
        });
        version += 1;
    }
    Ok((out, version))
}

/// For a batch about to be appended (inside the appending transaction, after the log
/// lock): the `address.watched` events that keep each derived account's window
/// `lookahead` past the highest index its new deposits pay.
pub async fn extend_for_deposits(
    conn: &mut PgConnection,
    batch: &[NewEvent],
    network: Network,
) -> anyhow::Result<Vec<NewEvent>> {
    let paid: Vec<String> = batch
        .iter()
        .filter(|e| e.kind == events::DEPOSIT_SEEN)
        .filter_map(|e| e.data["address"].as_str().map(String::from))
        .collect();
    if paid.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query!(
        r#"SELECT a.account_id, max(a.derivation_index) AS "index!", acc.descriptor AS "descriptor!",
                  acc.lookahead AS "lookahead!", acc.watched_to, acc.stream_version
           FROM addresses a JOIN accounts acc USING (account_id)
           WHERE a.address = ANY($1) AND a.derivation_index IS NOT NULL AND acc.descriptor IS NOT NULL
           GROUP BY a.account_id, acc.descriptor, acc.lookahead, acc.watched_to, acc.stream_version"#,
        &paid
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    let mut by_account: BTreeMap<Uuid, _> = BTreeMap::new();
    for r in rows {
        by_account.insert(r.account_id, r);
    }
    let metadata = json!({"source": "lookahead"});
    for (id, r) in by_account {
        let need = r.index + 1 + r.lookahead;
        if need <= r.watched_to {
            continue;
        }
        let descriptor = AccountDescriptor::parse(&r.descriptor, network)
            .map_err(|e| anyhow::anyhow!("account {id}: stored descriptor: {e}"))?;
        let (events, _) = window_events(
            id,
            &descriptor,
            r.watched_to,
            need,
            r.stream_version,
            &metadata,
        )
        .map_err(anyhow::Error::msg)?;
        tracing::info!(account_id = %id, from = r.watched_to, to = need, "look-ahead window extended");
        out.extend(events);
    }
    Ok(out)
}
