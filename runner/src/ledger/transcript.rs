//! A run's transcript for an auditor: its events with their chain, and the
//! seal (the signed head). The store hands one out, `kiln runs export`
//! writes one as JSON, and [`Transcript::verify`] checks either the same
//! way, with nothing but the host's public key.

use serde::{Deserialize, Serialize};

use super::chain::{self, EventHash, GENESIS};
use super::key::PublicKey;

/// The `format` of a transcript this version writes and reads.
pub const FORMAT: &str = "kiln-ledger/1";

const SEAL_DOMAIN: &[u8] = b"kiln-seal/1\0";

/// The run a transcript is of (what the seal signs besides the head).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHeader {
    /// The run's id (`12` for r12).
    pub id: u64,
    /// `owner/name`.
    pub repo: String,
    /// The role's name.
    pub role: String,
    /// Issue or pull request number.
    pub number: u64,
    /// The run's state when the transcript was taken.
    pub state: String,
    /// Whether that state is final (a final run must be signed to its last event).
    pub finished: bool,
}

/// One event with its link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEvent {
    /// Position in the run's log, from 1.
    pub seq: u64,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The event kind (JSON).
    pub kind: serde_json::Value,
    /// Text for people.
    pub message: String,
    /// The hash of the event before (hex; zeros for the first).
    pub prev: String,
    /// This event's hash (hex), as stored.
    pub hash: String,
}

/// The signed head of a run's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The last event it covers.
    pub seq: u64,
    /// That event's hash (hex).
    pub hash: String,
    /// The run's state when it was signed.
    pub state: String,
    /// ed25519 signature of [`seal_message`] (hex).
    pub signature: String,
    /// The key that signed (`ed25519:<hex>`); verification uses the key it is given.
    pub public_key: String,
    /// When it was signed, milliseconds since the Unix epoch.
    pub signed_ms: i64,
}

/// A run's events, chain and seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    /// [`FORMAT`].
    pub format: String,
    /// The run.
    pub run: RunHeader,
    /// Every event, in `seq` order.
    pub events: Vec<TranscriptEvent>,
    /// The signed head, once the run has ended (or had ended before a resume).
    pub seal: Option<Seal>,
}

/// The bytes a seal signs: the run's identity, its state, and the head.
pub fn seal_message(
    run: u64,
    repo: &str,
    role: &str,
    number: u64,
    state: &str,
    seq: u64,
    head: &EventHash,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(SEAL_DOMAIN);
    m.extend_from_slice(&run.to_be_bytes());
    for text in [repo, role] {
        m.extend_from_slice(&(text.len() as u64).to_be_bytes());
        m.extend_from_slice(text.as_bytes());
    }
    m.extend_from_slice(&number.to_be_bytes());
    m.extend_from_slice(&(state.len() as u64).to_be_bytes());
    m.extend_from_slice(state.as_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m
}

/// What [`Transcript::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every event links up and the head is signed by the key.
    Signed {
        /// The last event (the signed head).
        seq: u64,
    },
    /// The run has not ended: its chain so far links up; it is signed
    /// through `signed_through` (an earlier end, before a resume) or not yet.
    InProgress {
        /// The last signed event, if any.
        signed_through: Option<u64>,
    },
    /// The first event that does not match its chain.
    Broken {
        /// That event's seq.
        seq: u64,
        /// What does not match.
        why: String,
    },
    /// The events link up but the seal is missing, wrong or not this key's.
    BadSeal {
        /// What is wrong.
        why: String,
    },
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// How many events were checked.
    pub events: u64,
    /// What was found.
    pub verdict: Verdict,
}

impl Verification {
    /// True when nothing was found tampered with (signed, or in progress).
    pub fn ok(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Signed { .. } | Verdict::InProgress { .. }
        )
    }
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.events;
        match &self.verdict {
            Verdict::Signed { seq } => {
                write!(f, "ok: {n} events chained, signed through seq {seq}")
            }
            Verdict::InProgress {
                signed_through: Some(s),
            } => write!(
                f,
                "ok so far: {n} events chained; the run is in progress: signed through seq {s} \
                 (an earlier end), the rest unsigned until it ends"
            ),
            Verdict::InProgress {
                signed_through: None,
            } => write!(
                f,
                "ok so far: {n} events chained; the run is in progress: unsigned until it ends"
            ),
            Verdict::Broken { seq, why } => write!(f, "TAMPERED: event seq {seq}: {why}"),
            Verdict::BadSeal { why } => write!(f, "TAMPERED: {why}"),
        }
    }
}

impl Transcript {
    /// Recomputes the chain from the events' contents and checks the seal
    /// against `key`. Names the first event whose stored link does not
    /// match what its contents hash to.
    pub fn verify(&self, key: &PublicKey) -> Verification {
        let (heads, verdict) = self.check_chain();
        let events = heads.len() as u64;
        let verdict = verdict.unwrap_or_else(|| self.check_seal(key, &heads));
        Verification { events, verdict }
    }

    /// The recomputed hash of each event up to the first broken one, and
    /// the break, if any.
    fn check_chain(&self) -> (Vec<EventHash>, Option<Verdict>) {
        let mut heads: Vec<EventHash> = Vec::with_capacity(self.events.len());
        for (i, e) in self.events.iter().enumerate() {
            let expected_seq = i as u64 + 1;
            let broken = |why: String| Some(Verdict::Broken { seq: e.seq, why });
            if e.seq != expected_seq {
                return (
                    heads,
                    broken(format!(
                        "expected seq {expected_seq} here: events are missing or out of order"
                    )),
                );
            }
            let prev = heads.last().copied().unwrap_or(GENESIS);
            if chain::from_hex(&e.prev) != Some(prev) {
                return (
                    heads,
                    broken("its link to the event before does not match that event".into()),
                );
            }
            let kind = chain::canonical_json(&e.kind);
            let h = chain::event_hash(self.run.id, e.seq, e.at_ms, &kind, &e.message, &prev);
            if chain::from_hex(&e.hash) != Some(h) {
                return (
                    heads,
                    broken(
                        "its contents do not hash to its stored hash (edited after it was written)"
                            .into(),
                    ),
                );
            }
            heads.push(h);
        }
        (heads, None)
    }

    fn check_seal(&self, key: &PublicKey, heads: &[EventHash]) -> Verdict {
        let last = heads.len() as u64;
        let Some(seal) = &self.seal else {
            return if self.run.finished {
                Verdict::BadSeal {
                    why: format!(
                        "the run is {} but its log is not signed (runs that ended before the \
                         ledger existed have no signature; otherwise it was removed)",
                        self.run.state
                    ),
                }
            } else {
                Verdict::InProgress {
                    signed_through: None,
                }
            };
        };
        let bad = |why: String| Verdict::BadSeal { why };
        let head = match seal.seq {
            0 => Some(GENESIS),
            s => usize::try_from(s - 1)
                .ok()
                .and_then(|i| heads.get(i).copied()),
        };
        let Some(head) = head else {
            return bad(format!(
                "the signature covers events through seq {}, but the log ends at seq {last}: \
                 events were removed",
                seal.seq
            ));
        };
        if chain::from_hex(&seal.hash) != Some(head) {
            return bad(format!(
                "the signed head (seq {}) does not match the events: the log was rewritten",
                seal.seq
            ));
        }
        let Ok(signature) = hex::decode(&seal.signature) else {
            return bad("the signature is not hex".into());
        };
        let message = seal_message(
            self.run.id,
            &self.run.repo,
            &self.run.role,
            self.run.number,
            &seal.state,
            seal.seq,
            &head,
        );
        if !key.verify(&message, &signature) {
            return bad(if seal.public_key != key.to_string() {
                format!(
                    "signed by {}, not by the key given ({key})",
                    seal.public_key
                )
            } else {
                "the signature does not match the run and its head".into()
            });
        }
        if seal.seq == last {
            if self.run.finished {
                Verdict::Signed { seq: last }
            } else {
                Verdict::InProgress {
                    signed_through: Some(last),
                }
            }
        } else if self.run.finished {
            bad(format!(
                "the run is {} but events {}..{last} come after its signed head",
                self.run.state,
                seal.seq + 1
            ))
        } else {
            Verdict::InProgress {
                signed_through: Some(seal.seq),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::HostKey;
    use serde_json::json;

    /// A finished run of `n` events, chained and signed by `key`.
    fn transcript(key: &HostKey, n: u64) -> Transcript {
        let header = RunHeader {
            id: 7,
            repo: "acme/widgets".into(),
            role: "triage".into(),
            number: 3,
            state: "succeeded".into(),
            finished: true,
        };
        let mut events = Vec::new();
        let mut prev = GENESIS;
        for seq in 1..=n {
            let kind = json!({"type": "note", "n": seq});
            let h = chain::event_hash(
                7,
                seq,
                1000 + seq as i64,
                &chain::canonical_json(&kind),
                "m",
                &prev,
            );
            events.push(TranscriptEvent {
                seq,
                at_ms: 1000 + seq as i64,
                kind,
                message: "m".into(),
                prev: chain::to_hex(&prev),
                hash: chain::to_hex(&h),
            });
            prev = h;
        }
        let message = seal_message(7, &header.repo, &header.role, 3, "succeeded", n, &prev);
        Transcript {
            format: FORMAT.into(),
            run: header,
            events,
            seal: Some(Seal {
                seq: n,
                hash: chain::to_hex(&prev),
                state: "succeeded".into(),
                signature: hex::encode(key.sign(&message)),
                public_key: key.public().to_string(),
                signed_ms: 2000,
            }),
        }
    }

    #[test]
    fn an_untouched_transcript_verifies() {
        let key = HostKey::from_secret([5; 32]);
        let v = transcript(&key, 4).verify(&key.public());
        assert_eq!(v.verdict, Verdict::Signed { seq: 4 }, "{v}");
        assert!(v.ok());
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let key = HostKey::from_secret([5; 32]);
        let good = transcript(&key, 5);
        let broken_at = |t: &Transcript| match t.verify(&key.public()).verdict {
            Verdict::Broken { seq, .. } => Some(seq),
            _ => None,
        };
        let mut t = good.clone();
        t.events[2].message = "edited".into();
        assert_eq!(broken_at(&t), Some(3), "an edited message");
        let mut t = good.clone();
        t.events[1].kind = json!({"type": "note", "n": 99});
        assert_eq!(broken_at(&t), Some(2), "an edited kind");
        let mut t = good.clone();
        t.events[3].at_ms += 1;
        assert_eq!(broken_at(&t), Some(4), "an edited time");
        let mut t = good.clone();
        t.events.remove(2);
        assert_eq!(broken_at(&t), Some(4), "a removed event");
        let mut t = good.clone();
        t.events.swap(1, 2);
        assert_eq!(broken_at(&t), Some(3), "reordered events");

        // Rewriting the whole chain after an edit leaves the seal unmatched.
        let mut t = good.clone();
        t.events[1].message = "edited".into();
        let mut prev = GENESIS;
        for e in &mut t.events {
            let h = chain::event_hash(
                7,
                e.seq,
                e.at_ms,
                &chain::canonical_json(&e.kind),
                &e.message,
                &prev,
            );
            e.prev = chain::to_hex(&prev);
            e.hash = chain::to_hex(&h);
            prev = h;
        }
        assert!(matches!(
            t.verify(&key.public()).verdict,
            Verdict::BadSeal { .. }
        ));

        // A dropped tail, a dropped seal, a seal by another key, another run's identity.
        let mut t = good.clone();
        t.events.pop();
        assert!(matches!(
            t.verify(&key.public()).verdict,
            Verdict::BadSeal { .. }
        ));
        let mut t = good.clone();
        t.seal = None;
        assert!(matches!(
            t.verify(&key.public()).verdict,
            Verdict::BadSeal { .. }
        ));
        let other = HostKey::from_secret([6; 32]);
        let t = transcript(&other, 5);
        let v = t.verify(&key.public());
        assert!(v.to_string().contains("not by the key given"), "{v}");
        let mut t = good.clone();
        t.run.number = 4;
        assert!(matches!(
            t.verify(&key.public()).verdict,
            Verdict::BadSeal { .. }
        ));
    }

    #[test]
    fn a_run_in_progress_verifies_its_chain_so_far_and_says_it_is_unsigned() {
        let key = HostKey::from_secret([5; 32]);
        let mut t = transcript(&key, 3);
        t.run.state = "running".into();
        t.run.finished = false;
        t.seal = None;
        let v = t.verify(&key.public());
        assert_eq!(
            v.verdict,
            Verdict::InProgress {
                signed_through: None
            }
        );
        assert!(
            v.ok() && v.to_string().contains("unsigned until it ends"),
            "{v}"
        );
        t.events[0].message = "x".into();
        assert!(!t.verify(&key.public()).ok());
    }
}
