//! Secrets in the patch or in outbound text, found by the policy gate's own
//! [`Redactor`] (configured secret values in their encodings, and token
//! shapes): one definition of "a secret" for redaction, commits and
//! detection. A reason names the kind, never the value.
use super::{Category, Finding};
use crate::policy::Redactor;

const SCANNER: &str = "secrets";

/// Secrets on the added lines of the patch, joined as one text (`starts[i]`
/// is where line `i` begins, `place(i)` its file and line number): one
/// redactor pass for the whole patch.
pub fn scan_joined<'a>(
    joined: &str,
    starts: &[usize],
    place: impl Fn(usize) -> Option<(&'a str, u32)>,
    redactor: &Redactor,
    out: &mut Vec<Finding>,
) {
    for s in redactor.scan(joined.as_bytes()) {
        let i = starts
            .partition_point(|off| *off <= s.start)
            .saturating_sub(1);
        let Some((file, line)) = place(i) else {
            continue;
        };
        out.push(Finding {
            category: Category::SecretLeak,
            scanner: SCANNER,
            reason: format!("the patch adds a secret ({})", s.kind),
            file: file.to_string(),
            line: Some(line),
        });
    }
}

/// Secrets in an outbound text (they would be redacted, but a run that tries
/// to send one is suspect).
pub fn scan_text(name: &str, text: &str, redactor: &Redactor, out: &mut Vec<Finding>) {
    for s in redactor.scan(text.as_bytes()) {
        let line = text
            .get(..s.start)
            .map(|before| before.matches('\n').count() + 1);
        out.push(Finding {
            category: Category::SecretLeak,
            scanner: SCANNER,
            reason: format!("the text carries a secret ({})", s.kind),
            file: name.to_string(),
            line: line.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Patch;
    use crate::policy::SecretValue;

    #[test]
    fn configured_values_and_token_shapes_are_found_by_line_without_the_value() {
        let r = Redactor::new(&[SecretValue {
            name: "DEPLOY_KEY".into(),
            value: "hunter2-but-longer".into(),
        }])
        .expect("redactor");
        let p = Patch::parse(
            "diff --git a/c.env b/c.env\n--- a/c.env\n+++ b/c.env\n@@ -4,0 +5,3 @@\n+A=1\n+KEY=hunter2-but-longer\n+T=ghp_0123456789abcdefghijABCDEFGHIJ0123456789\n",
        );
        let mut out = Vec::new();
        let v = crate::detect::scan(
            &crate::detect::Artifacts {
                patch: p,
                ..Default::default()
            },
            &r,
        );
        out.extend(v.findings);
        let got: Vec<_> = out.iter().map(|f| (f.line, f.reason.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(6), "the patch adds a secret (secret:DEPLOY_KEY)"),
                (Some(7), "the patch adds a secret (github-token)")
            ]
        );
        let mut out = Vec::new();
        scan_text("commit message", "ok\nhunter2-but-longer", &r, &mut out);
        assert_eq!(out[0].line, Some(2));
        assert!(!out[0].reason.contains("hunter2"));
    }
}
