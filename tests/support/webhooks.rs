//! GitHub webhook deliveries as GitHub sends them: recorded payloads
//! (`shared/fixtures/github/webhooks`) pointed at the loopback repository
//! `octo/widgets`, signed with the webhook secret and posted to `kiln serve`.
#![allow(dead_code, reason = "each test module uses a different part")]

use std::path::Path;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The loopback repository's owner.
pub const OWNER: &str = "octo";
/// The loopback repository's name.
pub const NAME: &str = "widgets";
/// `OWNER/NAME`.
pub const REPO: &str = "octo/widgets";

/// GitHub's recorded payload `webhooks/{path}`.
pub fn fixture(path: &str) -> Value {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/github/webhooks")
        .join(path);
    let text = std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    serde_json::from_slice(&text).expect("fixture json")
}

/// Points a payload's repository (and a pull request's ends) at `octo/widgets`.
pub fn at_repo(v: &mut Value) {
    v["repository"]["name"] = json!(NAME);
    v["repository"]["full_name"] = json!(REPO);
    v["repository"]["owner"]["login"] = json!(OWNER);
    if v.get("pull_request").is_some() {
        for side in ["head", "base"] {
            v["pull_request"][side]["repo"]["name"] = json!(NAME);
            v["pull_request"][side]["repo"]["full_name"] = json!(REPO);
            v["pull_request"][side]["repo"]["owner"]["login"] = json!(OWNER);
        }
    }
}

/// A GitHub user object for `login` (`Bot` for logins ending in `[bot]`).
pub fn person(template: &Value, login: &str) -> Value {
    let mut u = template.clone();
    u["login"] = json!(login);
    u["type"] = json!(if login.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    });
    u
}

/// `issues.{action}` on issue `number` by `sender`, with its current labels.
pub fn issues_event(
    action: &str,
    number: u64,
    author: &str,
    sender: &str,
    labels: &[String],
    label: Option<&str>,
) -> Value {
    let mut v = fixture(if action == "opened" {
        "issues/opened.payload.json"
    } else {
        "issues/labeled.payload.json"
    });
    at_repo(&mut v);
    v["action"] = json!(action);
    v["issue"]["number"] = json!(number);
    v["issue"]["user"] = person(&v["issue"]["user"], author);
    let label_template = fixture("issues/labeled.payload.json")["label"].clone();
    let named = |name: &str| {
        let mut l = label_template.clone();
        l["name"] = json!(name);
        l
    };
    v["issue"]["labels"] = labels.iter().map(|l| named(l)).collect();
    if let Some(l) = label {
        v["label"] = named(l);
    }
    v["sender"] = person(&v["sender"], sender);
    v
}

/// The `n`th delivery id of a test, shaped like GitHub's.
pub fn delivery_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Posts delivery `id` signed with `secret` to `kiln serve` at `url`, as
/// GitHub does; the answer's status and text.
pub async fn post(url: &str, secret: &str, id: &str, event: &str, body: &Value) -> (u16, String) {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(&bytes);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let resp = reqwest::Client::new()
        .post(format!("{url}{}", kiln::intake::WEBHOOK_PATH))
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/test")
        .header("x-github-event", event)
        .header("x-github-delivery", id)
        .header("x-hub-signature-256", signature)
        .body(bytes)
        .send()
        .await
        .expect("kiln serve should answer");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Posts the next delivery (`*n` counts them) and asserts it was accepted.
pub async fn deliver(url: &str, secret: &str, n: &mut u64, event: &str, body: &Value) {
    *n += 1;
    let (status, text) = post(url, secret, &delivery_id(*n), event, body).await;
    assert_eq!(
        status, 202,
        "{event} delivery {n} should be accepted: {text}"
    );
}
