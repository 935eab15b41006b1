//! The streaming redactor: a configured secret, split across chunks at any
//! byte boundaries, never comes out.
#![no_main]

use std::sync::LazyLock;

use kiln::policy::{MIN_SECRET_LEN, Redactor, SecretValue};
use libfuzzer_sys::fuzz_target;

/// Secrets whose redactors are built once: building one per input (regex
/// compilation) held the target to ~80 inputs a second.
const POOL: [&str; 4] = [
    "hunter2hunter2",
    "s3cr3t-with-dashes",
    "aaaaaaaaaaaa",
    "ghp_not_a_real_but_secret_value",
];

static REDACTORS: LazyLock<Vec<Redactor>> = LazyLock::new(|| {
    POOL.iter()
        .map(|value| {
            Redactor::new(&[SecretValue {
                name: "fuzz".into(),
                value: (*value).into(),
            }])
            .expect("a pool secret is usable")
        })
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let mut input = kiln_fuzz::Input::new(data);
    let pick = usize::from(input.byte());
    // Mostly a pooled secret; otherwise one drawn from the input.
    let (secret, built);
    let redactor = match POOL.get(pick % 8) {
        Some(value) => {
            secret = (*value).to_string();
            &REDACTORS[pick % 8]
        }
        None => {
            secret = input.string();
            if secret.trim().len() < MIN_SECRET_LEN {
                return;
            }
            let Ok(r) = Redactor::new(&[SecretValue {
                name: "fuzz".into(),
                value: secret.clone(),
            }]) else {
                return;
            };
            built = r;
            &built
        }
    };
    let cuts: Vec<usize> = input.slice().iter().map(|b| usize::from(*b)).collect();
    // The secret is planted in the text too, so every case carries it.
    let mut whole = input.rest().to_vec();
    let at = cuts.first().copied().unwrap_or(0).min(whole.len());
    whole.splice(at..at, secret.bytes());
    let mut stream = redactor.stream();
    let mut out = Vec::new();
    let mut rest = whole.as_slice();
    for cut in cuts.iter().skip(1) {
        let n = (*cut).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.extend(stream.push(chunk));
        rest = tail;
    }
    out.extend(stream.push(rest));
    out.extend(stream.finish());
    assert!(
        !out.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret came out of the stream"
    );
});
