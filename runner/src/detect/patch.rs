//! The final patch as the scanners read it: parsed from git's unified diff
//! (`git diff --cached <base>`, no renames), so what is scanned is exactly
//! what would be pushed. Only added lines are kept: a change is judged by
//! what it brings, not by what the file already held. They are kept in one
//! text, [`Patch::added_text`], each file holding where its lines are: the
//! scanners read all of them in one pass, and parsing makes no string per
//! line.
use std::ops::Range;

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// A new file.
    Added,
    /// An existing file changed.
    Modified,
    /// The file is removed.
    Deleted,
}

/// One added line: its number in the new file and where its text is in
/// [`Patch::added_text`] (without the newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedLine {
    /// Line number in the new file, from 1.
    pub number: u32,
    /// Byte range in [`Patch::added_text`].
    pub text: Range<usize>,
}

/// One file of the patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// Path relative to the repository root.
    pub path: String,
    /// Added, changed or deleted.
    pub status: FileStatus,
    /// Git found binary content (it prints no lines for it).
    pub binary: bool,
    /// Whether the file mode becomes executable.
    pub executable: bool,
    /// Added lines in order ([`Patch::added`] gives their text).
    pub added: Vec<AddedLine>,
    /// Lines shown around the added ones (context), with their new line
    /// numbers: some scanners need the target a recipe line belongs to.
    pub context: Vec<(u32, String)>,
}

/// The whole patch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    /// Files in diff order.
    pub files: Vec<FileChange>,
    /// Every added line of every file, in diff order, each followed by `\n`.
    pub added_text: String,
}

impl Patch {
    /// Parses a unified diff. Never fails: lines it does not understand are
    /// skipped, and a file whose header is odd still gets its path from
    /// `diff --git`.
    pub fn parse(diff: &str) -> Self {
        let mut files: Vec<FileChange> = Vec::new();
        let mut added_text = String::with_capacity(diff.len());
        // The next new-file line number inside a hunk; None outside hunks.
        let mut next: Option<u32> = None;
        // Lines by a SIMD newline search (`str::split` finds them a word
        // at a time).
        let mut from = 0usize;
        let ends = memchr::memchr_iter(b'\n', diff.as_bytes()).chain(std::iter::once(diff.len()));
        for end in ends {
            let line = diff.get(from..end).unwrap_or_default();
            from = end + 1;
            if let Some(n) = next
                && let Some(file) = files.last_mut()
            {
                match line.as_bytes().first() {
                    Some(b'+') => {
                        let start = added_text.len();
                        added_text.push_str(&line[1..]);
                        file.added.push(AddedLine {
                            number: n,
                            text: start..added_text.len(),
                        });
                        added_text.push('\n');
                        next = Some(n.saturating_add(1));
                        continue;
                    }
                    Some(b' ') => {
                        file.context.push((n, line[1..].to_string()));
                        next = Some(n.saturating_add(1));
                        continue;
                    }
                    Some(b'-') | Some(b'\\') => continue,
                    _ => next = None,
                }
            }
            if let Some(rest) = line.strip_prefix("diff --git ") {
                files.push(FileChange {
                    path: git_path(rest).unwrap_or_default(),
                    status: FileStatus::Modified,
                    binary: false,
                    executable: false,
                    added: Vec::new(),
                    context: Vec::new(),
                });
                next = None;
                continue;
            }
            let Some(file) = files.last_mut() else {
                continue;
            };
            if let Some(range) = line.strip_prefix("@@ ") {
                next = Some(hunk_start(range).unwrap_or(1));
            } else if let Some(mode) = line.strip_prefix("new file mode ") {
                file.status = FileStatus::Added;
                file.executable = mode.trim().ends_with("755");
            } else if line.starts_with("deleted file mode ") {
                file.status = FileStatus::Deleted;
            } else if let Some(mode) = line.strip_prefix("new mode ") {
                file.executable = mode.trim().ends_with("755");
            } else if let Some(p) = line.strip_prefix("+++ ") {
                if let Some(p) = p.strip_prefix("b/") {
                    file.path = unquote(p);
                }
            } else if line.starts_with("Binary files ") || line == "GIT binary patch" {
                file.binary = true;
            }
        }
        Self { files, added_text }
    }

    /// How many added lines the patch has.
    pub fn added_lines(&self) -> usize {
        self.files.iter().map(|f| f.added.len()).sum()
    }

    /// The text of an added line.
    pub fn text(&self, line: &AddedLine) -> &str {
        self.added_text.get(line.text.clone()).unwrap_or_default()
    }

    /// A file's added lines: number and text.
    pub fn added<'a>(&'a self, change: &'a FileChange) -> impl Iterator<Item = (u32, &'a str)> {
        change.added.iter().map(|l| (l.number, self.text(l)))
    }
}

/// The new path from `a/x b/x` (the paths are equal without renames).
fn git_path(rest: &str) -> Option<String> {
    let rest = rest.trim_end();
    if let Some(q) = rest.strip_prefix('"') {
        // Quoted paths: `"a/x y" "b/x y"`.
        let b = q.rfind(" \"b/")?;
        return Some(unquote(&format!("\"{}", &q[b + 2..])));
    }
    let half = rest.len().checked_sub(1)? / 2;
    let b = rest.get(half + 1..)?;
    b.strip_prefix("b/").map(str::to_string)
}

/// Git quotes paths with unusual bytes as C strings; the common escapes are
/// undone, others kept as written (a path is only ever shown or matched).
fn unquote(p: &str) -> String {
    let Some(inner) = p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) else {
        return p.to_string();
    };
    let inner = inner.strip_prefix("b/").unwrap_or(inner);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The new file's first line number from `-a,b +c,d @@`.
fn hunk_start(range: &str) -> Option<u32> {
    let plus = range.split(' ').find(|p| p.starts_with('+'))?;
    plus[1..].split(',').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_added_changed_deleted_and_binary_files_with_line_numbers() {
        let diff = "\
diff --git a/a.txt b/a.txt
index 1..2 100644
--- a/a.txt
+++ b/a.txt
@@ -1,3 +10,4 @@ fn x
 keep
-old
+new one
+new two
 tail
\\ No newline at end of file
diff --git a/run.sh b/run.sh
new file mode 100755
--- /dev/null
+++ b/run.sh
@@ -0,0 +1 @@
+echo hi
diff --git a/gone b/gone
deleted file mode 100644
--- a/gone
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/blob.bin b/blob.bin
new file mode 100644
Binary files /dev/null and b/blob.bin differ
";
        let p = Patch::parse(diff);
        assert_eq!(p.files.len(), 4);
        let a = &p.files[0];
        assert_eq!(a.path, "a.txt");
        assert_eq!(a.status, FileStatus::Modified);
        assert_eq!(
            p.added(a).collect::<Vec<_>>(),
            [(11, "new one"), (12, "new two")]
        );
        assert_eq!(a.context[0], (10, "keep".to_string()));
        assert_eq!(a.context[1], (13, "tail".to_string()));
        assert_eq!(
            (p.files[1].status, p.files[1].executable),
            (FileStatus::Added, true)
        );
        assert_eq!(p.files[2].status, FileStatus::Deleted);
        assert!(p.files[2].added.is_empty());
        assert!(p.files[3].binary);
        assert_eq!(p.added_lines(), 3);
        assert_eq!(p.added_text, "new one\nnew two\necho hi\n");
    }

    #[test]
    fn odd_input_is_skipped_not_panicked_on() {
        for diff in [
            "",
            "@@ -1 +1 @@\n+x",
            "diff --git \n+++ b/\n@@ +\n+x",
            "diff --git \"a/sp ace\" \"b/sp ace\"\n@@ -0,0 +1 @@\n+é",
            "diff --git a/x b/x\n@@ -1 +99999999999999 @@\n+x\n+y",
        ] {
            let _ = Patch::parse(diff);
        }
        let p = Patch::parse("diff --git \"a/sp ace\" \"b/sp ace\"\n@@ -0,0 +1 @@\n+x");
        assert_eq!(p.files[0].path, "sp ace");
    }
}
