//! Configuration: one struct, filled from flags and the environment. Secrets are redacted
//! in `Debug`, so the struct can be logged at start-up.

mod redacted;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "chainledger",
    version,
    about = "Bitcoin deposits as a gapless, replayable event log"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Follow the node, append events, serve the HTTP API.
    Serve(Box<Config>),
    /// Apply the database migrations and create the projection tables, then exit.
    Migrate(DatabaseArgs),
    /// Replay the log into fresh projection tables, verify them, and swap them in.
    RebuildProjections(RebuildArgs),
    /// Write the log with its hash chain as JSON Lines or CSV.
    AuditExport(ExportArgs),
    /// Recompute the hash chain of the database's log or of an exported file.
    VerifyLog(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Only these projections (repeatable): ledger, subscriber_cursors. Default: all.
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
    /// Compare and report; change nothing. Exits 1 when the live tables differ.
    #[arg(long)]
    pub verify_only: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: crate::audit::Format,
    /// First position (default 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    pub from: i64,
    /// Last position (default: the head when the export starts).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub to: Option<i64>,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// PostgreSQL connection URL (not needed with --file).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// First position to check (its predecessor's hash is taken from the log).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    pub from: i64,
    /// Check this export (JSON Lines, or CSV by its .csv extension) instead of the database.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// How many times to try connecting before giving up (one second apart).
    #[arg(long, env = "DATABASE_CONNECT_RETRIES", default_value_t = 30)]
    pub database_connect_retries: u32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetworkName {
    Regtest,
    Testnet,
    Signet,
    Mainnet,
}

impl NetworkName {
    pub fn bitcoin(self) -> bitcoin::Network {
        match self {
            NetworkName::Regtest => bitcoin::Network::Regtest,
            NetworkName::Testnet => bitcoin::Network::Testnet,
            NetworkName::Signet => bitcoin::Network::Signet,
            NetworkName::Mainnet => bitcoin::Network::Bitcoin,
        }
    }

    /// The `chain` field `getblockchaininfo` reports for this network.
    pub fn node_chain(self) -> &'static str {
        match self {
            NetworkName::Regtest => "regtest",
            NetworkName::Testnet => "test",
            NetworkName::Signet => "signet",
            NetworkName::Mainnet => "main",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkName::Regtest => "regtest",
            NetworkName::Testnet => "testnet",
            NetworkName::Signet => "signet",
            NetworkName::Mainnet => "mainnet",
        }
    }
}

#[derive(Args, Clone)]
pub struct Config {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The node's JSON-RPC URL, e.g. http://127.0.0.1:18443.
    #[arg(long, env = "BITCOIND_RPC_URL")]
    pub bitcoind_rpc_url: String,
    /// RPC user (with --bitcoind-rpc-password); or use --bitcoind-rpc-cookie.
    #[arg(long, env = "BITCOIND_RPC_USER")]
    pub bitcoind_rpc_user: Option<String>,
    #[arg(long, env = "BITCOIND_RPC_PASSWORD", hide_env_values = true)]
    pub bitcoind_rpc_password: Option<String>,
    /// Path of the node's .cookie file.
    #[arg(long, env = "BITCOIND_RPC_COOKIE")]
    pub bitcoind_rpc_cookie: Option<PathBuf>,
    /// Must match the node's chain, else the service refuses to start.
    #[arg(long, env = "NETWORK", value_enum, default_value = "regtest")]
    pub network: NetworkName,
    /// Where the HTTP API listens.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Bearer token required on every /v1 route; at least 16 characters.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Confirmations at which a deposit is credited (accounts may override).
    #[arg(long, env = "CREDIT_CONFIRMATIONS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub credit_confirmations: u32,
    /// Confirmations at which a deposit is final and no longer tracked.
    #[arg(long, env = "FINAL_CONFIRMATIONS", default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..))]
    pub final_confirmations: u32,
    /// How often the node is polled for new blocks and mempool changes (with ZMQ, the
    /// reconciliation that catches what a lost message missed).
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// How long the chain leader lease lasts without renewal (renewed every third of it):
    /// a dead or paused leader is replaced after at most this plus a quarter of it.
    #[arg(long, env = "LEADER_LEASE_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(300..))]
    pub leader_lease_ms: u64,
    /// This instance's name in the leader lease and `/v1/status`; default: the host name
    /// and a random suffix, new at each start.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// `auto`: subscribe to the node's ZMQ notifications (blocks, transactions) when it
    /// publishes them, and poll as well; `off`: poll only.
    #[arg(long, env = "BITCOIND_ZMQ", value_enum, default_value = "auto")]
    pub bitcoind_zmq: crate::chain::zmq::ZmqMode,
    /// When the follower is more than a few blocks behind, it connects several blocks per
    /// transaction, up to this many events (at least one block each).
    #[arg(long, env = "CATCHUP_MAX_EVENTS", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub catchup_max_events: u32,
    /// Seconds a 0-confirmation deposit may be missing from the node's mempool, unmined,
    /// before it is `deposit.dropped`.
    #[arg(long, env = "MEMPOOL_DROP_GRACE_SECS", default_value_t = 600)]
    pub mempool_drop_grace_secs: u64,
    /// Height a new database starts following at; default: the node's tip.
    #[arg(long, env = "START_HEIGHT")]
    pub start_height: Option<u32>,
    /// Delays before each webhook attempt (ms, s, m, h); its length is the number of
    /// attempts per event before the subscriber is disabled.
    #[arg(long, env = "WEBHOOK_RETRY_SCHEDULE", default_value = crate::delivery::schedule::DEFAULT,
          value_parser = crate::delivery::Schedule::parse)]
    pub webhook_retry_schedule: crate::delivery::Schedule,
    /// Timeout of one webhook request (connecting included).
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 15000, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_timeout_ms: u64,
    /// CIDR ranges (comma-separated) webhook targets may resolve into despite not being
    /// public, e.g. 127.0.0.0/8 for a receiver on this machine.
    #[arg(long, env = "WEBHOOK_ALLOW_NETS", value_delimiter = ',', value_parser = parse_net)]
    pub webhook_allow_nets: Vec<ipnet::IpNet>,
    /// Browser origins (comma-separated, e.g. https://ops.example.com) allowed to call the
    /// API cross-origin (CORS), e.g. an `EventSource` on the SSE stream. Empty: none.
    #[arg(long, env = "CORS_ALLOW_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allow_origins: Vec<axum::http::HeaderValue>,
    /// Subscribers delivered to concurrently by this instance.
    #[arg(long, env = "WEBHOOK_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_workers: u32,
    /// Allow subscribers that are commands (`{"command": [...]}`), run once per event with
    /// the event in their environment. Off by default: whoever holds the API token could
    /// otherwise run programs on this machine.
    #[arg(long, env = "SCRIPT_HANDLERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub script_handlers: bool,
    /// A second token (at least 16 characters) for the Crypto IPN endpoints `/btc` and
    /// `/btc_ipn` only (as `Authorization: Bearer` or `?token=`); they also take API_TOKEN.
    #[arg(long, env = "IPN_TOKEN", hide_env_values = true)]
    pub ipn_token: Option<String>,
    /// The `ipn_auth` shared secret of IPN subscriptions made through `/btc_ipn` without an
    /// `ipn_auth` field; unset: a random one per subscription.
    #[arg(long, env = "IPN_AUTH", hide_env_values = true)]
    pub ipn_auth: Option<String>,
    /// User name the Bitcart-daemon-compatible endpoint (/bitcart) asks for (HTTP Basic
    /// auth, the SDK's rpc_user). It also names the client's cursors there.
    #[arg(long, env = "BITCART_USER", default_value = "chainledger")]
    pub bitcart_user: String,
    /// Password of /bitcart (the SDK's rpc_pass), at least 16 characters; default:
    /// API_TOKEN.
    #[arg(long, env = "BITCART_PASSWORD", hide_env_values = true)]
    pub bitcart_password: Option<String>,
    /// An http(s) proxy every webhook goes through. Unset: webhooks connect directly and
    /// HTTP_PROXY, HTTPS_PROXY and ALL_PROXY are ignored (through a proxy the connection-time
    /// SSRF check would see the proxy's address, not the target's); set: each target's
    /// addresses are checked before its request is handed to the proxy.
    // Checked by `validate`, not by a value parser, whose error would print it unredacted.
    #[arg(long, env = "WEBHOOK_PROXY", hide_env_values = true)]
    pub webhook_proxy: Option<String>,
    /// A subscriber's group-commit window: its worker sends the next webhook while the
    /// previous ones' journal entries wait for their batch, as long as the oldest waiting
    /// one is younger than this many milliseconds; 0: every delivery waits for its entry.
    #[arg(long, env = "WEBHOOK_GROUP_COMMIT_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub webhook_group_commit_ms: u64,
    /// ... and fewer than this many wait: at most this many webhooks are delivered again
    /// per subscriber after a crash. 1: every delivery waits for its entry.
    #[arg(long, env = "WEBHOOK_GROUP_COMMIT_ENTRIES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_group_commit_entries: u32,
    /// Milliseconds a client has to send a request's headers in full, from the opening of
    /// the connection or from the first byte after the previous response; then it is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_ms: u64,
    /// Milliseconds a keep-alive connection may wait, idle, for its next request; also how
    /// long a response may wait for a client that does not read it.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_ms: u64,
    /// Milliseconds a request body has to arrive in full once its headers have; then 408.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_ms: u64,
    /// HTTP connections served at once (websockets and SSE streams included); one more is
    /// answered 503. Default: what the file-descriptor limit (RLIMIT_NOFILE) leaves after
    /// the database pool, the node's RPC and webhook delivery, at most 16384.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: Option<u32>,
    /// HTTP connections one client address (an IPv6 /64) may hold at once; one more is
    /// answered 503. Default: a quarter of HTTP_MAX_CONNECTIONS.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS_PER_IP", value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections_per_ip: Option<u32>,
    /// A streaming replica of DATABASE_URL (`pg_basebackup -R`) that serves the reads: the
    /// tail, SSE, audit export, balances, deposits, subscribers' lists, Bitcart and IPN.
    /// Unset: everything on the primary. README "Read replicas".
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
}

fn parse_origin(s: &str) -> Result<axum::http::HeaderValue, String> {
    let url = url::Url::parse(s.trim()).map_err(|e| format!("`{s}` is not an origin: {e}"))?;
    let origin = url.origin().ascii_serialization();
    if origin == "null" || url.path() != "/" {
        return Err(format!(
            "`{s}` is not an origin like https://ops.example.com"
        ));
    }
    axum::http::HeaderValue::from_str(&origin).map_err(|e| e.to_string())
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let nets = crate::delivery::Guard::parse_nets(s)?;
    nets.into_iter()
        .next()
        .ok_or_else(|| "an empty range".to_string())
}

impl Config {
    /// `serve`'s settings as its command line would give them with only these set (the
    /// environment still applies, as for the binary): for tests, benchmarks and embedding.
    pub fn with_defaults(
        database_url: &str,
        rpc_url: &str,
        rpc_user: &str,
        rpc_password: &str,
        api_token: &str,
    ) -> Config {
        let cli = Cli::try_parse_from([
            "chainledger",
            "serve",
            "--database-url",
            database_url,
            "--bitcoind-rpc-url",
            rpc_url,
            "--bitcoind-rpc-user",
            rpc_user,
            "--bitcoind-rpc-password",
            rpc_password,
            "--api-token",
            api_token,
        ])
        .unwrap_or_else(|e| panic!("the defaults parse: {e}"));
        match cli.command {
            Command::Serve(cfg) => *cfg,
            _ => unreachable!("parsed as serve"),
        }
    }

    /// The database pool: the connections held for long (one per webhook worker among
    /// them) plus the HTTP handlers' share.
    pub fn database_pool_size(&self) -> u32 {
        20 + self.webhook_workers
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// WEBHOOK_PROXY parsed: an http(s) URL with a host; the error shows it redacted.
    pub fn webhook_proxy_url(&self) -> Result<Option<url::Url>, String> {
        let Some(raw) = &self.webhook_proxy else {
            return Ok(None);
        };
        match url::Url::parse(raw.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Ok(Some(url))
            }
            _ => Err(format!(
                "WEBHOOK_PROXY `{}` is not an http:// or https:// proxy URL like http://proxy:3128",
                redact_url(raw)
            )),
        }
    }

    pub fn delivery(&self) -> crate::delivery::DeliveryConfig {
        crate::delivery::DeliveryConfig {
            schedule: self.webhook_retry_schedule.clone(),
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            workers: self.webhook_workers as usize,
            guard: std::sync::Arc::new(crate::delivery::Guard::new(
                self.webhook_allow_nets.clone(),
            )),
            script_handlers: self.script_handlers,
            credit_confirmations: self.credit_confirmations,
            // Checked by validate() before the service starts.
            proxy: self.webhook_proxy_url().ok().flatten(),
            group_commit: crate::delivery::GroupCommit {
                window: Duration::from_millis(self.webhook_group_commit_ms),
                entries: self.webhook_group_commit_entries as usize,
            },
        }
    }

    /// Checks that need no IO; the one-line reason is what the service exits with.
    pub fn validate(&self) -> Result<(), String> {
        match &self.api_token {
            None => {
                return Err(
                    "API_TOKEN is missing: set a bearer token of at least 16 characters".into(),
                )
            }
            Some(t) if t.chars().count() < 16 => {
                return Err("API_TOKEN is too short: it needs at least 16 characters".into())
            }
            _ => {}
        }
        if self
            .ipn_token
            .as_ref()
            .is_some_and(|t| t.chars().count() < 16)
        {
            return Err("IPN_TOKEN is too short: it needs at least 16 characters".into());
        }
        if self.bitcart_user.is_empty() || self.bitcart_user.contains(':') {
            return Err("BITCART_USER must be non-empty and without `:` (HTTP Basic auth)".into());
        }
        if self
            .bitcart_password
            .as_ref()
            .is_some_and(|p| p.chars().count() < 16)
        {
            return Err("BITCART_PASSWORD is too short: it needs at least 16 characters".into());
        }
        if self.credit_confirmations > self.final_confirmations {
            return Err(format!(
                "CREDIT_CONFIRMATIONS ({}) is above FINAL_CONFIRMATIONS ({})",
                self.credit_confirmations, self.final_confirmations
            ));
        }
        self.webhook_proxy_url()?;
        if let Some(url) = &self.database_read_url {
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|e| {
                    format!(
                        "DATABASE_READ_URL {} is not a PostgreSQL URL: {e}",
                        redact_url(url)
                    )
                })?;
        }
        if self.bitcoind_rpc_cookie.is_none()
            && (self.bitcoind_rpc_user.is_none() || self.bitcoind_rpc_password.is_none())
        {
            return Err("node credentials missing: set BITCOIND_RPC_USER and BITCOIND_RPC_PASSWORD, or BITCOIND_RPC_COOKIE".into());
        }
        Ok(())
    }
}

/// Credentials in URLs are redacted by one function, [`crate::redact`].
pub use crate::redact::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitcart_credentials_default_to_the_api_token_and_a_short_password_is_refused() {
        let mut cfg = Config::with_defaults(
            "postgres://u@h/db",
            "http://127.0.0.1:1",
            "u",
            "p",
            "a-token-of-16-chars",
        );
        assert_eq!(
            (cfg.bitcart_user.as_str(), cfg.bitcart_password.as_deref()),
            ("chainledger", None)
        );
        assert_eq!(cfg.validate(), Ok(()));
        cfg.bitcart_password = Some("electrumz".into());
        assert!(cfg.validate().unwrap_err().starts_with("BITCART_PASSWORD"));
        cfg.bitcart_password = None;
        cfg.bitcart_user = "a:b".into();
        assert!(cfg.validate().unwrap_err().starts_with("BITCART_USER"));
        cfg.bitcart_password = Some("a-bitcart-password-0123".into());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("a-token-of-16-chars") && !shown.contains("a-bitcart-password"));
        cfg.db.database_url = "postgres://u:dbsecret@h/db?password=qsecret".into();
        cfg.bitcoind_rpc_url = "http://rpc:rpcsecret@127.0.0.1:1/".into();
        cfg.webhook_proxy = Some("http://p:proxysecret@proxy:3128".into());
        let shown = format!("{cfg:?}");
        for secret in ["dbsecret", "qsecret", "rpcsecret", "proxysecret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(cfg.webhook_proxy_url().unwrap().is_some());
        cfg.bitcart_user = "chainledger".into();
        assert_eq!(cfg.validate(), Ok(()));
        cfg.webhook_proxy = Some("socks5://p:proxysecret@proxy:1080".into());
        let refused = cfg.validate().unwrap_err();
        assert!(
            refused.starts_with("WEBHOOK_PROXY") && !refused.contains("proxysecret"),
            "{refused}"
        );
    }
}
