//! The hash chain: `hash = SHA-256(prev_hash ‖ canonical JSON of the event)`, where the
//! canonical JSON has object keys sorted at every depth, no white space, and the
//! timestamp in RFC 3339 with microseconds. Anyone holding the log (or an export of it)
//! can recompute it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The hash the first event chains from.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields an event's hash covers.
pub struct Hashed<'a> {
    pub position: i64,
    pub id: Uuid,
    pub stream: &'a str,
    pub stream_version: i32,
    pub kind: &'a str,
    pub schema_version: i16,
    pub data: &'a Value,
    pub metadata: &'a Value,
    pub recorded_at: DateTime<Utc>,
}

pub fn event_hash(prev_hash: &[u8], e: &Hashed<'_>) -> Vec<u8> {
    let body = json!({
        "position": e.position,
        "id": e.id,
        "stream": e.stream,
        "stream_version": e.stream_version,
        "type": e.kind,
        "schema_version": e.schema_version,
        "data": e.data,
        "metadata": e.metadata,
        "recorded_at": e.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    });
    let mut canonical = Vec::with_capacity(512);
    write_canonical(&body, &mut canonical);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(&canonical);
    hasher.finalize().to_vec()
}

/// Serialises with sorted keys whatever map type serde_json was built with, so a value
/// read back from jsonb (which reorders keys) hashes the same as the one appended.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("string serialises");
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalar serialises"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": null, "y": "s"}], "c": true}});
        let mut out = Vec::new();
        write_canonical(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":true,"d":[1,{"y":"s","z":null}]},"b":1}"#
        );
    }

    #[test]
    fn the_hash_depends_on_the_previous_hash_and_every_field() {
        let data = json!({"height": 1});
        let meta = json!({});
        let e = Hashed {
            position: 1,
            id: Uuid::nil(),
            stream: "chain",
            stream_version: 0,
            kind: "block.connected",
            schema_version: 1,
            data: &data,
            metadata: &meta,
            recorded_at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let h1 = event_hash(&GENESIS, &e);
        assert_eq!(h1.len(), 32);
        assert_ne!(h1, event_hash(&[1; 32], &e));
        let other = json!({"height": 2});
        assert_ne!(h1, event_hash(&GENESIS, &Hashed { data: &other, ..e }));
    }
}
