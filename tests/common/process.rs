//! The service as a separate process of the release-shaped binary, for what only a
//! process shows: SIGKILL, SIGSTOP/SIGCONT, several instances against one database.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{binary, eventually, Node, Service, TOKEN};

/// A service process on its own port; SIGKILLed when dropped, also when a test fails.
pub struct ServiceProcess {
    child: Child,
    pub port: u16,
}

impl ServiceProcess {
    /// `chainledger serve` against `db` and `node`, with the tests' usual settings, then
    /// `env` (which may override them).
    pub fn spawn(db: &str, node: &Node, port: u16, env: &[(&str, String)]) -> ServiceProcess {
        let child = Command::new(binary())
            .arg("serve")
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
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the binary");
        ServiceProcess { child, port }
    }

    /// A client of this process.
    pub fn client(&self) -> Service {
        Service::at(format!("http://127.0.0.1:{}", self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // A stopped process cannot die of SIGKILL until it is continued on some kernels'
        // reaping paths; continue it first.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
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
