//! `tools/bench`: the store's batch append versus a raw `INSERT … SELECT FROM UNNEST` of the
//! same rows on the same database, and the tail's read rate through `GET /v1/events` pages
//! of 1000. Prints a Markdown table; never asserts anything.
//!
//! Usage: DATABASE_URL=… cargo run --release --example bench [EVENTS]

mod shared;

use std::sync::Arc;
use std::time::Instant;

use chainledger::chain::node::Credentials;
use chainledger::chain::{FollowerStatus, Node};
use chainledger::config::NetworkName;
use chainledger::domain::stream::Position;
use chainledger::http::{self, AppState};
use chainledger::store::{self, notify::LogWatch};
use chainledger::unit_of_work::UnitOfWork;
use sqlx::PgPool;

const BATCH: usize = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let total: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |s| s.parse().expect("EVENTS is a number"));
    let pool = PgPool::connect(&url).await?;
    chainledger::db::migrate(&pool).await?;
    assert_eq!(
        store::head(&pool).await?.0,
        0,
        "bench needs an empty database"
    );

    // The store: batches of 500 (one block's worth), one transaction each.
    let started = Instant::now();
    for first in (0..total).step_by(BATCH) {
        let mut tx = pool.begin().await?;
        store::append(
            &mut tx,
            &shared::deposit_seen_events(BATCH.min(total - first), first),
        )
        .await?;
        tx.commit().await?;
    }
    let store_secs = started.elapsed().as_secs_f64();

    // Raw: the very same rows, read back, inserted into a copy of the table with the same
    // indexes, with the same batch size and one transaction each.
    let raw_secs = shared::raw_insert(&pool, Position(0), BATCH).await?;

    // The tail over HTTP, pages of 1000. The node is never called by this route.
    let never_stop = tokio::sync::watch::Sender::new(false);
    let log = LogWatch::start(pool.clone()).await?;
    let state = AppState {
        read_pool: chainledger::store::replica::ReadPool::primary_only(pool.clone(), log.clone()),
        pool: pool.clone(),
        unit_of_work: UnitOfWork::new(pool.clone(), bitcoin::Network::Regtest),
        node: Node::connect(
            "http://127.0.0.1:9",
            Credentials::UserPass("x".into(), "x".into()),
        )?,
        network: NetworkName::Regtest,
        api_token: Arc::from("bench-token-0123456789"),
        credit_confirmations: 3,
        final_confirmations: 15,
        log,
        follower: Arc::new(FollowerStatus::default()),
        zmq_mode: chainledger::chain::zmq::ZmqMode::Off,
        webhook_guard: Arc::default(),
        wake_delivery: Arc::default(),
        shutdown: never_stop.subscribe(),
        cors_allow_origins: Vec::new(),
        wake_rescans: Arc::default(),
        script_handlers: false,
        ipn_token: None,
        ipn_auth: None,
        bitcart_auth: Arc::new(http::BasicAuth::new("bench", "bench-token-0123456789")),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, http::router(state)).await });
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (mut after, mut read, mut bytes) = (0i64, 0usize, 0usize);
    loop {
        let body = client
            .get(format!("http://{addr}/v1/events?after={after}&limit=1000"))
            .bearer_auth("bench-token-0123456789")
            .send()
            .await?
            .bytes()
            .await?;
        bytes += body.len();
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        read += page["events"].as_array().map_or(0, Vec::len);
        after = page["next_after"].as_i64().unwrap_or(after);
        if !page["has_more"].as_bool().unwrap_or(false) {
            break;
        }
    }
    let tail_secs = started.elapsed().as_secs_f64();
    assert_eq!(read, total);

    println!("| measure | events | seconds | events/s | note |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| store append (batches of {BATCH}) | {total} | {store_secs:.2} | {:.0} | {:.2} of raw |",
        total as f64 / store_secs,
        raw_secs / store_secs
    );
    println!(
        "| raw INSERT … UNNEST (same rows) | {total} | {raw_secs:.2} | {:.0} | |",
        total as f64 / raw_secs
    );
    println!(
        "| tail GET /v1/events, pages of 1000 | {read} | {tail_secs:.2} | {:.0} | {:.1} MB/s |",
        read as f64 / tail_secs,
        bytes as f64 / tail_secs / 1e6
    );
    Ok(())
}
