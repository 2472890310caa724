//! `tools/bench`: the store's batch append versus a raw `INSERT … SELECT FROM UNNEST` of the
//! same rows on the same database, and the tail's read rate through `GET /v1/events` pages
//! of 1000. Prints a Markdown table; never asserts anything.
//!
//! Usage: DATABASE_URL=… cargo run --release --example bench [EVENTS]

mod shared;

use std::time::Instant;

use chainledger::domain::stream::Position;
use chainledger::store;
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
    let addr = shared::serve_api(&pool).await?;
    let started = Instant::now();
    let (read, bytes) = shared::read_tail(addr, 0, usize::MAX).await?;
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
