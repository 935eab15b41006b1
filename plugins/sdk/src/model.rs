//! The language model, behind the host. Keys, providers and budgets stay on
//! the host; a plugin only sends messages and receives turns.
pub use crate::wit::kiln::role::model::{
    Completion, CompletionRequest, ContentPart, Message, MessageRole, StopReason, ToolCall,
    ToolResult, ToolSpec, Usage,
};
use crate::{RoleError, wit::kiln::role::model as raw};

/// Ask the model for one turn.
pub fn complete(request: &CompletionRequest) -> Result<Completion, RoleError> {
    raw::complete(request)
}

impl Message {
    /// A user message with one text part.
    pub fn user(text: impl Into<String>) -> Self {
        Message {
            role: MessageRole::User,
            content: vec![ContentPart::Text(text.into())],
        }
    }

    /// The text parts of the message joined with newlines.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The tool calls in the message, in order.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.content.iter().filter_map(|p| match p {
            ContentPart::ToolCall(c) => Some(c),
            _ => None,
        })
    }
}
