//! The Anthropic Messages API: `POST {base}/v1/messages` with `x-api-key`
//! and `anthropic-version: 2023-06-01`.
//!
//! Requests carry the system prompt at the top level, messages of `text`,
//! `tool_use` and `tool_result` blocks, tools with their `input_schema`,
//! and `max_tokens` (which the API requires). Answers are checked block by
//! block: a block type Kiln does not know, a `tool_use` whose `input` is
//! not an object, or an unknown stop reason is an invalid answer, never a
//! silently dropped part of the turn.
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Auth, HttpClient};
use super::{
    BoxFuture, Completion, CompletionRequest, ContentPart, Message, ModelError, ModelProvider,
    ProviderSettings, Role, StopReason, ToolCall, Usage, plugin_json,
};

/// The default endpoint, used when `base_url` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version Kiln speaks.
pub const API_VERSION: &str = "2023-06-01";

/// A provider speaking the Anthropic Messages API.
pub struct AnthropicProvider {
    settings: ProviderSettings,
    http: HttpClient,
    url: String,
}

impl AnthropicProvider {
    /// A provider for `settings` (the key is required by the API, but a
    /// proxy in front of it may not need one, so it is not enforced here).
    pub fn new(settings: ProviderSettings) -> Result<Self, ModelError> {
        let http = HttpClient::new(
            "anthropic",
            settings.retry.clone(),
            &[("anthropic-version", API_VERSION)],
            Auth::Header("x-api-key"),
            settings.api_key.clone(),
        )?;
        let url = settings.endpoint("v1/messages");
        Ok(AnthropicProvider {
            settings,
            http,
            url,
        })
    }

    /// The JSON body of a Messages API request for `request`.
    pub fn request_body(&self, request: &CompletionRequest) -> Result<Value, ModelError> {
        let mut messages = Vec::with_capacity(request.messages.len());
        for (i, m) in request.messages.iter().enumerate() {
            let mut blocks = Vec::with_capacity(m.content.len());
            for (j, part) in m.content.iter().enumerate() {
                blocks.push(match part {
                    // The API refuses empty text blocks; an empty part says nothing anyway.
                    ContentPart::Text { text } if text.is_empty() => continue,
                    ContentPart::Text { text } => json!({"type": "text", "text": text}),
                    ContentPart::ToolCall(c) => json!({
                        "type": "tool_use",
                        "id": c.id,
                        "name": c.name,
                        "input": plugin_json(
                            &c.arguments,
                            format_args!("message {i} part {j}: the arguments of tool call `{}`", c.name),
                        )?,
                    }),
                    ContentPart::ToolResult(r) => json!({
                        "type": "tool_result",
                        "tool_use_id": r.call_id,
                        "content": r.content,
                        "is_error": r.is_error,
                    }),
                });
            }
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": blocks}));
        }
        let mut body = json!({
            "model": self.settings.model,
            "max_tokens": self.settings.max_tokens_for(request),
            "messages": messages,
        });
        if let Some(system) = request.system.as_ref().filter(|s| !s.is_empty()) {
            body["system"] = json!(system);
        }
        if !request.tools.is_empty() {
            let mut tools = Vec::with_capacity(request.tools.len());
            for t in &request.tools {
                tools.push(json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": plugin_json(
                        &t.parameters,
                        format_args!("the parameter schema of tool `{}`", t.name),
                    )?,
                }));
            }
            body["tools"] = Value::Array(tools);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        Ok(body)
    }

    /// Turn a Messages API answer into a [`Completion`].
    pub fn parse_answer(&self, answer: Value) -> Result<Completion, ModelError> {
        let answer: Answer = serde_json::from_value(answer)
            .map_err(|e| ModelError::InvalidAnswer(format!("not a Messages API message: {e}")))?;
        let mut content = Vec::with_capacity(answer.content.len());
        for (i, block) in answer.content.into_iter().enumerate() {
            content.push(match block {
                Block::Text { text } => ContentPart::Text { text },
                Block::ToolUse { id, name, input } => {
                    if !input.is_object() {
                        return Err(ModelError::InvalidAnswer(format!(
                            "content block {i}: the input of tool call `{name}` is not a JSON object: {input}"
                        )));
                    }
                    if id.is_empty() || name.is_empty() {
                        return Err(ModelError::InvalidAnswer(format!(
                            "content block {i}: a tool call needs an id and a name"
                        )));
                    }
                    ContentPart::ToolCall(ToolCall {
                        id,
                        name,
                        arguments: input.to_string(),
                    })
                }
            });
        }
        let stop_reason = match answer.stop_reason {
            AnthropicStop::EndTurn => StopReason::EndTurn,
            AnthropicStop::ToolUse => StopReason::ToolUse,
            AnthropicStop::MaxTokens => StopReason::MaxTokens,
            AnthropicStop::StopSequence => StopReason::StopSequence,
            AnthropicStop::Refusal => StopReason::Refusal,
        };
        let u = answer.usage;
        let input_tokens = u
            .input_tokens
            .saturating_add(u.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(u.cache_read_input_tokens.unwrap_or(0));
        let model = answer.model.unwrap_or_else(|| self.settings.model.clone());
        Ok(Completion {
            message: Message {
                role: Role::Assistant,
                content,
            },
            stop_reason,
            usage: Usage {
                input_tokens,
                output_tokens: u.output_tokens,
                cost_micro_usd: self.settings.prices.cost_micro_usd(
                    &model,
                    input_tokens,
                    u.output_tokens,
                ),
            },
            model,
        })
    }
}

impl ModelProvider for AnthropicProvider {
    fn name(&self) -> String {
        format!("anthropic:{}", self.settings.model)
    }

    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ModelError>> {
        Box::pin(async move {
            let body = self.request_body(&request)?;
            let answer = self.http.post_json(&self.url, &body).await?;
            self.parse_answer(answer)
        })
    }
}

/// A Messages API answer, as far as Kiln reads it.
#[derive(Deserialize)]
struct Answer {
    content: Vec<Block>,
    stop_reason: AnthropicStop,
    usage: AnthropicUsage,
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum AnthropicStop {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    Refusal,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Price, ToolResult, ToolSpec};

    fn provider() -> AnthropicProvider {
        let mut s = ProviderSettings::new("http://127.0.0.1:1/", "claude-test");
        s.max_tokens = 1000;
        s.prices.0.insert(
            "claude-test".into(),
            Price {
                input_usd_per_mtok: 3.0,
                output_usd_per_mtok: 15.0,
            },
        );
        AnthropicProvider::new(s).expect("provider")
    }

    #[test]
    fn the_endpoint_has_one_slash_and_the_plugin_cannot_raise_max_tokens() {
        let p = provider();
        assert_eq!(p.url, "http://127.0.0.1:1/v1/messages");
        let mut r = CompletionRequest {
            system: None,
            messages: vec![],
            tools: vec![],
            max_tokens: Some(50_000),
            temperature: None,
        };
        let body = p.request_body(&r).expect("body");
        assert_eq!(body["max_tokens"], 1000, "the configured cap wins");
        r.max_tokens = Some(10);
        assert_eq!(p.request_body(&r).expect("body")["max_tokens"], 10);
        assert!(body.get("system").is_none() && body.get("tools").is_none());
    }

    #[test]
    fn bad_plugin_json_is_an_invalid_request_naming_the_place() {
        let p = provider();
        let r = CompletionRequest {
            system: None,
            messages: vec![Message {
                role: Role::Assistant,
                content: vec![
                    ContentPart::Text { text: "".into() },
                    ContentPart::ToolCall(ToolCall {
                        id: "c".into(),
                        name: "read_file".into(),
                        arguments: "{oops".into(),
                    }),
                ],
            }],
            tools: vec![],
            max_tokens: None,
            temperature: None,
        };
        let err = p.request_body(&r).expect_err("refused");
        assert!(
            err.to_string().starts_with(
                "invalid model request: message 0 part 1: the arguments of tool call `read_file` is not JSON"
            ),
            "got {err}"
        );
        let r = CompletionRequest {
            messages: vec![Message {
                role: Role::User,
                content: vec![ContentPart::ToolResult(ToolResult {
                    call_id: "c".into(),
                    content: "x".into(),
                    is_error: false,
                })],
            }],
            tools: vec![ToolSpec {
                name: "t".into(),
                description: "d".into(),
                parameters: "not json".into(),
            }],
            ..r
        };
        let err = p.request_body(&r).expect_err("refused");
        assert!(
            err.to_string()
                .contains("the parameter schema of tool `t` is not JSON"),
            "got {err}"
        );
    }

    #[test]
    fn usage_counts_cache_tokens_as_input_and_is_priced() {
        let c = provider()
            .parse_answer(json!({
                "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn",
                "model": "claude-test-2025",
                "usage": {"input_tokens": 100, "output_tokens": 10,
                          "cache_creation_input_tokens": 5, "cache_read_input_tokens": 5}
            }))
            .expect("valid");
        assert_eq!(
            c.usage,
            Usage {
                input_tokens: 110,
                output_tokens: 10,
                cost_micro_usd: 330 + 150
            }
        );
        assert_eq!(c.model, "claude-test-2025");
    }

    #[test]
    fn answers_that_are_not_messages_are_invalid_with_the_reason() {
        let p = provider();
        for (answer, expected) in [
            (
                json!({"stop_reason": "end_turn"}),
                "missing field `content`",
            ),
            (
                json!({"content": [{"type": "image"}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 1, "output_tokens": 1}}),
                "unknown variant `image`",
            ),
            (
                json!({"content": [{"type": "tool_use", "id": "t", "name": "x", "input": "[1]"}],
                       "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}),
                "content block 0: the input of tool call `x` is not a JSON object",
            ),
            (
                json!({"content": [], "stop_reason": "thinking_hard",
                       "usage": {"input_tokens": 1, "output_tokens": 1}}),
                "unknown variant `thinking_hard`",
            ),
        ] {
            let err = p.parse_answer(answer).expect_err("invalid").to_string();
            assert!(
                err.starts_with("model provider returned an invalid answer")
                    && err.contains(expected),
                "expected {expected:?} in {err:?}"
            );
        }
    }
}
