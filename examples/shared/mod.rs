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

/// A log shaped like real deposits: `accounts` `account.created` first (see
/// [`Deposits::accounts`]), then deposits of 8 events each (seen, confirmed ×3, credited,
/// confirmed ×2, final) over those accounts, a group of deposits in flight together
/// interleaved as blocks interleave them. Ledger-valid: rebuild-projections folds it.
pub struct Deposits {
    accounts: Vec<uuid::Uuid>,
    next: usize,
}

pub const PER_DEPOSIT: usize = 8;

impl Deposits {
    pub fn new(accounts: usize) -> Deposits {
        Deposits {
            accounts: (0..accounts).map(|_| uuid::Uuid::new_v4()).collect(),
            next: 0,
        }
    }

    /// The `account.created` events (append them first).
    pub fn accounts(&self) -> Vec<NewEvent> {
        self.accounts
            .iter()
            .flat_map(|id| {
                chainledger::domain::account::create(
                    *id,
                    "bench".into(),
                    3,
                    None,
                    &json!({"source": "bench"}),
                )
                .expect("a plain account")
            })
            .collect()
    }

    /// The events of the next `deposits` deposits, in flight together (8 × `deposits`).
    pub fn group(&mut self, deposits: usize) -> Vec<NewEvent> {
        let (first, end) = (self.next, self.next + deposits);
        self.next = end;
        let mut batch = Vec::with_capacity(deposits * PER_DEPOSIT);
        for step in 0..PER_DEPOSIT {
            for d in first..end {
                batch.push(self.event(d, first, step));
            }
        }
        batch
    }

    fn event(&self, d: usize, group: usize, step: usize) -> NewEvent {
        let (conf, credited, status) = match step {
            0 => (0, false, Status::Mempool),
            1..=3 => (step as u32, false, Status::Confirming),
            4 => (3, true, Status::Credited),
            5 | 6 => (step as u32 - 1, true, Status::Credited),
            _ => (6, true, Status::Final),
        };
        let n = self.accounts.len();
        let deposit = Deposit {
            account_id: self.accounts[d % n],
            address: format!("addr-{}", d % n),
            txid: format!("{d:064x}").parse().expect("a txid"),
            vout: 0,
            amount: Btc(Sats(50_000_000)),
            amount_sats: Sats(50_000_000),
            confirmations: conf,
            block_hash: (conf > 0).then(|| format!("{group:064x}").parse().expect("a hash")),
            block_height: (conf > 0).then_some(1000 + group as u32),
            credited,
            credit_confirmations: 3,
            status,
            inputs: vec![],
        };
        let event = match step {
            0 => Event::DepositSeen(deposit.clone()),
            4 => Event::DepositCredited(deposit.clone()),
            7 => Event::DepositFinal(deposit.clone()),
            _ => Event::DepositConfirmed(deposit.clone()),
        };
        NewEvent {
            stream: StreamName::deposit(deposit.outpoint()),
            expected_version: (step > 0).then(|| step as i32 - 1),
            event,
            metadata: json!({"source": "bench"}),
        }
    }
}

/// The API's router on 127.0.0.1 (a port of its own) over `pool`, its node a dead address
/// (the read routes never call it). Its address; the API token is `bench-token-0123456789`.
pub async fn serve_api(pool: &PgPool) -> anyhow::Result<std::net::SocketAddr> {
    use chainledger::http::{self, AppState};
    let never_stop = tokio::sync::watch::Sender::new(false);
    let log = chainledger::store::notify::LogWatch::start(pool.clone()).await?;
    let state = AppState {
        read_pool: chainledger::store::replica::ReadPool::primary_only(pool.clone(), log.clone()),
        pool: pool.clone(),
        unit_of_work: chainledger::unit_of_work::UnitOfWork::new(
            pool.clone(),
            bitcoin::Network::Regtest,
        ),
        node: chainledger::chain::Node::connect(
            "http://127.0.0.1:9",
            chainledger::chain::node::Credentials::UserPass("x".into(), "x".into()),
        )?,
        network: chainledger::config::NetworkName::Regtest,
        api_token: Arc::from("bench-token-0123456789"),
        credit_confirmations: 3,
        final_confirmations: 15,
        log,
        follower: Arc::new(chainledger::chain::FollowerStatus::default()),
        zmq_mode: chainledger::chain::zmq::ZmqMode::Off,
        webhook_guard: Arc::default(),
        wake_delivery: Arc::default(),
        transport: Arc::new(chainledger::delivery::transport::Transport::new(
            chainledger::delivery::DeliveryConfig {
                schedule: chainledger::delivery::Schedule::parse("0s")
                    .map_err(anyhow::Error::msg)?,
                timeout: std::time::Duration::from_secs(10),
                workers: 1,
                guard: Arc::default(),
                script_handlers: false,
                credit_confirmations: 3,
                proxy: None,
                group_commit: chainledger::delivery::GroupCommit::NONE,
            },
        )?),
        shutdown: never_stop.subscribe(),
        cors_allow_origins: Vec::new(),
        wake_rescans: Arc::default(),
        script_handlers: false,
        ipn_token: None,
        ipn_auth: None,
        bitcart_auth: Arc::new(http::BasicAuth::new("bench", "bench-token-0123456789")),
    };
    // The router lives as long as the process: the sender must too.
    std::mem::forget(never_stop);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, http::router(state)).await });
    Ok(addr)
}

/// Reads the tail `GET /v1/events` in pages of 1000 from `after` until `want` events were
/// read or the log ends: (events, bytes).
pub async fn read_tail(
    addr: std::net::SocketAddr,
    mut after: i64,
    want: usize,
) -> anyhow::Result<(usize, usize)> {
    let client = reqwest::Client::new();
    let (mut read, mut bytes) = (0usize, 0usize);
    while read < want {
        let limit = 1000.min(want - read);
        let body = client
            .get(format!(
                "http://{addr}/v1/events?after={after}&limit={limit}"
            ))
            .bearer_auth("bench-token-0123456789")
            .send()
            .await?
            .bytes()
            .await?;
        bytes += body.len();
        let page: Value = serde_json::from_slice(&body)?;
        read += page["events"].as_array().map_or(0, Vec::len);
        after = page["next_after"].as_i64().unwrap_or(after);
        if !page["has_more"].as_bool().unwrap_or(false) {
            break;
        }
    }
    Ok((read, bytes))
}

/// rebuild-projections of the ledger (what `chainledger rebuild-projections ledger` runs).
pub async fn rebuild_ledger(
    pool: &PgPool,
    mode: chainledger::projections::rebuild::Mode,
    compare: bool,
) -> anyhow::Result<chainledger::projections::rebuild::Report> {
    use chainledger::projections::{rebuild, Definition};
    let ledger = Definition::find("ledger").expect("the ledger projection");
    rebuild::rebuild(pool, &[ledger], mode, compare, &rebuild::Progress::Log).await
}
