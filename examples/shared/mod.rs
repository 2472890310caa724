//! What the benchmark examples share: the regtest node's RPC client (from `NODE_RPC`, as
//! `tools/node start` prints it) and events shaped like `deposit.seen`.

#![allow(dead_code)] // each example uses its part

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bitcoincore_rpc::jsonrpc::minreq_http::MinreqHttpTransport;
use bitcoincore_rpc::{jsonrpc, Client, RpcApi};
use chainledger::domain::events::NewEvent;
use serde_json::{json, Value};

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

/// `n` events shaped like `deposit.seen` (about 420 bytes of JSON each), one stream each,
/// numbered from `first`.
pub fn deposit_seen_events(n: usize, first: usize) -> Vec<NewEvent> {
    (first..first + n)
        .map(|i| NewEvent {
            stream: format!("deposit-{i:064x}:0"),
            expected_version: None,
            kind: "deposit.seen",
            data: json!({
                "account_id": "5b0c3d6e-9a41-4a8e-8c7e-0f5d2a1b3c4d", "address": "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
                "txid": format!("{i:064x}"), "vout": 0, "amount": "1.50000000", "amount_sats": 150_000_000u64,
                "confirmations": 1, "block_hash": format!("{:064x}", i / 50), "block_height": 101 + i / 50,
                "credited": false, "credit_confirmations": 3, "status": "confirming"
            }),
            metadata: json!({"source": "bench"}),
        })
        .collect()
}
