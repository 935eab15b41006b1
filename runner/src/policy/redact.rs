//! Redaction of secrets from every byte that leaves the host.
//!
//! A [`Redactor`] is built once from the values of all configured secrets and
//! a fixed list of token shapes (GitHub, Anthropic, OpenAI, AWS, PEM private
//! keys). It works in three modes:
//! - **redact**: [`Redactor::redact`] / [`Redactor::redact_bytes`] replace
//!   every match with `[REDACTED:<kind>]` (comments, PR titles and bodies,
//!   review comments, events, logs);
//! - **refuse**: [`Redactor::scan`] and [`Redactor::refuse_commit`] report the
//!   kind and location of a secret, never its value (commit contents);
//! - **stream**: [`StreamRedactor`] and [`RedactingWriter`] redact chunked
//!   output (exec output, SSE) and still catch a secret split across chunks,
//!   by holding back a tail as long as the longest thing they can match.
//!
//! Configured secrets are matched in several encodings, because a secret
//! rarely leaves in the shape it was configured in: plain, trimmed,
//! JSON-escaped (also with `\/`), percent-encoded, lowercase hex, and base64
//! (standard and URL-safe alphabets, at each of the three byte alignments it
//! can have inside a longer base64 stream).
//!
//! Secrets shorter than [`MIN_SECRET_LEN`] bytes are still redacted, but this
//! is weak: a short value collides with ordinary text (false redactions that
//! reveal where the value appears) and is easy to guess, and its base64
//! fragments are not matched at all. [`Redactor::short_secrets`] lists them
//! so start-up can warn.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder};

/// Below this length a secret value is still redacted but is called out as weak.
pub const MIN_SECRET_LEN: usize = 8;

/// Longest token shape matched, so the streaming tail is bounded.
const MAX_TOKEN_LEN: usize = 400;

/// How far from an AWS access key id a 40-character secret key is still taken
/// to be its secret.
const AWS_PROXIMITY: usize = 256;

/// How much of a private-key block the stream holds before it gives up waiting
/// for the END line, emits the marker and drops bytes until END.
const MAX_PRIVATE_KEY_HOLD: usize = 64 * 1024;

/// One configured secret: a name for the redaction marker and the value to hide.
#[derive(Clone)]
pub struct SecretValue {
    /// Name shown in markers (`[REDACTED:secret:<name>]`); never the value.
    pub name: String,
    /// The value to find and remove.
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    // Debug output goes to logs; the value must never be in it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("value", &"<hidden>")
            .finish()
    }
}

/// Why a [`Redactor`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedactorError {
    /// An empty value would match everywhere and redact nothing useful.
    #[error("secret {name} has an empty value; configure a value or remove the secret")]
    EmptySecret {
        /// The secret's name.
        name: String,
    },
    /// Every marker shape could spell the value out next to ordinary text.
    #[error(
        "secret {name}: its value overlaps every redaction marker (it is part of one, \
         or begins or ends like one), so a redacted copy could still spell it out; \
         configure a longer value"
    )]
    OverlapsMarker {
        /// The secret's name.
        name: String,
    },
    /// Names are written into markers and logs, so they must be plain.
    #[error("secret name {name:?} must be non-empty and use only A-Z a-z 0-9 _ . -")]
    BadName {
        /// The offending name.
        name: String,
    },
    /// A built-in token pattern did not compile (a Kiln bug).
    #[error("built-in token pattern {kind} does not compile: {source}")]
    Builtin {
        /// Which token shape.
        kind: &'static str,
        /// The regex error.
        source: regex::Error,
    },
    /// The combined matcher for secret values did not compile (too large).
    #[error("cannot build the matcher for {count} secret values: {source}")]
    Matcher {
        /// How many literal variants were combined.
        count: usize,
        /// The regex error.
        source: regex::Error,
    },
}

/// A secret found by [`Redactor::scan`]: its kind and byte range, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFinding {
    /// What was found, e.g. `github-token` or `secret:OPENAI_KEY`.
    pub kind: String,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
}

/// A commit refused because a file in it holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("commit refused: {path} contains a secret ({kind})")]
pub struct SecretInCommit {
    /// The file that holds it.
    pub path: String,
    /// The kind of secret (never the value).
    pub kind: String,
}

#[derive(Clone, Copy)]
enum Check {
    /// Any match counts.
    Always,
    /// The body must hold a digit and a letter: cuts out kebab-case prose
    /// such as `sk-this-is-only-an-example-id`.
    DigitAndLetter,
    /// A 40-character AWS secret key: needs mixed case and a digit (a git SHA
    /// is lowercase hex) and an access key id or keyword nearby.
    AwsSecretNearId,
}

struct TokenShape {
    kind: &'static str,
    regex: Regex,
    /// Capture group holding the secret itself (0 = whole match).
    group: usize,
    check: Check,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    kind: usize,
}

struct Inner {
    /// One pass over the input that says whether any shape or secret can be
    /// there: most text holds none, and this skips the per-shape searches.
    any: Regex,
    /// Kind names: token shapes first, then one per configured secret.
    kinds: Vec<String>,
    /// The marker written in place of each kind, e.g. `[REDACTED:github-token]`.
    markers: Vec<Vec<u8>>,
    shapes: Vec<TokenShape>,
    aws_anchor: Regex,
    literals: Option<Regex>,
    literal_kind: HashMap<Vec<u8>, usize>,
    longest_literal: usize,
    short: Vec<String>,
    pem_end: Regex,
}

/// Finds and removes secret values and token shapes; cheap to clone.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("kinds", &self.inner.kinds)
            .finish_non_exhaustive()
    }
}

fn shape(
    kind: &'static str,
    pattern: &str,
    group: usize,
    check: Check,
) -> Result<TokenShape, RedactorError> {
    Ok(TokenShape {
        kind,
        // Byte-oriented (no Unicode): secrets and their surroundings may be
        // arbitrary bytes, and `.` must cross invalid UTF-8 too.
        regex: Regex::new(&format!("(?-u){pattern}"))
            .map_err(|source| RedactorError::Builtin { kind, source })?,
        group,
        check,
    })
}

fn token_shapes() -> Result<Vec<TokenShape>, RedactorError> {
    // Order is priority when two shapes match at the same place: the
    // Anthropic shape must win over the looser OpenAI one.
    [
        shape(
            "github-token",
            r"\bgh[pousr]_[A-Za-z0-9]{30,255}\b",
            0,
            Check::Always,
        ),
        shape(
            "github-token",
            r"\bgithub_pat_[A-Za-z0-9_]{30,255}\b",
            0,
            Check::Always,
        ),
        shape(
            "anthropic-key",
            r"\bsk-ant-[A-Za-z0-9_\-]{20,400}",
            0,
            Check::Always,
        ),
        shape(
            "openai-key",
            r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,400}",
            0,
            Check::DigitAndLetter,
        ),
        shape(
            "aws-access-key-id",
            r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            0,
            Check::Always,
        ),
        shape(
            "aws-secret-access-key",
            r#"(?i:aws_?secret_?access_?key|secret_?access_?key)["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})"#,
            1,
            Check::Always,
        ),
        shape(
            "aws-secret-access-key",
            r"(?:^|[^A-Za-z0-9/+=])([A-Za-z0-9/+]{40})(?:$|[^A-Za-z0-9/+=])",
            1,
            Check::AwsSecretNearId,
        ),
        // An unterminated block (truncated output) is redacted to the end.
        shape(
            "private-key",
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\z)",
            0,
            Check::Always,
        ),
    ]
    .into_iter()
    .collect()
}

/// What makes a 40-character string nearby an AWS secret key: a key id or
/// the keyword.
const AWS_ANCHOR: &str = r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|(?i:secret_?access_?key)";

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of whole 3-byte groups only: the part of an encoding that does not
/// depend on the bytes around it.
fn base64_groups(data: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 3 * 4);
    for g in data.chunks_exact(3) {
        let n = (u32::from(g[0]) << 16) | (u32::from(g[1]) << 8) | u32::from(g[2]);
        for shift in [18u32, 12, 6, 0] {
            out.push(alphabet[((n >> shift) & 63) as usize]);
        }
    }
    out
}

fn percent_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn hex_lower(data: &[u8]) -> Vec<u8> {
    data.iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect()
}

/// Every encoding of `value` worth matching.
fn variants(value: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut push = |v: Vec<u8>| {
        if !v.is_empty() && !out.contains(&v) {
            out.push(v);
        }
    };
    for v in [value, value.trim()] {
        if v.is_empty() {
            continue;
        }
        push(v.as_bytes().to_vec());
        let json = serde_json::to_string(v).unwrap_or_default();
        let json = json
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or_default();
        push(json.as_bytes().to_vec());
        push(json.replace('/', "\\/").into_bytes());
        push(percent_encode(v.as_bytes()));
        push(hex_lower(v.as_bytes()));
        if v.len() >= MIN_SECRET_LEN {
            for skip in 0..3 {
                let rest = &v.as_bytes()[skip..];
                for alphabet in [B64_STD, B64_URL] {
                    let enc = base64_groups(rest, alphabet);
                    // Short fragments would match random base64 text.
                    if enc.len() >= MIN_SECRET_LEN {
                        push(enc);
                    }
                }
            }
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The shapes a marker may take, in order of preference. The first is the
/// one users see; the others exist for secret values that overlap it.
const MARKER_SHAPES: [(&str, &str); 4] = [
    ("[REDACTED:", "]"),
    ("{REDACTED:", "}"),
    ("<REDACTED:", ">"),
    ("(REDACTED:", ")"),
];

/// Whether text around a copy of `marker` could contain `value`: the value
/// is inside the marker, holds it, or one's end is the other's beginning.
/// A value that overlaps no marker can only reappear in redacted output where
/// it was left unredacted, so this check makes the replacement itself safe.
fn overlaps(value: &[u8], marker: &[u8]) -> bool {
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let shorter = value.len().min(marker.len());
    contains(marker, value)
        || contains(value, marker)
        || (1..shorter).any(|k| {
            value[..k] == marker[marker.len() - k..] || value[value.len() - k..] == marker[..k]
        })
}

/// The markers for these kinds, in the first shape no secret variant overlaps.
fn choose_markers(
    kinds: &[String],
    secrets: &[(String, Vec<Vec<u8>>)],
) -> Result<Vec<Vec<u8>>, RedactorError> {
    let mut blocker = None;
    for (open, close) in MARKER_SHAPES {
        let markers: Vec<Vec<u8>> = kinds
            .iter()
            .map(|k| [open.as_bytes(), k.as_bytes(), close.as_bytes()].concat())
            .collect();
        let clash = secrets.iter().find(|(_, variants)| {
            variants
                .iter()
                .any(|v| markers.iter().any(|m| overlaps(v, m)))
        });
        match clash {
            None => return Ok(markers),
            Some((name, _)) => blocker = Some(name.clone()),
        }
    }
    Err(RedactorError::OverlapsMarker {
        name: blocker.unwrap_or_default(),
    })
}

impl Redactor {
    /// Builds a redactor for these secrets plus the built-in token shapes.
    pub fn new(secrets: &[SecretValue]) -> Result<Self, RedactorError> {
        let shapes = token_shapes()?;
        let mut kinds: Vec<String> = shapes.iter().map(|s| s.kind.to_owned()).collect();
        let mut literal_kind: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut short = Vec::new();
        let mut secret_variants = Vec::with_capacity(secrets.len());
        for secret in secrets {
            if !valid_name(&secret.name) {
                return Err(RedactorError::BadName {
                    name: secret.name.clone(),
                });
            }
            if secret.value.trim().is_empty() {
                return Err(RedactorError::EmptySecret {
                    name: secret.name.clone(),
                });
            }
            if secret.value.trim().len() < MIN_SECRET_LEN {
                short.push(secret.name.clone());
            }
            let kind = kinds.len();
            kinds.push(format!("secret:{}", secret.name));
            let variants = variants(&secret.value);
            for v in &variants {
                literal_kind.entry(v.clone()).or_insert(kind);
            }
            secret_variants.push((secret.name.clone(), variants));
        }
        let markers = choose_markers(&kinds, &secret_variants)?;
        let mut lits: Vec<&Vec<u8>> = literal_kind.keys().collect();
        // Longest first, so a variant that contains another wins the alternation.
        lits.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        let longest_literal = lits.first().map_or(0, |l| l.len());
        let literal_pattern = lits
            .iter()
            .map(|l| escape_bytes(l))
            .collect::<Vec<_>>()
            .join("|");
        let build = |pattern: &str| {
            RegexBuilder::new(pattern)
                .unicode(false)
                .size_limit(64 << 20)
                .build()
                .map_err(|source| RedactorError::Matcher {
                    count: lits.len(),
                    source,
                })
        };
        let literals = if lits.is_empty() {
            None
        } else {
            Some(build(&literal_pattern)?)
        };
        // The AWS secret-near-id shape is left out: it only counts next to
        // a key id or keyword, which the other shapes already find. Without
        // it every alternative starts with a literal, and the search runs on
        // a fast literal prefilter.
        let mut any_pattern = shapes
            .iter()
            .filter(|s| !matches!(s.check, Check::AwsSecretNearId))
            .map(|s| format!("(?:{})", s.regex.as_str()))
            .collect::<Vec<_>>()
            .join("|");
        any_pattern.push_str(&format!("|(?:{AWS_ANCHOR})"));
        if !lits.is_empty() {
            any_pattern.push_str(&format!("|(?:{literal_pattern})"));
        }
        let any = build(&any_pattern)?;
        let aws_anchor = shape("aws-anchor", AWS_ANCHOR, 0, Check::Always)?.regex;
        let pem_end = shape(
            "pem-end",
            r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
            0,
            Check::Always,
        )?
        .regex;
        Ok(Self {
            inner: Arc::new(Inner {
                any,
                kinds,
                markers,
                shapes,
                aws_anchor,
                literals,
                literal_kind,
                longest_literal,
                short,
                pem_end,
            }),
        })
    }

    /// Names of configured secrets shorter than [`MIN_SECRET_LEN`]: redacted,
    /// but weakly (see the module docs); start-up should warn about them.
    pub fn short_secrets(&self) -> &[String] {
        &self.inner.short
    }

    /// How many trailing bytes a stream must hold back so that nothing this
    /// redactor matches can be split unseen across two chunks.
    pub fn holdback(&self) -> usize {
        self.inner
            .longest_literal
            .max(MAX_TOKEN_LEN + 64)
            .max(AWS_PROXIMITY + 64)
    }

    fn spans(&self, data: &[u8]) -> Vec<Span> {
        let inner = &*self.inner;
        let mut spans = Vec::new();
        if !inner.any.is_match(data) {
            return spans;
        }
        if let Some(lits) = &inner.literals {
            for m in lits.find_iter(data) {
                if let Some(&kind) = inner.literal_kind.get(m.as_bytes()) {
                    spans.push(Span {
                        start: m.start(),
                        end: m.end(),
                        kind,
                    });
                }
            }
        }
        let mut anchors: Option<Vec<(usize, usize)>> = None;
        for (kind, shape) in inner.shapes.iter().enumerate() {
            for caps in shape.regex.captures_iter(data) {
                let Some(m) = caps.get(shape.group) else {
                    continue;
                };
                let body = m.as_bytes();
                let keep = match shape.check {
                    Check::Always => true,
                    Check::DigitAndLetter => {
                        body.iter().any(u8::is_ascii_digit)
                            && body.iter().filter(|b| b.is_ascii_alphabetic()).count() > 3
                    }
                    Check::AwsSecretNearId => {
                        body.iter().any(u8::is_ascii_digit)
                            && body.iter().any(u8::is_ascii_uppercase)
                            && body.iter().any(u8::is_ascii_lowercase)
                            && anchors
                                .get_or_insert_with(|| {
                                    inner
                                        .aws_anchor
                                        .find_iter(data)
                                        .map(|a| (a.start(), a.end()))
                                        .collect()
                                })
                                .iter()
                                .any(|&(s, e)| {
                                    s <= m.end() + AWS_PROXIMITY && m.start() <= e + AWS_PROXIMITY
                                })
                    }
                };
                if keep {
                    spans.push(Span {
                        start: m.start(),
                        end: m.end(),
                        kind,
                    });
                }
            }
        }
        merge(spans)
    }

    /// Whether `data` holds anything this redactor would remove.
    pub fn contains_secret(&self, data: &[u8]) -> bool {
        !self.spans(data).is_empty()
    }

    /// Every secret in `data`: kind and byte range, never the value.
    pub fn scan(&self, data: &[u8]) -> Vec<SecretFinding> {
        self.spans(data)
            .into_iter()
            .map(|s| SecretFinding {
                kind: self.kind(s.kind).to_owned(),
                start: s.start,
                end: s.end,
            })
            .collect()
    }

    /// Refuses a commit if any file holds a secret, naming the first file and
    /// kind found (never the value).
    pub fn refuse_commit<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), SecretInCommit> {
        for (path, content) in files {
            if let Some(s) = self.spans(content).first() {
                return Err(SecretInCommit {
                    path: path.to_owned(),
                    kind: self.kind(s.kind).to_owned(),
                });
            }
        }
        Ok(())
    }

    fn kind(&self, kind: usize) -> &str {
        self.inner.kinds.get(kind).map_or("secret", String::as_str)
    }

    fn marker(&self, kind: usize) -> &[u8] {
        self.inner
            .markers
            .get(kind)
            .map_or(b"[REDACTED:secret]", Vec::as_slice)
    }

    fn apply(&self, data: &[u8], spans: &[Span]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0;
        for s in spans {
            out.extend_from_slice(data.get(at..s.start).unwrap_or_default());
            out.extend_from_slice(self.marker(s.kind));
            at = s.end;
        }
        out.extend_from_slice(data.get(at..).unwrap_or_default());
        out
    }

    /// Redacts bytes; borrows when there is nothing to remove.
    pub fn redact_bytes<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let spans = self.spans(data);
        if spans.is_empty() {
            Cow::Borrowed(data)
        } else {
            Cow::Owned(self.apply(data, &spans))
        }
    }

    /// Redacts text; borrows when there is nothing to remove.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Matches are whole UTF-8 sequences of valid text, so this is
            // always valid; the lossy path only guards against a surprise.
            Cow::Owned(bytes) => Cow::Owned(match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
        }
    }

    /// A streaming redactor for chunked output.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            buf: Vec::new(),
            emitted: 0,
            suppressing: false,
        }
    }
}

fn escape_bytes(lit: &[u8]) -> String {
    let mut s = String::with_capacity(lit.len() * 4);
    for &b in lit {
        if b.is_ascii_alphanumeric() {
            s.push(char::from(b));
        } else {
            s.push_str(&format!(r"\x{b:02X}"));
        }
    }
    s
}

/// Sorts and unions overlapping spans, so a partial overlap never leaves a
/// piece of either secret behind.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(a.kind.cmp(&b.kind))
    });
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.start < last.end => last.end = last.end.max(s.end),
            _ => out.push(s),
        }
    }
    out
}

/// Redacts a stream of chunks.
///
/// It holds back the last [`Redactor::holdback`] bytes (and any match that
/// runs into them) until more input or [`StreamRedactor::finish`] shows the
/// match is complete, so a secret split across chunks is still caught. It
/// keeps the already-emitted tail as context (never re-emitted) so an AWS
/// secret key is still recognised next to a key id emitted earlier. A private
/// key block longer than 64 KiB is cut: the marker is emitted and bytes are
/// dropped until its END line.
pub struct StreamRedactor {
    redactor: Redactor,
    /// `buf[..emitted]` was already emitted (context); the rest is pending.
    buf: Vec<u8>,
    emitted: usize,
    suppressing: bool,
}

impl StreamRedactor {
    /// Adds a chunk and returns what can be released now, redacted.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        if self.suppressing && !self.skip_to_pem_end() {
            return out;
        }
        let hold = self.redactor.holdback();
        let spans = self.redactor.spans(&self.buf);
        let mut cut = self.buf.len().saturating_sub(hold).max(self.emitted);
        for s in spans.iter().rev() {
            if s.start < cut && s.end > cut {
                cut = s.start.max(self.emitted);
            }
        }
        let pending_block = spans
            .iter()
            .find(|s| s.start == cut && s.end == self.buf.len() && s.start >= self.emitted);
        if let Some(block) = pending_block
            && self.buf.len() - cut > MAX_PRIVATE_KEY_HOLD
        {
            // Give up waiting for the END line: release the marker now and
            // drop the rest of the block as it arrives.
            let block = *block;
            out = self.release(cut, &spans);
            out.extend_from_slice(self.redactor.marker(block.kind));
            self.suppressing = true;
            self.keep_pem_tail();
            return out;
        }
        out = self.release(cut, &spans);
        self.trim_context();
        out
    }

    /// While suppressing, `buf` holds nothing but key material, so only
    /// enough is kept to find an END line split across chunks.
    fn keep_pem_tail(&mut self) {
        let keep = self.buf.len().min(64);
        self.buf.drain(..self.buf.len() - keep);
        self.emitted = 0;
    }

    /// Returns `true` once the END line was seen (and dropped through).
    fn skip_to_pem_end(&mut self) -> bool {
        match self.redactor.inner.pem_end.find(&self.buf) {
            Some(m) => {
                let end = m.end();
                self.buf.drain(..end);
                self.emitted = 0;
                self.suppressing = false;
                true
            }
            None => {
                self.keep_pem_tail();
                false
            }
        }
    }

    /// Emits `buf[emitted..cut]` with the spans that lie inside it redacted.
    fn release(&mut self, cut: usize, spans: &[Span]) -> Vec<u8> {
        let from = self.emitted;
        let inside: Vec<Span> = spans
            .iter()
            .filter(|s| s.end > from && s.start < cut)
            .map(|s| Span {
                start: s.start.max(from) - from,
                end: s.end.min(cut) - from,
                kind: s.kind,
            })
            .collect();
        let out = self
            .redactor
            .apply(self.buf.get(from..cut).unwrap_or_default(), &inside);
        self.emitted = cut;
        out
    }

    fn trim_context(&mut self) {
        let keep = self.redactor.holdback();
        if self.emitted > keep {
            let drop = self.emitted - keep;
            self.buf.drain(..drop);
            self.emitted -= drop;
        }
    }

    /// Releases everything still held, redacted. An unterminated private key
    /// is redacted to the end.
    pub fn finish(mut self) -> Vec<u8> {
        if self.suppressing {
            return Vec::new();
        }
        let spans = self.redactor.spans(&self.buf);
        let len = self.buf.len();
        self.release(len, &spans)
    }
}

/// An [`io::Write`] adapter that redacts everything written through it.
///
/// `flush` flushes the inner writer but keeps the held-back tail (releasing it
/// would defeat split-secret detection); call [`RedactingWriter::finish`] at
/// the end of the stream to release it.
pub struct RedactingWriter<W: Write> {
    inner: W,
    stream: StreamRedactor,
}

impl<W: Write> RedactingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, redactor: &Redactor) -> Self {
        Self {
            inner,
            stream: redactor.stream(),
        }
    }

    /// Writes the held-back tail and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        let Self { mut inner, stream } = self;
        inner.write_all(&stream.finish())?;
        inner.flush()?;
        Ok(inner)
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self.stream.push(buf);
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GH: &str = "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
    const ANT: &str = "sk-ant-api03-Qw3rTy8uIoPaSdFgHjKlZxCvBnM1234567890abcdEF-_gh";
    const OAI: &str = "sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0";
    const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
    const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const CANARY: &str = "kiln-canary-7f3a9c1e-\"quoted\"/slash";

    fn redactor() -> Redactor {
        Redactor::new(&[
            SecretValue {
                name: "CANARY".into(),
                value: CANARY.into(),
            },
            SecretValue {
                name: "SHORT".into(),
                value: "pw12".into(),
            },
        ])
        .unwrap_or_else(|e| panic!("test redactor should build: {e}"))
    }

    fn b64(data: &[u8]) -> String {
        // Full standard base64 with padding, to embed canaries in real streams.
        let mut out = String::from_utf8(base64_groups(data, B64_STD)).unwrap_or_default();
        let rest = &data[data.len() / 3 * 3..];
        match rest.len() {
            1 => {
                let n = u32::from(rest[0]) << 16;
                out.push(char::from(B64_STD[((n >> 18) & 63) as usize]));
                out.push(char::from(B64_STD[((n >> 12) & 63) as usize]));
                out.push_str("==");
            }
            2 => {
                let n = (u32::from(rest[0]) << 16) | (u32::from(rest[1]) << 8);
                out.push(char::from(B64_STD[((n >> 18) & 63) as usize]));
                out.push(char::from(B64_STD[((n >> 12) & 63) as usize]));
                out.push(char::from(B64_STD[((n >> 6) & 63) as usize]));
                out.push('=');
            }
            _ => {}
        }
        out
    }

    // A value that begins or ends like the marker would be spelled out again
    // by the marker and the text beside it (found by the redact_stream fuzz
    // target: `d[REDACTED:sec` next to a `d`); such values get another marker
    // shape, in one-shot and in streamed redaction alike.
    #[test]
    fn a_secret_that_overlaps_the_marker_is_not_spelled_out_by_it() {
        for (value, text) in [
            ("d[REDACTED:sec", "dd[REDACTED:sec and more"),
            ("pass]word-1234", "[x pass]word-1234"),
            ("password-1234[", "password-1234[REDACTED:secret:OVER]"),
            ("ACTED:secret:OVER]abc", "ACTED:secret:OVER]abcabc"),
        ] {
            let r = Redactor::new(&[SecretValue {
                name: "OVER".into(),
                value: value.into(),
            }])
            .unwrap_or_else(|e| panic!("{value}: {e}"));
            let once = r.redact(text);
            assert!(!once.contains(value), "{value} in {once}");
            let mut stream = r.stream();
            let mut out = Vec::new();
            for b in text.as_bytes() {
                out.extend(stream.push(std::slice::from_ref(b)));
            }
            out.extend(stream.finish());
            let streamed = String::from_utf8_lossy(&out);
            assert!(!streamed.contains(value), "{value} in {streamed}");
        }
        // An ordinary value keeps the usual marker.
        assert_eq!(redactor().redact(CANARY), "[REDACTED:secret:CANARY]");
    }

    // A value inside every marker shape cannot be hidden by any of them.
    #[test]
    fn a_secret_inside_the_marker_is_refused_with_its_name() {
        let err = Redactor::new(&[SecretValue {
            name: "WEAK".into(),
            value: "REDACTED:secret:WEAK".into(),
        }])
        .map(|_| ())
        .expect_err("a value inside its own marker cannot be redacted");
        let msg = err.to_string();
        assert!(
            msg.contains("WEAK") && msg.contains("overlaps every redaction marker"),
            "{msg}"
        );
    }

    // Every encoding of a secret that can reach a comment, log or event is
    // redacted, and the raw value never survives.
    #[test]
    fn redacts_secrets_and_token_shapes_in_many_encodings() {
        let r = redactor();
        let json =
            serde_json::to_string(&serde_json::json!({ "token": CANARY })).unwrap_or_default();
        let b0 = b64(CANARY.as_bytes());
        let b1 = b64(format!("x{CANARY}").as_bytes());
        let b2 = b64(format!("xy{CANARY}").as_bytes());
        let attempts: Vec<(&str, String, &str)> = vec![
            ("plain canary", format!("the key is {CANARY}."), CANARY),
            ("canary inside JSON", json.clone(), "7f3a9c1e-\\\"quoted"),
            (
                "canary JSON with escaped slash",
                json.replace('/', "\\/"),
                "7f3a9c1e",
            ),
            (
                "percent-encoded canary",
                format!(
                    "?k={}",
                    String::from_utf8_lossy(&percent_encode(CANARY.as_bytes()))
                ),
                "7f3a9c1e",
            ),
            (
                "hex canary",
                format!(
                    "x={}",
                    String::from_utf8_lossy(&hex_lower(CANARY.as_bytes()))
                ),
                "6b696c6e2d63616e617279",
            ),
            ("base64 canary alone", b64(CANARY.as_bytes()), &b0[4..20]),
            (
                "base64 canary at offset 1",
                b64(format!("x{CANARY}").as_bytes()),
                &b1[8..24],
            ),
            (
                "base64 canary at offset 2",
                b64(format!("xy{CANARY}").as_bytes()),
                &b2[8..24],
            ),
            (
                "canary with trailing newline config",
                format!("v={}\n", CANARY.trim()),
                CANARY,
            ),
            ("short secret", "password is pw12 ok".into(), "pw12"),
            ("github classic token", format!("token {GH} here"), GH),
            (
                "github fine-grained token",
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH".into(),
                "github_pat_11ABC",
            ),
            (
                "github app token",
                "ghs_16C7e42F292c6912E7710c838347Ae178B4a".into(),
                "ghs_16C7e42F",
            ),
            (
                "anthropic key",
                format!("ANTHROPIC_API_KEY={ANT}"),
                "Qw3rTy8uIoPaSdFg",
            ),
            (
                "openai project key in JSON",
                format!("{{\"k\":\"{OAI}\"}}"),
                "A1b2C3d4E5f6",
            ),
            (
                "openai legacy key",
                "sk-abcdefghij0123456789ABCDEFGHIJ0123456789abcdefgh".into(),
                "abcdefghij0123456789",
            ),
            ("aws key id", format!("id={AKID}"), AKID),
            (
                "aws secret next to id",
                format!("{AKID} {AWS_SECRET}"),
                AWS_SECRET,
            ),
            (
                "aws secret with keyword",
                format!("aws_secret_access_key = {AWS_SECRET}"),
                AWS_SECRET,
            ),
            (
                "pem private key",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"
                    .into(),
                "MIIEowIBAAKCAQEA7",
            ),
            (
                "unterminated pem",
                "log: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA".into(),
                "b3BlbnNzaC1rZXktdjEA",
            ),
        ];
        for (what, input, secret_part) in attempts {
            let out = r.redact(&input);
            assert!(
                !out.contains(secret_part),
                "{what}: {secret_part:?} should have been redacted, got: {out}"
            );
            assert!(
                out.contains("[REDACTED:"),
                "{what}: a redaction marker should have been written, got: {out}"
            );
        }
    }

    // Things that only look a bit like secrets stay readable.
    #[test]
    fn leaves_ordinary_text_alone() {
        let r = redactor();
        let fine = [
            "a task-management-system-for-everyone-here",
            "sk-this-is-only-an-example-identifier",
            "commit 3f1e2d4c5b6a79880716253443526170f8e9d0c1b",
            "see https://example.com/ghp_short",
            "Fix the parser for nested HTML comments (#42).",
        ];
        for text in fine {
            let out = r.redact(text);
            assert!(
                matches!(out, Cow::Borrowed(_)),
                "{text:?} should not have been redacted, got: {out}"
            );
        }
    }

    // Refuse mode names the kind and the path, never the value.
    #[test]
    fn refuses_commits_holding_secrets_without_echoing_them() {
        let r = redactor();
        let clean: [(&str, &[u8]); 1] = [("src/main.rs", b"fn main() {}")];
        assert!(r.refuse_commit(clean).is_ok(), "a clean commit should pass");
        let leaky_content = format!("const KEY: &str = \"{GH}\";");
        let files: [(&str, &[u8]); 2] = [
            ("src/main.rs", b"fn main() {}"),
            ("src/config.rs", leaky_content.as_bytes()),
        ];
        let err = match r.refuse_commit(files) {
            Err(e) => e,
            Ok(()) => panic!("a commit with a GitHub token should have been refused"),
        };
        assert_eq!(
            err.path, "src/config.rs",
            "the refusal should name the file"
        );
        assert_eq!(err.kind, "github-token", "the refusal should name the kind");
        assert!(
            !err.to_string().contains(GH),
            "the refusal must not echo the token, got: {err}"
        );
        let canary_file = format!("x = {CANARY}");
        let files: [(&str, &[u8]); 1] = [("notes.txt", canary_file.as_bytes())];
        let err = r.refuse_commit(files).err();
        assert_eq!(
            err.map(|e| e.kind),
            Some("secret:CANARY".to_owned()),
            "a configured secret in a commit should be refused as secret:CANARY"
        );
    }

    fn stream_all(r: &Redactor, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        out
    }

    // A secret split across chunks at every possible point is still caught,
    // and text without secrets passes through unchanged.
    #[test]
    fn stream_catches_secrets_split_across_chunks() {
        let r = redactor();
        // Longer than the hold-back, so the stream really releases output
        // before the secret has fully arrived.
        let before = "build step ok\n".repeat(80);
        for secret in [CANARY, GH, ANT, OAI, AKID] {
            let text = format!("{before}{secret}\nmore output");
            for split in before.len() - 40..text.len() {
                let (a, rest) = text.as_bytes().split_at(split);
                let (b, c) = rest.split_at(rest.len().min(7));
                let out = stream_all(&r, &[a, b, c]);
                let out = String::from_utf8_lossy(&out);
                assert!(
                    !out.contains(secret) && out.contains("[REDACTED:"),
                    "{secret:?} split at {split} should be redacted, got: {out}"
                );
                assert!(
                    out.starts_with(&before) && out.ends_with("\nmore output"),
                    "text around the secret should survive a split at {split}"
                );
            }
        }
        // One byte at a time, with the AWS secret arriving well after its id.
        let text = format!("{AKID}\n{}\n{AWS_SECRET}\n", "x".repeat(100));
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        let out = String::from_utf8_lossy(&stream_all(&r, &chunks)).into_owned();
        assert!(
            !out.contains(AWS_SECRET) && !out.contains(AKID),
            "AWS id and secret streamed byte by byte should be redacted, got: {out}"
        );
        let plain = "just build output\n".repeat(200);
        let chunks: Vec<&[u8]> = plain.as_bytes().chunks(7).collect();
        assert_eq!(
            stream_all(&r, &chunks),
            plain.as_bytes(),
            "output without secrets should pass through unchanged"
        );
    }

    // A private key too long to hold is replaced by its marker and dropped
    // up to its END line; the text after it comes through.
    #[test]
    fn stream_drops_oversized_private_key_blocks() {
        let r = redactor();
        let body = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n".repeat(3000);
        let text = format!(
            "before\n-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\nafter\n"
        );
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(4096).collect();
        let out = String::from_utf8_lossy(&stream_all(&r, &chunks)).into_owned();
        assert!(
            !out.contains("QUJDREVGR0hJSktM"),
            "no part of a long private key should be emitted, got {} bytes",
            out.len()
        );
        assert!(
            out.starts_with("before\n[REDACTED:private-key]") && out.ends_with("\nafter\n"),
            "the text around the key should survive, got: {}",
            out.chars().take(200).collect::<String>()
        );
    }

    #[test]
    fn writer_redacts_and_releases_tail_on_finish() {
        let r = redactor();
        let mut w = RedactingWriter::new(Vec::new(), &r);
        let text = format!("token={GH}\n");
        let (a, b) = text.as_bytes().split_at(12);
        let wrote = w.write_all(a).and_then(|()| w.write_all(b));
        assert!(wrote.is_ok(), "writing into a Vec should not fail");
        let out = w.finish().unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "token=[REDACTED:github-token]\n",
            "the writer should emit the redacted text on finish"
        );
    }

    #[test]
    fn rejects_bad_secret_config_and_lists_short_secrets() {
        let empty = Redactor::new(&[SecretValue {
            name: "EMPTY".into(),
            value: "  ".into(),
        }]);
        assert!(
            matches!(empty, Err(RedactorError::EmptySecret { .. })),
            "an empty secret should be refused, got: {empty:?}"
        );
        let bad = Redactor::new(&[SecretValue {
            name: "has space]".into(),
            value: "longenoughvalue".into(),
        }]);
        assert!(
            matches!(bad, Err(RedactorError::BadName { .. })),
            "a name that could break the marker should be refused, got: {bad:?}"
        );
        assert_eq!(redactor().short_secrets(), ["SHORT".to_owned()]);
        let dbg = format!(
            "{:?}",
            SecretValue {
                name: "N".into(),
                value: CANARY.into()
            }
        );
        assert!(
            !dbg.contains(CANARY),
            "Debug must hide the value, got: {dbg}"
        );
    }
}
