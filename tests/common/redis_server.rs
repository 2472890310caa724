//! A private `redis-server` (Debian's package, installed by tools/install-deps) on a free
//! loopback port, with an append-only file fsynced on every write in its own directory,
//! so a server stopped and started again on the same port and directory keeps its
//! streams. Killed and removed when dropped; a missing `redis-server` fails the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;
use super::process::free_port;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    password: Option<String>,
}

/// One stream entry: its id and its fields in order.
pub type Entry = (String, Vec<(String, String)>);

impl RedisServer {
    /// A server without a password.
    pub async fn start() -> RedisServer {
        Self::start_with(None).await
    }

    /// A server whose default user needs `password` (`requirepass`), when given.
    pub async fn start_with(password: Option<&str>) -> RedisServer {
        let dir = std::env::temp_dir()
            .join("chainledger-tests")
            .join(format!("redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            password: password.map(String::from),
        };
        server.restart().await;
        server
    }

    /// `redis://[:password@]127.0.0.1:port`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Starts the server (again) on its port and directory and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): run tools/install-deps (Debian's redis-server)"
            )
        });
        self.child = Some(child);
        eventually(Duration::from_secs(20), || async {
            let mut c = self.connect().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut c).await.ok()
        })
        .await;
    }

    /// SIGTERM, then waits for it to exit: Redis flushes the append-only file first.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("redis-server running");
        self.signal(&child, "TERM");
        child.wait().unwrap();
    }

    /// Sends `signal` ("STOP", "CONT") to the running server.
    pub fn pause(&self, signal: &str) {
        self.signal(self.child.as_ref().expect("redis-server running"), signal);
    }

    fn signal(&self, child: &Child, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} redis-server");
    }

    pub async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// How many entries `stream` has (XLEN).
    pub async fn len(&self, stream: &str) -> usize {
        let mut c = self.connect().await.expect("connect to redis-server");
        redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut c)
            .await
            .expect("XLEN")
    }

    /// Every entry of `stream`, oldest first (XRANGE - +).
    pub async fn entries(&self, stream: &str) -> Vec<Entry> {
        let mut c = self.connect().await.expect("connect to redis-server");
        let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .expect("XRANGE");
        raw.into_iter()
            .map(|(id, flat)| {
                let fields = flat
                    .chunks(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                (id, fields)
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A field of an entry.
pub fn field<'a>(entry: &'a Entry, name: &str) -> &'a str {
    entry
        .1
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("entry {} has no field {name}", entry.0))
}

/// The stream holds every event of `log` once, in order: ids `<position>-1`, fields
/// `type`, `position`, `id`, `prev` (the entry before's position, 0 for the first) and
/// `data` (the envelope, as the tail shows it).
pub fn assert_stream_is_the_log(entries: &[Entry], log: &[serde_json::Value]) {
    let ids: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let expected: Vec<String> = log
        .iter()
        .map(|e| format!("{}-1", e["position"].as_i64().unwrap()))
        .collect();
    assert_eq!(ids, expected, "every event once, in order, id <position>-1");
    let mut prev = 0;
    for (entry, event) in entries.iter().zip(log) {
        let position = event["position"].as_i64().unwrap();
        assert_eq!(field(entry, "type"), event["type"].as_str().unwrap());
        assert_eq!(field(entry, "position"), position.to_string());
        assert_eq!(field(entry, "id"), event["id"].as_str().unwrap());
        assert_eq!(field(entry, "prev"), prev.to_string(), "entry {}", entry.0);
        let data: serde_json::Value = serde_json::from_str(field(entry, "data")).unwrap();
        assert_eq!(&data, event, "entry {}: the envelope", entry.0);
        prev = position;
    }
}
