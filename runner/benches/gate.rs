//! Benchmark: one gated effect against the same effect ungated, in one run.
//!
//! The gated path is what an import function does: `Gate::admit` (shape
//! checks, invariants, Cedar, redaction of the outbound text) followed by the
//! native call. The ungated path is the native call alone: handing the comment
//! to an in-memory forge. Both run interleaved in the same process so machine
//! noise hits both. A run keeps entity stores for the resources it touched,
//! so the same comment on the run's issue is the warm path; comments on ever
//! new issues are measured too (cold path). Then the detection step's
//! scanners on a 5,000-line patch and text hygiene on a 64 KiB Markdown body
//! (issue 19), each next to the redactor on the same input (target: at most
//! 2x). Run with `cargo bench --bench gate`; `-- detection` or `-- hygiene`
//! runs only that section (for a profiler).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use kiln::policy::{
    Effect, EffectRequest, Gate, GateConfig, Role, RunContext, SecretValue, TextKind, Trust,
};

const WARMUP: usize = 5_000;
const ROUNDS: usize = 20;
const PER_ROUND: usize = 5_000;

/// The native call: an in-memory forge appending a comment.
struct Forge {
    comments: Vec<(u64, String)>,
}

impl Forge {
    #[inline(never)]
    fn comment(&mut self, effect: Effect) {
        if let Effect::Comment { number, body } = effect {
            if self.comments.len() >= 1024 {
                self.comments.clear();
            }
            self.comments.push((number, body));
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

struct Stats {
    p50: u64,
    p99: u64,
    p999: u64,
}

fn stats(mut samples: Vec<u64>) -> Stats {
    samples.sort_unstable();
    Stats {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        p999: percentile(&samples, 0.999),
    }
}

fn us(ns: u64) -> String {
    format!("{:.2} µs", ns as f64 / 1000.0)
}

fn main() -> anyhow::Result<()> {
    let config = GateConfig {
        repo_policies: Some(
            r#"@id("no-curl")
forbid (principal, action == Kiln::Action::"workspace.exec", resource)
when { context.program == "curl" };"#
                .into(),
        ),
        label_allowlist: vec!["bug".into(), "enhancement".into(), "needs-info".into()],
        allow_workflow_changes: false,
        secrets: vec![
            SecretValue {
                name: "ANTHROPIC_API_KEY".into(),
                value: "sk-ant-api03-bench-0000000000000000000000".into(),
            },
            SecretValue {
                name: "GITHUB_APP_KEY_ID".into(),
                value: "kiln-bench-app-key-1234".into(),
            },
            SecretValue {
                name: "SETUP_TOKEN".into(),
                value: "setup-token-abcdef012345".into(),
            },
        ],
        ..GateConfig::default()
    };
    let gate = Arc::new(Gate::new(&config)?);
    let run = Arc::new(RunContext::new(
        "run-42",
        Role::Triage,
        "acme/widgets",
        Trust::Trusted,
        "kiln/42-triage",
    ));
    let only = |section: &str| std::env::args().skip(1).any(|a| a == section);
    if only("detection") {
        detection(&gate);
        return Ok(());
    }
    if only("hygiene") {
        return hygiene(&gate, &run);
    }
    // A typical triage comment: ~600 bytes of markdown, no secrets.
    let body = "Thanks for the report! I could reproduce this on `main` (a1b2c3d).\n\n\
        **Summary**: the parser drops the last line when the file has no trailing newline.\n\n\
        **Likely cause**: `read_lines` in `src/parse.rs` stops at the final `\\n` instead of EOF.\n\n\
        **Suggested labels**: `bug`. This looks small enough for a first implementation run; \
        a spec is probably not needed. Steps to reproduce:\n\n\
        1. `printf 'a\\nb' > x.txt`\n2. `widgets parse x.txt`\n3. only `a` is printed.\n\n\
        See also #17 and https://example.com/docs/parsing for the expected behaviour."
        .to_owned();
    let request = EffectRequest {
        run: run.clone(),
        effect: Effect::Comment { number: 42, body },
    };
    let first = gate.decide(&request);
    anyhow::ensure!(
        first.is_allow(),
        "bench request should be allowed: {first:?}"
    );

    let mut forge = Forge {
        comments: Vec::with_capacity(1024),
    };
    let mut gated = Vec::with_capacity(ROUNDS * PER_ROUND);
    let mut ungated = Vec::with_capacity(ROUNDS * PER_ROUND);
    let mut decide_only = Vec::with_capacity(ROUNDS * PER_ROUND);
    let mut redact_only = Vec::with_capacity(ROUNDS * PER_ROUND);
    let mut gated_cold = Vec::with_capacity(ROUNDS * PER_ROUND);
    // Requests on 1000 different issues: the run's resource cache (16
    // entries) never hits, so each decision builds its entity store.
    let cold: Vec<EffectRequest> = (0..1000u64)
        .map(|n| {
            let mut r = request.clone();
            if let Effect::Comment { number, .. } = &mut r.effect {
                *number = 1000 + n;
            }
            r
        })
        .collect();
    let Effect::Comment { body, .. } = &request.effect else {
        anyhow::bail!("bench request is a comment");
    };

    for _ in 0..WARMUP {
        let (d, req) = gate.admit(black_box(request.clone()));
        if d.is_allow() {
            forge.comment(req.effect);
        }
    }
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let req = request.clone();
            let t = Instant::now();
            let (d, req) = gate.admit(black_box(req));
            if d.is_allow() {
                forge.comment(req.effect);
            }
            gated.push(t.elapsed().as_nanos() as u64);
        }
        for _ in 0..PER_ROUND {
            let req = request.clone();
            let t = Instant::now();
            forge.comment(black_box(req).effect);
            ungated.push(t.elapsed().as_nanos() as u64);
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            black_box(gate.decide(black_box(&request)));
            decide_only.push(t.elapsed().as_nanos() as u64);
        }
        for i in 0..PER_ROUND {
            let req = cold[i % cold.len()].clone();
            let t = Instant::now();
            let (d, req) = gate.admit(black_box(req));
            if d.is_allow() {
                forge.comment(req.effect);
            }
            gated_cold.push(t.elapsed().as_nanos() as u64);
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            black_box(gate.redactor().redact(black_box(body)));
            redact_only.push(t.elapsed().as_nanos() as u64);
        }
    }
    // Per-round p99 of the overhead: on a shared machine a few rounds are hit
    // by other processes; the median round shows the gate, the all-samples
    // figure shows the machine. Both are printed.
    let mut round_p99: Vec<u64> = (0..ROUNDS)
        .map(|i| {
            let range = i * PER_ROUND..(i + 1) * PER_ROUND;
            let g = stats(gated[range.clone()].to_vec());
            let u = stats(ungated[range].to_vec());
            g.p99.saturating_sub(u.p99)
        })
        .collect();
    round_p99.sort_unstable();
    let g = stats(gated);
    let u = stats(ungated);
    let d = stats(decide_only);
    let r = stats(redact_only);
    let c = stats(gated_cold);
    let n = ROUNDS * PER_ROUND;
    println!("policy gate: forge.comment by triage, ~600-byte body, {n} samples each");
    println!("{:<34} {:>10} {:>10} {:>10}", "", "p50", "p99", "p99.9");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "ungated (native call)",
        us(u.p50),
        us(u.p99),
        us(u.p999)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "gated (admit + native call)",
        us(g.p50),
        us(g.p99),
        us(g.p999)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "gated, resource not cached",
        us(c.p50),
        us(c.p99),
        us(c.p999)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "decide only (no redaction)",
        us(d.p50),
        us(d.p99),
        us(d.p999)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "redaction only",
        us(r.p50),
        us(r.p99),
        us(r.p999)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "gate overhead (gated - ungated)",
        us(g.p50.saturating_sub(u.p50)),
        us(g.p99.saturating_sub(u.p99)),
        us(g.p999.saturating_sub(u.p999))
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "overhead, resource not cached",
        us(c.p50.saturating_sub(u.p50)),
        us(c.p99.saturating_sub(u.p99)),
        us(c.p999.saturating_sub(u.p999))
    );
    println!(
        "ratio gated/ungated: p50 {:.1}x, p99 {:.1}x",
        g.p50 as f64 / u.p50.max(1) as f64,
        g.p99 as f64 / u.p99.max(1) as f64
    );
    println!(
        "overhead p99 per round of {PER_ROUND}: best {}, median {}, worst {}",
        us(round_p99.first().copied().unwrap_or_default()),
        us(percentile(&round_p99, 0.5)),
        us(round_p99.last().copied().unwrap_or_default())
    );
    let target = 15_000;
    let verdict = |ns: u64| if ns <= target { "met" } else { "NOT met" };
    println!(
        "target gate overhead <= 15 µs p99: all samples {}, median round {}, resource not cached {}",
        verdict(g.p99.saturating_sub(u.p99)),
        verdict(percentile(&round_p99, 0.5)),
        verdict(c.p99.saturating_sub(u.p99))
    );
    detection(&gate);
    hygiene(&gate, &run)
}

/// Text hygiene against the redactor, both on the same 64 KiB body: a
/// review-sized Markdown text with code, links, mentions and keywords.
fn hygiene(gate: &Gate, run: &RunContext) -> anyhow::Result<()> {
    const SAMPLES: usize = 400;
    let chunk = "## Findings\n\nThe parser drops the last line (see [the docs](https://github.com/acme/widgets/blob/main/README.md) \
        and ![shot](https://user-images.githubusercontent.com/1/2.png)). Thanks @alice; cc @acme/team and \
        https://example.com/x. Fixes #17.\n\n```rust\nfn main() { println!(\"@x Fixes #1\"); }\n```\n\n\
        - item with `code` and **bold** and <details><summary>log</summary>ok</details>\n\n";
    let mut body = String::new();
    while body.len() + chunk.len() <= 64 * 1024 {
        body.push_str(chunk);
    }
    let (_, notes) = gate.outbound_text(run, TextKind::Comment, &body);
    anyhow::ensure!(
        !notes.is_empty(),
        "the bench body should be neutralised somewhere"
    );
    let mut inert = Vec::with_capacity(SAMPLES);
    let mut redact = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES / 10 {
        black_box(kiln::policy::make_inert(
            black_box(&body),
            TextKind::Comment,
            &kiln::policy::LinkHosts::new(&["github.com".into()]),
            &kiln::policy::Audience::default(),
        ));
    }
    let hosts =
        kiln::policy::LinkHosts::new(&["github.com".into(), "*.githubusercontent.com".into()]);
    let audience = kiln::policy::Audience {
        repo: "acme/widgets".into(),
        mentions: vec!["alice".into()],
        closes: None,
    };
    for _ in 0..SAMPLES {
        let t = Instant::now();
        black_box(kiln::policy::make_inert(
            black_box(&body),
            TextKind::Comment,
            &hosts,
            &audience,
        ));
        inert.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        black_box(gate.redactor().redact(black_box(&body)));
        redact.push(t.elapsed().as_nanos() as u64);
    }
    let h = stats(inert);
    let r = stats(redact);
    let ratio = h.p50 as f64 / r.p50.max(1) as f64;
    println!();
    println!(
        "text hygiene: {} KiB Markdown body, {SAMPLES} samples each",
        body.len() / 1024
    );
    println!("{:<34} {:>10} {:>10}", "", "p50", "p99");
    println!("{:<34} {:>10} {:>10}", "redactor", us(r.p50), us(r.p99));
    println!("{:<34} {:>10} {:>10}", "text hygiene", us(h.p50), us(h.p99));
    println!(
        "ratio hygiene/redactor: p50 {ratio:.2}x, p99 {:.2}x; target <= 2x: {}",
        h.p99 as f64 / r.p99.max(1) as f64,
        if ratio <= 2.0 { "met" } else { "NOT met" }
    );
    // The same size of prose with nothing to neutralise (no link, mention,
    // HTML or keyword): what most outbound text is.
    let prose = "The parser drops the last line when the file has no trailing newline. \
        It stops at the final newline instead of the end of the file; reading to the end fixes it, \
        and a test now covers a file without one.\n\n";
    let mut plain = String::new();
    while plain.len() + prose.len() <= 64 * 1024 {
        plain.push_str(prose);
    }
    let (mut inert, mut redact) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let t = Instant::now();
        black_box(kiln::policy::make_inert(
            black_box(&plain),
            TextKind::Comment,
            &hosts,
            &audience,
        ));
        inert.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        black_box(gate.redactor().redact(black_box(&plain)));
        redact.push(t.elapsed().as_nanos() as u64);
    }
    let (h, r) = (stats(inert), stats(redact));
    let ratio = h.p50 as f64 / r.p50.max(1) as f64;
    println!();
    println!(
        "text hygiene: {} KiB of prose without markup, {SAMPLES} samples each",
        plain.len() / 1024
    );
    println!("{:<34} {:>10} {:>10}", "", "p50", "p99");
    println!("{:<34} {:>10} {:>10}", "redactor", us(r.p50), us(r.p99));
    println!("{:<34} {:>10} {:>10}", "text hygiene", us(h.p50), us(h.p99));
    println!(
        "ratio hygiene/redactor: p50 {ratio:.2}x; target <= 2x: {}",
        if ratio <= 2.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// A unified diff adding `lines` lines over 50 files: Rust, markdown, JSON,
/// shell and TOML, the mix a run's patch has (no findings in it).
fn patch_text(lines: usize) -> String {
    let samples = [
        (
            "src/module{}.rs",
            [
                "    let total = items.iter().map(|x| x.weight * 2).sum::<u64>();",
                "    if total > limit { return Err(Error::TooHeavy { total, limit }); }",
                "/// Returns the slug of a title: lowercase words joined by single dashes.",
                "pub fn slugify(title: &str) -> String { title.to_lowercase() }",
            ],
        ),
        (
            "docs/page{}.md",
            [
                "The command reads `kiln.toml` from the working directory and prints the result.",
                "| option | default | meaning |",
                "See the [README](../README.md) for the configuration reference.",
                "- `curl -fsSL https://example.invalid/data.json -o data.json` fetches the data.",
            ],
        ),
        (
            "config/settings{}.json",
            [
                "  \"name\": \"widget\", \"version\": \"1.4.0\",",
                "  \"integrity\": \"sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==\",",
                "  \"timeout_ms\": 2500,",
                "  \"retries\": [100, 200, 400, 800],",
            ],
        ),
        (
            "scripts/task{}.sh",
            [
                "set -euo pipefail",
                "for f in \"$@\"; do printf '%s\\n' \"$f\" | tr 'A-Z' 'a-z'; done",
                "curl -fsSL \"$API/items\" | jq -r '.items[].name'",
                "echo \"done in ${SECONDS}s\"",
            ],
        ),
    ];
    let files = 50;
    let per_file = lines / files;
    let mut out = String::new();
    for f in 0..files {
        let (pattern, body) = samples[f % samples.len()];
        let path = pattern.replace("{}", &f.to_string());
        out.push_str(&format!(
            "diff --git a/{path} b/{path}\nindex 1111111..2222222 100644\n--- a/{path}\n+++ b/{path}\n@@ -1,2 +1,{} @@\n context line\n",
            per_file + 2
        ));
        for i in 0..per_file {
            out.push('+');
            out.push_str(body[i % body.len()]);
            out.push('\n');
        }
        out.push_str(" context line\n");
    }
    out
}

/// The detection step's scanners (parse + scan, no model) on a 5,000-line
/// patch, next to the redactor over the same diff text, interleaved.
fn detection(gate: &Gate) {
    use kiln::detect::{Artifacts, Patch, Text, scan};
    const SAMPLES: usize = 200;
    let diff = patch_text(5_000);
    let lines = Patch::parse(&diff).added_lines();
    let artifacts = || Artifacts {
        patch: Patch::parse(black_box(&diff)),
        outbound: vec![Text::new("pull request body", "Fixes the slug.")],
        inputs: Vec::new(),
    };
    assert!(
        scan(&artifacts(), gate.redactor()).findings.is_empty(),
        "the bench patch is clean"
    );
    let (mut scanners, mut redactor) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        black_box(scan(&artifacts(), gate.redactor()));
        black_box(gate.redactor().redact(black_box(&diff)));
    }
    for _ in 0..SAMPLES {
        let t = Instant::now();
        black_box(scan(&artifacts(), gate.redactor()));
        scanners.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        black_box(gate.redactor().redact(black_box(&diff)));
        redactor.push(t.elapsed().as_nanos() as u64);
    }
    let (s, r) = (stats(scanners), stats(redactor));
    println!();
    println!(
        "detection: scanners (parse + scan, no model) on a {lines}-line patch ({} KiB), {SAMPLES} samples each",
        diff.len() / 1024
    );
    println!("{:<34} {:>10} {:>10}", "", "p50", "p99");
    println!("{:<34} {:>10} {:>10}", "scanners", us(s.p50), us(s.p99));
    println!(
        "{:<34} {:>10} {:>10}",
        "redactor (same diff text)",
        us(r.p50),
        us(r.p99)
    );
    let ratio = s.p50 as f64 / r.p50.max(1) as f64;
    println!(
        "ratio scanners/redactor: p50 {ratio:.2}x (target <= 2x: {})",
        if ratio <= 2.0 { "met" } else { "NOT met" }
    );
}
