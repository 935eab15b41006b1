//! The policy gate: every effect a role plugin proposes is decided here before
//! it reaches a forge, the workspace or a model provider.
//!
//! It owns three things, one submodule each:
//! - [`gate`]: the typed [`EffectRequest`], Cedar decisions ([`Decision`]:
//!   allow, deny or hold for human approval) and the built-in invariants no
//!   repo policy can lift;
//! - [`redact`]: the [`Redactor`] that removes configured secret values and
//!   token shapes from every outbound byte, and refuses commits carrying one;
//! - [`sanitize`]: cleaning and tagging of untrusted forge text (issue and
//!   comment bodies) before a plugin sees it.
//!
//! These types do not depend on the WIT contract; the plugin host converts its
//! generated types into them.

pub mod config;
pub mod detection;
pub mod gate;
pub mod redact;
pub mod sanitize;

pub use detection::DetectionContext;
pub use gate::{
    Audience, Blame, Decision, Effect, EffectRequest, Gate, GateConfig, GateError, LinkHosts,
    Neutralised, PolicyDiagnostic, ProtectedChange, ProtectedPattern, Protection, ReviewComment,
    ReviewEvent, Role, RunContext, TextKind, Trust, make_inert,
};
pub use redact::{
    MIN_SECRET_LEN, RedactingWriter, Redactor, RedactorError, SecretFinding, SecretInCommit,
    SecretValue, StreamRedactor,
};
pub use sanitize::{Sanitized, TaggedText, sanitize};
