//! Step 4, content (blame: guest), only once Cedar allowed the effect: a
//! file write (or a status context) carrying a secret is refused with the
//! path and kind of secret. Also the redaction of every outbound text of an
//! effect that was not denied.

use super::{Decision, Effect, EffectRequest, Gate, Violation};
use crate::policy::redact::SecretInCommit;

impl Gate {
    /// Refuses a file write or a status context that carries a secret.
    pub(super) fn check_content(&self, req: &EffectRequest) -> Result<(), Violation> {
        if let Effect::WorkspaceWrite { path, content } = &req.effect
            && let Some(found) = self.redactor.scan(content).first()
        {
            return Err(Violation::new(
                "no-secrets-in-commits",
                format!("{path:?} would contain a secret ({})", found.kind),
            ));
        }
        // A context is sent as is (redacting it would break its shape), so
        // one carrying a secret is refused instead.
        if let Effect::Status { context, .. } = &req.effect
            && let Some(found) = self.redactor.scan(context.as_bytes()).first()
        {
            return Err(Violation::new(
                "no-secrets-in-status-context",
                format!("the status context would contain a secret ({})", found.kind),
            ));
        }
        Ok(())
    }

    pub(super) fn redact_reason(&self, decision: Decision) -> Decision {
        let clean = |r: String| self.redactor.redact(&r).into_owned();
        match decision {
            Decision::Allow { reason } => Decision::Allow {
                reason: clean(reason),
            },
            Decision::Deny { reason, blame } => Decision::Deny {
                reason: clean(reason),
                blame,
            },
            Decision::Hold { reason } => Decision::Hold {
                reason: clean(reason),
            },
        }
    }

    /// Redacts every outbound text of an effect in place (comment, PR title
    /// and body, review body and line comments, reply, status description). Returns how many texts
    /// changed. Call it on allowed and held effects before they go anywhere.
    pub fn redact_outbound(&self, effect: &mut Effect) -> usize {
        let mut changed = 0;
        let mut fix = |text: &mut String| {
            if let std::borrow::Cow::Owned(clean) = self.redactor.redact(text) {
                *text = clean;
                changed += 1;
            }
        };
        match effect {
            Effect::Comment { body, .. }
            | Effect::Reply { body, .. }
            | Effect::Report { body, .. } => fix(body),
            Effect::Status { description, .. } => fix(description),
            Effect::ProposePullRequest { title, body, .. } => {
                fix(title);
                fix(body);
            }
            Effect::UpdatePullRequest {
                verification: Some(text),
                ..
            } => fix(text),
            Effect::UpdatePullRequest {
                verification: None, ..
            } => {}
            Effect::Review { body, comments, .. } => {
                fix(body);
                for c in comments {
                    fix(&mut c.body);
                }
            }
            Effect::WorkspaceRead { .. }
            | Effect::WorkspaceWrite { .. }
            | Effect::WorkspaceExec { .. }
            | Effect::ModelComplete { .. }
            | Effect::SetLabels { .. }
            | Effect::Merge { .. }
            | Effect::Push { .. } => {}
        }
        changed
    }

    /// Refuses a commit whose files hold a secret (configured value or token
    /// shape), naming the path and kind, never the value. The host calls it
    /// before it commits and pushes a run's branch.
    pub fn check_commit<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), SecretInCommit> {
        self.redactor.refuse_commit(files)
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::gate::test_support::*;
    use crate::policy::gate::*;

    #[test]
    fn commits_with_secrets_are_refused_by_path_and_kind() {
        let gate = gate_with(None);
        let files: [(&str, &[u8]); 2] = [
            ("README.md", b"# widgets"),
            (".env", b"TOKEN=kiln-canary-0b5e7d2a"),
        ];
        let err = gate.check_commit(files).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("commit refused: .env contains a secret (secret:CANARY)"),
            "a commit carrying the canary should be refused by path and kind"
        );
    }

    #[test]
    fn outbound_text_is_redacted_unless_denied() {
        let gate = gate_with(None);
        let body = "Done. Debug: token=kiln-canary-0b5e7d2a and sk-ant-api03-Qw3rTy8uIoPaSdFgHjKlZxCvBnM12".to_owned();
        let (d, admitted) = gate.admit(req(Role::Triage, Effect::Comment { number: 12, body }));
        assert!(d.is_allow(), "triage comment should be allowed, got: {d:?}");
        let Effect::Comment { body, .. } = &admitted.effect else {
            panic!("admit should return the same effect kind");
        };
        assert!(
            !body.contains("kiln-canary-0b5e7d2a")
                && !body.contains("sk-ant-api03")
                && body.contains("[REDACTED:secret:CANARY]")
                && body.contains("[REDACTED:anthropic-key]"),
            "the canary and the key should be redacted from the comment, got: {body}"
        );
        let mut effect = Effect::ProposePullRequest {
            head: "kiln/1".into(),
            base: "main".into(),
            title: "kiln-canary-0b5e7d2a".into(),
            body: "{\"k\":\"kiln-canary-0b5e7d2a\"}".into(),
            draft: true,
        };
        assert_eq!(
            gate.redact_outbound(&mut effect),
            2,
            "title and body should both be redacted"
        );
    }

    #[test]
    fn secrets_in_replies_and_statuses_never_leave() {
        let gate = gate_with(Some(PERMIT_ALL));
        let leak = "Fixed. Debug: kiln-canary-0b5e7d2a sk-ant-api03-Qw3rTy8uIoPaSdFgHjKlZxCvBnM12";
        let (d, admitted) = gate.admit(req(Role::Implementation, reply(leak)));
        let Effect::Reply { body, .. } = &admitted.effect else {
            panic!("admit should return the same effect kind");
        };
        assert!(
            d.is_allow()
                && !body.contains("kiln-canary-0b5e7d2a")
                && !body.contains("sk-ant-api03")
                && body.contains("[REDACTED:secret:CANARY]"),
            "the reply should be allowed with its secrets redacted, got: {d:?} / {body}"
        );
        let (d, admitted) =
            gate.admit(req(Role::Implementation, status("kiln/verification", leak)));
        let Effect::Status { description, .. } = &admitted.effect else {
            panic!("admit should return the same effect kind");
        };
        assert!(
            d.is_allow()
                && !description.contains("kiln-canary-0b5e7d2a")
                && description.contains("[REDACTED:secret:CANARY]"),
            "the status description should be redacted, got: {d:?} / {description}"
        );
        // The context fits kiln/<name> and carries the canary: refused, not
        // redacted into a different context, and never quoted.
        let d = gate.decide(&req(
            Role::Implementation,
            status("kiln/kiln-canary-0b5e7d2a", "ok"),
        ));
        assert!(
            d.is_deny()
                && d.reason().contains("no-secrets-in-status-context")
                && !d.reason().contains("kiln-canary-0b5e7d2a"),
            "a secret in a status context should be refused without quoting it, got: {d:?}"
        );
        let d = gate.decide(&req(
            Role::Implementation,
            status("ci/kiln-canary-0b5e7d2a", "ok"),
        ));
        assert!(
            d.is_deny() && !d.reason().contains("kiln-canary-0b5e7d2a"),
            "a refused context is not quoted with its secret, got: {d:?}"
        );
    }
}
