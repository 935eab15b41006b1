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

use wasmtime::component::HasSelf;

use super::RunState;
use crate::model::{self as domain, ModelError, ModelProvider};
use crate::plugin::capability::Capability;
use crate::plugin::wit::latest::kiln::role::model::{self as wit, Completion, CompletionRequest};
use crate::plugin::wit::latest::kiln::role::types::RoleError;
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

impl wit::Host for RunState {
    async fn complete(
        &mut self,
        request: CompletionRequest,
    ) -> wasmtime::Result<Result<Completion, RoleError>> {
        self.unless_paused().await;
        if let Err(e) = self.require(Capability::ModelComplete, format_args!("model.complete")) {
            return Ok(Err(e));
        }
        if let Some(why) = self.model.budget.exhausted() {
            self.events
                .record(EventKind::ModelTurn, format!("refused: {why}"));
            self.model.refused = Some(why.clone());
            return Ok(Err(RoleError::BudgetExhausted(why)));
        }
        let Some(provider) = self.model.provider.clone() else {
            return Ok(Err(RoleError::Unavailable(
                ModelError::NotConfigured.to_string(),
            )));
        };
        if let Err(e) = self.gate_now(crate::policy::Effect::ModelComplete {
            model: provider.name(),
        }) {
            return Ok(Err(e));
        }
        let mut request = from_wit_request(request);
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
                return Ok(Err(to_role_error(e)));
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
        self.events.record(
            EventKind::ModelTurn,
            format!(
                "{} answered: {:?}, {} in / {} out tokens",
                completion.model,
                completion.stop_reason,
                completion.usage.input_tokens,
                completion.usage.output_tokens
            ),
        );
        Ok(Ok(to_wit_completion(completion)))
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

fn from_wit_request(r: CompletionRequest) -> domain::CompletionRequest {
    domain::CompletionRequest {
        system: r.system,
        messages: r.messages.into_iter().map(from_wit_message).collect(),
        tools: r
            .tools
            .into_iter()
            .map(|t| domain::ToolSpec {
                name: t.name,
                description: t.description,
                parameters: t.parameters,
            })
            .collect(),
        max_tokens: r.max_tokens,
        temperature: r.temperature,
    }
}

fn from_wit_message(m: wit::Message) -> domain::Message {
    domain::Message {
        role: match m.role {
            wit::MessageRole::User => domain::Role::User,
            wit::MessageRole::Assistant => domain::Role::Assistant,
        },
        content: m
            .content
            .into_iter()
            .map(|p| match p {
                wit::ContentPart::Text(text) => domain::ContentPart::Text { text },
                wit::ContentPart::ToolCall(c) => domain::ContentPart::ToolCall(domain::ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments: c.arguments,
                }),
                wit::ContentPart::ToolResult(r) => {
                    domain::ContentPart::ToolResult(domain::ToolResult {
                        call_id: r.call_id,
                        content: r.content,
                        is_error: r.is_error,
                    })
                }
            })
            .collect(),
    }
}

fn to_wit_completion(c: domain::Completion) -> Completion {
    Completion {
        message: wit::Message {
            role: match c.message.role {
                domain::Role::User => wit::MessageRole::User,
                domain::Role::Assistant => wit::MessageRole::Assistant,
            },
            content: c
                .message
                .content
                .into_iter()
                .map(|p| match p {
                    domain::ContentPart::Text { text } => wit::ContentPart::Text(text),
                    domain::ContentPart::ToolCall(t) => wit::ContentPart::ToolCall(wit::ToolCall {
                        id: t.id,
                        name: t.name,
                        arguments: t.arguments,
                    }),
                    domain::ContentPart::ToolResult(r) => {
                        wit::ContentPart::ToolResult(wit::ToolResult {
                            call_id: r.call_id,
                            content: r.content,
                            is_error: r.is_error,
                        })
                    }
                })
                .collect(),
        },
        stop_reason: match c.stop_reason {
            domain::StopReason::EndTurn => wit::StopReason::EndTurn,
            domain::StopReason::ToolUse => wit::StopReason::ToolUse,
            domain::StopReason::MaxTokens => wit::StopReason::MaxTokens,
            domain::StopReason::StopSequence => wit::StopReason::StopSequence,
            domain::StopReason::Refusal => wit::StopReason::Refusal,
        },
        usage: wit::Usage {
            input_tokens: c.usage.input_tokens,
            output_tokens: c.usage.output_tokens,
            cost_micro_usd: c.usage.cost_micro_usd,
        },
        model: c.model,
    }
}

/// Link the `model` interface.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<RunState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)
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
