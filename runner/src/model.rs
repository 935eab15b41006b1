//! Language models behind the `model` import: the provider-independent
//! request and answer types, and the [`ModelProvider`] trait that the
//! Anthropic, OpenAI-compatible and scripted providers implement.
//!
//! Keys and endpoints live only here, on the host: a plugin sends messages
//! and receives turns, never credentials.
//!
//! | module        | concern |
//! |---------------|---------|
//! | [`anthropic`] | the Anthropic Messages API wire format |
//! | [`openai`]    | the OpenAI-compatible Chat Completions wire format |
//! | [`scripted`]  | replaying a script file, for demos and tests |
//! | [`http`]      | the HTTP layer both real providers share: retries, errors, the key |
//! | [`price`]     | turning token counts into micro-USD |
//! | [`config`]    | `[model]` and `[budgets.<role>]` in `kiln.toml`, and building a provider |
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub mod anthropic;
pub mod config;
pub mod http;
pub mod openai;
pub mod price;
pub mod scripted;

pub use config::{BudgetConfig, BudgetsConfig, ModelConfig, ModelConfigError, build_provider};
pub use http::{ApiKey, RetryPolicy};
pub use price::{Price, Prices};
pub use scripted::{ScriptError, ScriptedProvider};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Task text and tool results.
    User,
    /// The model's own turns.
    Assistant,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Tool name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments, as JSON text.
    pub parameters: String,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider-assigned id.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as JSON text (untrusted).
    pub arguments: String,
}

/// The answer to a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The call it answers.
    pub call_id: String,
    /// The result text.
    pub content: String,
    /// Whether the tool failed.
    pub is_error: bool,
}

/// One part of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call.
    ToolCall(ToolCall),
    /// A tool result.
    ToolResult(ToolResult),
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: Vec<ContentPart>,
}

/// A request for one model turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// System prompt.
    pub system: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Tools offered.
    pub tools: Vec<ToolSpec>,
    /// Output token cap for this turn.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Finished its turn.
    EndTurn,
    /// Wants tool results.
    ToolUse,
    /// Hit the token cap.
    MaxTokens,
    /// Produced a stop sequence.
    StopSequence,
    /// Refused.
    Refusal,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The wire names, as the providers and the transcript's JSON say them.
        f.write_str(match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::Refusal => "refusal",
        })
    }
}

/// Tokens and cost of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens read.
    pub input_tokens: u64,
    /// Tokens written.
    pub output_tokens: u64,
    /// Cost in millionths of a US dollar.
    pub cost_micro_usd: u64,
}

/// One model turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The assistant's message.
    pub message: Message,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// What it cost.
    pub usage: Usage,
    /// The model that answered (`scripted:<file>` for the scripted provider).
    pub model: String,
}

/// Why a provider could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// No provider is configured for this run.
    #[error("no model provider is configured (set one in kiln.toml, or use the scripted provider)")]
    NotConfigured,
    /// The provider kept failing (rate limits, 5xx, timeouts) after retries.
    #[error("model provider unavailable: {0}")]
    Unavailable(String),
    /// The provider rejected the request (4xx): the request or config is wrong.
    #[error("model provider rejected the request: {0}")]
    Rejected(String),
    /// The provider answered something that is not a valid completion.
    #[error("model provider returned an invalid answer: {0}")]
    InvalidAnswer(String),
    /// The provider did not answer within the per-request timeout, on every attempt.
    #[error("model provider timed out: {0}")]
    Timeout(String),
    /// The request cannot be put into the provider's wire format (a tool
    /// call's arguments or a tool's schema is not JSON): the plugin's fault.
    #[error("invalid model request: {0}")]
    InvalidRequest(String),
}

/// What a real (HTTP) provider needs: where, which model, the key, and how
/// hard to try.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Base URL, without the API path (`https://api.anthropic.com`,
    /// `http://127.0.0.1:11434/v1`).
    pub base_url: String,
    /// Model name sent with every request.
    pub model: String,
    /// The API key, if the endpoint needs one.
    pub api_key: Option<ApiKey>,
    /// Output tokens per turn: the default when the plugin names none, and
    /// the ceiling when it asks for more.
    pub max_tokens: u32,
    /// Timeouts and retries.
    pub retry: RetryPolicy,
    /// Prices per model, for [`Usage::cost_micro_usd`].
    pub prices: Prices,
}

impl ProviderSettings {
    /// Settings with the defaults of [`RetryPolicy`], 8192 output tokens and no prices.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        ProviderSettings {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            max_tokens: 8192,
            retry: RetryPolicy::default(),
            prices: Prices::default(),
        }
    }

    /// The output token cap of one request: the plugin's (already lowered
    /// by the host to the remaining budget) but never above the configured cap.
    pub(crate) fn max_tokens_for(&self, request: &CompletionRequest) -> u32 {
        request
            .max_tokens
            .map_or(self.max_tokens, |m| m.min(self.max_tokens))
            .max(1)
    }

    /// The base URL joined with an API path, without doubled slashes.
    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}/{}", self.base_url.trim_end_matches('/'), path)
    }
}

/// A rough token count for `bytes` of text (four bytes a token), for
/// providers that report no usage, so token budgets still bind.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// A boxed future, as returned by [`ModelProvider::complete`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A source of model turns. Calls may take seconds: implementations must be
/// truly async (never block the runtime's threads).
pub trait ModelProvider: Send + Sync {
    /// A short name for events and logs (`anthropic:claude-...`, `scripted:demo.json`).
    fn name(&self) -> String;
    /// Produce one turn for `request`.
    fn complete(&self, request: CompletionRequest)
    -> BoxFuture<'_, Result<Completion, ModelError>>;
}

impl Message {
    /// An assistant message with one text part.
    pub fn assistant_text(text: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: vec![ContentPart::Text { text: text.into() }],
        }
    }
}

/// Parse JSON text a plugin sent (a tool call's arguments, a tool's schema)
/// for a provider that wants a JSON value; empty text is an empty object.
pub(crate) fn plugin_json(
    text: &str,
    what: impl fmt::Display,
) -> Result<serde_json::Value, ModelError> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    serde_json::from_str(text)
        .map_err(|e| ModelError::InvalidRequest(format!("{what} is not JSON: {e}")))
}
