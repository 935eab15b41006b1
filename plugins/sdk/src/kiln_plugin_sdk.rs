//! # Kiln plugin SDK
//!
//! Write a Kiln role (triage, spec, implementation, review, or your own) as a
//! WebAssembly component. The SDK gives you:
//!
//! - typed access to every import of the `kiln:role` world:
//!   [`model`], [`workspace`], [`forge`], [`session`], [`skills`], and
//!   (from 0.2.0) `signals`;
//! - a reusable [`agent`] loop: send the conversation and tool specs to the
//!   model, dispatch its tool calls to the workspace and forge, feed results
//!   back, stop on a final answer or when the budget is spent;
//! - a panic hook that forwards the panic message to the host before the
//!   plugin traps, so a failed run says why.
//!
//! ```no_run
//! use kiln_plugin_sdk::{Outcome, OutcomeStatus, Role, RoleError, Task};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Role for Hello {
//!     fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
//!         kiln_plugin_sdk::session::progress(&format!("hello from run {}", task.run_id));
//!         Ok(Outcome { status: OutcomeStatus::Completed, summary: "said hello".into(), output: None })
//!     }
//! }
//!
//! kiln_plugin_sdk::register_role!(Hello);
//! ```
//!
//! Build it with `kiln plugin build` (or as part of Kiln's own build), which
//! compiles for `wasm32-unknown-unknown`, turns the module into a component
//! and embeds the crate's `kiln-plugin.toml` manifest.
//!
//! ## Contract versions
//! The SDK binds one version of the contract, [`WIT_VERSION`]: 0.2.0 by
//! default, 0.1.0 with the `wit-0-1-0` feature (which `kiln plugin build`
//! turns on when `kiln-plugin.toml` says `wit = "0.1.0"`). Functions a
//! version lacks do not exist in the SDK built for it, so using one is a
//! compile error, not a refusal at load time.
#![deny(missing_docs)]

pub mod agent;
pub mod diff;
pub mod forge;
pub mod model;
pub mod session;
#[cfg(not(feature = "wit-0-1-0"))]
pub mod signals;
pub mod skills;
pub mod workspace;

/// The raw bindings generated from the WIT contract. Prefer the typed
/// modules of this crate; this is public for the [`register_role!`] macro.
#[doc(hidden)]
#[cfg(feature = "wit-0-1-0")]
pub mod wit {
    wit_bindgen::generate!({
        path: "../../wit/kiln-role@0.1.0",
        world: "role",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "kiln_plugin_sdk::wit",
        additional_derives: [PartialEq],
    });
}

/// The raw bindings generated from the WIT contract. Prefer the typed
/// modules of this crate; this is public for the [`register_role!`] macro.
#[doc(hidden)]
#[cfg(not(feature = "wit-0-1-0"))]
pub mod wit {
    wit_bindgen::generate!({
        path: "../../wit/kiln-role@0.2.0",
        world: "role",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "kiln_plugin_sdk::wit",
        additional_derives: [PartialEq],
    });
}

pub use wit::kiln::role::types::{Outcome, OutcomeStatus, RoleError, Task, Trigger, Trust};

/// The version of the `kiln:role` WIT contract this SDK is built against.
#[cfg(feature = "wit-0-1-0")]
pub const WIT_VERSION: &str = "0.1.0";
/// The version of the `kiln:role` WIT contract this SDK is built against.
#[cfg(not(feature = "wit-0-1-0"))]
pub const WIT_VERSION: &str = "0.2.0";

/// A role's logic. Implement it and register the type with [`register_role!`].
///
/// The host creates a fresh instance for every run, so `run` is called once
/// per instance; keep state in `self` freely.
pub trait Role {
    /// Do the role's job for one task.
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError>;
}

/// Register a [`Role`] implementation (which must implement `Default`) as the
/// plugin's `run` export. Use it exactly once per plugin crate.
#[macro_export]
macro_rules! register_role {
    ($role:ty) => {
        #[doc(hidden)]
        struct __KilnRoleComponent;

        impl $crate::wit::Guest for __KilnRoleComponent {
            fn run(task: $crate::Task) -> ::core::result::Result<$crate::Outcome, $crate::RoleError> {
                $crate::__run_role::<$role>(task)
            }
        }

        $crate::wit::export!(__KilnRoleComponent with_types_in $crate::wit);
    };
}

/// Entry point used by [`register_role!`]: installs the panic hook and runs
/// a fresh role value.
#[doc(hidden)]
pub fn __run_role<R: Role + Default>(task: Task) -> Result<Outcome, RoleError> {
    install_panic_hook();
    R::default().run(task)
}

/// Forward panic messages to the host. On `wasm32-unknown-unknown` a panic
/// aborts with a bare trap and the message would otherwise be lost.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".to_string());
        let message = match info.location() {
            Some(loc) => format!("{payload} (at {}:{})", loc.file(), loc.line()),
            None => payload,
        };
        session::report_panic(&message);
    }));
}

impl RoleError {
    /// The error as one line for people and models ("denied: ...").
    pub fn describe(&self) -> String {
        match self {
            RoleError::Denied(m) => format!("denied: {m}"),
            RoleError::HeldForApproval(id) => format!("held for approval as effect {id}"),
            RoleError::NotFound(m) => format!("not found: {m}"),
            RoleError::InvalidArgument(m) => format!("invalid argument: {m}"),
            RoleError::BudgetExhausted(m) => format!("budget exhausted: {m}"),
            RoleError::LimitExceeded(m) => format!("limit exceeded: {m}"),
            RoleError::Timeout(m) => format!("timed out: {m}"),
            RoleError::Unavailable(m) => format!("unavailable: {m}"),
            RoleError::Cancelled => "cancelled".to_string(),
            RoleError::NotPermitted(m) => format!("not permitted: {m}"),
            RoleError::Internal(m) => format!("host error: {m}"),
        }
    }
}

impl Outcome {
    /// A completed outcome with a summary and no structured output.
    pub fn completed(summary: impl Into<String>) -> Self {
        Outcome {
            status: OutcomeStatus::Completed,
            summary: summary.into(),
            output: None,
        }
    }

    /// A blocked outcome: the role needs a human; `reason` says what for.
    pub fn blocked(reason: impl Into<String>) -> Self {
        Outcome {
            status: OutcomeStatus::Blocked,
            summary: reason.into(),
            output: None,
        }
    }
}
