//! `tools/bench delivery` and `tools/bench latency`: webhook delivery against a local
//! receiver. Prints Markdown tables for docs/BENCHMARKS.md; never asserts a timing.
//!
//! Usage (tools/bench starts the node and PostgreSQL and sets the environment):
//!   PG_URL=postgres://…/postgres NODE_RPC="URL USER PASSWORD" \
//!     bench_delivery delivery [DELIVERIES=20000] [SECONDS=3]
//!   PG_URL=… NODE_RPC=… bench_delivery latency [BLOCKS=100] [POLL_INTERVAL_MS=1000]
//!   bench_delivery receiver          (the receiver process `delivery` starts itself)
//!
//! `delivery`: a minimal receiver (axum, answers 200, counts) runs as a child process so
//! its CPU is counted apart. Its capacity is measured first with a load generator (reqwest,
//! keep-alive, C concurrent request loops POSTing a serialised event with webhook headers
//! for SECONDS). Then, for each shape (subscribers S, WEBHOOK_WORKERS W), a fresh database
//! and a fresh in-process service (`app::start`); S subscribers are created over the API
//! with `start: now`; DELIVERIES / S events are appended in one transaction; the clock runs
//! from that commit until every cursor has reached the head. The load generator runs again
//! at the end: the spread of the two passes is the noise. `BENCH_SHAPES="100x100,…"`
//! (SUBSCRIBERSxWORKERS) replaces the default shapes 1x16, 10x16, 100x100, 100x16; a third
//! number sets WEBHOOK_GROUP_COMMIT_ENTRIES for that shape (`1x16x1,1x16x100`: one
//! subscriber without and with a group-commit window, in one run).
//! `BENCH_FORMAT` picks what the subscribers are: `standard` (default), `cryptoassets`
//! (txupdate forms to the same receiver) or `script` (script handlers running `/bin/true`
//! once per event, no receiver involved).
//!
//! `latency`: the service follows the regtest node with POLL_INTERVAL_MS; one subscriber
//! with `types: block.connected`; an in-process receiver on its own thread and runtime
//! notes the arrival time of each webhook. Blocks are mined one at a time
//! (`generatetoaddress 1`) after a random pause of 0..POLL_INTERVAL_MS (so they do not
//! align with the poll's phase); "accepted" is when the RPC returns; the next block waits
//! for the webhook of the previous one.

mod shared;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use axum::body::Bytes;
use bitcoin::hashes::Hash;
use bitcoin::{Address, Network, PubkeyHash};
use bitcoincore_rpc::RpcApi;
use chainledger::config::Config;
use chainledger::store::{self, StoredEvent};
use rand::Rng;
use serde_json::{json, Value};
use shared::{cpu, histogram, postgres_cpu, Rpc};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

const TOKEN: &str = "bench-token-0123456789";

impl Rpc {
    /// Mines one block off the async runtime; its hash.
    async fn mine_one(&self) -> anyhow::Result<String> {
        let client = self.client.clone();
        let to = Address::p2pkh(PubkeyHash::from_byte_array([7; 20]), Network::Regtest);
        let hashes: Vec<String> = tokio::task::spawn_blocking(move || {
            client.call("generatetoaddress", &[json!(1), json!(to.to_string())])
        })
        .await??;
        hashes.into_iter().next().context("no block mined")
    }
}

fn config(url: &str, rpc: &Rpc, start_height: u32, workers: u32, poll_ms: u64) -> Config {
    let mut cfg = Config::with_defaults(url, &rpc.url, &rpc.user, &rpc.password, TOKEN);
    cfg.listen_addr = "127.0.0.1:0".parse().expect("an address");
    cfg.poll_interval_ms = poll_ms;
    cfg.start_height = Some(start_height);
    cfg.webhook_workers = workers;
    cfg.webhook_allow_nets =
        chainledger::delivery::Guard::parse_nets("127.0.0.0/8").expect("a range");
    cfg.script_handlers = true;
    cfg
}

/// The subscriber `BENCH_FORMAT` asks for, delivering to `url`.
fn subscriber_body(url: &str) -> anyhow::Result<Value> {
    Ok(
        match std::env::var("BENCH_FORMAT")
            .as_deref()
            .unwrap_or("standard")
        {
            "standard" => json!({"url": url, "start": "now"}),
            "cryptoassets" => json!({"url": url, "start": "now", "format": "cryptoassets"}),
            "script" => json!({"command": ["/bin/true"], "start": "now"}),
            other => bail!("BENCH_FORMAT={other}: standard, cryptoassets or script"),
        },
    )
}

/// CPU seconds so far of this process, of the PostgreSQL cluster (the postmaster and its
/// children) and of the receiver.
#[derive(Clone, Copy)]
struct CpuSample {
    this: f64,
    postgres: f64,
    receiver: f64,
    /// The whole machine (/proc/stat): busy and idle CPU seconds, all cores.
    busy: f64,
    idle: f64,
}

/// Busy and idle (idle + iowait) CPU seconds of the whole machine since boot.
fn machine() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    ((all - idle) as f64 / 100.0, idle as f64 / 100.0)
}

impl std::ops::Sub for CpuSample {
    type Output = CpuSample;
    fn sub(self, b: CpuSample) -> CpuSample {
        CpuSample {
            this: self.this - b.this,
            postgres: self.postgres - b.postgres,
            receiver: self.receiver - b.receiver,
            busy: self.busy - b.busy,
            idle: self.idle - b.idle,
        }
    }
}

fn cpu_sample(postmaster: u32, receiver: u32) -> CpuSample {
    let postgres = postgres_cpu(postmaster);
    let (busy, idle) = machine();
    CpuSample {
        this: cpu("self").map_or(0.0, |(_, s)| s),
        postgres,
        receiver: cpu(&receiver.to_string()).map_or(0.0, |(_, s)| s),
        busy,
        idle,
    }
}

// ---------------------------------------------------------------------------------------
// The receiver process.

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// `bench_delivery receiver`: answers every POST with 200 and counts; `GET /count` answers
/// "REQUESTS BYTES". Prints its port on stdout, then serves until killed.
async fn receiver_main() -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    let app = axum::Router::new()
        .route(
            "/count",
            axum::routing::get(move || {
                let c = c.clone();
                async move {
                    format!(
                        "{} {}",
                        c.requests.load(Ordering::Relaxed),
                        c.bytes.load(Ordering::Relaxed)
                    )
                }
            }),
        )
        .fallback(axum::routing::post(move |body: Bytes| {
            let c = counts.clone();
            async move {
                c.requests.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}

struct ReceiverProc {
    child: tokio::process::Child,
    port: u16,
    http: reqwest::Client,
}

impl ReceiverProc {
    async fn start() -> anyhow::Result<ReceiverProc> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("receiver")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("receiver stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        let port = line.trim().parse().context("the receiver's port")?;
        Ok(ReceiverProc {
            child,
            port,
            http: reqwest::Client::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn count(&self) -> anyhow::Result<(u64, u64)> {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{}/count", self.port))
            .send()
            .await?
            .text()
            .await?;
        let (a, b) = text.split_once(' ').context("count answer")?;
        Ok((a.parse()?, b.parse()?))
    }
}

/// The load generator: `concurrency` loops POSTing `body` with webhook-like headers over
/// one keep-alive client for `secs`; 2xx answers per second, and the CPU it all took.
async fn load(
    url: &str,
    body: &Bytes,
    concurrency: usize,
    secs: f64,
    cpu_of: impl Fn() -> CpuSample,
) -> anyhow::Result<(f64, CpuSample)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let ok = Arc::new(AtomicU64::new(0));
    let before = cpu_of();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, ok, url, body) = (client.clone(), ok.clone(), url.to_string(), body.clone());
        tasks.spawn(async move {
            let id = Uuid::new_v4().to_string();
            let sig = format!("v1,{}", "A".repeat(44));
            while Instant::now() < deadline {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("user-agent", "chainledger/0.1.0")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", "1795302000")
                    .header("webhook-signature", &sig)
                    .body(body.clone())
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        ok.load(Ordering::Relaxed) as f64 / elapsed,
        cpu_of() - before,
    ))
}

// ---------------------------------------------------------------------------------------
// delivery

struct Shape {
    subscribers: usize,
    workers: u32,
    /// WEBHOOK_GROUP_COMMIT_ENTRIES for this run (`SxWxE`); None: the configured one.
    window: Option<u32>,
}

impl Shape {
    /// The WEBHOOK_WORKERS column: the workers, and the group-commit window when given.
    fn workers_label(&self) -> String {
        match self.window {
            Some(e) => format!("{} (group commit {e})", self.workers),
            None => self.workers.to_string(),
        }
    }
}

struct Run {
    secs: f64,
    delivered: u64,
    expected: u64,
    cpu: CpuSample,
    request_secs: f64,
    requests: f64,
    create_secs: f64,
    /// Journal entries and the transactions that wrote them (distinct `recorded_at`, which
    /// is the transaction's start time).
    journal: (i64, i64),
}

async fn delivery_run(
    rpc: &Rpc,
    receiver: &ReceiverProc,
    i: usize,
    shape: &Shape,
    per_subscriber: usize,
) -> anyhow::Result<Run> {
    let url = shared::create_database(&format!("delivery_{i}")).await?;
    let pool = PgPool::connect(&url).await?;
    let mut cfg = config(&url, rpc, rpc.height()? + 1, shape.workers, 1000);
    if let Some(entries) = shape.window {
        cfg.webhook_group_commit_entries = entries;
    }
    let running = chainledger::app::start(cfg).await?;
    let api = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let started = Instant::now();
    for _ in 0..shape.subscribers {
        let r = http
            .post(format!("{api}/v1/subscribers"))
            .bearer_auth(TOKEN)
            .json(&subscriber_body(&receiver.url())?)
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 201,
            "create: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let create_secs = started.elapsed().as_secs_f64();

    let postmaster = shared::postmaster(&pool).await?;
    // In the mempool (0 confirmations), so every event is also a cryptoassets txupdate (a
    // deposit.seen first seen in a block is not: its deposit.confirmed is).
    let mut batch = shared::deposit_seen_events(per_subscriber, 0);
    for e in &mut batch {
        if let chainledger::domain::events::Event::DepositSeen(d) = &mut e.event {
            d.confirmations = 0;
        }
    }
    let (received_before, _) = receiver.count().await?;
    let metrics_before = histogram(
        &chainledger::metrics::render(),
        "chainledger_webhook_request_seconds",
    );
    let mut tx = pool.begin().await?;
    store::append(&mut tx, &batch).await?;
    tx.commit().await?;
    // The clock and the CPU counters start at the commit (not before the append).
    let started = Instant::now();
    let cpu_before = cpu_sample(postmaster, receiver.pid());
    let head = store::head(&pool).await?;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM subscriber_cursors WHERE status <> 'deleted' AND cursor < $1",
        )
        .bind(head)
        .fetch_one(&pool)
        .await?;
        if behind == 0 {
            break;
        }
        let stuck: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM subscriber_cursors WHERE status IN ('retrying', 'disabled')",
        )
        .fetch_one(&pool)
        .await?;
        anyhow::ensure!(stuck == 0, "{stuck} subscribers are retrying or disabled");
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "not delivered within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_sample(postmaster, receiver.pid()) - cpu_before;
    let metrics_after = histogram(
        &chainledger::metrics::render(),
        "chainledger_webhook_request_seconds",
    );
    let (received_after, _) = receiver.count().await?;
    running.shutdown().await;
    let journal: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT recorded_at) FROM delivery_attempts WHERE kind = 'attempt'",
    )
    .fetch_one(&pool)
    .await?;
    // Script handlers reach no receiver: their deliveries are the journal's.
    let delivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery_attempts WHERE kind = 'attempt' AND outcome = 'delivered'",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    let received = received_after - received_before;
    anyhow::ensure!(
        received == 0 || received == delivered as u64,
        "the receiver got {received}, the journal says {delivered} delivered"
    );
    Ok(Run {
        secs,
        delivered: delivered as u64,
        expected: (per_subscriber * shape.subscribers) as u64,
        cpu,
        request_secs: metrics_after.0 - metrics_before.0,
        requests: metrics_after.1 - metrics_before.1,
        create_secs,
        journal,
    })
}

async fn delivery(args: &[String]) -> anyhow::Result<()> {
    let total: usize = args.first().map_or(Ok(20_000), |s| s.parse())?;
    let load_secs: f64 = args.get(1).map_or(Ok(3.0), |s| s.parse())?;
    let rpc = Rpc::from_env(Duration::from_secs(60))?;
    let receiver = ReceiverProc::start().await?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    // A body exactly like the webhooks': one of the events, serialised as `send` does.
    let sample = shared::deposit_seen_events(1, 12345).remove(0);
    let body = Bytes::from(serde_json::to_vec(&StoredEvent {
        position: chainledger::domain::stream::Position(12346),
        id: Uuid::new_v4(),
        kind: sample.event.kind(),
        stream: sample.stream,
        stream_version: 0,
        recorded_at: chrono::Utc::now(),
        data: sample.event.to_data(),
        schema_version: 1,
        metadata: sample.metadata,
        prev_hash: Vec::new(),
        hash: Vec::new(),
    })?);

    // BENCH_SHAPES="100x100,100x16" (SUBSCRIBERSxWORKERS) picks other shapes, e.g. to profile.
    let shapes: Vec<Shape> = std::env::var("BENCH_SHAPES")
        .unwrap_or_else(|_| "1x16,10x16,100x100,100x16".into())
        .split(',')
        .map(|s| {
            let mut parts = s.split('x').map(str::trim);
            let mut next = || parts.next().context("BENCH_SHAPES: SxW[xE],…");
            let (a, b) = (next()?, next()?);
            Ok(Shape {
                subscribers: a.parse()?,
                workers: b.parse()?,
                window: parts.next().map(str::parse).transpose()?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let levels = [1usize, 10, 100];
    let pg_admin = PgPool::connect(&std::env::var("PG_URL")?).await?;
    let postmaster = shared::postmaster(&pg_admin).await?;
    let rpid = receiver.pid();
    let mut capacity = Vec::new();
    for &c in &levels {
        let (rate, cpu) = load(&receiver.url(), &body, c, load_secs, || {
            cpu_sample(postmaster, rpid)
        })
        .await?;
        eprintln!("bench: receiver capacity at concurrency {c}: {rate:.0}/s");
        capacity.push((c, rate, cpu));
    }

    let mut runs = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let per = total / shape.subscribers;
        let run = delivery_run(&rpc, &receiver, i, shape, per).await?;
        eprintln!(
            "bench: {} subscribers, {} workers: {:.0} deliveries/s",
            shape.subscribers,
            shape.workers_label(),
            run.delivered as f64 / run.secs
        );
        runs.push(run);
    }

    let mut capacity_after = Vec::new();
    for &c in &levels {
        let (rate, _) = load(&receiver.url(), &body, c, load_secs, || {
            cpu_sample(postmaster, rpid)
        })
        .await?;
        capacity_after.push(rate);
    }

    println!(
        "Webhook body: {} bytes (a `deposit.seen` envelope); {cores} cores; subscribers: BENCH_FORMAT={}.\n",
        body.len(),
        std::env::var("BENCH_FORMAT").unwrap_or_else(|_| "standard".into())
    );
    println!("| receiver capacity (load generator) | concurrency | requests/s (before / after the runs) | CPU s: load generator / receiver / other processes / idle over {load_secs} s |");
    println!("|---|---:|---:|---:|");
    for (k, (c, rate, cpu)) in capacity.iter().enumerate() {
        println!(
            "| reqwest, keep-alive, {c} request loops | {c} | {rate:.0} / {:.0} | {:.2} / {:.2} / {:.2} / {:.2} |",
            capacity_after[k],
            cpu.this,
            cpu.receiver,
            (cpu.busy - cpu.this - cpu.receiver - cpu.postgres).max(0.0),
            cpu.idle
        );
    }
    println!();
    println!("| subscribers | WEBHOOK_WORKERS | events each | deliveries | seconds | deliveries/s | of receiver capacity | HTTP request time per delivery ms | journal entries per transaction | creating the subscribers s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (shape, run) in shapes.iter().zip(&runs) {
        let conc = shape.subscribers.min(shape.workers as usize);
        let k = levels
            .iter()
            .position(|&l| l >= conc)
            .unwrap_or(levels.len() - 1);
        let cap = capacity[k].1.max(capacity_after[k]);
        let rate = run.delivered as f64 / run.secs;
        println!(
            "| {} | {} | {} | {}{} | {:.2} | {rate:.0} | {:.2} (of {cap:.0}, concurrency {}) | {:.2} | {:.1} | {:.2} |",
            shape.subscribers,
            shape.workers_label(),
            total / shape.subscribers,
            run.delivered,
            if run.delivered == run.expected {
                String::new()
            } else {
                format!(" (expected {})", run.expected)
            },
            run.secs,
            rate / cap,
            levels[k],
            1000.0 * run.request_secs / run.requests.max(1.0),
            run.journal.0 as f64 / run.journal.1.max(1) as f64,
            run.create_secs,
        );
    }
    println!();
    println!("| CPU during delivery (s, share of wall time × {cores} cores) | service (this process) | PostgreSQL | receiver | other processes | idle | µs of CPU per delivery (service / PostgreSQL / receiver) |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (shape, run) in shapes.iter().zip(&runs) {
        let wall = run.secs * cores as f64;
        let pct = |s: f64| format!("{s:.2} ({:.0}%)", 100.0 * s / wall);
        let ours = run.cpu.this + run.cpu.postgres + run.cpu.receiver;
        let us = |s: f64| 1e6 * s / run.delivered.max(1) as f64;
        println!(
            "| {} subscribers, {} workers | {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} |",
            shape.subscribers,
            shape.workers_label(),
            pct(run.cpu.this),
            pct(run.cpu.postgres),
            pct(run.cpu.receiver),
            pct((run.cpu.busy - ours).max(0.0)),
            pct(run.cpu.idle),
            us(run.cpu.this),
            us(run.cpu.postgres),
            us(run.cpu.receiver),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// latency

/// An arrival: the block hash, when it came (monotonic and wall) and the event's
/// `recorded_at` (the append's time by PostgreSQL's clock).
struct Arrival {
    hash: String,
    at: Instant,
    wall: SystemTime,
    recorded_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A receiver on its own thread and runtime, so arrivals are stamped even while the
/// service's runtime is busy.
fn arrival_receiver() -> anyhow::Result<(String, tokio::sync::mpsc::UnboundedReceiver<Arrival>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let app = axum::Router::new().fallback(axum::routing::post(move |body: Bytes| {
                let (at, wall) = (Instant::now(), SystemTime::now());
                let tx = tx.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let _ = tx.send(Arrival {
                        // A block's hash, or a deposit's txid.
                        hash: v["data"]["hash"]
                            .as_str()
                            .or(v["data"]["txid"].as_str())
                            .unwrap_or_default()
                            .to_string(),
                        at,
                        wall,
                        recorded_at: v["recorded_at"].as_str().and_then(|s| s.parse().ok()),
                    });
                    axum::http::StatusCode::OK
                }
            }));
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("receiver");
        });
    });
    Ok((url, rx))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

async fn latency(args: &[String]) -> anyhow::Result<()> {
    let blocks: usize = args.first().map_or(Ok(100), |s| s.parse())?;
    let poll_ms: u64 = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let deposits: usize = args.get(2).map_or(Ok(blocks), |s| s.parse())?;
    let rpc = Rpc::from_env(Duration::from_secs(60))?;
    let (hook, mut arrivals) = arrival_receiver()?;
    let url = shared::create_database(&format!("latency_{poll_ms}")).await?;
    // Coins for the mempool deposits: a mature coinbase of the node's wallet.
    let funding: String = rpc.call("getnewaddress", &[])?;
    let _: Value = rpc.call("generatetoaddress", &[json!(101), json!(funding)])?;
    let running =
        chainledger::app::start(config(&url, &rpc, rpc.height()? + 1, 16, poll_ms)).await?;
    let api = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{api}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let r = post(
        "/v1/subscribers",
        json!({"url": hook, "types": "block.connected,deposit.seen", "start": "now"}),
    )
    .await?;
    anyhow::ensure!(r.status() == 201, "create: {}", r.text().await?);
    let watched: String = rpc.call("getnewaddress", &[])?;
    let account: Value = post("/v1/accounts", json!({"label": "latency"}))
        .await?
        .json()
        .await?;
    let r = post(
        &format!(
            "/v1/accounts/{}/addresses",
            account["id"].as_str().unwrap_or_default()
        ),
        json!({"address": watched}),
    )
    .await?;
    anyhow::ensure!(r.status() == 201, "watch: {}", r.text().await?);

    // Node accepted (the RPC returned) → that event's webhook arrived.
    async fn until(
        arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<Arrival>,
        id: &str,
    ) -> anyhow::Result<Arrival> {
        loop {
            let a = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
                .await
                .context("no webhook within 30 s")?
                .context("receiver stopped")?;
            if a.hash == id {
                return Ok(a);
            }
        }
    }
    let mut total = Vec::new();
    let mut to_append = Vec::new();
    let mut to_arrive = Vec::new();
    let mut deposit_total = Vec::new();
    for _ in 0..blocks {
        let pause = rand::thread_rng().gen_range(0..poll_ms.max(1));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let hash = rpc.mine_one().await?;
        let (accepted, accepted_wall) = (Instant::now(), SystemTime::now());
        let arrival = until(&mut arrivals, &hash).await?;
        total.push(arrival.at.duration_since(accepted).as_secs_f64() * 1000.0);
        if let Some(rec) = arrival.recorded_at {
            let rec: SystemTime = rec.into();
            let ms = |a: SystemTime, b: SystemTime| match a.duration_since(b) {
                Ok(d) => d.as_secs_f64() * 1000.0,
                Err(e) => -e.duration().as_secs_f64() * 1000.0,
            };
            to_append.push(ms(rec, accepted_wall));
            to_arrive.push(ms(arrival.wall, rec));
        }
    }
    for i in 0..deposits {
        let pause = rand::thread_rng().gen_range(0..poll_ms.clamp(1, 500));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let txid: String = rpc.call("sendtoaddress", &[json!(watched), json!(0.01)])?;
        let accepted = Instant::now();
        let arrival = until(&mut arrivals, &txid).await?;
        deposit_total.push(arrival.at.duration_since(accepted).as_secs_f64() * 1000.0);
        if i % 20 == 19 {
            rpc.mine_one().await?; // unconfirmed change chains hit the node's limits
        }
    }
    running.shutdown().await;

    println!("| POLL_INTERVAL_MS {poll_ms}, {blocks} blocks, {deposits} mempool deposits | p50 ms | p90 ms | p99 ms | max ms | mean ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, v) in [
        ("block accepted → webhook arrived", &mut total),
        ("accepted → event appended (`recorded_at`)", &mut to_append),
        ("appended → webhook arrived", &mut to_arrive),
        (
            "mempool deposit accepted → `deposit.seen` webhook arrived",
            &mut deposit_total,
        ),
    ] {
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 50.0),
            percentile(v, 90.0),
            percentile(v, 99.0),
            v[v.len() - 1],
            v.iter().sum::<f64>() / v.len() as f64
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ipnidle

/// `ipnidle`: S IPN subscribers, one per watched address (as a shop subscribes each invoice
/// address), none of which the appended events concern; A appends of 100 `deposit.seen`
/// events for another address, one transaction each, waiting after each until every
/// cursor has reached the head: what idle IPN subscribers cost the dispatcher per append.
async fn ipn_idle(args: &[String]) -> anyhow::Result<()> {
    let subscribers: usize = args.first().map_or(Ok(1000), |s| s.parse())?;
    let appends: usize = args.get(1).map_or(Ok(20), |s| s.parse())?;
    let rpc = Rpc::from_env(Duration::from_secs(60))?;
    let receiver = ReceiverProc::start().await?;
    let url = shared::create_database("ipn_idle").await?;
    let pool = PgPool::connect(&url).await?;
    let running = chainledger::app::start(config(&url, &rpc, rpc.height()? + 1, 16, 1000)).await?;
    let api = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .post(path)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 201, "{} {}", r.status(), r.text().await?);
            Ok::<Value, anyhow::Error>(r.json().await?)
        }
    };
    let account = post(format!("{api}/v1/accounts"), json!({"label": "shop"})).await?;
    let account = account["id"].as_str().context("account id")?.to_string();
    let started = Instant::now();
    for _ in 0..subscribers {
        let hash: [u8; 20] = rand::thread_rng().gen();
        let address = Address::p2pkh(PubkeyHash::from_byte_array(hash), Network::Regtest);
        post(
            format!("{api}/v1/accounts/{account}/addresses"),
            json!({"address": address.to_string()}),
        )
        .await?;
        post(
            format!("{api}/v1/subscribers"),
            json!({"url": receiver.url(), "format": "ipn", "address": address.to_string()}),
        )
        .await?;
    }
    let setup = started.elapsed().as_secs_f64();
    let journal = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM delivery_attempts")
            .fetch_one(&pool)
            .await
    };
    let postmaster = shared::postmaster(&pool).await?;
    let journal_before = journal().await?;
    // After each append: the time until the subscribers' cursors and journal stop changing
    // (the last change; "quiet" = unchanged for QUIET), and the CPU the service and
    // PostgreSQL spend in that window.
    const QUIET: Duration = Duration::from_millis(500);
    let (mut settle, mut cpu_ms) = (Vec::new(), Vec::new());
    for i in 0..appends {
        let batch = shared::deposit_seen_events(100, 1_000_000 + i * 100);
        let before = cpu_sample(postmaster, receiver.pid());
        let mut tx = pool.begin().await?;
        store::append(&mut tx, &batch).await?;
        tx.commit().await?;
        let t = Instant::now();
        let state = || async {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT sum(journal_n)::bigint FROM subscriber_cursors",
            )
            .fetch_one(&pool)
            .await
        };
        let (mut last, mut changed_at) = (state().await?, Duration::ZERO);
        while t.elapsed() - changed_at < QUIET {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = state().await?;
            if now != last {
                (last, changed_at) = (now, t.elapsed());
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "never quiet");
        }
        let used = cpu_sample(postmaster, receiver.pid()) - before;
        settle.push(changed_at.as_secs_f64() * 1000.0);
        cpu_ms.push((used.this + used.postgres) * 1000.0);
    }
    let behind: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM subscriber_cursors c, log_head h WHERE c.cursor < h.position",
    )
    .fetch_one(&pool)
    .await?;
    let rows = journal().await? - journal_before;
    let (received, _) = receiver.count().await?;
    running.shutdown().await;
    pool.close().await;
    anyhow::ensure!(received == 0, "the receiver got {received} requests");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    settle.sort_by(f64::total_cmp);
    println!("{subscribers} IPN subscribers (set up in {setup:.1} s), {appends} appends of 100 events for another address:\n");
    println!("| after an append: cursors settled, p50 ms | p90 ms | max ms | service + PostgreSQL CPU ms per append (incl. {} ms quiet) | journal rows per append | subscribers behind the head at the end |", QUIET.as_millis());
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {behind} |",
        percentile(&settle, 50.0),
        percentile(&settle, 90.0),
        settle[settle.len() - 1],
        mean(&cpu_ms),
        rows as f64 / appends as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new()?;
    if args.first().map(String::as_str) == Some("receiver") {
        return rt.block_on(receiver_main());
    }
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("delivery") => delivery(&args[1..]).await,
            Some("latency") => latency(&args[1..]).await,
            Some("ipnidle") => ipn_idle(&args[1..]).await,
            _ => bail!(
                "usage: bench_delivery delivery [DELIVERIES SECONDS] | latency [BLOCKS POLL_INTERVAL_MS] | ipnidle [SUBSCRIBERS APPENDS] | receiver"
            ),
        }
    })
}
