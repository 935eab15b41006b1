//! OpenAI-compatible Chat Completions: `POST {base}/chat/completions` with
//! `Authorization: Bearer <key>` when a key is configured (local servers
//! such as Ollama, llama.cpp and vLLM need none).
//!
//! The system prompt is the first message; tools are `type: function`;
//! the model's tool calls carry their arguments as a JSON *string*, which
//! must parse as a JSON object or the answer is invalid; tool results go
//! back as `tool` role messages. Servers that report no `usage` get an
//! estimate (four bytes a token) so token budgets still bind.
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{Auth, HttpClient};
use super::{
    BoxFuture, Completion, CompletionRequest, ContentPart, Message, ModelError, ModelProvider,
    ProviderSettings, Role, StopReason, ToolCall, Usage, estimate_tokens, plugin_json,
};

/// The default endpoint, used when `base_url` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// A provider speaking the OpenAI Chat Completions API.
pub struct OpenAiProvider {
    settings: ProviderSettings,
    http: HttpClient,
    url: String,
}

impl OpenAiProvider {
    /// A provider for `settings`; the key is optional.
    pub fn new(settings: ProviderSettings) -> Result<Self, ModelError> {
        let http = HttpClient::new(
            "openai",
            settings.retry.clone(),
            &[],
            Auth::Bearer,
            settings.api_key.clone(),
        )?;
        let url = settings.endpoint("chat/completions");
        Ok(OpenAiProvider {
            settings,
            http,
            url,
        })
    }

    /// The JSON body of a Chat Completions request for `request`.
    pub fn request_body(&self, request: &CompletionRequest) -> Result<Value, ModelError> {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(system) = request.system.as_ref().filter(|s| !s.is_empty()) {
            messages.push(json!({"role": "system", "content": system}));
        }
        for (i, m) in request.messages.iter().enumerate() {
            let mut text = Vec::new();
            let mut calls = Vec::new();
            for (j, part) in m.content.iter().enumerate() {
                match part {
                    ContentPart::Text { text: t } => text.push(t.as_str()),
                    ContentPart::ToolCall(c) => {
                        // Checked here so the provider never sees arguments it would
                        // reject, and re-encoded so the string is canonical JSON.
                        let arguments = plugin_json(
                            &c.arguments,
                            format_args!(
                                "message {i} part {j}: the arguments of tool call `{}`",
                                c.name
                            ),
                        )?;
                        calls.push(json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": arguments.to_string()},
                        }));
                    }
                    // Tool results must directly follow the assistant turn that
                    // asked for them, so they go out before any text of this message.
                    ContentPart::ToolResult(r) => messages.push(json!({
                        "role": "tool",
                        "tool_call_id": r.call_id,
                        "content": if r.is_error {
                            format!("[tool error] {}", r.content)
                        } else {
                            r.content.clone()
                        },
                    })),
                }
            }
            let text = text.join("\n");
            match m.role {
                Role::Assistant => {
                    let mut msg = json!({
                        "role": "assistant",
                        "content": if text.is_empty() { Value::Null } else { json!(text) },
                    });
                    if !calls.is_empty() {
                        msg["tool_calls"] = Value::Array(calls);
                    }
                    messages.push(msg);
                }
                Role::User if !calls.is_empty() => {
                    return Err(ModelError::InvalidRequest(format!(
                        "message {i}: a user message cannot carry tool calls"
                    )));
                }
                Role::User if !text.is_empty() => {
                    messages.push(json!({"role": "user", "content": text}));
                }
                Role::User => {}
            }
        }
        let mut body = json!({
            "model": self.settings.model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens_for(request),
        });
        if !request.tools.is_empty() {
            let mut tools = Vec::with_capacity(request.tools.len());
            for t in &request.tools {
                tools.push(json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": plugin_json(
                            &t.parameters,
                            format_args!("the parameter schema of tool `{}`", t.name),
                        )?,
                    },
                }));
            }
            body["tools"] = Value::Array(tools);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        Ok(body)
    }

    /// Turn a Chat Completions answer into a [`Completion`]; `request_bytes`
    /// is the size of the request, for the usage estimate.
    pub fn parse_answer(
        &self,
        answer: Value,
        request_bytes: usize,
    ) -> Result<Completion, ModelError> {
        let answer: Answer = serde_json::from_value(answer)
            .map_err(|e| ModelError::InvalidAnswer(format!("not a chat completion: {e}")))?;
        let Some(choice) = answer.choices.into_iter().next() else {
            return Err(ModelError::InvalidAnswer(
                "the completion has no choices".into(),
            ));
        };
        let mut content = Vec::new();
        let mut answer_bytes = 0;
        let refusal = choice.message.refusal.filter(|r| !r.is_empty());
        if let Some(text) = choice
            .message
            .content
            .or_else(|| refusal.clone())
            .filter(|t| !t.is_empty())
        {
            answer_bytes += text.len();
            content.push(ContentPart::Text { text });
        }
        let calls = choice.message.tool_calls.unwrap_or_default();
        let has_calls = !calls.is_empty();
        for (i, call) in calls.into_iter().enumerate() {
            if call.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(ModelError::InvalidAnswer(format!(
                    "tool call {i} has type `{}`, not `function`",
                    call.kind.unwrap_or_default()
                )));
            }
            let name = call.function.name;
            if name.is_empty() {
                return Err(ModelError::InvalidAnswer(format!(
                    "tool call {i} has no function name"
                )));
            }
            let text = call.function.arguments;
            let arguments = if text.trim().is_empty() {
                "{}".to_string()
            } else {
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) if v.is_object() => v.to_string(),
                    Ok(_) => {
                        return Err(ModelError::InvalidAnswer(format!(
                            "tool call {i} (`{name}`): arguments are not a JSON object: {text}"
                        )));
                    }
                    Err(e) => {
                        return Err(ModelError::InvalidAnswer(format!(
                            "tool call {i} (`{name}`): arguments are not JSON ({e}): {text}"
                        )));
                    }
                }
            };
            answer_bytes += name.len() + arguments.len();
            content.push(ContentPart::ToolCall(ToolCall {
                // Some local servers leave the id out; the loop still needs one.
                id: call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("call-{i}")),
                name,
                arguments,
            }));
        }
        let stop_reason = match choice.finish_reason.as_deref() {
            // Some servers say `stop` even when the turn is tool calls.
            _ if has_calls => StopReason::ToolUse,
            _ if refusal.is_some() => StopReason::Refusal,
            Some("stop") => StopReason::EndTurn,
            Some("tool_calls" | "function_call") => StopReason::ToolUse,
            Some("length") => StopReason::MaxTokens,
            Some("content_filter") => StopReason::Refusal,
            Some(other) => {
                return Err(ModelError::InvalidAnswer(format!(
                    "unknown finish_reason `{other}`"
                )));
            }
            None => {
                return Err(ModelError::InvalidAnswer(
                    "the choice has no finish_reason".into(),
                ));
            }
        };
        let model = answer.model.unwrap_or_else(|| self.settings.model.clone());
        let (input_tokens, output_tokens) = match answer.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (
                estimate_tokens(request_bytes),
                estimate_tokens(answer_bytes),
            ),
        };
        Ok(Completion {
            message: Message {
                role: Role::Assistant,
                content,
            },
            stop_reason,
            usage: Usage {
                input_tokens,
                output_tokens,
                cost_micro_usd: self.settings.prices.cost_micro_usd(
                    &model,
                    input_tokens,
                    output_tokens,
                ),
            },
            model,
        })
    }
}

impl ModelProvider for OpenAiProvider {
    fn name(&self) -> String {
        format!("openai:{}", self.settings.model)
    }

    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ModelError>> {
        Box::pin(async move {
            let body = self.request_body(&request)?;
            let request_bytes = body.to_string().len();
            let answer = self.http.post_json(&self.url, &body).await?;
            self.parse_answer(answer, request_bytes)
        })
    }
}

#[derive(Deserialize)]
struct Answer {
    choices: Vec<Choice>,
    usage: Option<OpenAiUsage>,
    model: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<AnswerToolCall>>,
}

#[derive(Deserialize)]
struct AnswerToolCall {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    function: AnswerFunction,
}

#[derive(Deserialize)]
struct AnswerFunction {
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolResult;

    fn provider() -> OpenAiProvider {
        OpenAiProvider::new(ProviderSettings::new("http://127.0.0.1:1/v1", "local")).expect("p")
    }

    #[test]
    fn tool_results_become_tool_messages_before_the_users_text() {
        let r = CompletionRequest {
            system: Some("sys".into()),
            messages: vec![
                Message {
                    role: Role::Assistant,
                    content: vec![ContentPart::ToolCall(ToolCall {
                        id: "c1".into(),
                        name: "ls".into(),
                        arguments: r#"{ "path": "" }"#.into(),
                    })],
                },
                Message {
                    role: Role::User,
                    content: vec![
                        ContentPart::Text {
                            text: "and hurry".into(),
                        },
                        ContentPart::ToolResult(ToolResult {
                            call_id: "c1".into(),
                            content: "no such dir".into(),
                            is_error: true,
                        }),
                    ],
                },
            ],
            tools: vec![],
            max_tokens: None,
            temperature: None,
        };
        let body = provider().request_body(&r).expect("body");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "system", "content": "sys"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "ls", "arguments": "{\"path\":\"\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "[tool error] no such dir"},
                {"role": "user", "content": "and hurry"},
            ])
        );
        assert!(body.get("tools").is_none());
    }

    #[test]
    fn tool_calls_win_over_a_stop_finish_reason_and_missing_usage_is_estimated() {
        let c = provider()
            .parse_answer(
                json!({"choices": [{"message": {"content": null, "tool_calls": [
                    {"function": {"name": "ls", "arguments": ""}}]},
                    "finish_reason": "stop"}]}),
                400,
            )
            .expect("valid");
        assert_eq!(c.stop_reason, StopReason::ToolUse);
        assert_eq!(
            c.message.content,
            vec![ContentPart::ToolCall(ToolCall {
                id: "call-0".into(),
                name: "ls".into(),
                arguments: "{}".into()
            })]
        );
        assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (100, 1));
        assert_eq!(c.model, "local");
    }

    #[test]
    fn a_refusal_is_a_refusal_with_its_text() {
        let c = provider()
            .parse_answer(
                json!({"choices": [{"message": {"content": null, "refusal": "I can't"},
                    "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
                0,
            )
            .expect("valid");
        assert_eq!(c.stop_reason, StopReason::Refusal);
        assert_eq!(
            c.message.content,
            vec![ContentPart::Text {
                text: "I can't".into()
            }]
        );
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        let p = provider();
        for (answer, expected) in [
            (json!({"choices": []}), "the completion has no choices"),
            (json!({"id": "x"}), "missing field `choices`"),
            (
                json!({"choices": [{"message": {"tool_calls": [{"type": "function",
                    "function": {"name": "ls", "arguments": "{\"path\": "}}]}, "finish_reason": "tool_calls"}]}),
                "tool call 0 (`ls`): arguments are not JSON",
            ),
            (
                json!({"choices": [{"message": {"tool_calls": [{"type": "function",
                    "function": {"name": "ls", "arguments": "[1,2]"}}]}, "finish_reason": "tool_calls"}]}),
                "tool call 0 (`ls`): arguments are not a JSON object",
            ),
            (
                json!({"choices": [{"message": {"content": "x"}, "finish_reason": "sleepy"}]}),
                "unknown finish_reason `sleepy`",
            ),
        ] {
            let err = p.parse_answer(answer, 0).expect_err("invalid").to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }
}
