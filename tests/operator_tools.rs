//! The operator tools run as the real binary: `rebuild-projections` (identical tables
//! after dropping them all, a rebuild while blocks are appended, tampering detected and
//! repaired), start-up rebuilds of changed projections, `audit-export` (CLI and HTTP) and
//! `verify-log` (the database's log and exported files, tampered or not).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::json;
use sqlx::{Connection, PgConnection};

const TABLES: &[(&str, &str)] = &[
    ("projection_checkpoints", "name"),
    ("accounts", "account_id"),
    ("addresses", "address"),
    ("chain_blocks", "height"),
    ("chain_state", "singleton"),
    ("deposits", "txid, vout"),
    ("balances", "account_id"),
    ("subscriber_cursors", "subscriber_id"),
];

/// Runs the binary; (succeeded, stdout, stderr).
fn tool(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run chainledger");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every projection table's rows as text, ordered by key.
async fn snapshot(db: &str) -> Vec<(String, Vec<String>)> {
    let mut conn = PgConnection::connect(db).await.unwrap();
    let mut out = Vec::new();
    for (table, key) in TABLES {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM {table} t ORDER BY {key}"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        out.push((table.to_string(), rows));
    }
    out
}

async fn sql(db: &str, statements: &str) {
    let mut conn = PgConnection::connect(db).await.unwrap();
    sqlx::raw_sql(statements).execute(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_scenario_dropping_every_projection_and_rebuilding_gives_identical_tables() {
    let node = Node::start();
    let db = fresh_database().await;
    let svc = Service::start(config(&db, &node)).await;
    svc.synced_to(node.height()).await;
    let r = Receiver::start().await;
    r.fail_first(2, 0);
    let (sub, _) = svc
        .subscribe(&r.url, json!({"start": "beginning", "types": "deposit.*"}))
        .await;
    let address = node.new_address("legacy");
    let account = svc.account_watching(&address).await;
    node.send(&address, "1.25");
    node.mine(2);
    node.send(&address, "0.5");
    let mined = node.mine(1);
    svc.synced_to(node.height()).await;
    // A reorg: the second deposit's block is replaced by an empty branch.
    node.invalidate(&mined[0]);
    node.mine(3);
    svc.synced_to(node.height()).await;
    eventually(Duration::from_secs(20), || async {
        let (_, s) = svc.get(&format!("/v1/subscribers/{sub}")).await;
        (s["lag"] == 0).then_some(())
    })
    .await;
    svc.post(
        &format!("/v1/subscribers/{sub}/replay"),
        json!({"from_position": 3}),
    )
    .await;
    let balance = svc.balance(&account).await;
    svc.stop().await;

    let before = snapshot(&db).await;
    let drop_all: String = TABLES
        .iter()
        .map(|(t, _)| format!("DROP TABLE {t};"))
        .collect();
    sql(&db, &drop_all).await;
    let (ok, out, err) = tool(&db, &["rebuild-projections"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("swapped in: ledger, subscriber_cursors"),
        "{out}"
    );
    assert!(
        out.contains("balances: equal to an independent aggregate"),
        "{out}"
    );
    assert_eq!(
        snapshot(&db).await,
        before,
        "byte-identical after a rebuild"
    );

    let (ok, out, _) = tool(&db, &["rebuild-projections", "--verify-only"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("match the log") && !out.contains("DIFFERS"),
        "{out}"
    );

    // The service starts on the rebuilt tables and serves the same balance.
    let svc = Service::start(config(&db, &node)).await;
    assert_eq!(svc.balance(&account).await, balance);
    assert_eq!(svc.replayed_balance(&account).await, balance);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_blocks_are_appended_ends_with_those_blocks() {
    let node = Arc::new(Node::start());
    let db = fresh_database().await;
    let svc = Service::start(config(&db, &node)).await;
    svc.synced_to(node.height()).await;
    // A log long enough that the rebuild takes a while: 30,000 accounts.
    {
        let pool = sqlx::PgPool::connect(&db).await.unwrap();
        let log = chainledger::unit_of_work::UnitOfWork::new(pool, bitcoin::Network::Regtest);
        for chunk in 0..6 {
            let batch: Vec<_> = (0..5000)
                .flat_map(|i| {
                    let id = uuid::Uuid::new_v4();
                    chainledger::domain::account::create(
                        id,
                        format!("bulk {chunk}/{i}"),
                        3,
                        None,
                        &json!({"source": "test"}),
                    )
                    .unwrap()
                })
                .collect();
            log.record(chainledger::unit_of_work::Decided(batch))
                .await
                .unwrap();
        }
    }
    let address = node.new_address("legacy");
    let account = svc.account_watching(&address).await;
    let head_before = svc.head().await;

    let miner = Miner::start(node.clone(), &address, Duration::from_millis(30));
    let rebuild = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || tool(&db, &["rebuild-projections"]))
    };
    let (ok, out, err) = rebuild.await.unwrap();
    miner.stop();
    assert!(ok, "{out}\n{err}");
    let position: i64 = out
        .split("up to position ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no position in {out}"));
    assert!(
        position > head_before,
        "events appended during the rebuild are in it ({position} > {head_before})"
    );

    // The service went on appending into the swapped-in tables.
    svc.synced_to(node.height()).await;
    let (_, chain) = svc.get("/v1/status").await;
    assert_eq!(chain["synced_tip"].as_u64(), Some(node.height()));
    assert_eq!(
        svc.balance(&account).await,
        svc.replayed_balance(&account).await
    );
    let (ok, out, _) = tool(&db, &["rebuild-projections", "--verify-only"]);
    assert!(ok, "the live tables equal a replay: {out}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_projection_is_detected_and_repaired_and_changed_definitions_rebuild_at_start() {
    let (node, svc) = node_and_service().await;
    let address = node.new_address("legacy");
    let account = svc.account_watching(&address).await;
    node.send(&address, "3");
    node.mine(3);
    svc.synced_to(node.height()).await;
    let balance = svc.balance(&account).await;
    assert_eq!(balance.0, 300_000_000);
    let db = svc_db(&svc).await;

    sql(
        &db,
        &format!("UPDATE balances SET credited_sats = 1 WHERE account_id = '{account}'"),
    )
    .await;
    let (ok, out, _) = tool(&db, &["rebuild-projections", "--verify-only"]);
    assert!(!ok, "--verify-only fails on a tampered projection: {out}");
    assert!(out.contains("balances") && out.contains("DIFFERS"), "{out}");
    assert!(
        out.contains(&format!("key {account}")),
        "names the key: {out}"
    );
    assert_eq!(
        svc.balance(&account).await.0,
        1,
        "verify-only changed nothing"
    );

    let (ok, out, _) = tool(&db, &["rebuild-projections", "--projection", "ledger"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("swapped in: ledger (1 tables repaired)"),
        "{out}"
    );
    assert_eq!(
        svc.balance(&account).await,
        balance,
        "repaired, while serving"
    );
    let (ok, _, err) = tool(&db, &["rebuild-projections", "--projection", "nope"]);
    assert!(!ok && err.contains("no projection `nope`"), "{err}");
    svc.stop().await;

    // A changed definition (its recorded version differs) or a missing table is rebuilt
    // when the service starts, before it serves.
    sql(
        &db,
        &format!(
            "UPDATE balances SET credited_sats = 7 WHERE account_id = '{account}';
             UPDATE projection_versions SET version = 'previous' WHERE name = 'ledger';
             DROP TABLE subscriber_cursors;"
        ),
    )
    .await;
    let svc = Service::start(config(&db, &node)).await;
    assert_eq!(svc.balance(&account).await, balance);
    let (status, list) = svc.get("/v1/subscribers").await;
    assert_eq!(status, 200, "{list}");
    svc.stop().await;
}

/// The database a service started by the tests runs on.
async fn svc_db(svc: &Service) -> String {
    svc.database_url
        .clone()
        .expect("a service started by the tests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_log_finds_a_changed_event_and_an_edited_export_by_position() {
    let (node, svc) = node_and_service().await;
    let address = node.new_address("legacy");
    svc.account_watching(&address).await;
    node.send(&address, "1");
    node.mine(2);
    svc.synced_to(node.height()).await;
    let db = svc_db(&svc).await;
    let head = svc.head().await;

    let (ok, out, _) = tool(&db, &["verify-log"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{head} events checked (positions 1..{head})")),
        "{out}"
    );

    // Exports, by the CLI and over HTTP: the same bytes; both verify.
    let dir = std::env::temp_dir().join(format!("chainledger-export-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for format in ["jsonl", "csv"] {
        let path = dir.join(format!("log.{format}"));
        let (ok, _, err) = tool(
            &db,
            &[
                "audit-export",
                "--format",
                format,
                "--out",
                path.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        let file = std::fs::read(&path).unwrap();
        let resp = svc
            .http
            .get(format!("{}/v1/audit/export?format={format}", svc.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            file.as_slice(),
            "{format}"
        );
        let (ok, out, _) = tool(&db, &["verify-log", "--file", path.to_str().unwrap()]);
        assert!(ok, "{out}");

        // One byte of one event's data changed: found, at that event's position.
        let text = String::from_utf8(file).unwrap();
        let line_no = text
            .lines()
            .position(|l| l.contains("\"label\"") || l.contains("\"\"label\"\""))
            .unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let target = lines[line_no].replacen("customer", "customes", 1);
        assert_ne!(target, lines[line_no]);
        lines[line_no] = target;
        let position: i64 = lines[line_no]
            .trim_start_matches("{\"position\":")
            .split([',', '"'])
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (ok, out, _) = tool(&db, &["verify-log", "--file", path.to_str().unwrap()]);
        assert!(!ok, "{out}");
        assert!(
            out.contains(&format!("position {position}:")),
            "{format}: {out}"
        );
    }
    // A slice of the log exports and verifies on its own.
    let part = dir.join("part.jsonl");
    let (ok, _, err) = tool(
        &db,
        &[
            "audit-export",
            "--from",
            "2",
            "--to",
            "3",
            "--out",
            part.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let part_text = std::fs::read_to_string(&part).unwrap();
    let part_lines: Vec<&str> = part_text.lines().collect();
    assert_eq!(
        part_lines.len(),
        3,
        "two events and the trailer: {part_text}"
    );
    assert!(part_lines[2].starts_with(r#"{"trailer":{"events":2,"last_position":3,"#));
    let (status, e) = svc.get("/v1/audit/export?from=0").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_from"))
    );
    let (status, _) = svc.get("/v1/audit/export?format=xml").await;
    assert_eq!(status, 400);

    // The log tampered with by a superuser who disables the trigger.
    let (victim,): (i64,) = {
        let mut conn = PgConnection::connect(&db).await.unwrap();
        sqlx::query_as("SELECT position FROM events WHERE type = 'account.created'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    sql(
        &db,
        &format!(
            "ALTER TABLE events DISABLE TRIGGER events_append_only;
             UPDATE events SET data = jsonb_set(data, '{{label}}', '\"mallory\"') WHERE position = {victim};
             ALTER TABLE events ENABLE TRIGGER events_append_only;"
        ),
    )
    .await;
    let (ok, out, _) = tool(&db, &["verify-log"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "position {victim}: its content does not match its hash"
        )),
        "{out}"
    );
    let (ok, out, _) = tool(&db, &["verify-log", "--from", &(victim + 1).to_string()]);
    assert!(ok, "after the changed event the chain still holds: {out}");
    let _ = std::fs::remove_dir_all(&dir);
    svc.stop().await;
}
