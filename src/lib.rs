//! chainledger: follows a Bitcoin node and turns every observed change of a watched deposit
//! into an immutable event in a gapless PostgreSQL log; read models and notifications are
//! derived from that log.
//!
//! # Layout
//!
//! - [`unit_of_work`]: **the one way events enter the log**: lock → load → decide →
//!   look-ahead → append → apply → commit, for every writer (follower, mempool watcher,
//!   rescans, API commands). Nothing else appends; no RPC or HTTP runs under its lock.
//! - [`domain`]: pure types and decisions, no IO: the typed event catalogue
//!   ([`domain::events`]), stream names and positions, deposits and withdrawals
//!   ([`domain::tracked`]), [`domain::ledger`] (which events an observed block, reorg,
//!   mempool or broadcast yields), [`domain::fork`] (the fork point of a reorg),
//!   [`domain::account`] (account commands, look-ahead windows).
//! - [`store`]: the event log: batch appends with expected versions, the hash chain, reads,
//!   and the LISTEN/NOTIFY that wakes readers.
//! - [`projections`]: folds typed events into the read models (`projections/*.sql`) inside
//!   the appending transaction, reads them back as domain types, rebuilds them.
//! - [`chain`]: the node client, the chain follower ([`chain::follower`] fetches and
//!   follows reorgs; **a block is processed in [`chain::block`]**), the mempool watcher,
//!   rescans.
//! - [`delivery`]: webhooks: the dispatcher and its per-subscriber workers under a lease,
//!   rendering in each format, **a webhook is sent in [`delivery::transport`]**, the
//!   group-committed journal, signing, the retry schedule, the SSRF guard, script
//!   handlers, Redis Streams targets ([`delivery::redis`]). Cursors are the fold in
//!   [`projections::cursors`].
//! - [`compat`]: what cryptoassets.core, the Crypto IPN service and Bitcart put on the
//!   wire, mapped from typed events (pure); their endpoints are in [`http`].
//! - [`http`]: the axum API: commands (observations for the unit of work), queries, the
//!   long-poll tail, SSE, subscribers, metrics, OpenAPI, and the Bitcart-daemon-compatible
//!   JSON-RPC and websocket (`/bitcart`), whose cursors live in
//!   `migrations/0006_bitcart.sql`.
//! - [`audit`]: the audit export (JSON Lines, CSV) and the hash-chain verifier.
//! - [`tools`]: the operator subcommands (`rebuild-projections`, `audit-export`,
//!   `verify-log`) and what they print; the rebuild itself is [`projections::rebuild`].
//! - [`leadership`]: which instance follows the chain: a lease with a fencing epoch that
//!   the follower's every append checks.
//! - [`app`]: wiring: database, migrations, node checks, the follower and the server.
//! - [`config`], [`db`], [`metrics`]: the configuration struct, connecting and migrating,
//!   Prometheus counters and gauges; [`redact`]: secrets out of every log line and error.

pub mod app;
pub mod audit;
pub mod chain;
pub mod compat;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod gauges;
pub mod http;
pub mod leadership;
pub mod metrics;
pub mod projections;
pub mod redact;
pub mod store;
pub mod tools;
pub mod unit_of_work;
