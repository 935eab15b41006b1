//! `GET /metrics` of a real `kiln serve`, scraped over HTTP as Prometheus
//! does: it needs a viewer token, and after a triage run (started by the
//! local forge's issue-opened event, in a real sandbox with the real plugin)
//! and two webhook deliveries the counters say what happened.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::support::images;
use crate::support::serve::{Containers, Env, Serve, wait_for};

const SECRET: &str = "metrics-webhook-secret";

/// The value of the sample `name` (with its labels, as written) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn scrape(url: &str, token: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("kiln serve answers");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    resp.text().await.expect("body")
}

/// POSTs a `ping` delivery, signed with `secret` if given; the status.
async fn ping(url: &str, delivery: &str, secret: Option<&str>) -> u16 {
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let mut req = reqwest::Client::new()
        .post(format!("{url}{}", kiln::intake::WEBHOOK_PATH))
        .header("content-type", "application/json")
        .header("x-github-event", "ping")
        .header("x-github-delivery", delivery);
    if let Some(secret) = secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(&body);
        req = req.header(
            "x-hub-signature-256",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        );
    }
    req.body(body)
        .send()
        .await
        .expect("kiln serve answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_run_and_two_deliveries_shows_them() {
    images::images().await;
    let env = Env::new();
    let _cleanup = Containers(kiln::app::serve_runner_id(&env.data));
    std::fs::write(env.root.join("webhook-secret"), SECRET).expect("write secret");
    std::fs::write(
        env.root.join("kiln.toml"),
        "[[secrets]]\nname = \"hook\"\nsource = { file = \"webhook-secret\" }\n\
         [intake]\nwebhook_secret = \"hook\"\n",
    )
    .expect("write kiln.toml");
    // The demo's sample repository and its triage script.
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    env.ok(
        &["repo", "create", "local/metrics", "--from"],
        &[&demo.join("sample-repo")],
    );
    let script = demo.join("triage.json");
    let mut serve = Serve::start(&env, "metrics", &script, false);
    serve.ready().await;

    let unauthenticated = reqwest::get(format!("{}/metrics", serve.url))
        .await
        .expect("kiln serve answers");
    assert_eq!(unauthenticated.status(), 401, "metrics need a viewer token");
    let before = scrape(&serve.url, &env.token).await;
    assert_eq!(
        sample(&before, "kiln_runs{role=\"triage\",state=\"succeeded\"}"),
        None
    );

    env.ok(
        &[
            "issue",
            "new",
            "-R",
            "local/metrics",
            "-t",
            "Slugs keep dashes",
        ],
        &[],
    );
    let url = serve.url.clone();
    let (url, token) = (&url, &env.token);
    // The store says the run ended only after the worker has observed its
    // duration: once the gauge shows it ended, every counter of the run has moved.
    let text = wait_for(&mut serve, "the triage run to end", 600, || async move {
        let text = scrape(url, token).await;
        ["succeeded", "failed", "blocked", "cancelled"]
            .iter()
            .any(|state| {
                sample(
                    &text,
                    &format!("kiln_runs{{role=\"triage\",state=\"{state}\"}}"),
                )
                .is_some()
            })
            .then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "kiln_runs{role=\"triage\",state=\"succeeded\"}"),
        Some(1.0),
        "the triage run succeeded:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "kiln_run_duration_seconds_count{role=\"triage\",outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kiln_sandbox_start_seconds_count"),
        Some(1.0),
        "{text}"
    );
    for moved in [
        "kiln_gate_decisions_total{verdict=\"allow\"}",
        "kiln_model_tokens_total{direction=\"input\"}",
        "kiln_model_tokens_total{direction=\"output\"}",
    ] {
        assert!(
            sample(&text, moved).is_some_and(|v| v > 0.0),
            "{moved} should have moved:\n{text}"
        );
    }

    assert_eq!(ping(&serve.url, "d-1", None).await, 401);
    assert_eq!(ping(&serve.url, "d-2", Some(SECRET)).await, 200);
    let text = scrape(&serve.url, &env.token).await;
    assert_eq!(
        sample(
            &text,
            "kiln_webhook_deliveries_total{outcome=\"missing-signature\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kiln_webhook_deliveries_total{outcome=\"ping\"}"),
        Some(1.0),
        "{text}"
    );
}
