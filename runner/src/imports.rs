//! Host implementations of the `kiln:role` imports, one module per WIT
//! interface, written once against the host's domain types
//! ([`crate::plugin::types`], `crate::forge`, `crate::model`). Each import
//! checks the capability and the policy as its first step and calls the
//! module that owns the concern (`model`, `forge`, the workspace). The WIT
//! versions (`crate::plugin::wit::v0_*`) only convert their generated types
//! to and from the domain types and call these.
//!
//! Errors have two layers: `Ok(Err(role_error))` is an error the plugin may
//! handle (denied, not found, budget exhausted); `Err(trap)` means the guest
//! asked for too much or a host invariant broke, and the run ends.
use std::sync::Arc;
use std::time::Instant;

use crate::forge::{ForgeSnapshot, Proposal};
use crate::model::ModelProvider;
use crate::plugin::capability::{Capability, CapabilitySet};
use crate::plugin::limits::{Limiter, PluginLimits};
use crate::plugin::types::RoleError;
use crate::session::{Blame, Budget, EventKind, EventSink, Pause, Steering};

pub mod forge;
pub mod gate;
pub mod model;
pub mod session;
pub mod signals;
pub mod skills;
pub mod workspace;

/// What a run gets from the host: where its events go, who steers it, its
/// budget, and the model, workspace, forge data and skills it may use.
/// Everything is optional so a run can start with nothing attached; the
/// imports then answer `unavailable` / `not-found` with a clear message.
#[derive(Clone)]
pub struct RunContext {
    /// Where the run's events go.
    pub events: Arc<dyn EventSink>,
    /// Steering messages from operators.
    pub steering: Steering,
    /// Held while an operator is attached to the sandbox.
    pub pause: Pause,
    /// Turn, token and cost limits.
    pub budget: Budget,
    /// The model provider, if one is configured.
    pub model: Option<Arc<dyn ModelProvider>>,
    /// The workspace directory on the host, if any.
    pub workspace: Option<workspace::WorkspaceMount>,
    /// Forge data the run may read.
    pub forge: ForgeSnapshot,
    /// The repository's skill overrides (`.kiln/skills/`, holding
    /// `<role>.md`), opened from the base checkout, never from a directory
    /// the run can write. Core skills are built in; this only adapts them.
    pub skill_overrides: Option<Arc<cap_std::fs::Dir>>,
    /// The run's binding to the policy gate; `None` runs under the default
    /// policies as an untrusted run (there is no ungated run).
    pub policy: Option<gate::PolicyBinding>,
    /// The run's sandbox, where `workspace.exec` runs commands.
    pub sandbox: Option<workspace::SandboxHandle>,
    /// The shadow repository that diffs and commits the workspace.
    pub publisher: Option<Arc<crate::publish::Publisher>>,
    /// The forge that allowed proposals are applied to; without one they
    /// are decided and recorded only.
    pub forge_target: Option<forge::ForgeTarget>,
    /// Core skills of custom roles, by name (from `[[roles]]` in kiln.toml).
    pub custom_skills: Arc<Vec<(String, Arc<str>)>>,
    /// The repository's history, for plugins granted `signals.read`.
    pub signals: Option<Arc<dyn signals::SignalSource>>,
    /// For an `improve` run: the role whose skill override it may change
    /// (its `target` argument). Its pull request is checked against it.
    pub improve_target: Option<String>,
    /// The detection step run before a pull request's push: the optional
    /// model detector and the step's budget (scanners always run).
    pub detection: crate::detect::step::Settings,
}

impl RunContext {
    /// A context with nothing attached, sending events to `events`.
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        RunContext {
            events,
            steering: Steering::new(),
            pause: Pause::new(),
            budget: Budget::default(),
            model: None,
            workspace: None,
            forge: ForgeSnapshot::default(),
            skill_overrides: None,
            policy: None,
            sandbox: None,
            publisher: None,
            forge_target: None,
            custom_skills: Arc::default(),
            signals: None,
            improve_target: None,
            detection: crate::detect::step::Settings::default(),
        }
    }
}

/// The data of one run's wasmtime `Store`: per-interface state plus what
/// every import needs (capabilities, limits, the event log).
pub struct RunState {
    pub(crate) plugin: String,
    pub(crate) role: String,
    pub(crate) capabilities: CapabilitySet,
    pub(crate) limits: PluginLimits,
    pub(crate) limiter: Limiter,
    pub(crate) started: Instant,
    pub(crate) events: Arc<dyn EventSink>,
    /// The policy gate every effect passes (`None`: deny everything).
    pub(crate) policy: Option<gate::PolicyBinding>,
    /// The plugin's panic message, if its panic hook sent one.
    pub(crate) panic: Option<String>,
    pub(crate) model: model::ModelCtx,
    pub(crate) workspace: workspace::WorkspaceCtx,
    pub(crate) forge: forge::ForgeCtx,
    pub(crate) session: session::SessionCtx,
    pub(crate) skills: skills::SkillsCtx,
    pub(crate) signals: signals::SignalsCtx,
}

impl RunState {
    /// State for one run of `plugin` playing `role` with `capabilities`.
    pub(crate) fn new(
        plugin: &str,
        role: &str,
        capabilities: CapabilitySet,
        limits: PluginLimits,
        ctx: RunContext,
    ) -> Self {
        let policy = ctx
            .policy
            .or_else(|| gate::PolicyBinding::untrusted_default(role));
        // Every event is redacted at the source, before any sink sees it.
        let events: Arc<dyn EventSink> = match &policy {
            Some(b) => Arc::new(gate::RedactingEvents::new(ctx.events, b.gate.clone())),
            None => ctx.events,
        };
        let effect_caps = ctx.budget.effects;
        RunState {
            plugin: plugin.to_string(),
            role: role.to_string(),
            capabilities,
            limiter: Limiter::new(&limits),
            limits,
            started: Instant::now(),
            events,
            policy,
            panic: None,
            model: model::ModelCtx {
                provider: ctx.model,
                budget: ctx.budget,
                refused: None,
            },
            workspace: workspace::WorkspaceCtx {
                mount: ctx.workspace,
                sandbox: ctx.sandbox,
                publisher: ctx.publisher.clone(),
            },
            forge: forge::ForgeCtx {
                snapshot: ctx.forge,
                proposals: Vec::new(),
                effects: Vec::new(),
                denied: 0,
                caps: effect_caps,
                used: crate::caps::EffectUse::default(),
                target: ctx.forge_target,
                publisher: ctx.publisher,
                detection: ctx.detection,
                improve_target: ctx.improve_target,
                verdict: std::sync::Mutex::default(),
            },
            session: session::SessionCtx {
                steering: ctx.steering,
                pause: ctx.pause,
            },
            skills: skills::SkillsCtx {
                overrides: ctx.skill_overrides,
                custom: ctx.custom_skills,
            },
            signals: signals::SignalsCtx {
                source: ctx.signals,
                served: Vec::new(),
            },
        }
    }

    /// The first check of every gated import: the plugin's manifest asked
    /// for `cap` and its role grants it. `what` names the call for the
    /// refusal message and the event log; it is only formatted on refusal,
    /// so the allowed path (every import call) does not allocate.
    pub(crate) fn require(
        &self,
        cap: Capability,
        what: std::fmt::Arguments<'_>,
    ) -> Result<(), RoleError> {
        if self.capabilities.contains(cap) {
            return Ok(());
        }
        let msg = format!(
            "{what}: capability {cap} is not granted to plugin {} (role {})",
            self.plugin, self.role
        );
        self.events.record(
            EventKind::Denied {
                blame: Blame::Guest,
            },
            msg.clone(),
        );
        Err(RoleError::NotPermitted(msg))
    }

    /// Where the agent acts (a model turn, a command, a write, a proposal)
    /// it first waits here while an operator is attached to its sandbox, so
    /// the human and the agent never work in the workspace at once.
    pub(crate) async fn unless_paused(&self) {
        let pause = self.session.pause.clone();
        pause.until_resumed().await;
    }

    /// The proposals the plugin made during the run, in order.
    pub fn proposals(&self) -> &[Proposal] {
        &self.forge.proposals
    }
}

/// A guest passed the host more than a limit allows; the run traps with
/// this message (the plugin is at fault, and its instance is discarded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GuestLimitExceeded(pub String);

/// Trap if `len` bytes of argument `what` exceed `max`.
pub(crate) fn check_size(what: &str, len: usize, max: usize) -> wasmtime::Result<()> {
    if len > max {
        return Err(wasmtime::Error::new(GuestLimitExceeded(format!(
            "{what} is {len} bytes, the limit is {max} bytes"
        ))));
    }
    Ok(())
}
