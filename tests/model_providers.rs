//! The model providers against real HTTP on loopback: each server speaks
//! its API's documented wire format, so these tests check what goes over
//! the wire (path, headers, key, body), how answers and errors come back,
//! and that retries, timeouts and budgets hold. No test measures time:
//! retries are counted, and a wait that is honoured is proved by a back-off
//! so long that ignoring it would hang the test.
use std::sync::Arc;
use std::time::Duration;

use kiln::forge::{ForgeSnapshot, Issue, Proposal};
use kiln::imports::RunContext;
use kiln::imports::workspace::WorkspaceMount;
use kiln::model::anthropic::AnthropicProvider;
use kiln::model::openai::OpenAiProvider;
use kiln::model::{
    ApiKey, Completion, CompletionRequest, ContentPart, Message, ModelError, ModelProvider, Price,
    ProviderSettings, RetryPolicy, Role, ScriptedProvider, StopReason, ToolCall, ToolResult,
    ToolSpec, Usage,
};
use kiln::plugin::{OutcomeStatus, PluginHost, PluginLimits, RunError, RunReport, Task, Trigger};
use kiln::session::{Budget, EventKind, MemoryEvents};
use serde_json::{Value, json};

use crate::support::model_api;
use model_api::*;

const KEY: &str = "sk-test-0123456789-secret";

/// Settings for a loopback server: quick retries, a short timeout, a price.
fn settings(base: &str) -> ProviderSettings {
    let mut s = ProviderSettings::new(base, "claude-test");
    s.api_key = Some(ApiKey::new(KEY));
    s.max_tokens = 1024;
    s.retry = RetryPolicy {
        timeout: Duration::from_secs(30),
        max_retries: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(60),
    };
    s.prices.0.insert(
        "claude-test".into(),
        Price {
            input_usd_per_mtok: 3.0,
            output_usd_per_mtok: 15.0,
        },
    );
    s
}

fn anthropic(base: &str) -> AnthropicProvider {
    AnthropicProvider::new(settings(base)).expect("anthropic provider")
}

fn openai(base: &str) -> OpenAiProvider {
    let mut s = settings(&format!("{base}/v1"));
    s.model = "gpt-test".into();
    OpenAiProvider::new(s).expect("openai provider")
}

/// Both real providers against `server`, for behaviour they share.
fn both(server: &ModelApi) -> Vec<(&'static str, Box<dyn ModelProvider>)> {
    vec![
        ("anthropic", Box::new(anthropic(&server.base))),
        ("openai", Box::new(openai(&server.base))),
    ]
}

fn text_request(text: &str) -> CompletionRequest {
    CompletionRequest {
        system: None,
        messages: vec![Message {
            role: Role::User,
            content: vec![ContentPart::Text { text: text.into() }],
        }],
        tools: vec![],
        max_tokens: None,
        temperature: None,
    }
}

fn read_file_tool() -> ToolSpec {
    ToolSpec {
        name: "read_file".into(),
        description: "Read a file".into(),
        parameters:
            r#"{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}"#
                .into(),
    }
}

/// A conversation that went through one tool call and its result.
fn tool_round_trip_request() -> CompletionRequest {
    CompletionRequest {
        system: Some("You are careful.".into()),
        messages: vec![
            Message {
                role: Role::User,
                content: vec![ContentPart::Text {
                    text: "What is in README.md?".into(),
                }],
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    ContentPart::Text {
                        text: "Let me read it.".into(),
                    },
                    ContentPart::ToolCall(ToolCall {
                        id: "toolu_1".into(),
                        name: "read_file".into(),
                        arguments: r#"{"path":"README.md"}"#.into(),
                    }),
                ],
            },
            Message {
                role: Role::User,
                content: vec![ContentPart::ToolResult(ToolResult {
                    call_id: "toolu_1".into(),
                    content: "# Widgets".into(),
                    is_error: false,
                })],
            },
        ],
        tools: vec![read_file_tool()],
        max_tokens: Some(256),
        temperature: Some(0.5),
    }
}

// ---- Anthropic -------------------------------------------------------------

#[tokio::test]
async fn anthropic_requests_carry_key_version_system_messages_and_tools() {
    let server = ModelApi::replying(vec![Reply::ok(anthropic_message(
        json!([{"type": "text", "text": "It is a README about widgets."}]),
        "end_turn",
        1000,
        100,
    ))])
    .await;
    let provider = anthropic(&server.base);
    let answer = provider
        .complete(tool_round_trip_request())
        .await
        .expect("a text answer");
    assert_eq!(
        answer,
        Completion {
            message: Message::assistant_text("It is a README about widgets."),
            stop_reason: StopReason::EndTurn,
            // 1000 in at $3/Mtok + 100 out at $15/Mtok, with the price found by prefix.
            usage: Usage {
                input_tokens: 1000,
                output_tokens: 100,
                cost_micro_usd: 4500,
            },
            model: "claude-test-1".into(),
        }
    );
    assert_eq!(provider.name(), "anthropic:claude-test");
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("authorization"),
        None,
        "Anthropic takes the key in x-api-key only"
    );
    assert_eq!(
        r.body,
        json!({
            "model": "claude-test",
            "max_tokens": 256,
            "temperature": 0.5,
            "system": "You are careful.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is in README.md?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me read it."},
                    {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "README.md"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "# Widgets", "is_error": false}]}
            ],
            "tools": [{"name": "read_file", "description": "Read a file", "input_schema":
                {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]
        })
    );
}

#[tokio::test]
async fn anthropic_tool_use_answers_become_tool_calls_and_max_tokens_defaults_from_config() {
    let server = ModelApi::replying(vec![Reply::ok(anthropic_message(
        json!([
            {"type": "text", "text": "I'll look."},
            {"type": "tool_use", "id": "toolu_9", "name": "read_file", "input": {"path": "src/lib.rs"}}
        ]),
        "tool_use",
        50,
        20,
    ))])
    .await;
    let answer = anthropic(&server.base)
        .complete(text_request("look"))
        .await
        .expect("a tool-use answer");
    assert_eq!(answer.stop_reason, StopReason::ToolUse);
    assert_eq!(
        answer.message.content,
        vec![
            ContentPart::Text {
                text: "I'll look.".into()
            },
            ContentPart::ToolCall(ToolCall {
                id: "toolu_9".into(),
                name: "read_file".into(),
                arguments: r#"{"path":"src/lib.rs"}"#.into(),
            }),
        ]
    );
    let body = &server.requests()[0].body;
    assert_eq!(
        body["max_tokens"], 1024,
        "the API requires max_tokens: the configured default is sent"
    );
    assert!(body.get("system").is_none() && body.get("tools").is_none());
}

#[tokio::test]
async fn anthropic_4xx_is_rejected_at_once_with_the_providers_type_and_message() {
    for (status, kind, message) in [
        (
            400,
            "invalid_request_error",
            "messages: at least one message is required",
        ),
        (401, "authentication_error", "invalid x-api-key"),
    ] {
        let server =
            ModelApi::replying(vec![Reply::status(status, anthropic_error(kind, message))]).await;
        let err = anthropic(&server.base)
            .complete(text_request("hi"))
            .await
            .expect_err("a 4xx is an error");
        assert_eq!(
            err,
            ModelError::Rejected(format!("HTTP {status} {kind}: {message}"))
        );
        assert_eq!(server.requests().len(), 1, "a 4xx must not be retried");
    }
}

#[tokio::test]
async fn anthropic_overloaded_529_and_503_are_retried_until_an_answer() {
    let server = ModelApi::replying(vec![
        Reply::status(529, anthropic_error("overloaded_error", "Overloaded")),
        Reply::status(503, anthropic_error("api_error", "try later")),
        Reply::ok(anthropic_text("made it")),
    ])
    .await;
    let answer = anthropic(&server.base)
        .complete(text_request("hi"))
        .await
        .expect("the third attempt answers");
    assert_eq!(answer.message, Message::assistant_text("made it"));
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn answers_that_are_not_completions_are_invalid_and_say_what_is_wrong() {
    let cases: Vec<(Reply, &str)> = vec![
        (
            Reply::Raw {
                status: 200,
                body: "{\"content\": [".into(),
            },
            "the answer is not JSON",
        ),
        (
            Reply::ok(anthropic_message(
                json!([{"type": "server_tool_use", "id": "x"}]),
                "end_turn",
                1,
                1,
            )),
            "unknown variant `server_tool_use`",
        ),
        (
            Reply::ok(anthropic_message(
                json!([{"type": "tool_use", "id": "t", "name": "read_file", "input": "README.md"}]),
                "tool_use",
                1,
                1,
            )),
            "content block 0: the input of tool call `read_file` is not a JSON object",
        ),
        (
            Reply::ok(json!({"type": "message", "content": []})),
            "missing field `stop_reason`",
        ),
    ];
    for (reply, expected) in cases {
        let server = ModelApi::replying(vec![reply]).await;
        let err = anthropic(&server.base)
            .complete(text_request("hi"))
            .await
            .expect_err("invalid answer");
        match &err {
            ModelError::InvalidAnswer(m) => {
                assert!(m.contains(expected), "expected {expected:?} in {m:?}")
            }
            other => panic!("expected an invalid answer ({expected}), got {other:?}"),
        }
        assert_eq!(
            server.requests().len(),
            1,
            "an invalid answer is not retried"
        );
    }
}

// ---- OpenAI-compatible -----------------------------------------------------

#[tokio::test]
async fn openai_requests_carry_bearer_key_system_tools_and_tool_messages() {
    let server = ModelApi::replying(vec![Reply::ok(openai_text("Widgets."))]).await;
    let answer = openai(&server.base)
        .complete(tool_round_trip_request())
        .await
        .expect("a text answer");
    assert_eq!(answer.message, Message::assistant_text("Widgets."));
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 20,
            output_tokens: 7,
            cost_micro_usd: 0,
        },
        "gpt-test has no price"
    );
    let seen = server.requests();
    let r = &seen[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(
        r.header("authorization").map(str::to_string),
        Some(format!("Bearer {KEY}"))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body,
        json!({
            "model": "gpt-test",
            "max_tokens": 256,
            "temperature": 0.5,
            "messages": [
                {"role": "system", "content": "You are careful."},
                {"role": "user", "content": "What is in README.md?"},
                {"role": "assistant", "content": "Let me read it.", "tool_calls": [
                    {"id": "toolu_1", "type": "function",
                     "function": {"name": "read_file", "arguments": "{\"path\":\"README.md\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "# Widgets"}
            ],
            "tools": [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]
        })
    );
}

#[tokio::test]
async fn openai_tool_calls_parse_their_string_arguments_and_round_trip() {
    let server = ModelApi::replying(vec![
        Reply::ok(openai_tool_call(
            "call_abc",
            "read_file",
            "{\"path\": \"README.md\"}",
        )),
        Reply::ok(openai_text("done")),
    ])
    .await;
    let provider = openai(&server.base);
    let mut request = text_request("read it");
    request.tools = vec![read_file_tool()];
    let first = provider.complete(request.clone()).await.expect("tool call");
    assert_eq!(first.stop_reason, StopReason::ToolUse);
    let call = match first.message.content.as_slice() {
        [ContentPart::ToolCall(c)] => c.clone(),
        other => panic!("expected one tool call, got {other:?}"),
    };
    assert_eq!(
        (
            call.id.as_str(),
            call.name.as_str(),
            call.arguments.as_str()
        ),
        ("call_abc", "read_file", r#"{"path":"README.md"}"#)
    );
    request.messages.push(first.message);
    request.messages.push(Message {
        role: Role::User,
        content: vec![ContentPart::ToolResult(ToolResult {
            call_id: call.id,
            content: "no such file".into(),
            is_error: true,
        })],
    });
    provider.complete(request).await.expect("final answer");
    let second = &server.requests()[1].body;
    assert_eq!(
        second["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc", "type": "function",
            "function": {"name": "read_file", "arguments": "{\"path\":\"README.md\"}"}}]})
    );
    assert_eq!(
        second["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_abc", "content": "[tool error] no such file"})
    );
}

#[tokio::test]
async fn openai_without_a_key_sends_no_authorization_header() {
    let server = ModelApi::replying(vec![Reply::ok(openai_text("local"))]).await;
    let mut s = settings(&format!("{}/v1", server.base));
    s.api_key = None;
    let provider = OpenAiProvider::new(s).expect("provider");
    provider
        .complete(text_request("hi"))
        .await
        .expect("answers");
    assert_eq!(server.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn openai_errors_and_bad_tool_arguments_are_precise() {
    let server = ModelApi::replying(vec![Reply::status(
        400,
        openai_error(
            "invalid_request_error",
            "Invalid 'messages[0].content': string too long.",
        ),
    )])
    .await;
    let err = openai(&server.base)
        .complete(text_request("hi"))
        .await
        .expect_err("rejected");
    assert_eq!(
        err,
        ModelError::Rejected(
            "HTTP 400 invalid_request_error: Invalid 'messages[0].content': string too long."
                .into()
        )
    );
    let server = ModelApi::replying(vec![Reply::ok(openai_tool_call(
        "call_1",
        "read_file",
        "{\"path\": README.md}",
    ))])
    .await;
    let err = openai(&server.base)
        .complete(text_request("hi"))
        .await
        .expect_err("bad arguments");
    match err {
        ModelError::InvalidAnswer(m) => assert!(
            m.starts_with("tool call 0 (`read_file`): arguments are not JSON")
                && m.ends_with("{\"path\": README.md}"),
            "got {m}"
        ),
        other => panic!("expected an invalid answer, got {other:?}"),
    }
}

// ---- Shared HTTP behaviour, for both providers ----------------------------

#[tokio::test]
async fn a_429_retry_after_is_honoured_then_the_answer_returned() {
    for name in ["anthropic", "openai"] {
        // The back-off is an hour: only honouring `retry-after: 0` lets
        // this finish; the bounded wait turns a hang into a failure.
        let error = match name {
            "anthropic" => anthropic_error("rate_limit_error", "slow down"),
            _ => openai_error("rate_limit_error", "slow down"),
        };
        let answer = match name {
            "anthropic" => anthropic_text("ok"),
            _ => openai_text("ok"),
        };
        let server = ModelApi::replying(vec![
            Reply::status(429, error).with_header("retry-after", "0"),
            Reply::ok(answer),
        ])
        .await;
        let mut s = settings(&server.base);
        s.retry.initial_backoff = Duration::from_secs(3600);
        s.retry.max_backoff = Duration::from_secs(3600);
        let provider: Box<dyn ModelProvider> = match name {
            "anthropic" => Box::new(AnthropicProvider::new(s).expect("p")),
            _ => {
                s.base_url = format!("{}/v1", server.base);
                Box::new(OpenAiProvider::new(s).expect("p"))
            }
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(120),
            provider.complete(text_request("hi")),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: retry-after: 0 was not honoured"))
        .expect("answer after the rate limit");
        assert_eq!(answer.message, Message::assistant_text("ok"));
        assert_eq!(server.requests().len(), 2, "{name}: one retry");
    }
}

#[tokio::test]
async fn a_retry_after_longer_than_kiln_waits_fails_at_once_and_says_so() {
    let server = ModelApi::replying(vec![
        Reply::status(429, anthropic_error("rate_limit_error", "slow down"))
            .with_header("retry-after", "3600"),
    ])
    .await;
    let err = anthropic(&server.base)
        .complete(text_request("hi"))
        .await
        .expect_err("gives up");
    assert_eq!(
        err,
        ModelError::Unavailable(
            "HTTP 429 rate_limit_error: slow down; the provider asks to retry after 3600s, \
             longer than the 60s Kiln waits"
                .into()
        )
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_server_failing_forever_is_unavailable_after_the_bounded_attempts() {
    let server = ModelApi::start(
        vec![],
        Reply::status(500, anthropic_error("api_error", "Internal server error")),
    )
    .await;
    for (name, provider) in both(&server) {
        let before = server.requests().len();
        let err = provider
            .complete(text_request("hi"))
            .await
            .expect_err("never answers");
        assert_eq!(
            err,
            ModelError::Unavailable(
                "HTTP 500 api_error: Internal server error (gave up after 4 attempts)".into()
            ),
            "{name}"
        );
        assert_eq!(
            server.requests().len() - before,
            4,
            "{name}: max_retries 3 means 4 attempts"
        );
    }
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout_after_each_attempt() {
    let server = ModelApi::start(vec![], Reply::Hang).await;
    for (name, mut s) in [
        ("anthropic", settings(&server.base)),
        ("openai", settings(&format!("{}/v1", server.base))),
    ] {
        s.retry.timeout = Duration::from_millis(200);
        s.retry.max_retries = 1;
        let provider: Box<dyn ModelProvider> = match name {
            "anthropic" => Box::new(AnthropicProvider::new(s).expect("p")),
            _ => Box::new(OpenAiProvider::new(s).expect("p")),
        };
        let before = server.requests().len();
        let err = provider
            .complete(text_request("hi"))
            .await
            .expect_err("times out");
        assert_eq!(
            err,
            ModelError::Timeout("no answer within 200ms (gave up after 2 attempts)".into()),
            "{name}"
        );
        assert_eq!(server.requests().len() - before, 2, "{name}");
    }
}

#[tokio::test]
async fn a_closed_port_is_unavailable_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let err = anthropic(&base)
        .complete(text_request("hi"))
        .await
        .expect_err("nothing listens");
    match err {
        ModelError::Unavailable(m) => assert!(
            m.ends_with("(gave up after 4 attempts)") && m.contains("127.0.0.1"),
            "got {m}"
        ),
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn the_api_key_never_reaches_errors_or_debug_output() {
    let server = ModelApi::replying(vec![Reply::status(
        401,
        anthropic_error("authentication_error", &format!("invalid x-api-key {KEY}")),
    )])
    .await;
    let s = settings(&server.base);
    assert!(
        !format!("{s:?}").contains(KEY),
        "settings' Debug shows the key"
    );
    let err = AnthropicProvider::new(s)
        .expect("p")
        .complete(text_request("hi"))
        .await
        .expect_err("rejected");
    assert_eq!(
        err,
        ModelError::Rejected("HTTP 401 authentication_error: invalid x-api-key [redacted]".into())
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_so_the_key_goes_nowhere_else() {
    let target = ModelApi::replying(vec![Reply::ok(anthropic_text("stolen"))]).await;
    let server = ModelApi::replying(vec![
        Reply::status(307, json!({}))
            .with_header("location", &format!("{}/v1/messages", target.base)),
    ])
    .await;
    let err = anthropic(&server.base)
        .complete(text_request("hi"))
        .await
        .expect_err("a redirect is a config error");
    assert!(
        matches!(&err, ModelError::Rejected(m) if m.contains("the endpoint redirects")),
        "got {err:?}"
    );
    assert!(
        target.requests().is_empty(),
        "the key must not follow a redirect"
    );
}

// ---- The agent loop through the plugin host --------------------------------

fn agent_plugin(host: &PluginHost) -> Arc<kiln::plugin::LoadedPlugin> {
    let path =
        kiln::plugin::builtin::test_plugin_path("agent").expect("the agent test plugin is built");
    let bytes = std::fs::read(path).expect("read the agent plugin");
    host.load(&bytes).expect("agent loads")
}

fn host() -> PluginHost {
    PluginHost::new(PluginLimits {
        fuel: 500_000_000,
        memory_bytes: 128 << 20,
        ..PluginLimits::default()
    })
    .expect("plugin host")
}

fn task(instructions: Option<&str>) -> Task {
    Task {
        run_id: "r-model".into(),
        role: "triage".into(),
        repo: "acme/widgets".into(),
        issue: Some(7),
        pull_request: None,
        branch: "kiln/triage-issue-7".into(),
        base_branch: "main".into(),
        trigger: Trigger::Manual,
        instructions: instructions.map(str::to_string),
        args: Vec::new(),
    }
}

/// Run the agent plugin on issue 7 over a workspace holding `src/answer.txt`.
async fn run_agent(
    provider: Arc<dyn ModelProvider>,
    budget: Budget,
    instructions: Option<&str>,
) -> (RunReport, MemoryEvents) {
    let ws = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(ws.path().join("src")).expect("mkdir");
    std::fs::write(ws.path().join("src/answer.txt"), "42").expect("write");
    let events = MemoryEvents::new();
    let mut ctx = RunContext::new(Arc::new(events.clone()));
    ctx.model = Some(provider);
    ctx.budget = budget;
    ctx.workspace = Some(WorkspaceMount::open(ws.path(), false).expect("workspace"));
    let mut forge = ForgeSnapshot::default();
    forge.issues.insert(
        7,
        Issue {
            number: 7,
            title: "Where is the answer?".into(),
            body: "Please find it.".into(),
            author: "octocat".into(),
            trusted: false,
            labels: vec![],
            open: true,
            comments: vec![],
        },
    );
    ctx.forge = forge;
    let host = host();
    let plugin = agent_plugin(&host);
    let report = host.run(&plugin, task(instructions), ctx).await;
    (report, events)
}

fn spent(b: &Budget) -> (u32, u64, u64) {
    (b.turns, b.tokens, b.cost_micro_usd)
}

#[tokio::test]
async fn the_agent_plugin_explores_and_answers_through_the_anthropic_wire_format() {
    let server = ModelApi::replying(vec![
        Reply::ok(anthropic_tool_use(
            "toolu_1",
            "list_dir",
            json!({"path": ""}),
        )),
        Reply::ok(anthropic_tool_use(
            "toolu_2",
            "read_file",
            json!({"path": "src/answer.txt"}),
        )),
        Reply::ok(anthropic_tool_use(
            "toolu_3",
            "answer",
            json!({"text": "It is 42, in src/answer.txt"}),
        )),
    ])
    .await;
    let (report, events) =
        run_agent(Arc::new(anthropic(&server.base)), Budget::default(), None).await;
    let outcome = report.result.expect("the run succeeds");
    assert_eq!(outcome.status, OutcomeStatus::Completed);
    assert_eq!(
        report.proposals,
        vec![Proposal::Comment {
            number: 7,
            body: "It is 42, in src/answer.txt".into()
        }]
    );
    // Three turns of 100 in / 10 out, priced at $3 / $15 per Mtok: 450 micro-USD each.
    assert_eq!(spent(&report.budget), (3, 330, 1350));
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|r| r.header("x-api-key") == Some(KEY)),
        "every turn carries the host's key"
    );
    let first = &seen[0].body;
    assert_eq!(
        first["system"],
        "You answer questions about a repository. Use the tools, then call `answer`."
    );
    assert_eq!(
        first["messages"][0]["content"][0]["text"],
        "Issue #7: Where is the answer?\n\nPlease find it."
    );
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tools, ["read_file", "list_dir", "answer"]);
    // The third request carries the file's content back as the result of toolu_2.
    let results: Vec<&Value> = seen[2].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["tool_use_id"], "toolu_2");
    assert_eq!(results[1]["content"], "42");
    assert_eq!(results[1]["is_error"], false);
    let turns: Vec<String> = events
        .snapshot()
        .into_iter()
        .filter(|e| e.kind == EventKind::ModelTurn)
        .map(|e| e.message)
        .collect();
    assert_eq!(turns.len(), 3);
    assert!(
        turns[0].starts_with("claude-test-1 answered: tool_use"),
        "got {turns:?}"
    );
}

#[tokio::test]
async fn a_malformed_tool_call_ends_the_run_with_the_reason_and_charges_nothing() {
    let server = ModelApi::replying(vec![Reply::ok(anthropic_message(
        json!([{"type": "tool_use", "id": "t", "name": "read_file", "input": "src/answer.txt"}]),
        "tool_use",
        100,
        10,
    ))])
    .await;
    let (report, _) = run_agent(Arc::new(anthropic(&server.base)), Budget::default(), None).await;
    let err = report.result.expect_err("the run fails").to_string();
    assert_eq!(
        err,
        "plugin agent failed: unavailable: model provider returned an invalid answer: \
         content block 0: the input of tool call `read_file` is not a JSON object: \"src/answer.txt\""
    );
    assert_eq!(spent(&report.budget), (0, 0, 0));
    assert!(report.proposals.is_empty());
}

#[tokio::test]
async fn a_model_calling_unknown_tools_forever_is_stopped_by_the_turn_budget() {
    let server = ModelApi::start(
        vec![],
        Reply::ok(anthropic_tool_use(
            "toolu_x",
            "delete_everything",
            json!({}),
        )),
    )
    .await;
    let budget = Budget {
        max_turns: Some(4),
        ..Budget::default()
    };
    let (report, events) = run_agent(Arc::new(anthropic(&server.base)), budget, None).await;
    let outcome = report.result.expect("the role handles the budget");
    assert_eq!(outcome.status, OutcomeStatus::Blocked);
    assert_eq!(
        outcome.summary,
        "budget exhausted: turn budget spent: 4 of 4 turns"
    );
    assert_eq!(spent(&report.budget), (4, 440, 1800));
    assert_eq!(
        server.requests().len(),
        4,
        "the fifth turn never reaches the provider"
    );
    let second = &server.requests()[1].body;
    let result = second["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| m["content"][0].clone())
        .expect("a tool result");
    assert_eq!(
        result,
        json!({"type": "tool_result", "tool_use_id": "toolu_x",
               "content": "unknown tool `delete_everything`", "is_error": true})
    );
    assert!(
        events
            .snapshot()
            .iter()
            .any(|e| e.message == "refused: turn budget spent: 4 of 4 turns"),
        "the refusal is an event"
    );
}

#[tokio::test]
async fn an_endless_tool_loop_is_stopped_by_the_token_budget_and_the_last_turn_is_capped() {
    let server = ModelApi::start(
        vec![],
        Reply::ok(anthropic_tool_use(
            "toolu_l",
            "list_dir",
            json!({"path": ""}),
        )),
    )
    .await;
    let budget = Budget {
        max_tokens: Some(400),
        ..Budget::default()
    };
    let (report, _) = run_agent(Arc::new(anthropic(&server.base)), budget, None).await;
    let outcome = report.result.expect("the role handles the budget");
    assert_eq!(outcome.status, OutcomeStatus::Blocked);
    assert_eq!(
        outcome.summary,
        "budget exhausted: token budget spent: 440 of 400 tokens"
    );
    let caps: Vec<Value> = server
        .requests()
        .iter()
        .map(|r| r.body["max_tokens"].clone())
        .collect();
    // 110 tokens a turn: the cap follows what is left (400, 290, 180, 70),
    // under the configured 1024.
    assert_eq!(caps, [json!(400), json!(290), json!(180), json!(70)]);
}

#[tokio::test]
async fn a_plugin_claiming_success_after_a_budget_refusal_is_reported_out_of_budget() {
    let server = ModelApi::start(
        vec![],
        Reply::ok(anthropic_tool_use(
            "toolu_l",
            "list_dir",
            json!({"path": ""}),
        )),
    )
    .await;
    let budget = Budget {
        max_turns: Some(2),
        ..Budget::default()
    };
    let (report, events) = run_agent(
        Arc::new(anthropic(&server.base)),
        budget,
        Some("claim-success-when-out-of-budget"),
    )
    .await;
    match &report.result {
        Err(RunError::BudgetExhausted {
            plugin,
            message,
            claimed,
        }) => {
            assert_eq!(plugin, "agent");
            assert_eq!(message, "turn budget spent: 2 of 2 turns");
            assert_eq!(
                claimed,
                "completed: all done (really: turn budget spent: 2 of 2 turns)"
            );
        }
        other => panic!("success past the budget must not stand, got {other:?}"),
    }
    assert_eq!(report.budget.turns, 2);
    let last = events.snapshot().pop().expect("events");
    assert_eq!(last.kind, EventKind::Progress);
    assert!(
        last.message.contains("ran out of budget"),
        "the run's last event says why: {}",
        last.message
    );
}

#[tokio::test]
async fn the_scripted_provider_drives_the_agent_and_is_named_in_every_turn() {
    let script = r#"{ "description": "the agent finds the answer file",
        "turns": [
          { "tool_calls": [ { "name": "read_file", "arguments": { "path": "src/answer.txt" } } ] },
          { "text": "Found it.",
            "tool_calls": [ { "name": "answer", "arguments": { "text": "42" } } ] } ] }"#;
    let provider = ScriptedProvider::from_json("agent-demo.json", script).expect("valid script");
    let (report, events) = run_agent(Arc::new(provider), Budget::default(), None).await;
    let outcome = report.result.expect("the scripted run succeeds");
    assert_eq!(outcome.output.as_deref(), Some(r#"{"text":"42"}"#));
    assert_eq!(report.budget.turns, 2);
    assert!(
        report.budget.tokens > 0,
        "scripted turns count toward the token budget"
    );
    assert_eq!(report.budget.cost_micro_usd, 0);
    let turns: Vec<String> = events
        .snapshot()
        .into_iter()
        .filter(|e| e.kind == EventKind::ModelTurn)
        .map(|e| e.message)
        .collect();
    assert_eq!(turns.len(), 2);
    assert!(
        turns
            .iter()
            .all(|t| t.starts_with("scripted:agent-demo.json answered")),
        "every turn names the script: {turns:?}"
    );
}
