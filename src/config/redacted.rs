//! How the configuration appears in logs: every `Debug` of a settings struct, with
//! passwords, tokens and the credentials inside URLs redacted ([`crate::redact`]). The
//! start-up line prints [`Config`] through this.

use std::fmt;

use super::{Config, DatabaseArgs, VerifyArgs};
use crate::redact::redact_url;

impl fmt::Debug for VerifyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyArgs")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("from", &self.from)
            .field("file", &self.file)
            .finish()
    }
}

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &redact_url(&self.database_url))
            .field("database_connect_retries", &self.database_connect_retries)
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("db", &self.db)
            .field("bitcoind_rpc_url", &redact_url(&self.bitcoind_rpc_url))
            .field("bitcoind_rpc_user", &self.bitcoind_rpc_user)
            .field(
                "bitcoind_rpc_password",
                &self.bitcoind_rpc_password.as_ref().map(|_| "<redacted>"),
            )
            .field("bitcoind_rpc_cookie", &self.bitcoind_rpc_cookie)
            .field("network", &self.network)
            .field("listen_addr", &self.listen_addr)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("credit_confirmations", &self.credit_confirmations)
            .field("final_confirmations", &self.final_confirmations)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("bitcoind_zmq", &self.bitcoind_zmq)
            .field("leader_lease_ms", &self.leader_lease_ms)
            .field("instance_id", &self.instance_id)
            .field("catchup_max_events", &self.catchup_max_events)
            .field("start_height", &self.start_height)
            .field("mempool_drop_grace_secs", &self.mempool_drop_grace_secs)
            .field(
                "webhook_retry_schedule",
                &self.webhook_retry_schedule.delays,
            )
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("webhook_allow_nets", &self.webhook_allow_nets)
            .field("webhook_workers", &self.webhook_workers)
            .field("webhook_group_commit_ms", &self.webhook_group_commit_ms)
            .field(
                "webhook_group_commit_entries",
                &self.webhook_group_commit_entries,
            )
            .field("cors_allow_origins", &self.cors_allow_origins)
            .field("script_handlers", &self.script_handlers)
            .field("ipn_token", &self.ipn_token.as_ref().map(|_| "<redacted>"))
            .field("ipn_auth", &self.ipn_auth.as_ref().map(|_| "<redacted>"))
            .field("bitcart_user", &self.bitcart_user)
            .field(
                "bitcart_password",
                &self.bitcart_password.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "webhook_proxy",
                &self.webhook_proxy.as_deref().map(redact_url),
            )
            .field("http_header_timeout_ms", &self.http_header_timeout_ms)
            .field("http_idle_timeout_ms", &self.http_idle_timeout_ms)
            .field("http_body_timeout_ms", &self.http_body_timeout_ms)
            .field("http_max_connections", &self.http_max_connections)
            .field(
                "http_max_connections_per_ip",
                &self.http_max_connections_per_ip,
            )
            .field(
                "database_read_url",
                &self.database_read_url.as_deref().map(redact_url),
            )
            .finish()
    }
}
