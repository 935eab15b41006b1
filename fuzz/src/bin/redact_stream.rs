//! The streaming redactor: a configured secret, split across chunks at any
//! byte boundaries, never comes out, and the stream says no more than the
//! whole-text redactor would.
#![no_main]

use kiln::policy::{Redactor, SecretValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = kiln_fuzz::Input::new(data);
    let secret = input.string();
    if secret.trim().len() < kiln::policy::MIN_SECRET_LEN {
        return;
    }
    let Ok(redactor) = Redactor::new(&[SecretValue {
        name: "fuzz".into(),
        value: secret.clone(),
    }]) else {
        return;
    };
    let cuts: Vec<usize> = input.slice().iter().map(|b| usize::from(*b)).collect();
    let text = input.rest();
    // The secret is planted in the text too, so every case carries it.
    let mut whole = text.to_vec();
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
