//! `tools/bench watchrss` and `tools/bench fanout`: one service process at scale. Prints
//! Markdown tables for docs/BENCHMARKS.md; never asserts a timing.
//!
//! Usage (tools/bench starts the node and PostgreSQL and sets the environment):
//!   PG_URL=… NODE_RPC=… bench_scale watchrss BINARY… -- [SCRIPTS=10000000] [PER_ACCOUNT=1000]
//!   PG_URL=… NODE_RPC=… bench_scale fanout BINARY… -- [SSE=1000] [LONG_POLLS=1000] [EVENTS=100]
//! Each BINARY (e.g. the build before a change, then after) is measured in turn, in one run.
//!
//! `watchrss`: a fresh database gets SCRIPTS / PER_ACCOUNT plain accounts and SCRIPTS P2PKH
//! scripts (hash160 = the first 20 bytes of SHA-256 of the script's number), written
//! straight into the `accounts` and `addresses` projections (`INSERT … SELECT
//! generate_series`, and `COPY` of rows made here, indexes built after), not through the
//! log: a projection as a restore would leave it. Then each binary: a block is mined and
//! `serve` starts; "loaded" is when that block is stored (its observation needs the whole
//! watch set loaded); then deposits (`sendtoaddress`) to a few of the scripts are mined, and
//! their `deposit.seen` events are checked against the scripts' accounts. VmHWM and VmRSS
//! come from /proc/PID/status.
//!
//! `fanout`: each binary on a fresh database; SSE streams and long-poll loops
//! (`wait=30&limit=100`; half of each with `types=account.*`) connect from here; then
//! EVENTS appends of one `account.created` each, made here through the unit of work, each
//! after every client got the previous one. Per event: the time from the commit returning
//! to the last client's receipt; the service's and PostgreSQL's CPU over the appends, and
//! PostgreSQL's transactions (`pg_stat_database.xact_commit`) per event.

mod shared;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Network, PubkeyHash};
use chainledger::domain::account;
use chainledger::unit_of_work::{Decided, UnitOfWork};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use shared::{cpu, postgres_cpu, postmaster, Rpc};
use sqlx::PgPool;
use uuid::Uuid;

const TOKEN: &str = "bench-token-0123456789";

struct Serve(Child);

impl Serve {
    fn spawn(binary: &str, rpc: &Rpc, url: &str, port: u16, start: u32) -> anyhow::Result<Serve> {
        let child = Command::new(binary)
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("BITCOIND_RPC_URL", &rpc.url)
            .env("BITCOIND_RPC_USER", &rpc.user)
            .env("BITCOIND_RPC_PASSWORD", &rpc.password)
            .env("NETWORK", "regtest")
            .env("API_TOKEN", TOKEN)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("START_HEIGHT", start.to_string())
            .env("POLL_INTERVAL_MS", "100")
            .env("HTTP_MAX_CONNECTIONS", "8000")
            .env("HTTP_MAX_CONNECTIONS_PER_IP", "8000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("failed to start {binary}"))?;
        Ok(Serve(child))
    }

    fn vm(&self, key: &str) -> f64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix(" kB")?.trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn cpu(&self) -> f64 {
        cpu(&self.0.id().to_string()).map_or(0.0, |(_, s)| s)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn status(http: &reqwest::Client, port: u16) -> Option<Value> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/v1/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

async fn synced(
    http: &reqwest::Client,
    port: u16,
    tip: u32,
    within: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(s) = status(http, port).await {
            if s["synced_tip"].as_i64() == Some(i64::from(tip)) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "not synced to {tip} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The synthetic script number `i`: its address and account.
fn synthetic(i: u64, per_account: u64) -> (Address, Uuid) {
    let h = sha256::Hash::hash(&i.to_be_bytes());
    let hash = PubkeyHash::from_slice(&h[..20]).expect("20 bytes");
    (
        Address::p2pkh(hash, Network::Regtest),
        Uuid::from_u64_pair(0xbe7c, i / per_account),
    )
}

/// The accounts and addresses projections filled with `scripts` synthetic scripts.
async fn fill(url: &str, scripts: u64, per_account: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let pool = PgPool::connect(url).await?;
    chainledger::db::migrate(&pool).await?;
    let accounts = scripts.div_ceil(per_account) as i64;
    sqlx::query(
        "INSERT INTO accounts (account_id, label, credit_confirmations, stream_version, created_position)
         SELECT ('00000000-0000-be7c-' || lpad(to_hex(a >> 48), 4, '0') || '-' || lpad(to_hex(a & x'ffffffffffff'::bigint), 12, '0'))::uuid,
                'bench ' || a, 3, 0, 0
         FROM generate_series(0, $1 - 1) a",
    )
    .bind(accounts)
    .execute(&pool)
    .await?;
    let mut conn = pool.acquire().await?;
    sqlx::query("SET maintenance_work_mem = '1GB'")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(
        "ALTER TABLE addresses DROP CONSTRAINT addresses_pkey, DROP CONSTRAINT addresses_script_pubkey_key;
         DROP INDEX addresses_account, addresses_position",
    )
    .execute(&mut *conn)
    .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let maker = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(1 << 20);
        for i in 0..scripts {
            let (address, account) = synthetic(i, per_account);
            let script = address.script_pubkey();
            use std::fmt::Write as _;
            let mut line = String::with_capacity(128);
            let _ = write!(line, "{address}\t{account}\t\\\\x");
            for b in script.as_bytes() {
                let _ = write!(line, "{b:02x}");
            }
            let _ = writeln!(line, "\t{}", i + 1);
            chunk.extend_from_slice(line.as_bytes());
            if chunk.len() >= 1 << 20
                && tx
                    .blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(1 << 20)))
                    .is_err()
            {
                return;
            }
        }
        let _ = tx.blocking_send(chunk);
    });
    let mut copy = conn
        .copy_in_raw("COPY addresses (address, account_id, script_pubkey, position) FROM STDIN")
        .await?;
    while let Some(chunk) = rx.recv().await {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    maker.await?;
    sqlx::raw_sql(
        "ALTER TABLE addresses ADD PRIMARY KEY (address), ADD UNIQUE (script_pubkey);
         CREATE INDEX addresses_account ON addresses (account_id);
         CREATE INDEX addresses_position ON addresses (position); ANALYZE addresses",
    )
    .execute(&mut *conn)
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn watchrss(binaries: &[String], args: &[String]) -> anyhow::Result<()> {
    let scripts: u64 = args.first().map_or(Ok(10_000_000), |s| s.parse())?;
    let per_account: u64 = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let rpc = Rpc::from_env(Duration::from_secs(300))?;
    let miner: String = rpc.call("getnewaddress", &[])?;
    let _: Value = rpc.call("generatetoaddress", &[json!(101), json!(miner)])?;
    let url = shared::create_database("watchrss").await?;
    let fill_secs = fill(&url, scripts, per_account).await?;
    eprintln!("bench: {scripts} scripts written in {fill_secs:.1} s");
    let pool = PgPool::connect(&url).await?;
    let http = reqwest::Client::new();
    println!("| binary | watched scripts | first block stored (watch set loaded): s / VmRSS MiB | VmHWM (peak) MiB | VmRSS after the deposits MiB | deposits found / sent |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (run, binary) in binaries.iter().enumerate() {
        // A block the service has not stored: storing it needs the whole watch set
        // loaded, also on the database an earlier run left.
        let _: Value = rpc.call("generatetoaddress", &[json!(1), json!(miner)])?;
        let start = rpc.height()?;
        let port = free_port()?;
        let began = Instant::now();
        let serve = Serve::spawn(binary, &rpc, &url, port, start)?;
        synced(&http, port, start, Duration::from_secs(600)).await?;
        let (loaded, loaded_rss) = (began.elapsed().as_secs_f64(), serve.vm("VmRSS"));
        // Deposits to 20 scripts spread over the set (different ones each run).
        let paid: Vec<u64> = (0..20u64)
            .map(|k| (k * scripts / 20 + run as u64 * 7 + 3) % scripts)
            .collect();
        let mut txids = Vec::new();
        for &i in &paid {
            let (address, _) = synthetic(i, per_account);
            let txid: String =
                rpc.call("sendtoaddress", &[json!(address.to_string()), json!(0.01)])?;
            txids.push((txid, i));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _: Value = rpc.call("generatetoaddress", &[json!(1), json!(miner)])?;
        synced(&http, port, start + 1, Duration::from_secs(120)).await?;
        let (hwm, rss) = (serve.vm("VmHWM"), serve.vm("VmRSS"));
        drop(serve);
        let mut found = 0;
        for (txid, i) in &txids {
            let (address, account) = synthetic(*i, per_account);
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT data->>'address', data->>'account_id' FROM events
                 WHERE type = 'deposit.seen' AND data->>'txid' = $1",
            )
            .bind(txid)
            .fetch_all(&pool)
            .await?;
            anyhow::ensure!(rows.len() <= 1, "one deposit.seen per deposit");
            if let Some((a, acc)) = rows.first() {
                anyhow::ensure!(
                    *a == address.to_string() && *acc == account.to_string(),
                    "deposit {txid} credited to the wrong script: {a} {acc}"
                );
                found += 1;
            }
        }
        println!(
            "| `{binary}` | {scripts} ({} × {per_account}) | {loaded:.1} / {loaded_rss:.1} | **{hwm:.1}** | {rss:.1} | {found} / {} |",
            scripts.div_ceil(per_account),
            txids.len()
        );
    }
    println!("\nSet-up (accounts, COPY of the scripts, indexes): {fill_secs:.1} s.");
    Ok(())
}

/// Receipts of one event: how many clients got it, and the latest receipt (ns since the
/// benchmark's start).
#[derive(Default)]
struct Receipts {
    count: AtomicU64,
    last_ns: AtomicU64,
}

struct Fan {
    base: String,
    epoch: Instant,
    first: i64,
    receipts: Vec<Receipts>,
}

impl Fan {
    fn got(&self, position: i64) {
        if let Some(r) = usize::try_from(position - self.first)
            .ok()
            .and_then(|i| self.receipts.get(i))
        {
            r.count.fetch_add(1, Ordering::Relaxed);
            r.last_ns
                .fetch_max(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

fn types(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        ""
    } else {
        "&types=account.*"
    }
}

async fn sse_client(
    fan: Arc<Fan>,
    http: reqwest::Client,
    i: usize,
    after: i64,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let url = format!("{}/v1/events/stream?after={after}{}", fan.base, types(i));
    let resp = match http.get(url).bearer_auth(TOKEN).send().await {
        Ok(r) if r.status() == 200 => r,
        other => {
            eprintln!("bench: SSE client {i}: {:?}", other.map(|r| r.status()));
            return;
        }
    };
    let _ = ready.send(()).await;
    let mut events = resp.bytes_stream().eventsource();
    while let Some(Ok(e)) = events.next().await {
        if let Ok(p) = e.id.parse() {
            fan.got(p);
        }
    }
}

async fn poll_client(
    fan: Arc<Fan>,
    http: reqwest::Client,
    i: usize,
    mut after: i64,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        let url = format!(
            "{}/v1/events?after={after}&wait=30&limit=100{}",
            fan.base,
            types(i)
        );
        let request = http.get(url).bearer_auth(TOKEN).send();
        // Ready once its first request is on its way (the service holds it).
        if let Some(r) = ready.take() {
            let _ = r.send(()).await;
        }
        let page: Value = match request.await {
            Ok(r) => match r.json().await {
                Ok(v) => v,
                Err(_) => return,
            },
            Err(e) => {
                eprintln!("bench: long-poll client {i}: {e}");
                return;
            }
        };
        for e in page["events"].as_array().into_iter().flatten() {
            fan.got(e["position"].as_i64().unwrap_or(0));
        }
        after = page["next_after"].as_i64().unwrap_or(after);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn fanout(binaries: &[String], args: &[String]) -> anyhow::Result<()> {
    let sse: usize = args.first().map_or(Ok(1000), |s| s.parse())?;
    let polls: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let events: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let clients = (sse + polls) as u64;
    let rpc = Rpc::from_env(Duration::from_secs(60))?;
    println!("| binary | clients (SSE + long-poll) | events | commit → last client p50 / p99 / max ms | service CPU µs per event per client | PostgreSQL CPU µs per event per client | PostgreSQL transactions per event |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (run, binary) in binaries.iter().enumerate() {
        let url = shared::create_database(&format!("fanout_{run}")).await?;
        let pool = PgPool::connect(&url).await?;
        // The binary's own migrations: a build from before a new migration refuses a
        // database that has it.
        let migrated = std::process::Command::new(binary)
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .status()?;
        anyhow::ensure!(migrated.success(), "{binary} migrate: {migrated}");
        let log = UnitOfWork::new(pool.clone(), Network::Regtest);
        let port = free_port()?;
        let start = rpc.height()?;
        let serve = Serve::spawn(binary, &rpc, &url, port, start)?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .build()?;
        synced(&http, port, start, Duration::from_secs(60)).await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
            .fetch_one(&pool)
            .await?;
        let fan = Arc::new(Fan {
            base: format!("http://127.0.0.1:{port}"),
            epoch: Instant::now(),
            first: head + 1,
            receipts: (0..events).map(|_| Receipts::default()).collect(),
        });
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel(16);
        let mut tasks = Vec::new();
        for i in 0..sse + polls {
            let (fan, http, ready) = (fan.clone(), http.clone(), ready_tx.clone());
            tasks.push(if i < sse {
                tokio::spawn(sse_client(fan, http, i, head, ready))
            } else {
                tokio::spawn(poll_client(fan, http, i, head, ready))
            });
        }
        drop(ready_tx);
        for _ in 0..sse + polls {
            ready.recv().await.context("a client failed to connect")?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pm = postmaster(&pool).await?;
        let xacts = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            )
            .fetch_one(&pool)
            .await
        };
        let (cpu0, pg0, x0) = (serve.cpu(), postgres_cpu(pm), xacts().await?);
        let metadata = json!({"source": "bench"});
        let mut latencies = Vec::with_capacity(events);
        for k in 0..events {
            let batch = account::create(Uuid::new_v4(), format!("fan {k}"), 3, None, &metadata)?;
            log.record(Decided(batch)).await?;
            let committed = fan.epoch.elapsed().as_nanos() as u64;
            let r = &fan.receipts[k];
            let waited = Instant::now();
            while r.count.load(Ordering::Relaxed) < clients {
                anyhow::ensure!(
                    waited.elapsed() < Duration::from_secs(60),
                    "event {k}: {} of {clients} clients got it within 60 s",
                    r.count.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            latencies
                .push((r.last_ns.load(Ordering::Relaxed).saturating_sub(committed)) as f64 / 1e6);
        }
        let (cpu1, pg1) = (serve.cpu(), postgres_cpu(pm));
        // The statistics of a backend reach pg_stat_database within a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let x1 = xacts().await?;
        for t in &tasks {
            t.abort();
        }
        drop(serve);
        latencies.sort_by(f64::total_cmp);
        let per = |secs: f64| secs * 1e6 / (events as f64 * clients as f64);
        println!(
            "| `{binary}` | {sse} + {polls} | {events} | {:.1} / {:.1} / {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0.0),
            per(cpu1 - cpu0),
            per(pg1 - pg0),
            (x1 - x0 - 1) as f64 / events as f64,
        );
        pool.close().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let binaries = &args[1.min(args.len())..rest];
    let numbers = args.get(rest + 1..).unwrap_or(&[]);
    if binaries.is_empty() {
        bail!("usage: bench_scale watchrss|fanout BINARY… -- [NUMBERS…]");
    }
    match args.first().map(String::as_str) {
        Some("watchrss") => watchrss(binaries, numbers).await,
        Some("fanout") => fanout(binaries, numbers).await,
        _ => bail!("usage: bench_scale watchrss|fanout BINARY… -- [NUMBERS…]"),
    }
}
