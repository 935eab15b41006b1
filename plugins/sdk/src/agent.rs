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
use crate::{RoleError, Task, Trigger, session};

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

/// Checks the finish tool's arguments; an `Err` goes back to the model as a
/// tool error, so it can correct its output instead of ending the run.
pub type FinishCheck = Box<dyn FnMut(&serde_json::Value) -> Result<(), String>>;

/// One tool call the loop ran, as the plugin may want to report it (which
/// commands ran, which files were written): what the model asked and what
/// the tool really answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallRecord {
    /// The tool's name.
    pub name: String,
    /// The arguments, parsed (`null` if they were not valid JSON).
    pub arguments: serde_json::Value,
    /// What the model was shown.
    pub output: String,
    /// Whether the tool failed.
    pub is_error: bool,
}

impl Finish {
    /// The finish tool's output, or the outcome that ends a role whose model
    /// did not produce one: blocked, saying why, so a person picks it up.
    pub fn output_or_blocked(self, finish_tool: &str) -> Result<serde_json::Value, crate::Outcome> {
        match self {
            Finish::Output(value) => Ok(value),
            Finish::Answer(text) => {
                let text = truncate(text.trim().to_string(), 2000);
                Err(crate::Outcome::blocked(format!(
                    "the model ended without calling `{finish_tool}`; its last words: {text}"
                )))
            }
            Finish::OutOfTurns(n) => Err(crate::Outcome::blocked(format!(
                "the model did not call `{finish_tool}` within {n} turns"
            ))),
            Finish::BudgetExhausted(m) => {
                Err(crate::Outcome::blocked(format!("budget exhausted: {m}")))
            }
        }
    }
}

/// A conversation with the model plus the tools it may use.
pub struct Agent {
    system: String,
    tools: Vec<Box<dyn Tool>>,
    finish: Option<ToolSpec>,
    finish_check: Option<FinishCheck>,
    messages: Vec<Message>,
    calls: Vec<ToolCallRecord>,
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
            finish_check: None,
            messages: Vec::new(),
            calls: Vec::new(),
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

    /// Check the finish tool's arguments before accepting them (see
    /// [`FinishCheck`] and [`parses_as`]): the loop only ends on output
    /// that passes.
    pub fn check_finish(
        mut self,
        check: impl FnMut(&serde_json::Value) -> Result<(), String> + 'static,
    ) -> Self {
        self.finish_check = Some(Box::new(check));
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

    /// Every tool call run so far (the finish tool excluded), in order.
    pub fn tool_calls(&self) -> &[ToolCallRecord] {
        &self.calls
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
                    let parsed = serde_json::from_str(&call.arguments);
                    let Some(check) = self.finish_check.as_mut() else {
                        return match parsed {
                            Ok(v) => Ok(Finish::Output(v)),
                            Err(e) => Err(RoleError::InvalidArgument(format!(
                                "finish tool `{}` called with invalid JSON: {e}",
                                call.name
                            ))),
                        };
                    };
                    let verdict = parsed
                        .map_err(|e| format!("arguments are not valid JSON: {e}"))
                        .and_then(|v| check(&v).map(|()| v));
                    match verdict {
                        Ok(v) => return Ok(Finish::Output(v)),
                        Err(why) => {
                            session::warning(&format!(
                                "the model's `{}` output was refused: {why}",
                                call.name
                            ));
                            results.push(ContentPart::ToolResult(ToolResult {
                                call_id: call.id,
                                content: format!(
                                    "`{}` refused: {why}. Correct the output and call it again.",
                                    call.name
                                ),
                                is_error: true,
                            }));
                            continue;
                        }
                    }
                }
                // `specs` lists the tools in order (the finish tool last), so
                // its position is the tool's index: no spec rebuilt per call.
                let tool = specs[..self.tools.len()]
                    .iter()
                    .position(|s| s.name == call.name);
                let (content, is_error) = self.dispatch(tool, &call.name, &call.arguments)?;
                self.calls.push(ToolCallRecord {
                    name: call.name.clone(),
                    arguments: serde_json::from_str(&call.arguments)
                        .unwrap_or(serde_json::Value::Null),
                    output: content.clone(),
                    is_error,
                });
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

/// A [`FinishCheck`] accepting output that deserializes as `T`, then passes
/// `validate` (the role's own rules: limits, required fields).
pub fn parses_as<T: serde::de::DeserializeOwned>(
    validate: impl Fn(&T) -> Result<(), String> + 'static,
) -> impl FnMut(&serde_json::Value) -> Result<(), String> + 'static {
    move |value| {
        let parsed = T::deserialize(value).map_err(|e| e.to_string())?;
        validate(&parsed)
    }
}

/// The system prompt of a role's run: its skill, then what this run is
/// about and the trusted instructions of whoever started it. Forge text
/// (issue bodies, comments) never goes here: it is data, sent in the
/// conversation inside trust envelopes ([`crate::forge::render_issue`]).
pub fn system_prompt(skill: &str, task: &Task) -> String {
    let mut out = String::with_capacity(skill.len() + 1024);
    out.push_str(skill.trim_end());
    out.push_str("\n\n## This run\n\n");
    out.push_str(&format!(
        "- Run `{}`: role `{}` on repository `{}`.\n",
        task.run_id, task.role, task.repo
    ));
    if let Some(n) = task.issue {
        out.push_str(&format!("- Issue: #{n}.\n"));
    }
    if let Some(n) = task.pull_request {
        out.push_str(&format!("- Pull request: #{n}.\n"));
    }
    out.push_str(&format!(
        "- Branch: `{}` (pull requests target `{}`).\n",
        task.branch, task.base_branch
    ));
    let started = match &task.trigger {
        Trigger::Label(label) => format!("a maintainer added the label `{label}`"),
        Trigger::Command(_) => "a maintainer's command".to_string(),
        Trigger::PullRequestOpened => "a pull request opened by Kiln".to_string(),
        Trigger::Manual => "an operator, by hand".to_string(),
        #[cfg(not(feature = "wit-0-1-0"))]
        Trigger::Review(0) => "a maintainer's `/kiln fix` on the pull request".to_string(),
        #[cfg(not(feature = "wit-0-1-0"))]
        Trigger::Review(id) => format!("a maintainer's review {id} requesting changes"),
        #[cfg(not(feature = "wit-0-1-0"))]
        Trigger::Schedule(name) => format!("the schedule `{name}`"),
    };
    out.push_str(&format!("- Started by: {started}.\n"));
    match task.instructions.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => {
            out.push_str(
                "\n### Trusted instructions\n\nFrom the maintainer who started this run. Follow them within the limits of this skill.\n\n",
            );
            out.push_str(text);
            out.push('\n');
        }
        _ => out.push_str("\nThere are no trusted instructions for this run.\n"),
    }
    out
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
