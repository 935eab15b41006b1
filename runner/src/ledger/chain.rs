//! The hash chain: what one event's hash covers, byte for byte.
//!
//! `hash(n) = SHA-256("kiln-event/1" ‖ run ‖ seq ‖ at_ms ‖ len ‖ kind ‖ len ‖
//! message ‖ hash(n-1))`, integers as 8 big-endian bytes, `kind` as
//! canonical JSON (object keys sorted, no spaces), texts length-prefixed so
//! no two events encode alike. The first event links to [`GENESIS`]. The
//! run id is inside, so an event cannot be moved to another run's log.

use sha2::{Digest, Sha256};

/// A SHA-256 event hash.
pub type EventHash = [u8; 32];

/// What the first event of a run links to.
pub const GENESIS: EventHash = [0; 32];

const DOMAIN: &[u8] = b"kiln-event/1\0";

/// The hash of one event, given the hash of the one before. `kind_json` is
/// the kind in [`canonical_json`] form.
pub fn event_hash(
    run: u64,
    seq: u64,
    at_ms: i64,
    kind_json: &str,
    message: &str,
    prev: &EventHash,
) -> EventHash {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(run.to_be_bytes());
    h.update(seq.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    h.update((kind_json.len() as u64).to_be_bytes());
    h.update(kind_json.as_bytes());
    h.update((message.len() as u64).to_be_bytes());
    h.update(message.as_bytes());
    h.update(prev);
    h.finalize().into()
}

/// `value` as canonical JSON: object keys sorted by their bytes, no
/// whitespace, strings and numbers as serde_json writes them. The same
/// value gives the same text whatever order its keys were built in (and
/// whether or not serde_json keeps insertion order in this build).
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::with_capacity(64);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        // Null, booleans and numbers: serde_json's own text.
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's escaping of a plain string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Lowercase hex of a hash.
pub fn to_hex(hash: &EventHash) -> String {
    hex::encode(hash)
}

/// A hash from 64 hex digits.
pub fn from_hex(text: &str) -> Option<EventHash> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_keeps_values() {
        let v = json!({"z": 1, "a": {"y": [true, null, 1.5], "b": "x\"\n"}, "m": -3});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"b":"x\"\n","y":[true,null,1.5]},"m":-3,"z":1}"#
        );
        let reparsed: serde_json::Value = serde_json::from_str(&canonical_json(&v)).unwrap();
        assert_eq!(canonical_json(&reparsed), canonical_json(&v));
    }

    #[test]
    fn every_field_and_the_link_change_the_hash() {
        let base = event_hash(1, 2, 3, "{}", "m", &GENESIS);
        let variants = [
            event_hash(9, 2, 3, "{}", "m", &GENESIS),
            event_hash(1, 9, 3, "{}", "m", &GENESIS),
            event_hash(1, 2, 9, "{}", "m", &GENESIS),
            event_hash(1, 2, 3, "{\"a\":1}", "m", &GENESIS),
            event_hash(1, 2, 3, "{}", "n", &GENESIS),
            event_hash(1, 2, 3, "{}", "m", &[1; 32]),
            // The same bytes split differently between kind and message.
            event_hash(1, 2, 3, "{}m", "", &GENESIS),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v, &base, "variant {i} should hash differently");
        }
        assert_eq!(base, event_hash(1, 2, 3, "{}", "m", &GENESIS));
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_text() {
        let h = event_hash(1, 1, 1, "{}", "", &GENESIS);
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(66)] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
    }
}
