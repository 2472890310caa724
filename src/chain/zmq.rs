//! ZMQ push from the node: a block notification starts a sync at once, a `rawtx` is
//! scanned in memory without any RPC. The follower asks the node what it publishes
//! (`getzmqnotifications` on Bitcoin Core, `activezmqnotifications` on the Bitcoin SV
//! node), subscribes to `hashblock`, `rawtx` and (Core) `sequence` with the pure-Rust
//! `zeromq` crate, which reconnects by itself when the node goes away and comes back.
//!
//! Polling stays the reconciliation path and runs whatever ZMQ does: every topic's
//! messages carry a counter, and a gap (a lost message, or the node restarted and its
//! counters began again) is logged and answered with an immediate reconciliation; a full
//! queue is treated the same way, so memory stays bounded whatever the node sends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bitcoin::{BlockHash, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketEvent, SocketRecv};

use super::node::ZmqEndpoint;
use crate::metrics;

/// Topics we use, of those a node may publish.
const TOPICS: &[&str] = &["hashblock", "rawtx", "sequence"];
/// Messages waiting for the follower; past this they are dropped and a reconciliation
/// is asked for instead.
pub const QUEUE: usize = 10_000;

/// What the node pushed.
#[derive(Debug)]
pub enum Push {
    Block(BlockHash),
    Tx(Box<Transaction>),
    /// Something may have been missed: reconcile by polling now.
    Gap,
}

/// `BITCOIND_ZMQ`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ZmqMode {
    /// Subscribe to what the node publishes, if anything.
    Auto,
    /// Poll only.
    Off,
}

impl ZmqMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ZmqMode::Auto => "auto",
            ZmqMode::Off => "off",
        }
    }
}

/// What `/v1/status` and the metrics say about ZMQ.
#[derive(Debug, Default)]
pub struct ZmqStatus {
    /// A socket to the node is up.
    pub connected: AtomicBool,
    /// `topic address` pairs subscribed to.
    pub endpoints: Mutex<Vec<String>>,
    pub messages: AtomicU64,
    pub gaps: AtomicU64,
}

/// The subscriber tasks, one per address the node publishes on; dropping it stops them.
pub struct Subscription {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Subscribes to the topics we use among `published`; `None` when the node publishes
/// none of them.
pub fn subscribe(
    published: &[ZmqEndpoint],
    tx: mpsc::Sender<Push>,
    status: Arc<ZmqStatus>,
) -> Option<Subscription> {
    let mut by_address: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in published {
        if let Some(topic) = TOPICS.iter().find(|t| **t == e.topic) {
            by_address
                .entry(e.address.as_str())
                .or_default()
                .push(topic);
        }
    }
    if by_address.is_empty() {
        return None;
    }
    *status.endpoints.lock().expect("not poisoned") = by_address
        .iter()
        .flat_map(|(a, topics)| topics.iter().map(move |t| format!("{t} {a}")))
        .collect();
    let tasks = by_address
        .into_iter()
        .map(|(address, topics)| {
            let (address, topics) = (address.to_string(), topics.clone());
            let (tx, status) = (tx.clone(), status.clone());
            tokio::spawn(async move {
                if let Err(e) = listen(&address, &topics, &tx, &status).await {
                    tracing::warn!(%address, error = %e, "ZMQ subscription ended; polling alone");
                }
                status.connected.store(false, Ordering::Relaxed);
                metrics::record_zmq_connected(false);
            })
        })
        .collect();
    Some(Subscription { tasks })
}

async fn listen(
    address: &str,
    topics: &[&str],
    tx: &mpsc::Sender<Push>,
    status: &ZmqStatus,
) -> Result<(), zeromq::ZmqError> {
    let mut socket = zeromq::SubSocket::new();
    let mut events = socket.monitor();
    socket.connect(address).await?;
    for t in topics {
        socket.subscribe(t).await?;
    }
    tracing::info!(%address, ?topics, "ZMQ: subscribed");
    set_connected(status, true);
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        tokio::select! {
            event = futures::StreamExt::next(&mut events) => match event {
                Some(SocketEvent::Disconnected(_)) => {
                    tracing::warn!(%address, "ZMQ: disconnected; reconnecting, polling meanwhile");
                    set_connected(status, false);
                }
                Some(SocketEvent::Connected(..)) => {
                    tracing::info!(%address, "ZMQ: connected again");
                    set_connected(status, true);
                    // Messages sent while we were away are lost: reconcile.
                    let _ = tx.try_send(Push::Gap);
                }
                Some(_) => {}
                None => return Ok(()),
            },
            message = socket.recv() => {
                let frames: Vec<Vec<u8>> = message?.into_vec().into_iter().map(|f| f.to_vec()).collect();
                status.messages.fetch_add(1, Ordering::Relaxed);
                let Some(push) = parse(&frames, &mut expected, status) else { continue };
                if tx.try_send(push).is_err() {
                    // The follower is behind: drop, and reconcile when it catches up.
                    gap(status, "the queue is full");
                    let _ = tx.try_send(Push::Gap);
                }
            }
        }
    }
}

fn set_connected(status: &ZmqStatus, up: bool) {
    status.connected.store(up, Ordering::Relaxed);
    metrics::record_zmq_connected(up);
}

fn gap(status: &ZmqStatus, why: &str) {
    status.gaps.fetch_add(1, Ordering::Relaxed);
    metrics::record_zmq_gap();
    tracing::warn!(
        why,
        "ZMQ: messages may have been missed; reconciling by polling"
    );
}

/// One message (`topic`, body, 4-byte little-endian counter) as what it means; a counter
/// that is not the previous one plus one is a gap.
fn parse(
    frames: &[Vec<u8>],
    expected: &mut BTreeMap<String, u32>,
    status: &ZmqStatus,
) -> Option<Push> {
    let [topic, body, counter] = frames else {
        return None;
    };
    let topic = String::from_utf8_lossy(topic).to_string();
    let counter = u32::from_le_bytes(counter.get(..4)?.try_into().ok()?);
    let gapped = expected
        .insert(topic.clone(), counter.wrapping_add(1))
        .is_some_and(|next| next != counter);
    if gapped {
        gap(status, "a message counter skipped");
        return Some(Push::Gap);
    }
    match topic.as_str() {
        "hashblock" => {
            let mut bytes: [u8; 32] = body.as_slice().try_into().ok()?;
            bytes.reverse(); // published in the order the RPC writes it
            Some(Push::Block(bitcoin::hashes::Hash::from_byte_array(bytes)))
        }
        "rawtx" => bitcoin::consensus::deserialize(body)
            .ok()
            .map(|t| Push::Tx(Box::new(t))),
        // Core's mempool and chain sequence: its counter finds gaps; blocks come by
        // hashblock and transactions by rawtx.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(topic: &str, body: &[u8], counter: u32) -> Vec<Vec<u8>> {
        vec![
            topic.as_bytes().to_vec(),
            body.to_vec(),
            counter.to_le_bytes().to_vec(),
        ]
    }

    #[test]
    fn counters_that_skip_are_gaps_and_block_hashes_read_as_the_rpc_writes_them() {
        let status = ZmqStatus::default();
        let mut expected = BTreeMap::new();
        let mut body = [0u8; 32];
        body[0] = 0xab; // the RPC's first byte
        match parse(&frames("hashblock", &body, 7), &mut expected, &status) {
            Some(Push::Block(h)) => assert!(h.to_string().starts_with("ab")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&frames("hashblock", &body, 8), &mut expected, &status),
            Some(Push::Block(_))
        ));
        assert!(matches!(
            parse(&frames("hashblock", &body, 10), &mut expected, &status),
            Some(Push::Gap)
        ));
        // Another topic counts on its own; a node restarted begins again at 0: a gap.
        assert!(parse(&frames("sequence", &body, 0), &mut expected, &status).is_none());
        assert!(matches!(
            parse(&frames("hashblock", &body, 0), &mut expected, &status),
            Some(Push::Gap)
        ));
        assert_eq!(status.gaps.load(Ordering::Relaxed), 2);
        assert!(parse(&frames("rawtx", b"not a tx", 0), &mut expected, &status).is_none());
    }
}
