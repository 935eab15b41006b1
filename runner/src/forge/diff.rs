//! Reading unified diffs: which lines a review comment may be placed on.
//!
//! GitHub refuses a review comment on a line that is not part of the pull
//! request's diff; the local forge refuses it the same way, and the gate
//! uses the same answer to keep review comments on the diff.
use std::collections::HashSet;

/// The lines of a diff that can carry a review comment: `(path, line,
/// new_side)`. New-side lines are added or context lines numbered in the
/// new file; old-side lines are removed or context lines in the old file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommentableLines {
    lines: HashSet<(String, u32, bool)>,
}

impl CommentableLines {
    /// Parse a unified diff (`git diff` output). Unparseable hunks are
    /// skipped: a line the parser does not understand is never commentable.
    pub fn parse(diff: &str) -> Self {
        let mut lines = HashSet::new();
        let mut path: Option<String> = None;
        let (mut old, mut new) = (0u32, 0u32);
        let mut in_hunk = false;
        for l in diff.lines() {
            if let Some(rest) = l.strip_prefix("+++ ") {
                path = rest
                    .strip_prefix("b/")
                    .filter(|_| rest != "/dev/null")
                    .map(str::to_string);
                in_hunk = false;
            } else if l.starts_with("--- ") && !in_hunk {
                continue;
            } else if l.starts_with("diff --git ") {
                path = None;
                in_hunk = false;
            } else if let Some(h) = l.strip_prefix("@@ ") {
                match parse_hunk_header(h) {
                    Some((o, n)) => {
                        old = o;
                        new = n;
                        in_hunk = true;
                    }
                    None => in_hunk = false,
                }
            } else if in_hunk && let Some(p) = &path {
                match l.as_bytes().first() {
                    Some(b'+') => {
                        lines.insert((p.clone(), new, true));
                        new += 1;
                    }
                    Some(b'-') => {
                        lines.insert((p.clone(), old, false));
                        old += 1;
                    }
                    Some(b' ') | None => {
                        lines.insert((p.clone(), new, true));
                        lines.insert((p.clone(), old, false));
                        old += 1;
                        new += 1;
                    }
                    // "\ No newline at end of file"
                    _ => {}
                }
            }
        }
        CommentableLines { lines }
    }

    /// Whether a comment on `path` at `line` (new side or old side) is on
    /// the diff.
    pub fn contains(&self, path: &str, line: u32, new_side: bool) -> bool {
        self.lines.contains(&(path.to_string(), line, new_side))
    }

    /// Whether the diff has no commentable line at all.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// `-a,b +c,d @@ ...` → (a, c); counts default to 1 and are not needed.
fn parse_hunk_header(h: &str) -> Option<(u32, u32)> {
    let mut parts = h.split_whitespace();
    let old = parts.next()?.strip_prefix('-')?;
    let new = parts.next()?.strip_prefix('+')?;
    let start = |s: &str| s.split(',').next()?.parse::<u32>().ok();
    Some((start(old)?, start(new)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/src/calc.py b/src/calc.py
index 1111111..2222222 100644
--- a/src/calc.py
+++ b/src/calc.py
@@ -1,4 +1,5 @@
 def add(a, b):
-    return a - b
+    return a + b
+
 def sub(a, b):
     return a - b
diff --git a/old.txt b/old.txt
deleted file mode 100644
--- a/old.txt
+++ /dev/null
@@ -1 +0,0 @@
-gone
";

    #[test]
    fn added_removed_and_context_lines_are_commentable_on_their_side() {
        let c = CommentableLines::parse(DIFF);
        assert!(c.contains("src/calc.py", 2, true), "added line 2");
        assert!(c.contains("src/calc.py", 3, true), "added blank line 3");
        assert!(c.contains("src/calc.py", 2, false), "removed old line 2");
        assert!(c.contains("src/calc.py", 1, true), "context line, new side");
        assert!(
            c.contains("src/calc.py", 4, false),
            "context, old numbering"
        );
        assert!(c.contains("src/calc.py", 5, true), "context, new numbering");
    }

    #[test]
    fn lines_outside_hunks_and_deleted_files_are_not_commentable() {
        let c = CommentableLines::parse(DIFF);
        assert!(!c.contains("src/calc.py", 40, true));
        assert!(!c.contains("src/other.py", 1, true));
        assert!(!c.contains("old.txt", 1, false), "no new-side path");
        assert!(CommentableLines::parse("garbage\n@@ nonsense @@\n+x").is_empty());
    }
}
