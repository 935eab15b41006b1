//! Which lines a unified diff shows, so a role can check that a review
//! comment sits on a line of the pull request's diff before proposing it
//! (the host checks again; a plugin that checks first can tell the model
//! which lines it may use instead of losing the comment).
use std::collections::BTreeSet;

use crate::forge::DiffSide;

/// The lines of one file a diff shows, per side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileLines {
    path: String,
    /// Old-file line numbers: removed and context lines.
    left: BTreeSet<u32>,
    /// New-file line numbers: added and context lines.
    right: BTreeSet<u32>,
}

/// The lines of every file in a unified diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffLines {
    files: Vec<FileLines>,
}

/// `a/src/x.rs` -> `src/x.rs`; `/dev/null` -> `None`.
fn header_path(raw: &str) -> Option<String> {
    // A tab separates an optional timestamp (non-git diffs).
    let raw = raw.split('\t').next().unwrap_or(raw).trim();
    if raw == "/dev/null" {
        return None;
    }
    let path = raw
        .strip_prefix("a/")
        .or_else(|| raw.strip_prefix("b/"))
        .unwrap_or(raw);
    Some(path.to_string())
}

/// `-12,3` or `+7` -> (start, count).
fn range(spec: &str) -> Option<(u32, u32)> {
    let spec = &spec[1..];
    let (start, count) = spec.split_once(',').unwrap_or((spec, "1"));
    Some((start.parse().ok()?, count.parse().ok()?))
}

/// `@@ -l,s +r,s @@ ...` -> ((l, s), (r, s)).
fn hunk_header(line: &str) -> Option<((u32, u32), (u32, u32))> {
    let rest = line.strip_prefix("@@ ")?;
    let mut parts = rest.split_whitespace();
    let old = parts.next().filter(|p| p.starts_with('-'))?;
    let new = parts.next().filter(|p| p.starts_with('+'))?;
    Some((range(old)?, range(new)?))
}

impl DiffLines {
    /// Parse a unified diff (as `git diff` writes it). Lines that are not
    /// part of a well-formed hunk are skipped, never an error: at worst a
    /// line counts as outside the diff.
    pub fn parse(diff: &str) -> Self {
        let mut files: Vec<FileLines> = Vec::new();
        let mut old_path: Option<String> = None;
        let mut lines = diff.lines();
        while let Some(line) = lines.next() {
            if let Some(p) = line.strip_prefix("--- ") {
                old_path = header_path(p);
                continue;
            }
            if let Some(p) = line.strip_prefix("+++ ") {
                // A deleted file is named by its old path.
                let path = header_path(p).or(old_path.take()).unwrap_or_default();
                files.push(FileLines {
                    path,
                    ..FileLines::default()
                });
                continue;
            }
            let Some(((mut old_line, mut old_left), (mut new_line, mut new_left))) =
                hunk_header(line)
            else {
                continue;
            };
            let Some(file) = files.last_mut() else {
                continue;
            };
            // The header's counts say where the hunk ends, so a removed
            // line that reads `--- x` is not taken for a file header.
            // Numbers come from untrusted text: they saturate, never overflow.
            while old_left > 0 || new_left > 0 {
                let Some(body) = lines.next() else { break };
                let (old, new) = match body.as_bytes().first() {
                    Some(b'+') if new_left > 0 => (false, true),
                    Some(b'-') if old_left > 0 => (true, false),
                    // Context; an empty line is context whose space was lost.
                    Some(b' ') | None if old_left > 0 && new_left > 0 => (true, true),
                    Some(b'\\') => continue, // "\ No newline at end of file"
                    _ => break,
                };
                if old {
                    file.left.insert(old_line);
                    old_line = old_line.saturating_add(1);
                    old_left -= 1;
                }
                if new {
                    file.right.insert(new_line);
                    new_line = new_line.saturating_add(1);
                    new_left -= 1;
                }
            }
        }
        DiffLines { files }
    }

    /// Whether the diff shows `line` of `path` on `side`.
    pub fn contains(&self, path: &str, side: DiffSide, line: u32) -> bool {
        self.file(path).is_some_and(|f| match side {
            DiffSide::Left => f.left.contains(&line),
            DiffSide::Right => f.right.contains(&line),
        })
    }

    /// The paths of the files the diff touches, in diff order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.path.as_str())
    }

    /// The lines shown for `path` on `side` as ranges, e.g. `3-7, 12`,
    /// for telling a model where it may comment.
    pub fn ranges(&self, path: &str, side: DiffSide) -> String {
        let Some(file) = self.file(path) else {
            return "none".to_string();
        };
        let set = match side {
            DiffSide::Left => &file.left,
            DiffSide::Right => &file.right,
        };
        let mut out: Vec<String> = Vec::new();
        let mut iter = set.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            out.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
        }
        if out.is_empty() {
            "none".to_string()
        } else {
            out.join(", ")
        }
    }

    fn file(&self, path: &str) -> Option<&FileLines> {
        let path = path.trim_start_matches("./");
        self.files.iter().find(|f| f.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/slugify.sh b/slugify.sh
index 1111111..2222222 100755
--- a/slugify.sh
+++ b/slugify.sh
@@ -3,4 +3,5 @@ set -u
 slugify() {
-  printf '%s' \"$1\" | tr -c 'a-z0-9' '-'
+  printf '%s' \"$1\" | tr -cs 'a-z0-9' '-' |
+    sed -e 's/^-//' -e 's/-$//'
 }

diff --git a/notes.txt b/notes.txt
new file mode 100644
--- /dev/null
+++ b/notes.txt
@@ -0,0 +1,2 @@
+--- looks like a header
+second
\\ No newline at end of file
diff --git a/old.txt b/old.txt
deleted file mode 100644
--- a/old.txt
+++ /dev/null
@@ -1 +0,0 @@
-gone
";

    #[test]
    fn added_removed_and_context_lines_are_in_the_diff_on_their_side() {
        let d = DiffLines::parse(DIFF);
        assert_eq!(
            d.paths().collect::<Vec<_>>(),
            ["slugify.sh", "notes.txt", "old.txt"]
        );
        assert!(d.contains("slugify.sh", DiffSide::Right, 3)); // context
        assert!(d.contains("slugify.sh", DiffSide::Left, 3));
        assert!(d.contains("slugify.sh", DiffSide::Left, 4)); // removed
        assert!(d.contains("slugify.sh", DiffSide::Right, 5)); // added
        assert!(d.contains("slugify.sh", DiffSide::Right, 7)); // empty context line
        assert!(!d.contains("slugify.sh", DiffSide::Right, 8));
        assert!(!d.contains("slugify.sh", DiffSide::Right, 2));
        assert_eq!(d.ranges("slugify.sh", DiffSide::Right), "3-7");
        assert_eq!(d.ranges("slugify.sh", DiffSide::Left), "3-6");
    }

    #[test]
    fn new_and_deleted_files_and_header_lookalikes_are_handled() {
        let d = DiffLines::parse(DIFF);
        assert_eq!(d.ranges("notes.txt", DiffSide::Right), "1-2");
        assert_eq!(d.ranges("notes.txt", DiffSide::Left), "none");
        assert!(d.contains("old.txt", DiffSide::Left, 1));
        assert!(!d.contains("old.txt", DiffSide::Right, 1));
        assert!(!d.contains("missing.txt", DiffSide::Right, 1));
        assert_eq!(d.ranges("missing.txt", DiffSide::Right), "none");
    }

    #[test]
    fn garbage_is_not_an_error_just_an_empty_diff() {
        let d = DiffLines::parse("@@ -x +y @@\n+++\n@@ -1 +1 @@\n");
        assert!(!d.contains("", DiffSide::Right, 1));
        assert_eq!(DiffLines::parse(""), DiffLines::default());
        // Line numbers at the top of the range saturate instead of overflowing.
        let d = DiffLines::parse("--- a/x\n+++ b/x\n@@ -4294967295,2 +4294967295,2 @@\n a\n b\n");
        assert!(d.contains("x", DiffSide::Right, u32::MAX));
    }
}
