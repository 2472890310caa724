//! The connection limits: the settings, and the default cap fitted to the process's
//! file-descriptor limit.

use std::time::Duration;

use crate::config::Config;

/// Connections answered 503 at once, beyond the cap, at most (each holds a descriptor).
const MAX_REFUSING: usize = 64;
/// The fitted default cap never exceeds this.
const MAX_DEFAULT_CONNECTIONS: usize = 16_384;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// Connections beyond the caps answered 503 at once; past these they are closed.
    pub refusing: usize,
}

impl Limits {
    /// The settings of `cfg`, the caps fitted to the file-descriptor limit (raised to its
    /// hard limit first); the error is the one-line reason not to start.
    pub fn resolve(cfg: &Config) -> Result<Limits, String> {
        Self::fit(cfg, raise_descriptor_limit())
    }

    /// [`Limits::resolve`] for a process allowed `nofile` descriptors.
    pub fn fit(cfg: &Config, nofile: u64) -> Result<Limits, String> {
        let reserved = reserved_descriptors(cfg);
        let available = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(reserved);
        if available < 2 {
            return Err(format!(
                "the file-descriptor limit ({nofile}) is too low: the database pool, the node \
                 and webhook delivery need about {reserved}; raise it (ulimit -n)"
            ));
        }
        let refusing = (available / 8).clamp(1, MAX_REFUSING);
        let fitted = (available - refusing).min(MAX_DEFAULT_CONNECTIONS);
        let max_connections = match cfg.http_max_connections {
            None => fitted,
            Some(n) if n as usize <= available - refusing => n as usize,
            Some(n) => {
                return Err(format!(
                    "HTTP_MAX_CONNECTIONS ({n}) needs more file descriptors than the limit \
                     ({nofile}) leaves after the database pool, the node and webhook delivery: \
                     at most {} here; raise the limit (ulimit -n) or lower the setting",
                    available - refusing
                ))
            }
        };
        let max_per_ip = match cfg.http_max_connections_per_ip {
            None => (max_connections / 4).max(1),
            Some(n) if n as usize <= max_connections => n as usize,
            Some(n) => {
                return Err(format!(
                    "HTTP_MAX_CONNECTIONS_PER_IP ({n}) is above HTTP_MAX_CONNECTIONS ({max_connections})"
                ))
            }
        };
        Ok(Limits {
            header_timeout: Duration::from_millis(cfg.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.http_idle_timeout_ms),
            body_timeout: Duration::from_millis(cfg.http_body_timeout_ms),
            max_connections,
            max_per_ip,
            refusing,
        })
    }
}

/// Descriptors the rest of the service may hold at once: the database pool and the
/// connections kept outside it (the leader lock, LISTEN), the node's RPC calls and ZMQ
/// sockets, webhook requests (and a script handler's pipes), and a margin for the
/// runtime, the logs and name lookups.
fn reserved_descriptors(cfg: &Config) -> usize {
    let workers = cfg.webhook_workers as usize;
    let database = cfg.database_pool_size() as usize + 4;
    let node = crate::chain::node::MAX_CALLS + 4;
    let delivery = workers * if cfg.script_handlers { 6 } else { 2 };
    64 + database + node + delivery
}

/// Raises the soft RLIMIT_NOFILE to the hard one; the soft limit in force.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::with_defaults(
            "postgres://u@h/db",
            "http://127.0.0.1:1",
            "u",
            "p",
            "a-token-of-16-chars",
        )
    }

    #[test]
    fn the_default_cap_leaves_the_rest_of_the_service_its_descriptors() {
        let cfg = config();
        let reserved = reserved_descriptors(&cfg);
        let limits = Limits::fit(&cfg, 256).unwrap();
        assert!(limits.max_connections + limits.refusing + reserved <= 256);
        assert!(limits.max_connections >= 50, "{limits:?}");
        assert_eq!(limits.max_per_ip, limits.max_connections / 4);
        assert_eq!(
            Limits::fit(&cfg, 1 << 20).unwrap().max_connections,
            MAX_DEFAULT_CONNECTIONS
        );
        assert!(Limits::fit(&cfg, 64)
            .unwrap_err()
            .contains("file-descriptor limit (64) is too low"));
    }

    #[test]
    fn caps_beyond_the_descriptor_limit_or_per_ip_above_the_total_are_refused() {
        let mut cfg = config();
        cfg.http_max_connections = Some(5000);
        let e = Limits::fit(&cfg, 256).unwrap_err();
        assert!(e.starts_with("HTTP_MAX_CONNECTIONS (5000)"), "{e}");
        assert_eq!(
            Limits::fit(&cfg, 100_000).unwrap().max_connections,
            5000,
            "set explicitly, the cap may exceed the fitted default's ceiling"
        );
        cfg.http_max_connections = Some(10);
        cfg.http_max_connections_per_ip = Some(11);
        let e = Limits::fit(&cfg, 256).unwrap_err();
        assert!(e.starts_with("HTTP_MAX_CONNECTIONS_PER_IP (11)"), "{e}");
    }
}
