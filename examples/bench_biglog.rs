//! `tools/bench biglog [SIZES]`: the append, tail and rebuild rates with N events already
//! in the table, for each N of SIZES (ascending, default 1000000,10000000), in one
//! database grown from one size to the next, so every size is measured in the same run on
//! the same cluster. Also the table's and its indexes' bytes per event. Prints a Markdown
//! table for docs/BENCHMARKS.md; never asserts a timing.
//!
//! The pre-fill is the store's own batch append (`store::append`: the expected-version
//! checks, the hash chain, `log_head`), in transactions of 20,000 deposit-shaped events
//! (`shared::Deposits`: 1,000 accounts, 8 events per deposit). It bypasses what the
//! service does around an append — the follower, the unit of work's projections (the
//! rebuild writes those) — and the fill's own rate is reported as the append rate at
//! large batches. At each size, after `VACUUM ANALYZE events` (what autovacuum would have
//! done by then):
//! - append: 200,000 more events in batches of 496 (62 deposits: one block's worth, as
//!   `tools/bench append`), one transaction each;
//! - tail: 200,000 events through `GET /v1/events` pages of 1000 from the middle of the
//!   log, and the last 200,000;
//! - rebuild: `rebuild-projections ledger` (replay + swap) over the whole log.
//!
//! Usage: DATABASE_URL=… bench_biglog [SIZES]

mod shared;

use std::time::Instant;

use chainledger::projections::rebuild;
use chainledger::store;
use sqlx::PgPool;

const ACCOUNTS: usize = 1000;
/// Deposits per fill transaction: 20,000 events.
const FILL_GROUP: usize = 2500;
/// Deposits per measured append: 496 events.
const BLOCK_GROUP: usize = 62;
const MEASURED: usize = 200_000;

struct Row {
    events: i64,
    fill_rate: f64,
    table: i64,
    indexes: i64,
    append_rate: f64,
    tail_middle: f64,
    tail_end: f64,
    rebuild_rate: f64,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "| {} | {:.0} | {:.0} + {:.0} = {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            self.events,
            self.fill_rate,
            self.table as f64 / self.events as f64,
            self.indexes as f64 / self.events as f64,
            (self.table + self.indexes) as f64 / self.events as f64,
            self.append_rate,
            self.tail_middle,
            self.tail_end,
            self.rebuild_rate
        )
    }
}

async fn size(pool: &PgPool, what: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(&format!("SELECT {what}('events')"))
        .fetch_one(pool)
        .await?)
}

async fn tail_rate(addr: std::net::SocketAddr, after: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (read, _) = shared::read_tail(addr, after, MEASURED).await?;
    anyhow::ensure!(read == MEASURED, "the tail read {read} from {after}");
    Ok(read as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let sizes: Vec<i64> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let pool = PgPool::connect(&url).await?;
    chainledger::db::migrate(&pool).await?;
    anyhow::ensure!(
        store::head(&pool).await?.0 == 0,
        "bench needs an empty database"
    );
    let addr = shared::serve_api(&pool).await?;
    let mut log = shared::Deposits::new(ACCOUNTS);
    let mut tx = pool.begin().await?;
    store::append(&mut tx, &log.accounts()).await?;
    tx.commit().await?;

    let mut rows = Vec::new();
    for &target in &sizes {
        let (from, started) = (store::head(&pool).await?.0, Instant::now());
        let mut head = from;
        while head < target {
            let deposits = FILL_GROUP.min(((target - head) as usize).div_ceil(8));
            let mut tx = pool.begin().await?;
            store::append(&mut tx, &log.group(deposits)).await?;
            tx.commit().await?;
            let before = head;
            head += (deposits * shared::PER_DEPOSIT) as i64;
            if head / 1_000_000 > before / 1_000_000 {
                eprintln!(
                    "bench: {head} events, {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let fill_rate = (head - from) as f64 / started.elapsed().as_secs_f64();
        sqlx::raw_sql("VACUUM ANALYZE events")
            .execute(&pool)
            .await?;
        let events = store::head(&pool).await?.0;
        let (table, indexes) = (
            size(&pool, "pg_table_size").await?,
            size(&pool, "pg_indexes_size").await?,
        );

        let started = Instant::now();
        for _ in 0..MEASURED.div_ceil(BLOCK_GROUP * shared::PER_DEPOSIT) {
            let mut tx = pool.begin().await?;
            store::append(&mut tx, &log.group(BLOCK_GROUP)).await?;
            tx.commit().await?;
        }
        let appended = store::head(&pool).await?.0 - events;
        let append_rate = appended as f64 / started.elapsed().as_secs_f64();
        let tail_middle = tail_rate(addr, events / 2).await?;
        let tail_end = tail_rate(addr, events + appended - MEASURED as i64).await?;

        let report = shared::rebuild_ledger(&pool, rebuild::Mode::Swap, false).await?;
        anyhow::ensure!(
            report.balance_mismatches.is_empty(),
            "the rebuild's balances disagree: {:?}",
            report.balance_mismatches
        );
        let rebuild_rate = report.replayed as f64 / report.seconds;
        let row = Row {
            events,
            fill_rate,
            table,
            indexes,
            append_rate,
            tail_middle,
            tail_end,
            rebuild_rate,
        };
        eprintln!("bench: {}", row.line());
        rows.push(row);
    }

    println!("| events in the table | pre-fill events/s (batches of 20,000) | table + indexes bytes per event | append events/s (batches of 496) | tail events/s, middle | tail events/s, end | rebuild events/s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!("{}", r.line());
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let ratio = |a: f64, b: f64| format!("{:.2}", b / a);
        println!(
            "\nAt {} against {} events: append {}, tail middle {}, tail end {}, rebuild {} (1.00 = as fast).",
            last.events,
            first.events,
            ratio(first.append_rate, last.append_rate),
            ratio(first.tail_middle, last.tail_middle),
            ratio(first.tail_end, last.tail_end),
            ratio(first.rebuild_rate, last.rebuild_rate)
        );
    }
    Ok(())
}
