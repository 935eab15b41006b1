//! `kiln:role/model`: one model turn per call, through the host's provider.
//!
//! | WIT function | capability       | gate |
//! |--------------|------------------|------|
//! | `complete`   | `model.complete` | policy effect `model.complete`; every text of the request redacted; run budget (turns, tokens, cost) checked before and counted after |
//!
//! A turn that would start with the budget spent is refused with
//! `budget-exhausted`, and the refusal is remembered: a plugin that then
//! claims success anyway gets its run reported as out of budget by the host.
//! The turn's output cap is lowered to the tokens left in the budget.
//!
//! The provider call is awaited without holding any lock, so slow providers
//! never stall other runs.
use std::sync::Arc;

use super::RunState;
use crate::model::{self as domain, ModelError, ModelProvider};
use crate::plugin::capability::Capability;
use crate::plugin::types::RoleError;
use crate::session::{Budget, EventKind};

/// Per-run state of the model interface.
pub struct ModelCtx {
    /// The provider, if configured.
    pub provider: Option<Arc<dyn ModelProvider>>,
    /// Limits and spending.
    pub budget: Budget,
    /// Why a turn was refused for budget, if one was.
    pub refused: Option<String>,
}

impl RunState {
    /// `model.complete`: one model turn through the host's provider.
    pub(crate) async fn complete(
        &mut self,
        mut request: domain::CompletionRequest,
    ) -> Result<domain::Completion, RoleError> {
        self.unless_paused().await;
        self.require(Capability::ModelComplete, format_args!("model.complete"))?;
        if let Some(why) = self.model.budget.exhausted() {
            self.events
                .record(EventKind::ModelTurn, format!("refused: {why}"));
            self.model.refused = Some(why.clone());
            return Err(RoleError::BudgetExhausted(why));
        }
        let Some(provider) = self.model.provider.clone() else {
            return Err(RoleError::Unavailable(
                ModelError::NotConfigured.to_string(),
            ));
        };
        self.gate_now(crate::policy::Effect::ModelComplete {
            model: provider.name(),
        })?;
        // The provider is outside the host: what a plugin read from the
        // workspace or a command printed leaves redacted, like any other text.
        self.redact_request(&mut request);
        request.max_tokens = fit_to_budget(request.max_tokens, &self.model.budget);
        let answer = provider.complete(request).await;
        let completion = match answer {
            Ok(c) => c,
            Err(e) => {
                self.events
                    .record(EventKind::ModelTurn, format!("{}: {e}", provider.name()));
                return Err(to_role_error(e));
            }
        };
        let b = &mut self.model.budget;
        b.turns = b.turns.saturating_add(1);
        b.tokens = b
            .tokens
            .saturating_add(completion.usage.input_tokens)
            .saturating_add(completion.usage.output_tokens);
        b.cost_micro_usd = b
            .cost_micro_usd
            .saturating_add(completion.usage.cost_micro_usd);
        crate::metrics::global().model_turn(
            completion.usage.input_tokens,
            completion.usage.output_tokens,
            completion.usage.cost_micro_usd,
        );
        self.events.record(
            EventKind::ModelTurn,
            format!(
                "{} answered: {}, {} in / {} out tokens",
                completion.model,
                completion.stop_reason,
                completion.usage.input_tokens,
                completion.usage.output_tokens
            ),
        );
        Ok(completion)
    }
}

/// The turn's output cap: the plugin's, lowered to the tokens the budget
/// has left (the WIT contract allows it), so one answer cannot run far past it.
fn fit_to_budget(asked: Option<u32>, budget: &Budget) -> Option<u32> {
    let Some(max) = budget.max_tokens else {
        return asked;
    };
    let left = u32::try_from(max.saturating_sub(budget.tokens))
        .unwrap_or(u32::MAX)
        .max(1);
    Some(asked.map_or(left, |a| a.min(left)))
}

/// The error the plugin sees: a timeout as a timeout, a request the plugin
/// got wrong as its invalid argument, every other failure as unavailable.
fn to_role_error(e: ModelError) -> RoleError {
    match e {
        ModelError::Timeout(_) => RoleError::Timeout(e.to_string()),
        ModelError::InvalidRequest(_) => RoleError::InvalidArgument(e.to_string()),
        _ => RoleError::Unavailable(e.to_string()),
    }
}

impl RunState {
    fn redact_request(&self, request: &mut domain::CompletionRequest) {
        if let Some(system) = request.system.take() {
            request.system = Some(self.redact(system));
        }
        for m in &mut request.messages {
            for part in &mut m.content {
                match part {
                    domain::ContentPart::Text { text } => *text = self.redact(std::mem::take(text)),
                    domain::ContentPart::ToolCall(c) => {
                        c.arguments = self.redact(std::mem::take(&mut c.arguments));
                    }
                    domain::ContentPart::ToolResult(r) => {
                        r.content = self.redact(std::mem::take(&mut r.content));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_cap_is_lowered_to_the_tokens_left_and_never_raised() {
        let mut b = Budget {
            max_tokens: Some(1000),
            tokens: 900,
            ..Budget::default()
        };
        assert_eq!(fit_to_budget(None, &b), Some(100));
        assert_eq!(fit_to_budget(Some(50), &b), Some(50));
        assert_eq!(fit_to_budget(Some(500), &b), Some(100));
        b.tokens = 2000;
        assert_eq!(fit_to_budget(Some(500), &b), Some(1), "never a zero cap");
        b.max_tokens = None;
        assert_eq!(fit_to_budget(Some(500), &b), Some(500));
        assert_eq!(fit_to_budget(None, &b), None);
    }

    #[test]
    fn provider_errors_keep_their_kind_for_the_plugin() {
        assert!(matches!(
            to_role_error(ModelError::Timeout("t".into())),
            RoleError::Timeout(m) if m == "model provider timed out: t"
        ));
        assert!(matches!(
            to_role_error(ModelError::InvalidRequest("x".into())),
            RoleError::InvalidArgument(_)
        ));
        assert!(matches!(
            to_role_error(ModelError::Rejected("r".into())),
            RoleError::Unavailable(m) if m == "model provider rejected the request: r"
        ));
    }
}
