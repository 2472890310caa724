//! Wiring: checks the configuration, connects and migrates the database, checks the node's
//! network, then runs the chain follower, the webhook dispatcher and the HTTP server until
//! shut down.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::chain::follower::FollowerConfig;
use crate::chain::node::Credentials;
use crate::chain::rescan::Rescanner;
use crate::chain::{Follower, FollowerStatus, Node};
use crate::config::Config;
use crate::db;
use crate::delivery::Dispatcher;
use crate::http::{self, AppState};
use crate::redact::redact;
use crate::store::notify::LogWatch;
use crate::store::replica::ReadPool;
use crate::unit_of_work::UnitOfWork;

/// A started service; dropping it does not stop it, [`Running::shutdown`] does.
pub struct Running {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits for Ctrl-C or SIGTERM, then shuts down.
    pub async fn until_signalled(self) {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Starts the service; any error is a one-line reason not to run, with the secrets of
/// any URL it names (the database's, the node's, a driver's message) redacted.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    start_checked(cfg)
        .await
        .map_err(|e| anyhow::anyhow!(redact(&format!("{e:#}"))))
}

async fn start_checked(cfg: Config) -> anyhow::Result<Running> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let limits = http::server::Limits::resolve(&cfg).map_err(anyhow::Error::msg)?;
    tracing::info!(config = ?cfg, "starting");
    let pool = db::connect(&cfg.db, cfg.database_pool_size()).await?;
    db::migrate(&pool).await?;

    let credentials = match (
        &cfg.bitcoind_rpc_cookie,
        &cfg.bitcoind_rpc_user,
        &cfg.bitcoind_rpc_password,
    ) {
        (_, Some(u), Some(p)) => Credentials::UserPass(u.clone(), p.clone()),
        (Some(cookie), _, _) => Credentials::Cookie(cookie.clone()),
        _ => unreachable!("validate() requires credentials"),
    };
    let node = Node::connect(&cfg.bitcoind_rpc_url, credentials)?;
    let info = node.chain_info().await.with_context(|| {
        format!(
            "the node at {} does not answer",
            redact(&cfg.bitcoind_rpc_url)
        )
    })?;
    if info.chain != cfg.network.node_chain() {
        anyhow::bail!(
            "the node is on chain `{}` but NETWORK is {} (expected chain `{}`)",
            info.chain,
            cfg.network.as_str(),
            cfg.network.node_chain()
        );
    }
    tracing::info!(chain = %info.chain, height = info.blocks, best = %info.bestblockhash, "node reached");

    let log = LogWatch::start(pool.clone())
        .await
        .context("failed to listen for appended events")?;
    let instance_id = cfg.instance_id.clone().unwrap_or_else(default_instance_id);
    let status = Arc::new(FollowerStatus {
        instance_id: instance_id.clone(),
        ..FollowerStatus::default()
    });
    let (stop, stopped) = watch::channel(false);
    let unit_of_work = UnitOfWork::new(pool.clone(), cfg.network.bitcoin());
    let follower = Follower::new(
        unit_of_work.clone(),
        node.clone(),
        FollowerConfig {
            final_confirmations: cfg.final_confirmations,
            drop_grace: std::time::Duration::from_secs(cfg.mempool_drop_grace_secs),
            start_height: cfg.start_height,
            poll_interval: cfg.poll_interval(),
            zmq: cfg.bitcoind_zmq,
            catchup_max_events: cfg.catchup_max_events as usize,
            leader_lease: std::time::Duration::from_millis(cfg.leader_lease_ms),
        },
        status.clone(),
    );
    let follower_task = tokio::spawn(follower.run(stopped.clone()));

    let wake_rescans = Arc::new(Notify::new());
    let rescanner = Rescanner {
        unit_of_work: unit_of_work.clone(),
        pool: pool.clone(),
        node: node.clone(),
        final_confirmations: cfg.final_confirmations,
        wake: wake_rescans.clone(),
    };
    let rescan_task = tokio::spawn(rescanner.run(stopped.clone()));

    let delivery = cfg.delivery();
    let wake = Arc::new(Notify::new());
    let transport = Arc::new(
        crate::delivery::transport::Transport::new(delivery.clone())
            .context("failed to set up webhook delivery")?,
    );
    let dispatcher = Dispatcher::new(
        log.clone(),
        &delivery,
        unit_of_work.clone(),
        transport.clone(),
        wake.clone(),
    );
    let dispatcher_task = tokio::spawn(dispatcher.run(stopped.clone()));
    let gauges_task = tokio::spawn(crate::gauges::run(pool.clone(), stopped.clone()));

    let api_token = cfg.api_token.clone().unwrap_or_default();
    let bitcart_password = cfg.bitcart_password.as_deref().unwrap_or(&api_token);
    let read_pool = match &cfg.database_read_url {
        None => ReadPool::primary_only(pool.clone(), log.clone()),
        Some(url) => ReadPool::with_replica(
            pool.clone(),
            log.clone(),
            db::connect_replica(url, cfg.database_pool_size())?,
            stopped.clone(),
        ),
    };
    let state = AppState {
        read_pool,
        bitcart_auth: Arc::new(http::BasicAuth::new(&cfg.bitcart_user, bitcart_password)),
        pool,
        unit_of_work,
        node,
        network: cfg.network,
        api_token: Arc::from(api_token.as_str()),
        credit_confirmations: cfg.credit_confirmations,
        final_confirmations: cfg.final_confirmations,
        log,
        follower: status,
        zmq_mode: cfg.bitcoind_zmq,
        webhook_guard: delivery.guard,
        wake_delivery: wake,
        transport,
        shutdown: stopped.clone(),
        cors_allow_origins: cfg.cors_allow_origins.clone(),
        script_handlers: cfg.script_handlers,
        ipn_token: cfg.ipn_token.as_deref().map(Arc::from),
        ipn_auth: cfg.ipn_auth.as_deref().map(Arc::from),
        wake_rescans,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
        .await
        .with_context(|| format!("failed to listen on {}", cfg.listen_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_per_ip,
        "HTTP API listening"
    );
    let server = tokio::spawn(http::server::serve(
        listener,
        http::router(state),
        limits,
        stopped,
    ));
    Ok(Running {
        addr,
        stop,
        tasks: vec![
            follower_task,
            rescan_task,
            dispatcher_task,
            gauges_task,
            server,
        ],
    })
}

/// `<host name>-<8 hex digits>`: which machine, and new at every start (a restarted
/// instance is a new lease holder).
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "chainledger".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}
