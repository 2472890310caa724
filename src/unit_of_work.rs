//! The unit of work: the one way events enter the log. Every writer — the chain follower,
//! the mempool watcher, rescans, the API's commands — describes its observation as an
//! [`Observation`] and hands it to [`UnitOfWork::record`], which runs, in one database
//! transaction:
//!
//! 1. **lock** the log (`log_head`'s row): everything committed before is visible to the
//!    reads that follow, and nothing commits in between; a fenced unit of work (the chain
//!    follower's) also checks that it still holds the leader lease's epoch
//!    ([`crate::leadership`]);
//! 2. **load** what the decision needs from the projections ([`Observation::load`]);
//! 3. **decide**, purely ([`Observation::decide`], usually through
//!    [`crate::domain::ledger::Ledger`]);
//! 4. **look ahead**: derived accounts whose addresses the new deposits pay get their
//!    window extended, in the same batch;
//! 5. **append** the batch ([`store::append`]);
//! 6. **apply** it to the projections ([`projections::apply`]), and the observation's
//!    own bookkeeping ([`Observation::after_append`], e.g. a rescan's progress);
//! 7. **commit**.
//!
//! Side effects never happen here: RPC to the node and HTTP to receivers run before an
//! observation is made (blocks fetched, a withdrawal broadcast) or after it commits (the
//! dispatcher reads the log), never while the lock is held.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::domain::events::Event;
use crate::domain::stream::{EventAt, NewEvent};
use crate::leadership::Fence;
use crate::projections;
use crate::projections::read::PaidAccountsError;
use crate::store::{self, AppendError, StoredEvent};

/// One writer's observation: what it reads under the log lock and what it decides.
pub trait Observation: Send + Sized {
    /// What `load` reads for `decide`.
    type State: Send;
    /// What the writer learns besides the events (an API answer, a follower's new tip).
    type Outcome: Send;

    /// Reads, under the log lock, what the decision needs: projections and operational
    /// tables only — no RPC, no HTTP.
    fn load(
        &mut self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<Self::State, RecordError>> + Send;

    /// Pure: the events to append, and the outcome.
    fn decide(self, state: Self::State) -> Result<Decision<Self::Outcome>, RecordError>;

    /// Writes of the observation's own bookkeeping, in the same transaction, after the
    /// events are appended and folded (a rescan's progress). Default: none.
    fn after_append(
        _outcome: &mut Self::Outcome,
        _conn: &mut PgConnection,
        _appended: &[StoredEvent],
    ) -> impl Future<Output = Result<(), RecordError>> + Send {
        async { Ok(()) }
    }
}

/// What an observation decided.
pub struct Decision<T> {
    pub events: Vec<NewEvent>,
    pub outcome: T,
}

impl<T> Decision<T> {
    pub fn new(events: Vec<NewEvent>, outcome: T) -> Self {
        Decision { events, outcome }
    }
}

/// What a recorded observation appended, and its outcome.
pub struct Recorded<T> {
    pub events: Vec<StoredEvent>,
    pub outcome: T,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Another writer appended to one of the streams first: the observation saw a stale
    /// state (cannot happen under the lock unless a stream was written outside it).
    #[error("append conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The look-ahead step could not use a stored descriptor.
    #[error(transparent)]
    LookAhead(#[from] PaidAccountsError),
    /// A decision found the stored state impossible (a bug or a hand-edited projection).
    #[error("{0}")]
    Inconsistent(String),
    /// The chain leader lease this unit of work was fenced with is no longer held:
    /// another instance took over, so nothing was appended.
    #[error("no longer the chain leader (lease epoch {0} was taken over)")]
    Fenced(i64),
}

impl RecordError {
    /// True if `e` holds an append refused because the leader lease was lost.
    pub fn fenced(e: &anyhow::Error) -> bool {
        e.chain().any(|c| {
            matches!(
                c.downcast_ref::<RecordError>(),
                Some(RecordError::Fenced(_))
            )
        })
    }
}

impl From<AppendError> for RecordError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict(m) => RecordError::Conflict(m),
            AppendError::Database(e) => RecordError::Database(e),
        }
    }
}

/// Where observations are recorded: the database and the network (for derived
/// addresses).
#[derive(Clone)]
pub struct UnitOfWork {
    pool: PgPool,
    network: bitcoin::Network,
    fence: Option<Arc<Fence>>,
}

/// How long a unit of work's transaction may sit idle (a writer paused by SIGSTOP or cut
/// off mid-transaction) before PostgreSQL ends its session and so frees the log lock. No
/// writer waits on anything but the database inside it.
const IDLE_IN_TRANSACTION: &str = "5s";

impl UnitOfWork {
    pub fn new(pool: PgPool, network: bitcoin::Network) -> Self {
        UnitOfWork {
            pool,
            network,
            fence: None,
        }
    }

    /// The same unit of work, whose every record first checks `fence` (the chain leader's
    /// lease) and fails with [`RecordError::Fenced`] once it is lost.
    pub fn fenced(&self, fence: Arc<Fence>) -> Self {
        UnitOfWork {
            fence: Some(fence),
            ..self.clone()
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Records one observation in one transaction (see the module documentation).
    pub async fn record<O: Observation>(
        &self,
        observation: O,
    ) -> Result<Recorded<O::Outcome>, RecordError> {
        let mut tx = self.pool.begin().await?;
        let recorded = self.record_in(&mut tx, observation).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Records one observation inside the caller's transaction, which commits it (with
    /// what else the caller wrote: the delivery journal's change an operational event
    /// reports). The log stays locked until that commit.
    pub async fn record_in<O: Observation>(
        &self,
        tx: &mut PgConnection,
        mut observation: O,
    ) -> Result<Recorded<O::Outcome>, RecordError> {
        sqlx::query(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'"
        ))
        .execute(&mut *tx)
        .await?;
        store::lock(&mut *tx).await?;
        if let Some(fence) = &self.fence {
            if !fence.check(&mut *tx).await? {
                return Err(RecordError::Fenced(fence.epoch));
            }
        }
        let state = observation.load(&mut *tx).await?;
        let Decision {
            mut events,
            mut outcome,
        } = observation.decide(state)?;
        let window = look_ahead(&mut *tx, &events, self.network).await?;
        events.extend(window);
        let stored = store::append(&mut *tx, &events).await?;
        let folded: Vec<EventAt<'_>> = stored
            .iter()
            .zip(&events)
            .map(|(s, e)| s.at(&e.event))
            .collect();
        projections::apply(&mut *tx, &folded).await?;
        O::after_append(&mut outcome, &mut *tx, &stored).await?;
        Ok(Recorded {
            events: stored,
            outcome,
        })
    }
}

/// A batch decided without reading anything stored (a new account: its id is new, and
/// a second writer of a stream is refused by the expected versions anyway).
pub struct Decided(pub Vec<NewEvent>);

impl Observation for Decided {
    type State = ();
    type Outcome = ();

    async fn load(&mut self, _conn: &mut PgConnection) -> Result<(), RecordError> {
        Ok(())
    }

    fn decide(self, (): ()) -> Result<Decision<()>, RecordError> {
        Ok(Decision::new(self.0, ()))
    }
}

/// The `address.watched` events that keep each derived account's window `lookahead`
/// past the highest index the batch's new deposits pay.
async fn look_ahead(
    conn: &mut PgConnection,
    batch: &[NewEvent],
    network: bitcoin::Network,
) -> Result<Vec<NewEvent>, RecordError> {
    let paid: Vec<&str> = batch
        .iter()
        .filter_map(|e| match &e.event {
            Event::DepositSeen(d) => Some(d.address.as_str()),
            _ => None,
        })
        .collect();
    if paid.is_empty() {
        return Ok(Vec::new());
    }
    let metadata = json!({"source": "lookahead"});
    let mut out = Vec::new();
    for (account, index) in projections::read::paid_derived_accounts(conn, &paid, network).await? {
        let window = account
            .extend_window(index, &metadata)
            .map_err(|e| RecordError::Inconsistent(format!("account {}: {e}", account.id)))?;
        if !window.is_empty() {
            tracing::info!(account_id = %account.id, from = account.watched_to,
                to = account.watched_to + window.len() as u32, "look-ahead window extended");
        }
        out.extend(window);
    }
    Ok(out)
}
