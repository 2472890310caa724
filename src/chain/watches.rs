//! The scripts the follower and the mempool watcher match outputs against, loaded from the
//! `addresses` projection and refreshed incrementally by position.

use std::collections::HashMap;

use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use futures::TryStreamExt;
use sqlx::PgConnection;

use super::mempool_index::script_key;
use crate::domain::ledger::{FoundOutput, Watch};
use crate::domain::tracked::inputs_of;
use crate::domain::Sats;

#[derive(Default)]
pub struct Watches {
    scripts: HashMap<ScriptBuf, Watch>,
    /// Position of the last `address.watched` folded in.
    position: i64,
    /// Keys of scripts added since [`Watches::take_added`] was last called.
    added: Vec<u64>,
}

impl Watches {
    /// Loads addresses watched since the last refresh (by whoever refreshed: the block
    /// observation under the log lock, or the mempool watcher); their scripts' keys wait
    /// in [`Watches::take_added`] for the mempool index. Rows are streamed into the map
    /// (sized up front), never held all at once: the first load of a million scripts would
    /// otherwise hold the rows and a growing table together.
    pub async fn refresh(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let new = sqlx::query_scalar!(
            "SELECT count(*) FROM addresses WHERE position > $1",
            self.position
        )
        .fetch_one(&mut *conn)
        .await?
        .unwrap_or(0);
        if new == 0 {
            return Ok(());
        }
        self.scripts.reserve(new as usize);
        let mut rows = sqlx::query!(
            "SELECT a.address, a.account_id, a.script_pubkey, a.position, acc.credit_confirmations
             FROM addresses a JOIN accounts acc USING (account_id)
             WHERE a.position > $1 ORDER BY a.position",
            self.position
        )
        .fetch(&mut *conn);
        self.added.reserve(new as usize);
        while let Some(r) = rows.try_next().await? {
            self.position = r.position;
            let watch = Watch {
                account_id: r.account_id,
                address: r.address,
                credit_confirmations: r.credit_confirmations as u32,
            };
            let script = ScriptBuf::from_bytes(r.script_pubkey);
            self.added.push(script_key(&script));
            self.scripts.insert(script, watch);
        }
        Ok(())
    }

    /// The keys of the scripts watched since the last call: what the mempool index must
    /// be matched against.
    pub fn take_added(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.added)
    }

    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// The outputs of `tx` paying watched scripts. The txid is computed only on a match.
    pub fn scan(&self, tx: &Transaction, found: &mut Vec<FoundOutput>) {
        let mut txid: Option<Txid> = None;
        for (vout, out) in tx.output.iter().enumerate() {
            if let Some(watch) = self.scripts.get(out.script_pubkey.as_script()) {
                let txid = *txid.get_or_insert_with(|| tx.compute_txid());
                found.push(FoundOutput {
                    outpoint: OutPoint::new(txid, vout as u32),
                    value: Sats::from(out.value),
                    watch: watch.clone(),
                    inputs: inputs_of(tx),
                });
            }
        }
    }
}
