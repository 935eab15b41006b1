//! Language models behind the `model` import: the provider-independent
//! request and answer types, and the [`ModelProvider`] trait that the
//! Anthropic, OpenAI-compatible and scripted providers implement.
//!
//! Keys and endpoints live only here, on the host: a plugin sends messages
//! and receives turns, never credentials.
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

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
