//! Request inputs parsed by hand, so every malformed one gets a 400 whose
//! body says which input is wrong and why (axum's own rejections answer in
//! plain text).
use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::store::RunId;

/// A run id from the path (`r12` or `12`).
pub fn run_id(raw: &str) -> Result<RunId, ApiError> {
    match raw.parse::<RunId>() {
        // The store keeps ids as SQLite integers (i64).
        Ok(id) if i64::try_from(id.0).is_ok() => Ok(id),
        _ => Err(ApiError::BadRequest(format!(
            "run id {raw:?} is not r<number> (e.g. r12)"
        ))),
    }
}

/// Longest effect id accepted.
const MAX_EFFECT_LEN: usize = 128;

/// An effect id from the path: 1-128 letters, digits, `-`, `_`, `.` or `:`.
pub fn effect_id(raw: &str) -> Result<&str, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_EFFECT_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::BadRequest(format!(
            "effect id {raw:?} must be 1-{MAX_EFFECT_LEN} letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

/// Query parameters, refusing any not in `allowed` and any given twice
/// unless `repeatable` lists it.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(
        raw: Option<&str>,
        allowed: &[&str],
        repeatable: &[&str],
    ) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (k, _) in &pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?} (allowed: {})",
                    allowed.join(", ")
                )));
            }
            let n = seen.entry(k.as_str()).or_default();
            *n += 1;
            if *n > 1 && !repeatable.contains(&k.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {k:?} is given more than once"
                )));
            }
        }
        Ok(Query { pairs })
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, split at commas too (`state=a,b&state=c`).
    pub fn list(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// `key` as an unsigned number within `min..=max`, if given.
    pub fn number(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        match raw.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) && raw.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Some(n))
            }
            _ => Err(ApiError::BadRequest(format!(
                "query parameter {key}={raw:?} must be a whole number from {min} to {max}"
            ))),
        }
    }
}

/// A JSON request body into `T`, with the parser's complaint as the 400's message.
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "request body is larger than this endpoint accepts ({} bytes; {} for a resume)",
                super::MAX_BODY_BYTES,
                super::runs::MAX_RESUME_BYTES
            ))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "the request body is empty; it must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_refused_with_the_input_named() {
        for bad in [
            "",
            "r",
            "0",
            "r0",
            "-1",
            "r1x",
            "99999999999999999999999",
            "r9223372036854775808",
        ] {
            let e = run_id(bad).err();
            assert!(
                matches!(&e, Some(ApiError::BadRequest(m)) if m.contains("run id")),
                "run id {bad:?} should be a 400 naming the run id, got {e:?}"
            );
        }
        assert_eq!(run_id("r7").ok(), Some(RunId(7)));
        for bad in ["", "a/b", "a b", "<script>", &"x".repeat(129)] {
            assert!(
                effect_id(bad).is_err(),
                "effect id {bad:?} should be refused"
            );
        }
        assert!(effect_id("e-1.comment:2").is_ok());
    }

    #[test]
    fn queries_refuse_unknown_and_repeated_keys() {
        assert!(Query::parse(Some("limit=1&limit=2"), &["limit"], &[]).is_err());
        assert!(Query::parse(Some("nope=1"), &["limit"], &[]).is_err());
        let q = Query::parse(
            Some("state=a,b&state=c&limit=5"),
            &["state", "limit"],
            &["state"],
        )
        .expect("valid query");
        assert_eq!(q.list("state"), vec!["a", "b", "c"]);
        assert_eq!(q.number("limit", 1, 10).ok(), Some(Some(5)));
        let q = Query::parse(Some("limit=%2B5"), &["limit"], &[]).expect("valid query");
        assert!(
            q.number("limit", 1, 10).is_err(),
            "+5 is not a plain number"
        );
    }
}
