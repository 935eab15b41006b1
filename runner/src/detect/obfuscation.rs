//! Content a reviewer cannot read: binary files, NUL bytes, long
//! high-entropy lines, base64 and hex blobs, runs of escapes, code that
//! decodes and runs itself, and invisible or direction-changing characters
//! (which make a line read differently from what it does, or hide words
//! from people but not from models).
use std::sync::LazyLock;

use regex::Regex;

use super::keywords::{Line, W, Words};
use super::{AddedLine, Category, FileChange, FileStatus, Finding, Origin, Patch, Place, excerpt};

const SCANNER: &str = "obfuscation";

/// Lines shorter than this are not judged by entropy.
const ENTROPY_MIN_LEN: usize = 256;
/// Bits per byte above which a long line is taken to be encoded data
/// (English and code sit near 4.0-4.7, base64 near 6).
const ENTROPY_BITS: f64 = 5.2;
/// Shortest base64 run flagged (a sha512 integrity hash is 88).
const BASE64_MIN: usize = 120;
/// Shortest hex run flagged (a sha512 digest is 128).
const HEX_MIN: usize = 200;

/// A long list of byte values (`104, 105, ...`); the other encodings are
/// found by [`blob`] in one pass over the bytes.
static NUMBERS: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?:\d{2,3}\s*,\s*){24,}").ok());

static DECODE_EXEC: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:exec|eval|function)\s*\(\s*(?:[\w.]+\.)?(?:b64decode|a85decode|atob|buffer\.from|decode|fromhex|decompress|loads|unhexlify|fromcharcode)\b|\bbase64\s+(?:-d|--decode|-D)\b.*\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b|\bfrombase64string\b.*\b(?:iex|invoke-expression)\b|\b(?:iex|invoke-expression)\b.*\bfrombase64string\b|-e(?:nc(?:odedcommand)?)?\s+[A-Za-z0-9+/]{40,}={0,2}",
    )
    .ok()
});

/// Invisible or bidi characters, and Unicode tag characters (ASCII smuggling).
fn hidden_char(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}'
        | '\u{E0000}'..='\u{E007F}')
}

/// The first hidden character of a line. A zero-width joiner between two
/// pictographs is how emoji sequences are written, not a hiding place.
fn first_hidden(line: &str) -> Option<char> {
    let mut prev = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let joins_emoji = c == '\u{200D}'
            && prev.is_some_and(|p: char| u32::from(p) >= 0x2600)
            && chars.peek().is_some_and(|n| u32::from(*n) >= 0x2600);
        if hidden_char(c) && !joins_emoji {
            return Some(c);
        }
        prev = Some(c);
    }
    None
}

/// Shannon entropy in bits per byte.
fn entropy(s: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in s {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Shortest line that can hold an encoded blob (16 `\\xNN` escapes).
const BLOB_MIN_LINE: usize = 64;

/// Shortest run of base64 bytes decode-and-run's encoded command needs.
const ENCODED_MIN: usize = 40;

/// The bytes a base64 (or hex) run is made of.
const fn blob_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-')
}

/// The same as a table, for the search over a whole patch.
static BLOB_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = blob_byte(b as u8);
        b += 1;
    }
    t
};

/// The length of the first encoded blob in a line: a base64 run mixing
/// upper and lower case and digits (not inside an inline image), a hex run,
/// or a run of `\\xNN` / `\\uNNNN` escapes. One pass over the bytes: it
/// runs on every long added line.
fn blob(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let (mut run, mut upper, mut lower, mut digit, mut exempt) = (0, false, false, false, false);
    let mut hex = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if blob_byte(b) {
            run += 1;
            upper |= b.is_ascii_uppercase();
            lower |= b.is_ascii_lowercase();
            digit |= b.is_ascii_digit();
            if run == BASE64_MIN {
                exempt = is_data_image(&bytes[..i + 1 - run]);
            }
            if run >= BASE64_MIN && upper && lower && digit && !exempt {
                return Some(base64_len(&bytes[i + 1 - run..]));
            }
        } else {
            (run, upper, lower, digit) = (0, false, false, false);
        }
        if b.is_ascii_hexdigit() {
            hex += 1;
            if hex >= HEX_MIN {
                return Some(hex);
            }
        } else {
            hex = 0;
        }
    }
    if memchr::memchr(b'\\', bytes).is_some() {
        let mut escapes = 0;
        let mut i = 0;
        while i < bytes.len() {
            let width = match (bytes[i], bytes.get(i + 1)) {
                (b'\\', Some(b'x')) => 2,
                (b'\\', Some(b'u')) => 4,
                _ => 0,
            };
            let digits = bytes.get(i + 2..i + 2 + width);
            if width > 0 && digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) {
                escapes += 1;
                if escapes >= 16 {
                    return Some(escapes * (width + 2));
                }
                i += 2 + width;
            } else {
                escapes = 0;
                i += 1;
            }
        }
    }
    if bytes.iter().filter(|b| **b == b',').count() >= 24
        && let Some(m) = NUMBERS.as_ref().and_then(|re| re.find(line))
    {
        return Some(m.len());
    }
    None
}

/// How long the base64 run at the start of `bytes` is.
fn base64_len(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| blob_byte(**b)).count()
}

/// Why a line is unreadable, if it is, short of decode-and-run (which
/// [`decode_exec`] checks on the lines that hold one of its words).
fn judge_line_fast(line: &str) -> Option<String> {
    if memchr::memchr(0, line.as_bytes()).is_some() {
        return Some("a NUL byte".into());
    }
    if !line.is_ascii()
        && let Some(c) = first_hidden(line)
    {
        return Some(format!(
            "an invisible or direction-changing character U+{:04X}",
            u32::from(c)
        ));
    }
    if line.len() >= BLOB_MIN_LINE
        && let Some(len) = blob(line)
    {
        return Some(format!("an encoded blob of {len} characters"));
    }
    if line.len() >= ENTROPY_MIN_LEN {
        let spaces = line.bytes().filter(u8::is_ascii_whitespace).count();
        let bits = entropy(line.as_bytes());
        if spaces * 20 < line.len() && bits >= ENTROPY_BITS {
            return Some(format!(
                "a {}-byte line of high entropy ({bits:.1} bits per byte)",
                line.len()
            ));
        }
    }
    None
}

/// Code that decodes and runs itself, if the line holds some.
fn decode_exec(line: &str) -> Option<String> {
    DECODE_EXEC
        .as_ref()
        .filter(|re| re.is_match(line))
        .map(|_| format!("code that decodes and runs itself: `{}`", excerpt(line)))
}

/// What an ASCII line needs for [`DECODE_EXEC`] to match: the words of one
/// of its alternatives (the encoded command's needs a long base64 run).
fn may_decode_exec(w: Words, l: &str, long_run: bool) -> bool {
    (w.any(&[W::Exec, W::Eval, W::Function])
        && w.any(&[
            W::Decode,
            W::Atob,
            W::BufferFrom,
            W::Fromhex,
            W::Decompress,
            W::Loads,
            W::Unhexlify,
            W::Fromcharcode,
        ])
        && l.contains('('))
        || (w.has(W::Base64) && l.contains('|'))
        || (w.has(W::Frombase64string) && w.any(&[W::Iex, W::InvokeExpression]))
        || (w.has(W::DashE) && long_run)
}

/// Why a line is unreadable, if it is: every check.
fn judge_line(line: &str) -> Option<String> {
    judge_line_fast(line).or_else(|| decode_exec(line))
}

/// Decode-and-run on one added line of the patch.
pub fn scan_decode_exec(line: &Line<'_>, at: &Place<'_>, out: &mut Vec<Finding>) {
    if !line.may(|w, l| may_decode_exec(w, l, line.long_run)) {
        return;
    }
    if let Some(why) = decode_exec(line.text) {
        out.push(at.finding(
            Category::MaliciousPatch,
            SCANNER,
            format!("the patch adds {why}"),
        ));
    }
}

/// What one pass over all added lines found (`lines` in diff order, as
/// [`super::scan`] lists them).
pub struct Marks {
    /// Lines the line checks may have something to say about: a NUL, a
    /// byte outside ASCII, a long line (entropy), or a line long enough for
    /// a blob holding a base64 run of 120 bytes, a backslash or 24 commas.
    /// The others are readable by construction.
    pub suspect: Vec<bool>,
    /// Lines holding a base64 run of 40 bytes (an encoded command's).
    pub long_run: Vec<bool>,
}

/// Marks the lines worth reading closely, in a few passes over the patch's
/// added text (SIMD byte searches, and a run search that looks at about one
/// byte in forty of ordinary text).
pub fn mark(patch: &Patch, lines: &[&AddedLine]) -> Marks {
    let text = patch.added_text.as_bytes();
    let n = lines.len();
    let mut suspect = vec![false; n];
    let mut long_run = vec![false; n];
    let starts: Vec<usize> = lines.iter().map(|l| l.text.start).collect();
    let at = |off: usize| starts.partition_point(|s| *s <= off).saturating_sub(1);
    let len = |i: usize| lines.get(i).map_or(0, |l| l.text.len());
    for (i, l) in lines.iter().enumerate() {
        if l.text.len() >= ENTROPY_MIN_LEN {
            suspect[i] = true;
        }
    }
    for off in memchr::memchr_iter(0, text) {
        suspect[at(off)] = true;
    }
    if !text.is_ascii() {
        for (i, l) in lines.iter().enumerate() {
            if !text.get(l.text.clone()).is_some_and(<[u8]>::is_ascii) {
                suspect[i] = true;
            }
        }
    }
    for off in memchr::memchr_iter(b'\\', text) {
        let i = at(off);
        suspect[i] |= len(i) >= BLOB_MIN_LINE;
    }
    // Commas in order: count them line by line.
    let (mut line, mut commas) = (0usize, 0usize);
    for off in memchr::memchr_iter(b',', text) {
        if line + 1 < n && starts[line + 1] <= off {
            line = at(off);
            commas = 0;
        }
        commas += 1;
        if commas >= 24 && len(line) >= BLOB_MIN_LINE {
            suspect[line] = true;
        }
    }
    runs(text, ENCODED_MIN, |run| {
        let i = at(run.start);
        long_run[i] = true;
        if run.len() >= BASE64_MIN && len(i) >= BLOB_MIN_LINE {
            suspect[i] = true;
        }
    });
    Marks { suspect, long_run }
}

/// Calls `found` with every run of at least `min` base64 bytes in `text`
/// (a newline ends a run). Looks at the last byte of each window of `min`
/// first: in ordinary text it is rarely a run's, and the window moves on by
/// `min` bytes.
fn runs(text: &[u8], min: usize, mut found: impl FnMut(std::ops::Range<usize>)) {
    let is = |i: usize| text.get(i).is_some_and(|b| BLOB_BYTES[usize::from(*b)]);
    let mut start = 0usize;
    // Bytes from `start` up to here are known to be run bytes.
    let mut known = 0usize;
    while start + min <= text.len() {
        let last = start + min - 1;
        if !is(last) {
            start = last + 1;
            known = start;
            continue;
        }
        // Backwards from the window's end to what is known.
        let mut j = last;
        while j > known.max(start) && is(j - 1) {
            j -= 1;
        }
        if j > known.max(start) {
            // Byte j-1 is not a run byte: a run starts at j at the earliest.
            start = j;
            known = last + 1;
            continue;
        }
        let mut end = last + 1;
        while is(end) {
            end += 1;
        }
        found(start..end);
        start = end + 1;
        known = start;
    }
}

/// An inline image (`data:image/png;base64,...`) is data, not code:
/// whether the bytes before a run end in such a prefix.
fn is_data_image(before: &[u8]) -> bool {
    let tail = &before[before.len().saturating_sub(40)..];
    let has = |needle: &[u8]| {
        tail.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    has(b"data:image/") || has(b"data:font/")
}

/// Checks one changed file; `suspect` holds [`Marks::suspect`] for its
/// added lines.
pub fn scan_change(patch: &Patch, change: &FileChange, suspect: &[bool], out: &mut Vec<Finding>) {
    if change.status == FileStatus::Deleted {
        return;
    }
    if change.binary {
        out.push(Finding {
            category: Category::MaliciousPatch,
            scanner: SCANNER,
            reason: format!(
                "the patch {} binary content a reviewer cannot read{}",
                if change.status == FileStatus::Added {
                    "adds"
                } else {
                    "changes"
                },
                if change.executable {
                    ", marked executable"
                } else {
                    ""
                }
            ),
            file: change.path.clone(),
            line: None,
        });
        return;
    }
    for (i, line) in change.added.iter().enumerate() {
        if !suspect.get(i).copied().unwrap_or(true) {
            continue;
        }
        if let Some(why) = judge_line_fast(patch.text(line)) {
            out.push(Finding {
                category: Category::MaliciousPatch,
                scanner: SCANNER,
                reason: format!("the patch adds {why}"),
                file: change.path.clone(),
                line: Some(line.number),
            });
            // One per file: a blob spans many lines.
            return;
        }
    }
}

/// Checks an outbound text or an input: hidden characters (words a person
/// does not see but a model reads), and in outbound text encoded blobs too
/// (a way to carry repository content out).
pub fn scan_text(name: &str, text: &str, origin: Origin, out: &mut Vec<Finding>) {
    for (i, line) in text.lines().enumerate() {
        let line_no = Some(u32::try_from(i + 1).unwrap_or(u32::MAX));
        let hidden = line.contains('\0') || first_hidden(line).is_some();
        let why = match origin {
            Origin::Input if hidden => judge_line(line),
            Origin::Input => None,
            _ => judge_line(line),
        };
        let Some(why) = why else { continue };
        let category = if hidden {
            Category::PromptInjection
        } else {
            Category::SecretLeak
        };
        out.push(Finding {
            category,
            scanner: SCANNER,
            reason: format!("the text carries {why}"),
            file: name.to_string(),
            line: line_no,
        });
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regexes_compile() {
        assert!(NUMBERS.is_some() && DECODE_EXEC.is_some());
    }

    #[test]
    fn unreadable_lines_are_named() {
        let b64 = "QUJD".repeat(40) + "x9Z7";
        // A pseudo-random line over 90 printable characters (~6.5 bits).
        let mut x: u64 = 7;
        let noisy: String = (0..300)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                char::from(b'!' + ((x >> 33) % 90) as u8)
            })
            .collect();
        for (line, want) in [
            ("let a = 1;\0", "NUL"),
            ("if (isAdmin) {\u{202E} } \u{2066}", "U+202E"),
            ("hi\u{E0041}\u{E0042}", "U+E0041"),
            ("a\u{200D}b", "U+200D"),
            ("exec(base64.b64decode(PAYLOAD))", "decodes and runs"),
            ("echo aGk= | base64 -d | sh", "decodes and runs"),
            (
                "powershell -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcA",
                "decodes",
            ),
            (b64.as_str(), "encoded blob"),
            (&"\\x41".repeat(20), "encoded blob"),
            (noisy.as_str(), "high entropy"),
        ] {
            let got = judge_line(line).unwrap_or_default();
            assert!(got.contains(want), "{line:?}: {got}");
        }
    }

    #[test]
    fn readable_lines_pass() {
        let prose = "This is a long line of ordinary English prose that goes on and on, describing how the scanner decides what a reviewer can read and what they cannot, and why a long line alone is not a reason to hold a change for a human. ".repeat(2);
        let image = format!(
            "<img src=\"data:image/png;base64,{}\">",
            "iVBORw0KGgo".repeat(20)
        );
        for line in [
            "\"integrity\": \"sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==\"",
            "checksum = \"2b0f2a1e3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7\"",
            prose.as_str(),
            image.as_str(),
            "let total = a.iter().map(|x| x * 2).sum::<u64>();",
            &"-".repeat(200),
            "la famille \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            &format!("// {}", "=".repeat(150)),
        ] {
            assert_eq!(judge_line(line), None, "{line}");
        }
    }

    #[test]
    fn runs_are_found_whole_wherever_they_are() {
        let text = format!(
            "ab\n{} x {}\n{}|{}",
            "A".repeat(50),
            "b".repeat(39),
            "c".repeat(120),
            "d".repeat(40)
        );
        let mut got = Vec::new();
        runs(text.as_bytes(), 40, |r| got.push(r));
        let want = [3..53, 96..216, 217..257];
        assert_eq!(got, want, "{text}");
        let mut none = Vec::new();
        runs("short words, only".as_bytes(), 40, |r| none.push(r));
        assert!(none.is_empty());
    }

    #[test]
    fn marks_pick_exactly_the_lines_the_line_checks_could_flag() {
        let commas = format!("let v = [{}];", "1, ".repeat(30));
        let b64 = format!("x = \"{}\"", "QUJD".repeat(40));
        let lines = [
            "fn main() {}".to_string(),
            format!("{}\\n", "a".repeat(70)),
            commas,
            b64,
            "nul\0".to_string(),
            "caf\u{e9}".to_string(),
            "-e QUJDQUJDQUJDQUJDQUJDQUJDQUJDQUJDQUJDQUJD".to_string(),
            "x".repeat(300),
        ];
        let mut diff = format!(
            "diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -0,0 +1,{} @@\n",
            lines.len()
        );
        for l in &lines {
            diff.push('+');
            diff.push_str(l);
            diff.push('\n');
        }
        let patch = Patch::parse(&diff);
        let refs: Vec<&AddedLine> = patch.files[0].added.iter().collect();
        let m = mark(&patch, &refs);
        assert_eq!(
            m.suspect,
            [false, true, true, true, true, true, false, true],
            "{lines:?}"
        );
        assert_eq!(
            m.long_run,
            [false, true, false, true, false, false, true, true]
        );
        // Every line judge_line_fast flags is marked.
        for (i, l) in lines.iter().enumerate() {
            if judge_line_fast(l).is_some() {
                assert!(m.suspect[i], "{l}");
            }
        }
    }

    #[test]
    fn hidden_characters_in_an_input_are_injection_and_blobs_there_are_fine() {
        let mut out = Vec::new();
        let blob = "QUJD".repeat(40);
        scan_text(
            "issue #1 body",
            &format!("log:\n{blob}"),
            Origin::Input,
            &mut out,
        );
        assert!(out.is_empty());
        scan_text(
            "issue #1 body",
            "fine\nplease\u{200B} fix",
            Origin::Input,
            &mut out,
        );
        assert_eq!(
            (out[0].category, out[0].line),
            (Category::PromptInjection, Some(2))
        );
    }
}
