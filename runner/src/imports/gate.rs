//! What every gated import shares: the run's binding to the policy gate,
//! the decision step that writes each decision to the run's event log, and
//! the event sink that redacts every event before it is stored or served.
//!
//! There is no way around the gate: a run started without an explicit
//! binding gets Kiln's default policies as an *untrusted* run, so effects
//! that need trust are held and everything the defaults do not permit is
//! denied.
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::config::Role;
use crate::plugin::types::RoleError;
use crate::policy::{Decision, Effect, EffectRequest, Gate, GateConfig, TextKind, Trust};
use crate::session::{EventKind, EventSink};

use super::RunState;

/// A run's binding to the policy gate: the gate (policies, invariants,
/// redaction) and the run as Cedar's principal.
#[derive(Clone)]
pub struct PolicyBinding {
    /// The gate, shared by all runs of a repository.
    pub gate: Arc<Gate>,
    /// This run: role, repository, trust of its trigger, branch.
    pub run: Arc<crate::policy::RunContext>,
}

impl PolicyBinding {
    /// The binding of a run that was started without one: Kiln's default
    /// policies, an untrusted trigger, an unnamed repository, and branch
    /// `kiln/run`. `None` when `role` is not one of Kiln's roles or the
    /// default gate cannot be built: every effect is then denied.
    pub fn untrusted_default(role: &str) -> Option<Self> {
        let role = role.parse::<Role>().ok()?;
        // Every unbound run of a role has the same context, so its Cedar
        // entities are built once per role, not on every instantiation (that
        // was a third of `instantiate`'s time in the plugin bench).
        static UNBOUND: Mutex<Vec<(Role, Arc<crate::policy::RunContext>)>> = Mutex::new(Vec::new());
        let mut unbound = UNBOUND.lock().unwrap_or_else(PoisonError::into_inner);
        let run = match unbound.iter().find(|(r, _)| *r == role) {
            Some((_, run)) => run.clone(),
            None => {
                let run = Arc::new(crate::policy::RunContext::new(
                    "unbound",
                    role,
                    "local/unbound",
                    Trust::Untrusted,
                    "kiln/run",
                ));
                unbound.push((role, run.clone()));
                run
            }
        };
        Some(PolicyBinding {
            gate: default_gate()?,
            run,
        })
    }
}

/// The gate with Kiln's embedded policies, the default `[policy]` section
/// and no configured secrets (token shapes are still redacted), built once
/// per process.
pub fn default_gate() -> Option<Arc<Gate>> {
    static GATE: OnceLock<Option<Arc<Gate>>> = OnceLock::new();
    let config = || -> Result<GateConfig, String> {
        crate::policy::config::PolicyConfig::default().gate_config(Vec::new())
    };
    GATE.get_or_init(
        || match config().and_then(|c| Gate::new(&c).map_err(|e| e.to_string())) {
            Ok(g) => Some(Arc::new(g)),
            Err(e) => {
                tracing::error!("the default policy gate cannot be built: {e}");
                None
            }
        },
    )
    .clone()
}

impl RunState {
    /// Decide `effect` for this run and write the decision to the event log.
    /// Unless denied, the effect comes back with its outbound texts redacted.
    pub(crate) fn decide(&self, effect: Effect) -> (Decision, Effect) {
        self.decide_as(None, effect)
    }

    /// [`Self::decide`] with `run` as the principal instead of the binding's
    /// (the same run with more context, e.g. the detection verdict).
    pub(crate) fn decide_as(
        &self,
        run: Option<&Arc<crate::policy::RunContext>>,
        effect: Effect,
    ) -> (Decision, Effect) {
        let Some(binding) = &self.policy else {
            let decision = Decision::Deny {
                reason: format!(
                    "{}: denied, this run has no policy gate (role {} is not one of Kiln's roles)",
                    effect.action(),
                    self.role
                ),
                blame: crate::policy::Blame::Host,
            };
            self.record_decision(effect.action(), &decision);
            return (decision, effect);
        };
        let (decision, req) = binding.gate.admit(EffectRequest {
            run: run.unwrap_or(&binding.run).clone(),
            effect,
        });
        self.record_decision(req.effect.action(), &decision);
        (decision, req.effect)
    }

    /// Decide an effect that cannot wait for a human (a file write, a
    /// command, a model call): allow gives the redacted effect back; deny and
    /// hold become the plugin-visible error with the gate's reason.
    pub(crate) fn gate_now(&self, effect: Effect) -> Result<Effect, RoleError> {
        match self.decide(effect) {
            (Decision::Allow { .. }, effect) => Ok(effect),
            (Decision::Deny { reason, .. }, _) => Err(RoleError::Denied(reason)),
            (Decision::Hold { reason }, _) => Err(RoleError::HeldForApproval(reason)),
        }
    }

    fn record_decision(&self, action: &str, decision: &Decision) {
        crate::metrics::global().gate_decision(decision.verdict());
        self.events.record(
            EventKind::Policy {
                action: action.to_string(),
                verdict: decision.verdict().to_string(),
            },
            decision.reason().to_string(),
        );
    }

    /// An outbound text (towards the forge) made inert by the gate's text
    /// hygiene, then redacted; each thing neutralised is a run event saying
    /// what and why.
    pub(crate) fn outbound(&self, kind: TextKind, text: String) -> String {
        let Some(b) = &self.policy else {
            return text;
        };
        let (clean, notes) = b.gate.outbound_text(&b.run, kind, &text);
        for n in notes {
            let message = format!(
                "{} in the {}: neutralised {:?}: {}",
                n.what,
                kind.as_str(),
                n.detail,
                n.why
            );
            self.events.record(
                EventKind::Policy {
                    action: "text-hygiene".into(),
                    verdict: "neutralised".into(),
                },
                b.gate.redactor().redact(&message).into_owned(),
            );
        }
        clean
    }

    /// Redact a text leaving the host towards a model or a plugin.
    pub(crate) fn redact(&self, text: String) -> String {
        match &self.policy {
            Some(b) => match b.gate.redactor().redact(&text) {
                std::borrow::Cow::Owned(clean) => clean,
                std::borrow::Cow::Borrowed(_) => text,
            },
            None => text,
        }
    }
}

/// An event sink that redacts every message (configured secret values and
/// token shapes) before passing it on, so nothing a plugin, a command or a
/// model printed reaches the store, the API or the logs unredacted.
pub struct RedactingEvents {
    inner: Arc<dyn EventSink>,
    gate: Arc<Gate>,
}

impl RedactingEvents {
    /// Wrap `inner`, redacting with `gate`'s redactor.
    pub fn new(inner: Arc<dyn EventSink>, gate: Arc<Gate>) -> Self {
        RedactingEvents { inner, gate }
    }
}

impl EventSink for RedactingEvents {
    fn record(&self, kind: EventKind, message: String) {
        let message = match self.gate.redactor().redact(&message) {
            std::borrow::Cow::Owned(clean) => clean,
            std::borrow::Cow::Borrowed(_) => message,
        };
        self.inner.record(kind, message);
    }
}
