//! What every version of the contract shares: the conversions between a
//! version's generated types and the host's domain types, and the `Host`
//! impls of the interfaces whose shape did not change between versions.
//!
//! Generated types are distinct per version (`kiln:role/forge@0.1.0` and
//! `@0.2.0` are different interfaces) but spelled the same in Rust, so one
//! macro, expanded inside each version module after its `bindgen!`, writes
//! them once. What a version adds is passed in: extra `forge` functions and
//! extra pull-request fields.

/// Expands, inside a version module, the conversions and `Host` impls all
/// versions share. `forge_extra` holds the version's own `forge` functions;
/// `pull_request_extra` the fields its `pull-request` record adds, built
/// from the domain pull request bound to the given name; `task_extra` the
/// task's `trigger` (each version knows its own triggers) and added fields.
macro_rules! common_host {
    (
        forge_extra: { $($forge_extra:tt)* },
        pull_request_extra: |$pr:ident| { $($pr_extra:tt)* },
        task_extra: |$task:ident| { $($task_extra:tt)* } $(,)?
    ) => {
        use crate::imports::RunState;
        use crate::plugin::types as dom;
        use self::kiln::role::forge as wforge;
        use self::kiln::role::model as wmodel;
        use self::kiln::role::session as wsession;
        use self::kiln::role::skills as wskills;
        use self::kiln::role::types as wtypes;
        use self::kiln::role::workspace as wws;

        impl From<dom::RoleError> for wtypes::RoleError {
            fn from(e: dom::RoleError) -> Self {
                use dom::RoleError as D;
                match e {
                    D::Denied(m) => Self::Denied(m),
                    D::HeldForApproval(m) => Self::HeldForApproval(m),
                    D::NotFound(m) => Self::NotFound(m),
                    D::InvalidArgument(m) => Self::InvalidArgument(m),
                    D::BudgetExhausted(m) => Self::BudgetExhausted(m),
                    D::LimitExceeded(m) => Self::LimitExceeded(m),
                    D::Timeout(m) => Self::Timeout(m),
                    D::Unavailable(m) => Self::Unavailable(m),
                    D::Cancelled => Self::Cancelled,
                    D::NotPermitted(m) => Self::NotPermitted(m),
                    D::Internal(m) => Self::Internal(m),
                }
            }
        }

        impl From<wtypes::RoleError> for dom::RoleError {
            fn from(e: wtypes::RoleError) -> Self {
                use wtypes::RoleError as W;
                match e {
                    W::Denied(m) => Self::Denied(m),
                    W::HeldForApproval(m) => Self::HeldForApproval(m),
                    W::NotFound(m) => Self::NotFound(m),
                    W::InvalidArgument(m) => Self::InvalidArgument(m),
                    W::BudgetExhausted(m) => Self::BudgetExhausted(m),
                    W::LimitExceeded(m) => Self::LimitExceeded(m),
                    W::Timeout(m) => Self::Timeout(m),
                    W::Unavailable(m) => Self::Unavailable(m),
                    W::Cancelled => Self::Cancelled,
                    W::NotPermitted(m) => Self::NotPermitted(m),
                    W::Internal(m) => Self::Internal(m),
                }
            }
        }

        impl From<wtypes::Outcome> for dom::Outcome {
            fn from(o: wtypes::Outcome) -> Self {
                dom::Outcome {
                    status: match o.status {
                        wtypes::OutcomeStatus::Completed => dom::OutcomeStatus::Completed,
                        wtypes::OutcomeStatus::Blocked => dom::OutcomeStatus::Blocked,
                        wtypes::OutcomeStatus::Skipped => dom::OutcomeStatus::Skipped,
                    },
                    summary: o.summary,
                    output: o.output,
                }
            }
        }

        /// The domain task as this version's record.
        pub(crate) fn task($task: &dom::Task) -> wtypes::Task {
            wtypes::Task {
                run_id: $task.run_id.clone(),
                role: $task.role.clone(),
                repo: $task.repo.clone(),
                issue: $task.issue,
                pull_request: $task.pull_request,
                branch: $task.branch.clone(),
                base_branch: $task.base_branch.clone(),
                instructions: $task.instructions.clone(),
                $($task_extra)*
            }
        }

        /// A plugin call's two layers, converted: a trap stays a trap, the
        /// plugin's own error becomes the domain error.
        pub(crate) fn run_result(
            r: wasmtime::Result<Result<wtypes::Outcome, wtypes::RoleError>>,
        ) -> wasmtime::Result<Result<dom::Outcome, dom::RoleError>> {
            r.map(|inner| inner.map(Into::into).map_err(Into::into))
        }

        fn trust(trusted: bool) -> wtypes::Trust {
            if trusted {
                wtypes::Trust::Trusted
            } else {
                wtypes::Trust::Untrusted
            }
        }

        fn comments(comments: &[crate::forge::Comment]) -> Vec<wforge::Comment> {
            comments
                .iter()
                .map(|c| wforge::Comment {
                    id: c.id,
                    author: c.author.clone(),
                    trust: trust(c.trusted),
                    body: c.body.clone(),
                })
                .collect()
        }

        fn receipt(r: dom::Receipt) -> wforge::ProposalReceipt {
            wforge::ProposalReceipt {
                effect_id: r.effect_id,
                state: if r.held {
                    wforge::ProposalState::Held
                } else {
                    wforge::ProposalState::Applied
                },
                url: r.url,
            }
        }

        #[allow(dead_code, reason = "only versions with review threads use it")]
        fn side(new_side: bool) -> wforge::DiffSide {
            if new_side {
                wforge::DiffSide::Right
            } else {
                wforge::DiffSide::Left
            }
        }

        fn pull_request($pr: &crate::forge::PullRequest) -> wforge::PullRequest {
            wforge::PullRequest {
                number: $pr.issue.number,
                title: $pr.issue.title.clone(),
                body: $pr.issue.body.clone(),
                author: $pr.issue.author.clone(),
                trust: trust($pr.issue.trusted),
                head_branch: $pr.head_branch.clone(),
                base_branch: $pr.base_branch.clone(),
                draft: $pr.draft,
                labels: $pr.issue.labels.clone(),
                comments: comments(&$pr.issue.comments),
                $($pr_extra)*
            }
        }

        impl wtypes::Host for RunState {}

        impl wforge::Host for RunState {
            async fn get_issue(
                &mut self,
                number: u64,
            ) -> wasmtime::Result<Result<wforge::Issue, wtypes::RoleError>> {
                Ok(RunState::get_issue(self, number)
                    .map(|i| wforge::Issue {
                        number: i.number,
                        title: i.title.clone(),
                        body: i.body.clone(),
                        author: i.author.clone(),
                        trust: trust(i.trusted),
                        labels: i.labels.clone(),
                        open: i.open,
                        comments: comments(&i.comments),
                    })
                    .map_err(Into::into))
            }

            async fn get_pull_request(
                &mut self,
                number: u64,
            ) -> wasmtime::Result<Result<wforge::PullRequest, wtypes::RoleError>> {
                Ok(RunState::get_pull_request(self, number, "forge.get-pull-request")
                    .map(pull_request)
                    .map_err(Into::into))
            }

            async fn get_pull_request_diff(
                &mut self,
                number: u64,
            ) -> wasmtime::Result<Result<String, wtypes::RoleError>> {
                Ok(RunState::get_pull_request(self, number, "forge.get-pull-request-diff")
                    .map(|p| p.diff.clone())
                    .map_err(Into::into))
            }

            async fn propose_comment(
                &mut self,
                p: wforge::CommentProposal,
            ) -> wasmtime::Result<Result<wforge::ProposalReceipt, wtypes::RoleError>> {
                let proposal = crate::forge::Proposal::Comment {
                    number: p.number,
                    body: p.body,
                };
                Ok(self.propose_effect(proposal).await.map(receipt).map_err(Into::into))
            }

            async fn propose_labels(
                &mut self,
                p: wforge::LabelProposal,
            ) -> wasmtime::Result<Result<wforge::ProposalReceipt, wtypes::RoleError>> {
                let proposal = crate::forge::Proposal::Labels {
                    number: p.number,
                    add: p.add,
                    remove: p.remove,
                };
                Ok(self.propose_effect(proposal).await.map(receipt).map_err(Into::into))
            }

            async fn propose_pull_request(
                &mut self,
                p: wforge::PullRequestProposal,
            ) -> wasmtime::Result<Result<wforge::ProposalReceipt, wtypes::RoleError>> {
                let proposal = crate::forge::Proposal::PullRequest {
                    title: p.title,
                    body: p.body,
                    commit_message: p.commit_message,
                };
                Ok(self.propose_effect(proposal).await.map(receipt).map_err(Into::into))
            }

            async fn propose_review(
                &mut self,
                p: wforge::ReviewProposal,
            ) -> wasmtime::Result<Result<wforge::ProposalReceipt, wtypes::RoleError>> {
                use crate::forge::Severity as S;
                let proposal = crate::forge::Proposal::Review {
                    number: p.number,
                    request_changes: p.verdict == wforge::ReviewVerdict::RequestChanges,
                    summary: p.summary,
                    comments: p
                        .comments
                        .into_iter()
                        .map(|c| crate::forge::LineComment {
                            path: c.path,
                            line: c.line,
                            new_side: c.side == wforge::DiffSide::Right,
                            severity: match c.severity {
                                wforge::Severity::Critical => S::Critical,
                                wforge::Severity::Important => S::Important,
                                wforge::Severity::Suggestion => S::Suggestion,
                                wforge::Severity::Nit => S::Nit,
                            },
                            body: c.body,
                        })
                        .collect(),
                };
                Ok(self.propose_effect(proposal).await.map(receipt).map_err(Into::into))
            }

            $($forge_extra)*
        }

        impl wmodel::Host for RunState {
            async fn complete(
                &mut self,
                r: wmodel::CompletionRequest,
            ) -> wasmtime::Result<Result<wmodel::Completion, wtypes::RoleError>> {
                Ok(RunState::complete(self, from_wit_request(r))
                    .await
                    .map(to_wit_completion)
                    .map_err(Into::into))
            }
        }

        fn from_wit_request(r: wmodel::CompletionRequest) -> crate::model::CompletionRequest {
            use crate::model as m;
            m::CompletionRequest {
                system: r.system,
                messages: r
                    .messages
                    .into_iter()
                    .map(|msg| m::Message {
                        role: match msg.role {
                            wmodel::MessageRole::User => m::Role::User,
                            wmodel::MessageRole::Assistant => m::Role::Assistant,
                        },
                        content: msg
                            .content
                            .into_iter()
                            .map(|p| match p {
                                wmodel::ContentPart::Text(text) => m::ContentPart::Text { text },
                                wmodel::ContentPart::ToolCall(c) => {
                                    m::ContentPart::ToolCall(m::ToolCall {
                                        id: c.id,
                                        name: c.name,
                                        arguments: c.arguments,
                                    })
                                }
                                wmodel::ContentPart::ToolResult(r) => {
                                    m::ContentPart::ToolResult(m::ToolResult {
                                        call_id: r.call_id,
                                        content: r.content,
                                        is_error: r.is_error,
                                    })
                                }
                            })
                            .collect(),
                    })
                    .collect(),
                tools: r
                    .tools
                    .into_iter()
                    .map(|t| m::ToolSpec {
                        name: t.name,
                        description: t.description,
                        parameters: t.parameters,
                    })
                    .collect(),
                max_tokens: r.max_tokens,
                temperature: r.temperature,
            }
        }

        fn to_wit_completion(c: crate::model::Completion) -> wmodel::Completion {
            use crate::model as m;
            wmodel::Completion {
                message: wmodel::Message {
                    role: match c.message.role {
                        m::Role::User => wmodel::MessageRole::User,
                        m::Role::Assistant => wmodel::MessageRole::Assistant,
                    },
                    content: c
                        .message
                        .content
                        .into_iter()
                        .map(|p| match p {
                            m::ContentPart::Text { text } => wmodel::ContentPart::Text(text),
                            m::ContentPart::ToolCall(t) => {
                                wmodel::ContentPart::ToolCall(wmodel::ToolCall {
                                    id: t.id,
                                    name: t.name,
                                    arguments: t.arguments,
                                })
                            }
                            m::ContentPart::ToolResult(r) => {
                                wmodel::ContentPart::ToolResult(wmodel::ToolResult {
                                    call_id: r.call_id,
                                    content: r.content,
                                    is_error: r.is_error,
                                })
                            }
                        })
                        .collect(),
                },
                stop_reason: match c.stop_reason {
                    m::StopReason::EndTurn => wmodel::StopReason::EndTurn,
                    m::StopReason::ToolUse => wmodel::StopReason::ToolUse,
                    m::StopReason::MaxTokens => wmodel::StopReason::MaxTokens,
                    m::StopReason::StopSequence => wmodel::StopReason::StopSequence,
                    m::StopReason::Refusal => wmodel::StopReason::Refusal,
                },
                usage: wmodel::Usage {
                    input_tokens: c.usage.input_tokens,
                    output_tokens: c.usage.output_tokens,
                    cost_micro_usd: c.usage.cost_micro_usd,
                },
                model: c.model,
            }
        }

        impl wws::Host for RunState {
            async fn read_file(
                &mut self,
                path: String,
            ) -> wasmtime::Result<Result<Vec<u8>, wtypes::RoleError>> {
                Ok(RunState::read_file(self, path).await?.map_err(Into::into))
            }

            async fn write_file(
                &mut self,
                path: String,
                contents: Vec<u8>,
            ) -> wasmtime::Result<Result<(), wtypes::RoleError>> {
                Ok(RunState::write_file(self, path, contents).await?.map_err(Into::into))
            }

            async fn remove_file(
                &mut self,
                path: String,
            ) -> wasmtime::Result<Result<(), wtypes::RoleError>> {
                Ok(RunState::remove_file(self, path).await?.map_err(Into::into))
            }

            async fn list_dir(
                &mut self,
                path: String,
            ) -> wasmtime::Result<Result<Vec<wws::DirEntry>, wtypes::RoleError>> {
                let entries = RunState::list_dir(self, path).await?;
                Ok(entries
                    .map(|es| {
                        es.into_iter()
                            .map(|e| wws::DirEntry {
                                name: e.name,
                                kind: match e.kind {
                                    dom::EntryKind::File => wws::EntryKind::File,
                                    dom::EntryKind::Directory => wws::EntryKind::Directory,
                                    dom::EntryKind::Symlink => wws::EntryKind::Symlink,
                                    dom::EntryKind::Other => wws::EntryKind::Other,
                                },
                                size: e.size,
                            })
                            .collect()
                    })
                    .map_err(Into::into))
            }

            async fn exec(
                &mut self,
                r: wws::ExecRequest,
            ) -> wasmtime::Result<Result<wws::ExecOutput, wtypes::RoleError>> {
                let request = dom::ExecRequest {
                    argv: r.argv,
                    env: r.env,
                    workdir: r.workdir,
                    timeout_ms: r.timeout_ms,
                    max_output_bytes: r.max_output_bytes,
                };
                Ok(RunState::exec(self, request)
                    .await
                    .map(|o| wws::ExecOutput {
                        exit_code: o.exit_code,
                        killed_by: o.killed_by,
                        stdout: o.stdout,
                        stderr: o.stderr,
                        truncated: o.truncated,
                        duration_ms: o.duration_ms,
                    })
                    .map_err(Into::into))
            }

            async fn diff(&mut self) -> wasmtime::Result<Result<String, wtypes::RoleError>> {
                Ok(RunState::diff(self).await.map_err(Into::into))
            }
        }

        impl wsession::Host for RunState {
            async fn emit(&mut self, event: wsession::Event) -> wasmtime::Result<()> {
                let kind = match event.kind {
                    wsession::EventKind::Progress => dom::PluginEventKind::Progress,
                    wsession::EventKind::Note => dom::PluginEventKind::Note,
                    wsession::EventKind::Warning => dom::PluginEventKind::Warning,
                };
                RunState::emit(self, kind, event.message)
            }

            async fn next_instruction(&mut self) -> wasmtime::Result<Option<String>> {
                Ok(RunState::next_instruction(self).await)
            }

            async fn get_budget(&mut self) -> wasmtime::Result<wsession::Budget> {
                let b = self.budget_report();
                Ok(wsession::Budget {
                    turns_used: b.turns_used,
                    turns_max: b.turns_max,
                    tokens_used: b.tokens_used,
                    tokens_max: b.tokens_max,
                    cost_used_micro_usd: b.cost_used_micro_usd,
                    cost_max_micro_usd: b.cost_max_micro_usd,
                    time_left_ms: b.time_left_ms,
                })
            }

            async fn report_panic(&mut self, message: String) -> wasmtime::Result<()> {
                RunState::report_panic(self, message);
                Ok(())
            }
        }

        impl wskills::Host for RunState {
            async fn get(
                &mut self,
                name: String,
            ) -> wasmtime::Result<Result<wskills::Skill, wtypes::RoleError>> {
                Ok(self
                    .get_skill(name)
                    .map(|s| wskills::Skill {
                        name: s.name,
                        text: s.text,
                        overridden: s.overridden,
                    })
                    .map_err(Into::into))
            }
        }

        /// Link every import of this version into `linker`.
        pub fn add_to_linker(
            linker: &mut wasmtime::component::Linker<RunState>,
        ) -> wasmtime::Result<()> {
            Role::add_to_linker::<RunState, wasmtime::component::HasSelf<RunState>>(linker, |s| s)
        }
    };
}

pub(crate) use common_host;
