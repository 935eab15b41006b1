//! The process's metrics, served by `GET /metrics` in Prometheus' text
//! format (with the Prometheus project's `prometheus-client`).
//!
//! Counters and histograms live in one process-wide [`Metrics`]: the places
//! that move them (the gate, the worker, the webhook intake, the model
//! import) are deep in a run and share nothing else, and a process serves
//! one runner. Runs by state are not counted here but read from the store
//! at each scrape ([`Metrics::encode`]), so they are right after a restart
//! too.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kiln_runs` | gauge | `role`, `state` |
//! | `kiln_run_duration_seconds` | histogram | `role`, `outcome` |
//! | `kiln_gate_decisions_total` | counter | `verdict` (allow, deny, hold) |
//! | `kiln_webhook_deliveries_total` | counter | `outcome` (accepted, ignored, ping, or the refusal's code) |
//! | `kiln_model_tokens_total` | counter | `direction` (input, output) |
//! | `kiln_model_cost_usd_total` | counter | — |
//! | `kiln_sandbox_start_seconds` | histogram | — |
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Role;
use crate::store::RunState;

/// The `Content-Type` of the text format served.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of the runs gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    role: String,
    state: String,
}

/// Labels of the run duration histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    role: String,
    outcome: String,
}

/// One label, `name="value"`, for the counters with a single label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Verdict {
    verdict: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric Kiln keeps, registered once.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Gauge>,
    run_duration: HistogramFamily<DurationLabels>,
    gate_decisions: Family<Verdict, Counter>,
    webhook_deliveries: Family<Outcome, Counter>,
    model_tokens: Family<Direction, Counter>,
    model_cost: Counter<f64, AtomicU64>,
    sandbox_start: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Run lengths: 1 s to about 4.5 hours.
fn run_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let runs = Family::<RunLabels, Gauge>::default();
        registry.register("runs", "Runs in the store, by role and state", runs.clone());
        let run_duration: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(run_buckets);
        registry.register(
            "run_duration_seconds",
            "How long runs took from start to end, by role and outcome",
            run_duration.clone(),
        );
        let gate_decisions = Family::<Verdict, Counter>::default();
        registry.register(
            "gate_decisions",
            "Effects the policy gate decided, by verdict",
            gate_decisions.clone(),
        );
        let webhook_deliveries = Family::<Outcome, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "GitHub webhook deliveries received, by outcome",
            webhook_deliveries.clone(),
        );
        let model_tokens = Family::<Direction, Counter>::default();
        registry.register(
            "model_tokens",
            "Model tokens used, input and output",
            model_tokens.clone(),
        );
        let model_cost = Counter::<f64, AtomicU64>::default();
        registry.register(
            "model_cost_usd",
            "Model cost in US dollars (by [model.prices]; 0 without prices)",
            model_cost.clone(),
        );
        // 10 ms to about 40 s: a container start, with a slow image pull.
        let sandbox_start = Histogram::new(exponential_buckets(0.01, 2.0, 13));
        registry.register(
            "sandbox_start_seconds",
            "Time to create and start a run's sandbox container",
            sandbox_start.clone(),
        );
        Metrics {
            registry,
            runs,
            run_duration,
            gate_decisions,
            webhook_deliveries,
            model_tokens,
            model_cost,
            sandbox_start,
        }
    }

    /// A run of `role` ended `outcome` (`succeeded`, `failed`, ...) after `took`.
    pub fn run_finished(&self, role: Role, outcome: &str, took: Duration) {
        self.run_duration
            .get_or_create(&DurationLabels {
                role: role.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The gate decided an effect: `allow`, `deny` or `hold`.
    pub fn gate_decision(&self, verdict: &str) {
        self.gate_decisions
            .get_or_create(&Verdict {
                verdict: verdict.to_string(),
            })
            .inc();
    }

    /// A webhook delivery ended `outcome`.
    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A model turn used these tokens and cost.
    pub fn model_turn(&self, input_tokens: u64, output_tokens: u64, cost_micro_usd: u64) {
        for (direction, n) in [("input", input_tokens), ("output", output_tokens)] {
            self.model_tokens
                .get_or_create(&Direction { direction })
                .inc_by(n);
        }
        self.model_cost.inc_by(cost_micro_usd as f64 / 1e6);
    }

    /// A sandbox took `took` to start.
    pub fn sandbox_started(&self, took: Duration) {
        self.sandbox_start.observe(took.as_secs_f64());
    }

    /// Every metric in Prometheus' text format, with `runs` (role, state,
    /// count: the store's counts now) as the runs gauge.
    pub fn encode(&self, runs: &[(Role, RunState, u64)]) -> String {
        // Replaced whole: a state with no runs left disappears rather than
        // keep its old count.
        self.runs.clear();
        for (role, state, n) in runs {
            self.runs
                .get_or_create(&RunLabels {
                    role: role.to_string(),
                    state: state.to_string(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_every_metric_with_its_labels() {
        let m = Metrics::new();
        m.gate_decision("allow");
        m.gate_decision("allow");
        m.webhook_delivery("bad-signature");
        m.model_turn(100, 20, 1_500_000);
        m.run_finished(Role::Triage, "succeeded", Duration::from_secs(3));
        m.sandbox_started(Duration::from_millis(300));
        let text = m.encode(&[(Role::Spec, RunState::Queued, 2)]);
        for line in [
            "kiln_gate_decisions_total{verdict=\"allow\"} 2",
            "kiln_webhook_deliveries_total{outcome=\"bad-signature\"} 1",
            "kiln_model_tokens_total{direction=\"input\"} 100",
            "kiln_model_tokens_total{direction=\"output\"} 20",
            "kiln_model_cost_usd_total 1.5",
            "kiln_runs{role=\"spec\",state=\"queued\"} 2",
            "kiln_run_duration_seconds_count{role=\"triage\",outcome=\"succeeded\"} 1",
            "kiln_sandbox_start_seconds_count 1",
            "# TYPE kiln_run_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        let text = m.encode(&[]);
        assert!(
            !text.contains("state=\"queued\""),
            "a state with no runs left is dropped:\n{text}"
        );
    }
}
