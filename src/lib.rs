//! chainledger: follows a Bitcoin node and turns every observed change of a watched deposit
//! into an immutable event in a gapless PostgreSQL log; read models and notifications are
//! derived from that log.
//!
//! # Layout
//!
//! - [`config`]: the one configuration struct (flags and environment) and the CLI.
//! - [`domain`]: pure types and decisions, no IO: amounts, addresses, the event catalogue,
//!   and [`domain::ledger`], which says which events an observed block or mempool yields.
//! - [`store`]: the event log: batch appends with expected versions, the hash chain, reads.
//! - [`projections`]: folds events into the read models (`projections/*.sql`) inside the
//!   appending transaction.
//! - [`chain`]: the node client, the chain follower (blocks, reorgs) and the mempool watcher.
//!   A block is processed in [`chain::follower`].
//! - [`delivery`]: webhooks: the dispatcher, per-subscriber workers under a lease, Standard
//!   Webhooks signing, the retry schedule, the SSRF guard, delivery formats and script
//!   handlers. A webhook is sent in [`delivery::Dispatcher`]'s `send`; cursors are the fold
//!   in [`projections::cursors`].
//! - [`compat`]: what cryptoassets.core, the Crypto IPN service and Bitcart put on the
//!   wire, mapped from our events (pure); their endpoints are in [`http`].
//! - [`http`]: the axum API: commands, queries, the long-poll tail, SSE, subscribers,
//!   metrics, OpenAPI, and the Bitcart-daemon-compatible JSON-RPC and websocket
//!   (`/bitcart`), whose cursors live in `migrations/0006_bitcart.sql`.
//! - [`compat`]: pure translations of the log into other systems' event formats:
//!   [`compat::bitcart`] (what a Bitcart daemon would send the Bitcart SDK).
//! - [`audit`]: the audit export (JSON Lines, CSV) and the hash-chain verifier.
//! - [`tools`]: the operator subcommands (`rebuild-projections`, `audit-export`,
//!   `verify-log`) and what they print; the rebuild itself is [`projections::rebuild`].
//! - [`app`]: wiring: database, migrations, node checks, the follower and the server.
//! - [`metrics`]: Prometheus counters and gauges.

pub mod app;
pub mod audit;
pub mod chain;
pub mod compat;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod projections;
pub mod store;
pub mod tools;
