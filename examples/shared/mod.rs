//! What the benchmark examples share: the regtest node's RPC client (from `NODE_RPC`, as
//! `tools/node start` prints it) and events shaped like `deposit.seen`.

#![allow(dead_code)] // each example uses its part

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bitcoincore_rpc::jsonrpc::minreq_http::MinreqHttpTransport;
use bitcoincore_rpc::{jsonrpc, Client, RpcApi};
use chainledger::domain::events::Event;
use chainledger::domain::stream::{NewEvent, StreamName};
use chainledger::domain::tracked::{Btc, Deposit, Status};
use chainledger::domain::Sats;
use serde_json::{json, Value};
use sqlx::PgPool;

pub struct Rpc {
    pub client: Arc<Client>,
    pub url: String,
    pub user: String,
    pub password: String,
}

impl Rpc {
    /// `NODE_RPC="URL USER PASSWORD"`, on jsonrpc's minreq transport (the one the service uses).
    pub fn from_env(timeout: Duration) -> anyhow::Result<Rpc> {
        let line = std::env::var("NODE_RPC").context("NODE_RPC=\"URL USER PASSWORD\"")?;
        let mut parts = line.split_whitespace().map(str::to_string);
        let (Some(url), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("NODE_RPC is not \"URL USER PASSWORD\"");
        };
        let transport = MinreqHttpTransport::builder()
            .url(&url)?
            .basic_auth(user.clone(), Some(password.clone()))
            .timeout(timeout)
            .build();
        Ok(Rpc {
            client: Arc::new(Client::from_jsonrpc(jsonrpc::Client::with_transport(
                transport,
            ))),
            url,
            user,
            password,
        })
    }

    pub fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &[Value],
    ) -> anyhow::Result<T> {
        self.client
            .call(method, params)
            .with_context(|| format!("{method} failed"))
    }

    pub fn height(&self) -> anyhow::Result<u32> {
        self.call("getblockcount", &[])
    }
}

/// `n` `deposit.seen` events (about 420 bytes of JSON each), one stream each, numbered
/// from `first`.
pub fn deposit_seen_events(n: usize, first: usize) -> Vec<NewEvent> {
    (first..first + n)
        .map(|i| {
            let deposit = Deposit {
                account_id: "5b0c3d6e-9a41-4a8e-8c7e-0f5d2a1b3c4d"
                    .parse()
                    .expect("a uuid"),
                address: "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into(),
                txid: format!("{i:064x}").parse().expect("a txid"),
                vout: 0,
                amount: Btc(Sats(150_000_000)),
                amount_sats: Sats(150_000_000),
                confirmations: 1,
                block_hash: Some(format!("{:064x}", i / 50).parse().expect("a hash")),
                block_height: Some(101 + i as u32 / 50),
                credited: false,
                credit_confirmations: 3,
                status: Status::Confirming,
                inputs: vec![],
            };
            NewEvent {
                stream: StreamName::deposit(deposit.outpoint()),
                expected_version: None,
                event: Event::DepositSeen(deposit),
                metadata: json!({"source": "bench"}),
            }
        })
        .collect()
}

/// A new database on the server at `PG_URL`.
pub async fn create_database(name: &str) -> anyhow::Result<String> {
    let admin = std::env::var("PG_URL").context("PG_URL")?;
    let pool = PgPool::connect(&admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&pool)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await?;
    pool.close().await;
    let i = admin.rfind('/').context("PG_URL has no database")?;
    Ok(format!("{}/{name}", &admin[..i]))
}

/// CPU seconds (user + system, all threads) of `pid`, and its parent's pid.
pub fn cpu(pid: &str) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((fields.get(1)?.parse().ok()?, ticks as f64 / 100.0))
}

/// The PostgreSQL postmaster's pid: the parent of `pool`'s backend (the server runs on
/// this machine).
pub async fn postmaster(pool: &PgPool) -> anyhow::Result<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await?;
    Ok(cpu(&backend.to_string())
        .context("the backend's /proc entry")?
        .0)
}

/// CPU seconds so far of the PostgreSQL cluster: the postmaster and its children
/// (backends, writers).
pub fn postgres_cpu(postmaster: u32) -> f64 {
    let mut postgres = cpu(&postmaster.to_string()).map_or(0.0, |(_, s)| s);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((parent, secs)) = cpu(pid) {
            if parent == postmaster {
                postgres += secs;
            }
        }
    }
    postgres
}

/// `name_sum` and `name_count` of a histogram in the Prometheus text.
pub fn histogram(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (value("_sum"), value("_count"))
}

/// Copies the events after `after` into a new table like `events` (its indexes too), in
/// transactions of `batch` rows with one `INSERT … SELECT FROM UNNEST` each: what the
/// database alone costs for the same rows. Seconds.
pub async fn raw_insert(
    pool: &PgPool,
    after: chainledger::domain::stream::Position,
    batch: usize,
) -> anyhow::Result<f64> {
    sqlx::raw_sql("DROP TABLE IF EXISTS raw_events; CREATE TABLE raw_events (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)")
        .execute(pool)
        .await?;
    let rows = chainledger::store::read_after(pool, after, i64::MAX, None).await?;
    let started = std::time::Instant::now();
    for chunk in rows.chunks(batch) {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO raw_events SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::int[], $5::text[],
                 $6::smallint[], $7::jsonb[], $8::jsonb[], $9::timestamptz[], $10::bytea[], $11::bytea[])",
        )
        .bind(chunk.iter().map(|e| e.position.0).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.stream.to_string()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.stream_version).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.schema_version).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.data.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.metadata.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.prev_hash.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|e| e.hash.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(started.elapsed().as_secs_f64())
}
