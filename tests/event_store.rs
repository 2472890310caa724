//! The event store's invariants on a real PostgreSQL: gapless positions under concurrent
//! appenders, append-only, expected versions, deterministic ids, the hash chain.

mod common;

use std::time::Duration;

use bitcoin::hashes::Hash;
use chainledger::domain::events::{BlockConnected, Event};
use chainledger::domain::stream::{NewEvent, Position, StreamName};
use chainledger::store::{self, hash, AppendError};
use serde_json::json;
use sqlx::PgPool;

async fn store_db() -> PgPool {
    let url = common::fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    chainledger::db::migrate(&pool).await.unwrap();
    pool
}

fn event(stream: &str, expected: Option<i32>, n: i32) -> NewEvent {
    NewEvent {
        stream: StreamName::from_stored(stream.to_string()),
        expected_version: expected,
        event: Event::BlockConnected(BlockConnected {
            height: n as u32,
            hash: bitcoin::BlockHash::all_zeros(),
            prev_hash: bitcoin::BlockHash::all_zeros(),
            time: 1,
        }),
        metadata: json!({"source": "test", "nested": {"b": 1, "a": [1, 2]}}),
    }
}

async fn append_one(
    pool: &PgPool,
    batch: &[NewEvent],
) -> Result<Vec<store::StoredEvent>, AppendError> {
    let mut tx = pool.begin().await?;
    let stored = store::append(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gapless_positions_a_tailing_reader_sees_every_position_once_in_order() {
    let pool = store_db().await;
    const WRITERS: usize = 8;
    const BATCHES: i32 = 40;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let stream = format!("test-{w}");
            let mut version: Option<i32> = None;
            let mut written = 0;
            for b in 0..BATCHES {
                let size = 1 + (b as usize + w) % 4;
                let batch: Vec<NewEvent> = (0..size)
                    .map(|i| {
                        event(
                            &stream,
                            version
                                .map(|v| v + i as i32)
                                .or((i > 0).then(|| i as i32 - 1)),
                            b,
                        )
                    })
                    .collect();
                append_one(&pool, &batch).await.unwrap();
                version = Some(batch.last().unwrap().stream_version());
                written += size;
                // Interleave commits of different writers.
                tokio::task::yield_now().await;
            }
            written
        }));
    }
    let expected: i64 = (0..WRITERS)
        .map(|w| {
            (0..BATCHES)
                .map(|b| 1 + (b as usize + w) as i64 % 4)
                .sum::<i64>()
        })
        .sum();
    let reader = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut cursor = 0i64;
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                let page = store::read_after(&pool, Position(cursor), 100, None)
                    .await
                    .unwrap();
                for e in &page {
                    assert_eq!(
                        e.position.0,
                        cursor + 1,
                        "the reader saw a hole after {cursor}"
                    );
                    cursor = e.position.0;
                    seen.push(e.position.0);
                }
                if cursor == expected {
                    break;
                }
                if page.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            seen
        })
    };
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), total);
    assert_eq!(seen, (1..=total as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_log_is_append_only_update_delete_and_truncate_fail() {
    let pool = store_db().await;
    append_one(&pool, &[event("chain", None, 1)]).await.unwrap();
    for sql in [
        "UPDATE events SET data = '{}'",
        "UPDATE events SET type = 'x' WHERE position = 999",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(store::head(&pool).await.unwrap().0, 1);
}

#[tokio::test]
async fn an_append_at_a_stale_expected_version_is_a_conflict_never_a_duplicate() {
    let pool = store_db().await;
    append_one(&pool, &[event("deposit-aa:0", None, 1)])
        .await
        .unwrap();
    // The same append again (as after a crash between commit and acknowledgement).
    let again = append_one(&pool, &[event("deposit-aa:0", None, 1)]).await;
    assert!(matches!(again, Err(AppendError::Conflict(_))), "{again:?}");
    // Skipping ahead of the stream is refused too.
    let ahead = append_one(&pool, &[event("deposit-aa:0", Some(3), 1)]).await;
    assert!(matches!(ahead, Err(AppendError::Conflict(_))), "{ahead:?}");
    // The conflicting batch left nothing behind, not even a consumed position.
    assert_eq!(store::head(&pool).await.unwrap().0, 1);
    let next = append_one(&pool, &[event("deposit-aa:0", Some(0), 2)])
        .await
        .unwrap();
    assert_eq!(next[0].position.0, 2);
    assert_eq!(next[0].stream_version, 1);
}

#[tokio::test]
async fn event_ids_are_deterministic_and_the_hash_chain_recomputes_from_stored_rows() {
    let pool = store_db().await;
    let batch: Vec<NewEvent> = (0..5)
        .map(|i| event("chain", (i > 0).then(|| i - 1), i))
        .collect();
    let appended = append_one(&pool, &batch).await.unwrap();
    let read = store::read_after(&pool, Position(0), 100, None)
        .await
        .unwrap();
    assert_eq!(appended, read, "what was appended is what is read back");
    let mut prev = hash::GENESIS.to_vec();
    for e in &read {
        assert_eq!(
            e.id,
            chainledger::domain::stream::event_id(&e.stream, e.stream_version)
        );
        assert_eq!(e.prev_hash, prev);
        let h = hash::event_hash(
            &prev,
            &hash::Hashed {
                position: e.position.0,
                id: e.id,
                stream: e.stream.as_str(),
                stream_version: e.stream_version,
                kind: e.kind.as_str(),
                schema_version: e.schema_version,
                data: &e.data,
                metadata: &e.metadata,
                recorded_at: e.recorded_at,
            },
        );
        assert_eq!(e.hash, h, "position {}", e.position);
        prev = h;
    }
}
