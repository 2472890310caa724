//! Harness for faults and hostile clients (the service as a process is
//! [`super::process`]): a private
//! PostgreSQL cluster that can be restarted on its port, and raw sockets that speak HTTP
//! as badly as an attacker does.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use uuid::Uuid;

use super::{scratch, tool, Node, Service};

/// A PostgreSQL cluster of the test's own (tools/pg), so it can be restarted; stopped
/// and removed when dropped.
pub struct PrivateCluster {
    dir: PathBuf,
    pub url: String,
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        let dir = scratch(&format!("pg-{}", Uuid::new_v4().simple()));
        let url = tool(&["pg", "start", dir.to_str().unwrap()]);
        PrivateCluster { dir, url }
    }

    /// Stops the cluster (every session cut), keeps it down for `down`, starts it again on
    /// the same port. Blocks.
    pub fn restart(&self, down: Duration) {
        let url = tool(&[
            "pg",
            "restart",
            self.dir.to_str().unwrap(),
            &down.as_secs().to_string(),
        ]);
        assert_eq!(url, self.url, "the same port");
    }
}

impl PrivateCluster {
    /// A streaming standby of this cluster (tools/pg standby: `pg_basebackup -R`),
    /// running on its own port; restartable and removed like any private cluster.
    pub fn standby(&self) -> PrivateCluster {
        let dir = scratch(&format!("pg-standby-{}", Uuid::new_v4().simple()));
        let url = tool(&[
            "pg",
            "standby",
            self.dir.to_str().unwrap(),
            dir.to_str().unwrap(),
        ]);
        PrivateCluster { dir, url }
    }

    /// `database` (a URL of a database on another cluster) on this cluster.
    pub fn same_database(&self, database: &str) -> String {
        let name = database.rsplit('/').next().unwrap();
        let (server, _) = self.url.rsplit_once('/').unwrap();
        format!("{server}/{name}")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(super::repo().join("tools/pg"))
            .args(["stop", self.dir.to_str().unwrap()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node the test sent SIGSTOP; sent SIGCONT when dropped, also when the test fails (a
/// stopped node could not be stopped by its own Drop).
pub struct Stopped<'a>(pub &'a Node);

impl<'a> Stopped<'a> {
    pub fn stop(node: &'a Node) -> Stopped<'a> {
        node.signal("STOP");
        Stopped(node)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

pub async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

/// Reads until the peer closes (or `within` passes: `None`); what it sent.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(got)
}

/// Writes `bytes`; false once the peer has closed (or reset) the connection.
pub async fn send(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A raw HTTP/1.1 response is the API's error `code` with `status`; its JSON body.
pub fn assert_error(response: &[u8], status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        status_of(response),
        Some(status),
        "{}",
        String::from_utf8_lossy(response)
    );
    let body = json_of(response);
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

/// The JSON body of a raw HTTP/1.1 response (not chunked).
pub fn json_of(response: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(response);
    let (_, body) = text.split_once("\r\n\r\n").expect("a response with a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `GET /readyz`: its status and body; `None` when it did not answer.
pub async fn readyz(svc: &Service) -> Option<(u16, serde_json::Value)> {
    let resp = svc
        .http
        .get(format!("{}/readyz", svc.base))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.ok()?))
}
