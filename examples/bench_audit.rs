//! `tools/bench audit`: the operator tools on a log of N events (default 1,000,000) shaped
//! like real deposits (8 events each, interleaved as blocks interleave them):
//! - rebuild-projections' replay rate versus a raw sequential read of the same table (every
//!   column decoded into the client) in the same run;
//! - audit-export (the release binary, JSON Lines and CSV): MB/s and peak RSS (GNU time).
//!
//! Usage: DATABASE_URL=… CHAINLEDGER=target/release/chainledger cargo run --release --example bench_audit [EVENTS]

use std::process::Command;
use std::time::Instant;

use chainledger::projections::rebuild;
use chainledger::store;
use futures::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

mod shared;

const ACCOUNTS: usize = 1000;
const GROUP: usize = 625; // deposits in flight together: 5,000 events per append

async fn generate(pool: &PgPool, total: usize) -> anyhow::Result<()> {
    let mut log = shared::Deposits::new(ACCOUNTS);
    let mut tx = pool.begin().await?;
    store::append(&mut tx, &log.accounts()).await?;
    tx.commit().await?;
    let deposits = (total.saturating_sub(ACCOUNTS)) / shared::PER_DEPOSIT;
    for group in (0..deposits).step_by(GROUP) {
        let mut tx = pool.begin().await?;
        store::append(&mut tx, &log.group(GROUP.min(deposits - group))).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Peak RSS (KiB) and seconds of a command, from GNU time.
fn timed(cmd: &mut Command) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let out = cmd.output()?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kib = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no RSS in GNU time's output: {stderr}"))?;
    Ok((kib, secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let binary =
        std::env::var("CHAINLEDGER").unwrap_or_else(|_| "target/release/chainledger".into());
    let total: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |s| s.parse().expect("EVENTS is a number"));
    let pool = PgPool::connect(&url).await?;
    chainledger::db::migrate(&pool).await?;
    anyhow::ensure!(
        store::head(&pool).await?.0 == 0,
        "bench needs an empty database"
    );

    let started = Instant::now();
    generate(&pool, total).await?;
    let head = store::head(&pool).await?.0;
    eprintln!(
        "generated {head} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::raw_sql("VACUUM ANALYZE events")
        .execute(&pool)
        .await?;

    // Raw: every row of the table, every column decoded, one streaming query.
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let rows: u64 = sqlx::query_as::<_, (i64, Uuid, String, String, i32, chrono::DateTime<chrono::Utc>, serde_json::Value, i16, serde_json::Value, Vec<u8>, Vec<u8>)>(
        "SELECT position, event_id, type, stream, stream_version, recorded_at, data, schema_version, metadata, prev_hash, hash
         FROM events ORDER BY position",
    )
    .fetch(&mut *conn)
    .try_fold(0u64, |n, _| async move { Ok(n + 1) })
    .await?;
    drop(conn);
    let raw_secs = started.elapsed().as_secs_f64();

    let report = shared::rebuild_ledger(&pool, rebuild::Mode::Swap, false).await?;
    let verify = shared::rebuild_ledger(&pool, rebuild::Mode::VerifyOnly, true).await?;
    anyhow::ensure!(
        verify.clean(),
        "the rebuilt tables do not verify: {verify:?}"
    );

    let dir = std::env::temp_dir().join(format!("chainledger-bench-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut exports = Vec::new();
    for format in ["jsonl", "csv"] {
        let file = dir.join(format!("log.{format}"));
        let (kib, secs) = timed(
            Command::new("/usr/bin/time")
                .arg("-v")
                .arg(&binary)
                .args(["audit-export", "--format", format, "--out"])
                .arg(&file)
                .env("DATABASE_URL", &url)
                .env("RUST_LOG", "warn"),
        )?;
        let bytes = std::fs::metadata(&file)?.len();
        let (verify_kib, verify_secs) = timed(
            Command::new("/usr/bin/time")
                .arg("-v")
                .arg(&binary)
                .args(["verify-log", "--file"])
                .arg(&file)
                .env("RUST_LOG", "warn"),
        )?;
        std::fs::remove_file(&file)?;
        exports.push((format, bytes, secs, kib, verify_secs, verify_kib));
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("| measure | events | seconds | events/s | note |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| raw sequential read (all columns decoded) | {rows} | {raw_secs:.2} | {:.0} | |",
        rows as f64 / raw_secs
    );
    println!(
        "| rebuild-projections ledger (replay + swap) | {} | {:.2} | {:.0} | {:.2} of raw |",
        report.replayed,
        report.seconds,
        report.replayed as f64 / report.seconds,
        (report.replayed as f64 / report.seconds) / (rows as f64 / raw_secs)
    );
    println!(
        "| rebuild-projections --verify-only (replay + compare) | {} | {:.2} | {:.0} | |",
        verify.replayed,
        verify.seconds,
        verify.replayed as f64 / verify.seconds
    );
    for (format, bytes, secs, kib, vsecs, vkib) in exports {
        let mb = bytes as f64 / 1e6;
        println!(
            "| audit-export --format {format} | {head} | {secs:.2} | {:.0} | {mb:.0} MB, {:.1} MB/s, peak RSS {:.1} MiB |",
            head as f64 / secs,
            mb / secs,
            kib as f64 / 1024.0
        );
        println!(
            "| verify-log --file (.{format}) | {head} | {vsecs:.2} | {:.0} | peak RSS {:.1} MiB |",
            head as f64 / vsecs,
            vkib as f64 / 1024.0
        );
    }
    Ok(())
}
