//! The scripted provider: replays a script file, for demos and tests. It is
//! never mistaken for a model: its name and every answer's `model` are
//! `scripted:<file name>`, so events say so.
//!
//! ```json
//! { "description": "what this script demonstrates",
//!   "turns": [
//!     { "text": "optional assistant text",
//!       "tool_calls": [ { "name": "read_file", "arguments": { "path": "README.md" } } ] },
//!     { "text": "final answer, no tool calls" } ] }
//! ```
//!
//! A script may also hold `variants`: `[{ "when": "text", "turns": [...] }]`.
//! A conversation whose first message (or system prompt) contains a
//! variant's `when` text replays that variant's turns instead of `turns`
//! (the first match wins): one role's script can answer a first run and an
//! answering run differently. A variant's `captures` name regular
//! expressions over that first message (`{ "threads": "thread (\\d+) on" }`);
//! an argument string `"${threads}"` becomes the first match's group 1, and
//! `"${threads[2]}"` the third match's, as JSON when it parses as JSON (a
//! number) and as a string otherwise: ids the forge assigns at run time.
//!
//! Each call returns the next turn (or, [`ScriptedProvider::per_conversation`],
//! the turn after those already in the request's conversation): stop reason `tool_use` when it has tool
//! calls, else `end_turn`; call ids `call-<turn>-<i>` (both from 1); usage
//! estimated at four bytes a token of request and answer, so token budgets
//! bind; cost 0. The script is checked whole at load, and a mistake is
//! reported with the file, the turn and the field.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::{
    BoxFuture, Completion, CompletionRequest, ContentPart, Message, ModelError, ModelProvider,
    Role, StopReason, ToolCall, Usage, estimate_tokens,
};

/// A script that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The file could not be read.
    #[error("cannot read script {path}: {source}")]
    Read {
        /// The script's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid script.
    #[error("script {file}: {location}: {reason}")]
    Invalid {
        /// The script's file name.
        file: String,
        /// Where: `turn 2, tool_calls[0].name`, or `top level`.
        location: String,
        /// What is wrong there.
        reason: String,
    },
}

/// One scripted turn, checked.
#[derive(Debug, Clone, PartialEq)]
struct Turn {
    text: Option<String>,
    /// (name, arguments as JSON text)
    calls: Vec<(String, String)>,
}

/// Turns for the conversations that mention `when`.
#[derive(Debug, Clone)]
struct Variant {
    when: String,
    captures: Vec<(String, regex::Regex)>,
    turns: Vec<Turn>,
}

/// A provider that replays a script file's turns in order.
#[derive(Debug)]
pub struct ScriptedProvider {
    file: String,
    description: Option<String>,
    turns: Vec<Turn>,
    variants: Vec<Variant>,
    next: AtomicUsize,
    per_conversation: bool,
}

impl ScriptedProvider {
    /// Read and check the script at `path`; its file name names the provider.
    pub fn load(path: &Path) -> Result<Self, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self::from_json(&name, &text)
    }

    /// Check the script `text`, naming it `name` (the file name) in the
    /// provider's name and in errors.
    pub fn from_json(name: &str, text: &str) -> Result<Self, ScriptError> {
        let invalid = |location: &str, reason: String| ScriptError::Invalid {
            file: name.to_string(),
            location: location.to_string(),
            reason,
        };
        let root: Value = serde_json::from_str(text)
            .map_err(|e| invalid("top level", format!("not JSON: {e}")))?;
        let Value::Object(root) = root else {
            return Err(invalid("top level", "expected an object".into()));
        };
        let mut description = None;
        let mut turns = None;
        let mut variants = Vec::new();
        for (key, value) in root {
            match key.as_str() {
                "description" => {
                    description = Some(
                        value
                            .as_str()
                            .ok_or_else(|| invalid("description", "expected a string".into()))?
                            .to_string(),
                    )
                }
                "turns" => {
                    turns = Some(parse_turns(value).map_err(|(at, why)| invalid(&at, why))?);
                }
                "variants" => {
                    let Value::Array(list) = value else {
                        return Err(invalid("variants", "expected an array".into()));
                    };
                    for (i, v) in list.into_iter().enumerate() {
                        variants.push(
                            parse_variant(v).map_err(|(at, why)| {
                                invalid(&format!("variants[{i}].{at}"), why)
                            })?,
                        );
                    }
                }
                other => {
                    return Err(invalid(
                        "top level",
                        format!(
                            "unknown key `{other}` (expected `description`, `turns` and `variants`)"
                        ),
                    ));
                }
            }
        }
        let turns = turns.ok_or_else(|| invalid("top level", "missing `turns`".into()))?;
        Ok(ScriptedProvider {
            file: name.to_string(),
            description,
            turns,
            variants,
            next: AtomicUsize::new(0),
            per_conversation: false,
        })
    }

    /// Replay the script from its first turn for every conversation: the
    /// turn answered is the one after the assistant turns the request already
    /// holds. This is what lets one provider serve many runs, one after the
    /// other or at once (`kiln serve --script`); with the shared cursor every
    /// run after the first found the script already used up.
    pub fn per_conversation(mut self) -> Self {
        self.per_conversation = true;
        self
    }

    /// What the script says it demonstrates.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// How many turns the script has.
    pub fn len(&self) -> usize {
        self.turns.len()
    }

    /// True if the script has no turns (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// The turns for `request`'s conversation, and the variant they come
    /// from (with the conversation's text, for its captures).
    fn turns_for(&self, request: &CompletionRequest) -> (&[Turn], Option<(&Variant, String)>) {
        if self.variants.is_empty() {
            return (&self.turns, None);
        }
        let first = request
            .messages
            .iter()
            .find(|m| m.role == Role::User)
            .into_iter()
            .flat_map(|m| &m.content)
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text.as_str()),
                _ => None,
            });
        let text: Vec<&str> = request.system.as_deref().into_iter().chain(first).collect();
        match self
            .variants
            .iter()
            .find(|v| text.iter().any(|t| t.contains(&v.when)))
        {
            Some(v) => (&v.turns[..], Some((v, text.join("\n")))),
            None => (&self.turns[..], None),
        }
    }

    fn answer(&self, request: &CompletionRequest) -> Result<Completion, ModelError> {
        let (turns, variant) = self.turns_for(request);
        let index = if self.per_conversation {
            request
                .messages
                .iter()
                .filter(|m| m.role == Role::Assistant)
                .count()
        } else {
            self.next.fetch_add(1, Ordering::SeqCst)
        };
        let Some(turn) = turns.get(index) else {
            if !self.per_conversation {
                // Keep the cursor from creeping towards overflow on a plugin that keeps asking.
                self.next.store(turns.len(), Ordering::SeqCst);
            }
            return Err(ModelError::InvalidAnswer(format!(
                "script {} ended after {} turns",
                self.file,
                turns.len()
            )));
        };
        let number = index + 1;
        let mut content = Vec::new();
        let mut answer_bytes = 0;
        if let Some(text) = &turn.text {
            answer_bytes += text.len();
            content.push(ContentPart::Text { text: text.clone() });
        }
        for (i, (name, arguments)) in turn.calls.iter().enumerate() {
            let arguments = match &variant {
                Some((v, text)) if !v.captures.is_empty() => fill(arguments, &v.captures, text)
                    .map_err(|why| {
                        ModelError::InvalidAnswer(format!("script {}: {why}", self.file))
                    })?,
                _ => arguments.clone(),
            };
            answer_bytes += name.len() + arguments.len();
            content.push(ContentPart::ToolCall(ToolCall {
                id: format!("call-{number}-{}", i + 1),
                name: name.clone(),
                arguments,
            }));
        }
        let request_bytes = serde_json::to_vec(request).map(|v| v.len()).unwrap_or(0);
        Ok(Completion {
            message: Message {
                role: Role::Assistant,
                content,
            },
            stop_reason: if turn.calls.is_empty() {
                StopReason::EndTurn
            } else {
                StopReason::ToolUse
            },
            usage: Usage {
                input_tokens: estimate_tokens(request_bytes),
                output_tokens: estimate_tokens(answer_bytes),
                cost_micro_usd: 0,
            },
            model: self.name(),
        })
    }
}

impl ModelProvider for ScriptedProvider {
    fn name(&self) -> String {
        format!("scripted:{}", self.file)
    }

    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ModelError>> {
        Box::pin(async move { self.answer(&request) })
    }
}

fn turn_at(index: usize, field: &str) -> String {
    if field.is_empty() {
        format!("turn {}", index + 1)
    } else {
        format!("turn {}, {field}", index + 1)
    }
}

/// Check a list of turns; an error is (location, reason).
fn parse_turns(value: Value) -> Result<Vec<Turn>, (String, String)> {
    let Value::Array(list) = value else {
        return Err(("turns".into(), "expected an array of turns".into()));
    };
    if list.is_empty() {
        return Err(("turns".into(), "a script needs at least one turn".into()));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, turn)| parse_turn(turn).map_err(|(field, reason)| (turn_at(i, &field), reason)))
        .collect()
}

/// Check one variant; an error is (location inside it, reason).
fn parse_variant(value: Value) -> Result<Variant, (String, String)> {
    let Value::Object(v) = value else {
        return Err((String::new(), "expected an object".into()));
    };
    let mut when = None;
    let mut turns = None;
    let mut captures = Vec::new();
    for (key, value) in v {
        match key.as_str() {
            "when" => match value {
                Value::String(s) if !s.is_empty() => when = Some(s),
                _ => return Err(("when".into(), "expected a non-empty string".into())),
            },
            "turns" => turns = Some(parse_turns(value)?),
            "captures" => {
                let Value::Object(map) = value else {
                    return Err(("captures".into(), "expected an object".into()));
                };
                for (name, pattern) in map {
                    let at = format!("captures.{name}");
                    let Value::String(pattern) = pattern else {
                        return Err((at, "expected a regular expression".into()));
                    };
                    let re =
                        regex::Regex::new(&pattern).map_err(|e| (at.clone(), e.to_string()))?;
                    if re.captures_len() < 2 {
                        return Err((at, "needs a group: `(...)`".into()));
                    }
                    captures.push((name, re));
                }
            }
            other => {
                return Err((
                    other.to_string(),
                    "unknown key (expected `when`, `captures` and `turns`)".into(),
                ));
            }
        }
    }
    let turns = turns.ok_or_else(|| ("turns".to_string(), "missing".to_string()))?;
    for (i, turn) in turns.iter().enumerate() {
        for (name, arguments) in &turn.calls {
            for placeholder in placeholders(arguments) {
                let (capture, _) = split_placeholder(&placeholder);
                if !captures.iter().any(|(n, _)| n == capture) {
                    return Err((
                        turn_at(i, name),
                        format!("`${{{placeholder}}}` names no capture"),
                    ));
                }
            }
        }
    }
    Ok(Variant {
        when: when.ok_or_else(|| ("when".to_string(), "missing".to_string()))?,
        captures,
        turns,
    })
}

/// The `${...}` placeholders in a call's arguments (whole string values).
fn placeholders(arguments: &str) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                if let Some(inner) = s.strip_prefix("${").and_then(|s| s.strip_suffix('}')) {
                    out.push(inner.to_string());
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<Value>(arguments) {
        walk(&v, &mut out);
    }
    out
}

/// `name[2]` → (`name`, 2); `name` → (`name`, 0).
fn split_placeholder(p: &str) -> (&str, usize) {
    match p.strip_suffix(']').and_then(|p| p.split_once('[')) {
        Some((name, i)) => (name, i.parse().unwrap_or(usize::MAX)),
        None => (p, 0),
    }
}

/// `arguments` with each `${name}` / `${name[i]}` replaced by its capture
/// from `text`.
fn fill(
    arguments: &str,
    captures: &[(String, regex::Regex)],
    text: &str,
) -> Result<String, String> {
    fn walk(v: &mut Value, captures: &[(String, regex::Regex)], text: &str) -> Result<(), String> {
        match v {
            Value::String(s) => {
                let Some(inner) = s.strip_prefix("${").and_then(|s| s.strip_suffix('}')) else {
                    return Ok(());
                };
                let (name, index) = split_placeholder(inner);
                let (_, re) = captures
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| format!("`${{{inner}}}` names no capture"))?;
                let found = re
                    .captures_iter(text)
                    .nth(index)
                    .and_then(|c| c.get(1))
                    .ok_or_else(|| {
                        format!("capture `{inner}` matched nothing in the conversation")
                    })?
                    .as_str();
                *v = serde_json::from_str(found).unwrap_or_else(|_| Value::String(found.into()));
                Ok(())
            }
            Value::Array(a) => a.iter_mut().try_for_each(|v| walk(v, captures, text)),
            Value::Object(o) => o.values_mut().try_for_each(|v| walk(v, captures, text)),
            _ => Ok(()),
        }
    }
    let mut v: Value = serde_json::from_str(arguments).map_err(|e| e.to_string())?;
    walk(&mut v, captures, text)?;
    Ok(v.to_string())
}

/// Check one turn; an error is (field, reason).
fn parse_turn(turn: Value) -> Result<Turn, (String, String)> {
    let Value::Object(turn) = turn else {
        return Err((String::new(), "expected an object".into()));
    };
    let mut text = None;
    let mut calls = Vec::new();
    for (key, value) in turn {
        match key.as_str() {
            "text" => match value {
                Value::String(s) => text = Some(s),
                _ => return Err(("text".into(), "expected a string".into())),
            },
            "tool_calls" => {
                let Value::Array(list) = value else {
                    return Err(("tool_calls".into(), "expected an array".into()));
                };
                for (i, call) in list.into_iter().enumerate() {
                    calls.push(parse_call(call).map_err(|(field, reason)| {
                        let at = if field.is_empty() {
                            format!("tool_calls[{i}]")
                        } else {
                            format!("tool_calls[{i}].{field}")
                        };
                        (at, reason)
                    })?);
                }
            }
            other => {
                return Err((
                    other.to_string(),
                    "unknown key (expected `text` and `tool_calls`)".into(),
                ));
            }
        }
    }
    if text.is_none() && calls.is_empty() {
        return Err((
            String::new(),
            "a turn needs `text`, `tool_calls` or both".into(),
        ));
    }
    Ok(Turn { text, calls })
}

fn parse_call(call: Value) -> Result<(String, String), (String, String)> {
    let Value::Object(call) = call else {
        return Err((String::new(), "expected an object".into()));
    };
    let mut name = None;
    let mut arguments = None;
    for (key, value) in call {
        match key.as_str() {
            "name" => match value {
                Value::String(s) if !s.is_empty() => name = Some(s),
                _ => return Err(("name".into(), "expected a non-empty string".into())),
            },
            "arguments" => match value {
                v @ Value::Object(_) => arguments = Some(v.to_string()),
                _ => return Err(("arguments".into(), "expected a JSON object".into())),
            },
            other => {
                return Err((
                    other.to_string(),
                    "unknown key (expected `name` and `arguments`)".into(),
                ));
            }
        }
    }
    let name = name.ok_or_else(|| ("name".to_string(), "missing".to_string()))?;
    Ok((name, arguments.unwrap_or_else(|| "{}".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"{ "description": "reads the README, then answers",
        "turns": [
          { "text": "Let me look.",
            "tool_calls": [ { "name": "read_file", "arguments": { "path": "README.md" } },
                            { "name": "list_dir" } ] },
          { "text": "final answer, no tool calls" } ] }"#;

    fn request() -> CompletionRequest {
        CompletionRequest {
            system: Some("s".repeat(40)),
            messages: vec![],
            tools: vec![],
            max_tokens: None,
            temperature: None,
        }
    }

    #[tokio::test]
    async fn turns_replay_in_order_with_ids_stop_reasons_and_estimated_usage() {
        let p = ScriptedProvider::from_json("demo.json", DEMO).expect("valid script");
        assert_eq!(p.name(), "scripted:demo.json");
        assert_eq!(p.description(), Some("reads the README, then answers"));
        assert_eq!(p.len(), 2);
        let first = p.complete(request()).await.expect("turn 1");
        assert_eq!(first.model, "scripted:demo.json");
        assert_eq!(first.stop_reason, StopReason::ToolUse);
        assert_eq!(
            first.message.content,
            vec![
                ContentPart::Text {
                    text: "Let me look.".into()
                },
                ContentPart::ToolCall(ToolCall {
                    id: "call-1-1".into(),
                    name: "read_file".into(),
                    arguments: r#"{"path":"README.md"}"#.into()
                }),
                ContentPart::ToolCall(ToolCall {
                    id: "call-1-2".into(),
                    name: "list_dir".into(),
                    arguments: "{}".into()
                }),
            ]
        );
        let request_bytes = serde_json::to_vec(&request()).expect("json").len();
        assert_eq!(
            first.usage,
            Usage {
                input_tokens: estimate_tokens(request_bytes),
                // "Let me look." + read_file + {"path":"README.md"} + list_dir + {}
                output_tokens: estimate_tokens(12 + 9 + 20 + 8 + 2),
                cost_micro_usd: 0,
            }
        );
        let second = p.complete(request()).await.expect("turn 2");
        assert_eq!(second.stop_reason, StopReason::EndTurn);
        assert_eq!(
            second.message,
            Message::assistant_text("final answer, no tool calls")
        );
        for _ in 0..2 {
            let err = p.complete(request()).await.expect_err("past the end");
            assert_eq!(
                err,
                ModelError::InvalidAnswer("script demo.json ended after 2 turns".into())
            );
        }
    }

    #[tokio::test]
    async fn per_conversation_every_run_gets_the_script_from_its_start() {
        let p = ScriptedProvider::from_json("demo.json", DEMO)
            .expect("valid script")
            .per_conversation();
        // Two runs at once, interleaved: each starts at turn 1.
        let a1 = p.complete(request()).await.expect("run a, turn 1");
        let b1 = p.complete(request()).await.expect("run b, turn 1");
        assert_eq!(a1.message, b1.message, "both runs should get turn 1 first");
        assert_eq!(a1.stop_reason, StopReason::ToolUse);
        let mut a = request();
        let task = Message {
            role: Role::User,
            content: vec![ContentPart::Text {
                text: "task".into(),
            }],
        };
        a.messages = vec![task, a1.message];
        let a2 = p.complete(a.clone()).await.expect("run a, turn 2");
        assert_eq!(
            a2.message,
            Message::assistant_text("final answer, no tool calls"),
            "run a's second request holds one assistant turn: it gets turn 2"
        );
        a.messages.push(a2.message);
        assert_eq!(
            p.complete(a).await.expect_err("run a is past the end"),
            ModelError::InvalidAnswer("script demo.json ended after 2 turns".into())
        );
        assert_eq!(
            p.complete(request()).await.map(|c| c.message),
            Ok(b1.message),
            "a later run still starts at turn 1"
        );
    }

    #[test]
    fn malformed_scripts_name_the_file_turn_and_field() {
        for (text, expected) in [
            ("[", "script s.json: top level: not JSON: "),
            ("[]", "script s.json: top level: expected an object"),
            (
                r#"{"description": "d"}"#,
                "script s.json: top level: missing `turns`",
            ),
            (
                r#"{"turns": [], "description": "d"}"#,
                "script s.json: turns: a script needs at least one turn",
            ),
            (
                r#"{"turn": []}"#,
                "script s.json: top level: unknown key `turn` (expected `description`, `turns` and `variants`)",
            ),
            (
                r#"{"turns": {}}"#,
                "script s.json: turns: expected an array of turns",
            ),
            (
                r#"{"turns": [{"text": "a"}, {}]}"#,
                "script s.json: turn 2: a turn needs `text`, `tool_calls` or both",
            ),
            (
                r#"{"turns": [{"text": 3}]}"#,
                "script s.json: turn 1, text: expected a string",
            ),
            (
                r#"{"turns": [{"text": "a"}, {"tool_calls": [{"name": "x"}, {"arguments": {}}]}]}"#,
                "script s.json: turn 2, tool_calls[1].name: missing",
            ),
            (
                r#"{"turns": [{"tool_calls": [{"name": "x", "arguments": "{\"a\":1}"}]}]}"#,
                "script s.json: turn 1, tool_calls[0].arguments: expected a JSON object",
            ),
            (
                r#"{"turns": [{"tool_calls": [{"name": "x", "args": {}}]}]}"#,
                "script s.json: turn 1, tool_calls[0].args: unknown key (expected `name` and `arguments`)",
            ),
            (
                r#"{"turns": [{"tool_call": []}]}"#,
                "script s.json: turn 1, tool_call: unknown key (expected `text` and `tool_calls`)",
            ),
        ] {
            let err = ScriptedProvider::from_json("s.json", text)
                .expect_err("malformed")
                .to_string();
            assert!(
                err.starts_with(expected),
                "{text}: expected {expected:?}, got {err:?}"
            );
        }
    }

    #[test]
    fn load_names_the_provider_after_the_file_and_reports_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("triage-demo.json");
        std::fs::write(&path, DEMO).expect("write");
        let p = ScriptedProvider::load(&path).expect("loads");
        assert_eq!(p.name(), "scripted:triage-demo.json");
        let err = ScriptedProvider::load(&dir.path().join("missing.json"))
            .expect_err("missing file")
            .to_string();
        assert!(
            err.starts_with("cannot read script ") && err.contains("missing.json"),
            "got {err}"
        );
    }

    #[test]
    fn a_variant_answers_the_conversations_that_mention_it() {
        let p = ScriptedProvider::from_json(
            "impl.json",
            r#"{ "turns": [ { "text": "first run" } ],
                 "variants": [ { "when": "review thread", "turns": [
                     { "text": "answering" }, { "text": "done answering" } ] } ] }"#,
        )
        .expect("script")
        .per_conversation();
        let ask = |first: &str, assistant_turns: usize| {
            let mut messages = vec![Message {
                role: Role::User,
                content: vec![ContentPart::Text { text: first.into() }],
            }];
            for _ in 0..assistant_turns {
                messages.push(Message::assistant_text("earlier"));
                messages.push(Message {
                    role: Role::User,
                    content: vec![ContentPart::Text {
                        text: "go on".into(),
                    }],
                });
            }
            let req = CompletionRequest {
                messages,
                ..request()
            };
            match p.answer(&req).map(|c| c.message.content) {
                Ok(parts) => match &parts[0] {
                    ContentPart::Text { text } => text.clone(),
                    other => panic!("{other:?}"),
                },
                Err(e) => e.to_string(),
            }
        };
        assert_eq!(ask("implement issue #1", 0), "first run");
        assert_eq!(ask("answer the review thread on line 3", 0), "answering");
        assert_eq!(
            ask("answer the review thread on line 3", 1),
            "done answering"
        );
        let bad = ScriptedProvider::from_json(
            "v.json",
            r#"{ "turns": [ { "text": "x" } ], "variants": [ { "turns": [ { "text": "y" } ] } ] }"#,
        )
        .expect_err("a variant needs `when`");
        assert_eq!(bad.to_string(), "script v.json: variants[0].when: missing");
    }

    #[test]
    fn a_variants_captures_fill_ids_the_forge_assigned() {
        let p = ScriptedProvider::from_json(
            "answer.json",
            r#"{ "turns": [ { "text": "x" } ],
                 "variants": [ { "when": "Answer the review",
                   "captures": { "thread": "- thread (\\d+) on" },
                   "turns": [ { "tool_calls": [ { "name": "submit_answer", "arguments": {
                       "replies": [ { "thread": "${thread}" }, { "thread": "${thread[1]}" } ],
                       "note": "${thread[5]}" } } ] } ] } ] }"#,
        )
        .expect("script");
        let req = CompletionRequest {
            messages: vec![Message {
                role: Role::User,
                content: vec![ContentPart::Text {
                    text: "Answer the review.\n- thread 17 on a.rs:3\n- thread 21 on b.rs:9\n"
                        .into(),
                }],
            }],
            ..request()
        };
        let err = p.answer(&req).expect_err("the sixth match does not exist");
        assert!(
            err.to_string()
                .contains("capture `thread[5]` matched nothing"),
            "{err}"
        );
        let bad = ScriptedProvider::from_json(
            "a.json",
            r#"{ "turns": [ { "text": "x" } ], "variants": [ { "when": "w",
                 "turns": [ { "tool_calls": [ { "name": "t", "arguments": { "a": "${nope}" } } ] } ] } ] }"#,
        )
        .expect_err("an unknown capture");
        assert!(
            bad.to_string().contains("`${nope}` names no capture"),
            "{bad}"
        );
        let ok = ScriptedProvider::from_json(
            "answer.json",
            r#"{ "turns": [ { "text": "x" } ],
                 "variants": [ { "when": "Answer the review",
                   "captures": { "thread": "- thread (\\d+) on" },
                   "turns": [ { "tool_calls": [ { "name": "submit_answer", "arguments": {
                       "replies": [ { "thread": "${thread}" }, { "thread": "${thread[1]}" } ] } } ] } ] } ] }"#,
        )
        .expect("script");
        let answer = ok.answer(&req).expect("answer");
        let ContentPart::ToolCall(call) = &answer.message.content[0] else {
            panic!("{answer:?}");
        };
        assert_eq!(
            call.arguments,
            r#"{"replies":[{"thread":17},{"thread":21}]}"#
        );
    }
}
