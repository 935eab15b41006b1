//! Webhook intake: signature, parse, route. A body whose signature does not
//! verify never gets further, every refusal is a 4xx, and no run is ever
//! dispatched for a bot other than Kiln itself.
#![no_main]

use hmac::{Hmac, Mac};
use kiln::intake::event::{KNOWN_EVENTS, Parsed, parse};
use kiln::intake::route::{Route, route};
use kiln::intake::webhook::verify_signature;
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-webhook-secret";
const KILN: &str = "kiln-fuzz[bot]";

fuzz_target!(|data: &[u8]| {
    let mut input = kiln_fuzz::Input::new(data);
    let pick = usize::from(input.byte());
    let name = match KNOWN_EVENTS.get(pick % 16) {
        Some(known) => (*known).to_string(),
        None => input.string(),
    };
    let mode = input.byte();
    let forged = input.string();
    let body = input.rest();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(body);
    let correct = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    // Mostly the right signature, so the parser and router get exercised.
    let header = match mode % 4 {
        0 => None,
        1 => Some(forged),
        _ => Some(correct.clone()),
    };
    match verify_signature(SECRET, body, header.as_deref()) {
        Ok(()) => assert!(
            header.is_some_and(|h| h.eq_ignore_ascii_case(&correct)),
            "only the body's own signature verifies"
        ),
        Err(r) => {
            assert!(r.status.is_client_error(), "refused with {}", r.status);
            return;
        }
    }
    let Ok(Parsed::Known(event)) = parse(&name, body) else {
        return;
    };
    let rules = kiln::intake::default_rules();
    if let Route::Dispatch(runs) = route(&rules, &[KILN.to_string()], &[], &event) {
        for run in runs {
            assert!(
                !run.actor.is_bot() || run.actor.login == KILN,
                "bot {} dispatched a run",
                run.actor.login
            );
        }
    }
});
