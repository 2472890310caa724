//! The service as a separate process of the release-shaped binary, for what only a
//! process shows: SIGKILL, SIGSTOP/SIGCONT, several instances against one database.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{binary, eventually, Node, Service, TOKEN};

/// No settings beyond the tests' usual ones, for [`ServiceProcess::spawn`].
pub const NO_ENV: &[(&str, &str)] = &[];

/// A service process on its own port; SIGKILLed when dropped, also when a test fails.
pub struct ServiceProcess {
    child: Child,
    pub port: u16,
}

impl ServiceProcess {
    /// `chainledger serve` against `db` and `node` on `port`, with the tests' usual
    /// settings, then `env` (which may override them).
    pub fn spawn<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        db: &str,
        node: &Node,
        port: u16,
        env: &[(K, V)],
    ) -> ServiceProcess {
        Self::spawn_with(db, node, port, env, None)
    }

    /// As [`ServiceProcess::spawn`], its file-descriptor limit set to `nofile` (soft and
    /// hard) when given.
    pub fn spawn_with<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        db: &str,
        node: &Node,
        port: u16,
        env: &[(K, V)],
        nofile: Option<u64>,
    ) -> ServiceProcess {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env("DATABASE_URL", db)
            .env("BITCOIND_RPC_URL", &node.url)
            .env("BITCOIND_RPC_USER", &node.user)
            .env("BITCOIND_RPC_PASSWORD", &node.password)
            .env("NETWORK", "regtest")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("API_TOKEN", TOKEN)
            .env("FINAL_CONFIRMATIONS", "6")
            .env("POLL_INTERVAL_MS", "20")
            .env("WEBHOOK_ALLOW_NETS", "127.0.0.0/8")
            .env("WEBHOOK_RETRY_SCHEDULE", "0s,200ms,400ms")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("start the binary");
        ServiceProcess { child, port }
    }

    /// A client of this process.
    pub fn client(&self) -> Service {
        Service::at(format!("http://127.0.0.1:{}", self.port))
    }

    /// A client of this process connecting from `source` (a loopback address: the
    /// service counts connections per client address).
    pub fn client_from(&self, source: Ipv4Addr) -> Service {
        let mut svc = self.client();
        svc.http = reqwest::Client::builder()
            .local_address(IpAddr::V4(source))
            .build()
            .unwrap();
        svc
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's threads now (/proc/PID/status).
    pub fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a Threads line")
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `signal` ("STOP", "CONT", "KILL", "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// SIGTERM, then waits for the process to exit (a graceful shutdown), SIGKILL after
    /// `within`.
    pub fn terminate(&mut self, within: Duration) {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the service did not shut down within {within:?} of SIGTERM");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // Continued first, so a test failing while it is stopped leaves nothing stopped.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `svc` answers `/healthz`.
pub async fn wait_healthy(svc: &Service) {
    eventually(Duration::from_secs(30), || async {
        let r = svc
            .http
            .get(format!("{}/healthz", svc.base))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}
