//! The agent loop every role shares: send the conversation and tool specs to
//! the model, run the tools it calls, feed the results back, and stop on a
//! final answer, a finish tool, the turn limit or the run's budget.
//!
//! Roles differ only by their system prompt (the skill), the tools they offer
//! and the shape of their final output; the loop lives here, once.
//!
//! ```no_run
//! use kiln_plugin_sdk::agent::{Agent, Finish, tools};
//! # fn demo() -> Result<(), kiln_plugin_sdk::RoleError> {
//! let mut agent = Agent::new("You are a careful triager.")
//!     .tool(tools::ReadFile)
//!     .tool(tools::ListDir)
//!     .finish_tool("report", "Report the triage result", r#"{"type":"object"}"#)
//!     .max_turns(20);
//! match agent.run("Triage issue #12")? {
//!     Finish::Output(json) => kiln_plugin_sdk::session::note(&json.to_string()),
//!     other => kiln_plugin_sdk::session::warning(&format!("{other:?}")),
//! }
//! # Ok(()) }
//! ```
use crate::model::{
    self, CompletionRequest, ContentPart, Message, MessageRole, StopReason, ToolResult, ToolSpec,
};
use crate::{RoleError, session};

pub mod tools;

/// Tool results longer than this are cut before they go back to the model,
/// so one `cat` of a huge file cannot eat the whole context window.
pub const MAX_TOOL_RESULT_BYTES: usize = 32 * 1024;

/// Something the model can call.
pub trait Tool {
    /// The tool's name, description and argument schema.
    fn spec(&self) -> ToolSpec;
    /// Run the tool. `Err` values that a model can react to (denied, not
    /// found, bad argument, ...) are shown to it as a tool error; budget,
    /// cancellation and host failures end the loop.
    fn call(&mut self, arguments: &serde_json::Value) -> Result<String, RoleError>;
}

/// Why the loop stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// The model ended its turn without calling a tool; its text.
    Answer(String),
    /// The model called the finish tool; its arguments.
    Output(serde_json::Value),
    /// The loop's own turn limit was reached.
    OutOfTurns(u32),
    /// The host said the run's budget is spent; its message.
    BudgetExhausted(String),
}

/// A conversation with the model plus the tools it may use.
pub struct Agent {
    system: String,
    tools: Vec<Box<dyn Tool>>,
    finish: Option<ToolSpec>,
    messages: Vec<Message>,
    max_turns: u32,
    max_tokens: Option<u32>,
}

impl Agent {
    /// A new agent with a system prompt, no tools and a 30-turn limit.
    pub fn new(system: impl Into<String>) -> Self {
        Agent {
            system: system.into(),
            tools: Vec::new(),
            finish: None,
            messages: Vec::new(),
            max_turns: 30,
            max_tokens: None,
        }
    }

    /// Offer a tool to the model.
    pub fn tool(mut self, tool: impl Tool + 'static) -> Self {
        self.tools.push(Box::new(tool));
        self
    }

    /// Offer a tool whose call ends the loop with [`Finish::Output`]; use it
    /// for structured final output. `parameters` is a JSON Schema.
    pub fn finish_tool(mut self, name: &str, description: &str, parameters: &str) -> Self {
        self.finish = Some(ToolSpec {
            name: name.to_string(),
            description: description.to_string(),
            parameters: parameters.to_string(),
        });
        self
    }

    /// Stop after this many model turns (the host's budget may stop it first).
    pub fn max_turns(mut self, turns: u32) -> Self {
        self.max_turns = turns;
        self
    }

    /// Ask for at most this many output tokens per turn.
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max_tokens = Some(tokens);
        self
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Run the loop from a first user message until it finishes.
    pub fn run(&mut self, prompt: &str) -> Result<Finish, RoleError> {
        self.messages.push(Message::user(prompt));
        let mut specs: Vec<ToolSpec> = self.tools.iter().map(|t| t.spec()).collect();
        specs.extend(self.finish.clone());
        for turn in 0..self.max_turns {
            // Steering arrives between turns: an operator's message is a
            // trusted instruction, unlike anything read from the forge.
            while let Some(instruction) = session::next_instruction() {
                session::note(&format!("steering received before turn {}", turn + 1));
                self.messages.push(Message::user(format!(
                    "Instruction from the operator: {instruction}"
                )));
            }
            let request = CompletionRequest {
                system: Some(self.system.clone()),
                messages: self.messages.clone(),
                tools: specs.clone(),
                max_tokens: self.max_tokens,
                temperature: None,
            };
            let completion = match model::complete(&request) {
                Ok(c) => c,
                Err(RoleError::BudgetExhausted(m)) => return Ok(Finish::BudgetExhausted(m)),
                Err(e) => return Err(e),
            };
            let message = completion.message;
            let calls: Vec<_> = message.tool_calls().cloned().collect();
            self.messages.push(message.clone());
            if calls.is_empty() {
                if completion.stop_reason == StopReason::MaxTokens {
                    session::warning("model output was cut at max-tokens");
                }
                return Ok(Finish::Answer(message.text()));
            }
            let mut results = Vec::with_capacity(calls.len());
            for call in calls {
                if self.finish.as_ref().is_some_and(|f| f.name == call.name) {
                    return match serde_json::from_str(&call.arguments) {
                        Ok(v) => Ok(Finish::Output(v)),
                        Err(e) => Err(RoleError::InvalidArgument(format!(
                            "finish tool `{}` called with invalid JSON: {e}",
                            call.name
                        ))),
                    };
                }
                // `specs` lists the tools in order (the finish tool last), so
                // its position is the tool's index: no spec rebuilt per call.
                let tool = specs[..self.tools.len()]
                    .iter()
                    .position(|s| s.name == call.name);
                let (content, is_error) = self.dispatch(tool, &call.name, &call.arguments)?;
                results.push(ContentPart::ToolResult(ToolResult {
                    call_id: call.id,
                    content: truncate(content, MAX_TOOL_RESULT_BYTES),
                    is_error,
                }));
            }
            self.messages.push(Message {
                role: MessageRole::User,
                content: results,
            });
        }
        Ok(Finish::OutOfTurns(self.max_turns))
    }

    /// Run one tool call; returns the text for the model and whether it is an
    /// error. Only errors the model cannot act on end the loop.
    fn dispatch(
        &mut self,
        tool: Option<usize>,
        name: &str,
        arguments: &str,
    ) -> Result<(String, bool), RoleError> {
        let Some(tool) = tool.and_then(|i| self.tools.get_mut(i)) else {
            return Ok((format!("unknown tool `{name}`"), true));
        };
        let args: serde_json::Value = match serde_json::from_str(if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        }) {
            Ok(v) => v,
            Err(e) => return Ok((format!("arguments are not valid JSON: {e}"), true)),
        };
        match tool.call(&args) {
            Ok(out) => Ok((out, false)),
            Err(
                e @ (RoleError::BudgetExhausted(_) | RoleError::Cancelled | RoleError::Internal(_)),
            ) => Err(e),
            Err(e) => Ok((e.describe(), true)),
        }
    }
}

/// Cut `text` to at most `max` bytes on a character boundary, saying so.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("\n[... cut: {} of {total} bytes shown]", cut));
    text
}

/// Read a required string argument of a tool call.
pub fn string_arg<'a>(args: &'a serde_json::Value, name: &str) -> Result<&'a str, RoleError> {
    args.get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| RoleError::InvalidArgument(format!("missing string argument `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("ééééé".into(), 3); // é is 2 bytes: cut must fall back to 2
        assert!(
            cut.starts_with("é\n[... cut: 2 of 10 bytes shown]"),
            "got {cut:?}"
        );
    }

    #[test]
    fn string_arg_names_the_missing_argument() {
        let args = serde_json::json!({"path": 3});
        let err = string_arg(&args, "path").unwrap_err();
        assert_eq!(
            err,
            RoleError::InvalidArgument("missing string argument `path`".into())
        );
    }
}
