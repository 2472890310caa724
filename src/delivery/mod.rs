//! Webhook delivery (DESIGN.md "Webhooks"): every subscriber's matching events after its
//! cursor are POSTed in position order, one per request, signed per Standard Webhooks; the
//! cursor advances only after a 2xx. Every attempt is journaled (`delivery_attempts`) and
//! the cursor is the journal's fold (`projections::cursors`), so nothing is lost on a
//! crash: at most a subscriber's group-commit window (the deliveries sent while their
//! entries waited for their batch, [`GroupCommit`]) is delivered again, in order.
//!
//! - [`dispatcher`]: wakes on every commit to the log (LISTEN/NOTIFY), on API commands and
//!   when a retry falls due, and hands due subscribers to at most `workers` tasks; a
//!   worker holds the subscriber's lease (a session advisory lock) while it delivers, so
//!   two service instances never deliver one subscriber concurrently.
//! - [`subscriber`]: a subscriber's [`Format`] (what goes on the wire: Standard Webhooks
//!   JSON, cryptoassets.core's txupdate form, a Crypto IPN notification) and [`Target`]
//!   (a URL, a command run once per event, [`script`], or a Redis stream, [`redis`]).
//! - [`render`]: one event in a subscriber's format.
//! - [`transport`]: where a webhook is sent — one attempt, its outcome a journal entry.
//! - [`redis`]: Redis Streams targets — an XADD per event, its entry id the position.
//! - [`recorder`]: group-commits the journal entries of all workers: one transaction per
//!   batch; a worker sends its next request while its previous entries wait for their
//!   batch, within its [`GroupCommit`] window, and waits for all of them on a failure.
//! - [`operational`]: the `subscriber.*` events a change of a subscriber's state is
//!   (disabled, enabled, recovered), appended with the journal entry that made it.
//! - [`sign`], [`schedule`], [`ssrf`]: Standard Webhooks signatures, the retry schedule,
//!   the guard against private-network targets.

pub mod dispatcher;
pub mod operational;
pub mod recorder;
pub mod redis;
pub mod render;
pub mod schedule;
pub mod script;
pub mod sign;
pub mod ssrf;
pub mod subscriber;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

pub use dispatcher::Dispatcher;
pub use schedule::Schedule;
pub use ssrf::Guard;
pub use subscriber::{Format, RedisTarget, Subscriber, Target};

#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    pub schedule: Schedule,
    pub timeout: Duration,
    pub workers: usize,
    pub guard: Arc<Guard>,
    /// Whether subscribers may be commands (SCRIPT_HANDLERS); checked again at each run.
    pub script_handlers: bool,
    /// The credit threshold a withdrawal's txupdate is `credited` at (deposits carry
    /// their account's).
    pub credit_confirmations: u32,
    /// WEBHOOK_PROXY: requests go through this HTTP(S) proxy; without it the environment's
    /// proxy variables are ignored (a proxy would resolve the target, not the guard).
    pub proxy: Option<url::Url>,
    pub group_commit: GroupCommit,
}

/// How far one subscriber's deliveries may run ahead of their journal entries
/// (WEBHOOK_GROUP_COMMIT_MS, WEBHOOK_GROUP_COMMIT_ENTRIES): before sending, a worker waits
/// for its oldest unjournaled entry once `entries` are waiting or the oldest has waited
/// `window`. What a crash can make it deliver again is at most those `entries`.
#[derive(Copy, Clone, Debug)]
pub struct GroupCommit {
    pub window: Duration,
    pub entries: usize,
}

impl GroupCommit {
    /// No window: each delivery waits for its journal entry before the next is sent.
    pub const NONE: GroupCommit = GroupCommit {
        window: Duration::ZERO,
        entries: 1,
    };
}
