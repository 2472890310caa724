//! A log written before the typed events (tests/fixtures/v1-log.sql: a database dumped
//! after a scenario with every event type, a reorg, withdrawals and the delivery journal,
//! written by the code at commit b6a2807 — its generator is tests/fixture_v1_log.rs there)
//! is still this version's log: its hash chain verifies, every event reads back as a
//! typed event whose data is the JSON stored, it rebuilds to the very projections that
//! code wrote, and the log continues from it.

mod common;

use std::process::Command;

use chainledger::domain::account;
use chainledger::domain::events::{Event, EventType};
use chainledger::projections::{self, rebuild};
use chainledger::store;
use chainledger::unit_of_work::{Decided, UnitOfWork};
use serde_json::json;
use sqlx::{Connection, PgPool};

/// A fresh database holding the fixture, migrated to this version.
async fn v1_database() -> (String, PgPool) {
    let url = common::fresh_database().await;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1-log.sql");
    let out = Command::new("psql")
        .args([&url, "-q", "-v", "ON_ERROR_STOP=1", "-f", fixture])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "restoring the fixture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = PgPool::connect(&url).await.unwrap();
    chainledger::db::migrate(&pool).await.unwrap();
    (url, pool)
}

#[tokio::test]
async fn a_v1_log_still_verifies_and_every_event_reads_back_as_the_json_stored() {
    let (url, pool) = v1_database().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let verified = chainledger::audit::verify_db(&mut conn, 1).await.unwrap();
    assert!(verified.bad.is_none(), "{:?}", verified.bad);
    assert_eq!(verified.checked, 89);

    let events = store::read_after(&pool, Default::default(), 1000, None)
        .await
        .unwrap();
    let mut kinds: Vec<EventType> = Vec::new();
    for stored in &events {
        let typed = stored.event().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(typed.kind(), stored.kind);
        assert_eq!(
            typed.to_data(),
            stored.data,
            "position {}: the typed event writes the JSON the log holds",
            stored.position
        );
        kinds.push(stored.kind);
    }
    kinds.sort();
    kinds.dedup();
    // Every type of v1's catalogue; the operational `subscriber.*` ones came after it.
    let v1: Vec<EventType> = EventType::ALL
        .iter()
        .copied()
        .filter(|t| !t.is_operational())
        .collect();
    assert_eq!(kinds, v1, "the fixture has every v1 type");
}

#[tokio::test]
async fn a_v1_log_rebuilds_to_the_projections_that_version_wrote() {
    let (_, pool) = v1_database().await;
    let report = rebuild::rebuild(
        &pool,
        &projections::DEFINITIONS.iter().collect::<Vec<_>>(),
        rebuild::Mode::VerifyOnly,
        true,
        &rebuild::Progress::Log,
    )
    .await
    .unwrap();
    for t in &report.tables {
        assert!(t.identical(), "{} differs: keys {:?}", t.table, t.keys);
    }
    assert!(
        report.balance_mismatches.is_empty(),
        "{:?}",
        report.balance_mismatches
    );
    assert!(report.clean());
}

#[tokio::test]
async fn the_log_continues_from_a_v1_log_with_its_hash_chain() {
    let (url, pool) = v1_database().await;
    let log = UnitOfWork::new(pool.clone(), bitcoin::Network::Regtest);
    let events = account::create(
        uuid::Uuid::new_v4(),
        "after".into(),
        3,
        None,
        &json!({"source": "test"}),
    )
    .unwrap();
    let recorded = log.record(Decided(events)).await.unwrap();
    assert_eq!(recorded.events[0].position.0, 90);
    assert!(matches!(
        recorded.events[0].event().unwrap(),
        Event::AccountCreated(_)
    ));
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let verified = chainledger::audit::verify_db(&mut conn, 1).await.unwrap();
    assert!(verified.bad.is_none(), "{:?}", verified.bad);
    assert_eq!(verified.checked, 90);
}
