//! The tamper-evident ledger: each run's events form a hash chain, and the
//! chain's head is signed with the host's ed25519 key once the run ends.
//!
//! - [`chain`]: the canonical encoding of an event and its SHA-256 link to
//!   the event before; the store computes it as it appends (no extra read).
//! - [`key`]: the host key in the data directory (`ledger.key`, 0600).
//! - [`transcript`]: a run's events with their chain and seal, as the store
//!   reads them and as `kiln runs export` writes them, and the one check
//!   (`kiln runs verify`) that both go through.
//!
//! Nothing here knows the store's backend: a backend stores the event
//! hash and the seal, and hands back a [`transcript::Transcript`].

pub mod chain;
pub mod key;
pub mod transcript;

pub use chain::{EventHash, GENESIS};
pub use key::{HostKey, KeyError, PublicKey};
pub use transcript::{Seal, Transcript, TranscriptEvent, Verdict, Verification};
