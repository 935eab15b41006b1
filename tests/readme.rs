//! The README is the manual: every ```toml block in it is read by the real
//! loader of the file it shows, so the manual cannot drift from the code.
//!
//! A block says which file it is in its first line, a TOML comment a reader
//! sees too: `# kiln.toml` or `# .kiln/verify.toml`. A block naming no file
//! (or another one) fails the test: none is skipped. Each `kiln.toml` block
//! must deserialize on its own (the loader refuses unknown sections and
//! keys, so a misspelt or removed key fails here), and all of them together,
//! in README order, must pass the loader's whole validation (a block may use
//! a secret an earlier block declares, as one file would).

use kiln::config::KilnConfig;

/// The verification role's own parser of `.kiln/verify.toml`. The role is a
/// WebAssembly plugin (a `cdylib`, which no crate can depend on), so its
/// source file is compiled into this test as a module: the same code, not a
/// copy of it.
#[path = "../plugins/verification/src/config.rs"]
#[allow(dead_code, reason = "the test uses only `parse`")]
mod verify_config;

const README: &str = include_str!("../README.md");

/// One fenced ```toml block of a Markdown text.
#[derive(Debug)]
struct Block {
    /// The 1-based line of the README the block's first line is on.
    line: usize,
    /// The block's text.
    text: String,
}

/// Every ```toml block of `markdown`, in order; an unterminated block is an error.
fn toml_blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    // The open fence's language and its block. Every fenced block is
    // followed to its end, so a ``` line inside another language's block is
    // never taken for an opening.
    let mut open: Option<(bool, Block)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fenced = line.trim_start().starts_with("```");
        match open.take() {
            Some((true, block)) if fenced => blocks.push(block),
            Some((false, _)) if fenced => {}
            Some((is_toml, mut block)) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some((is_toml, block));
            }
            None if fenced => {
                let lang = line.trim_start().trim_start_matches('`').trim();
                let block = Block {
                    line: i + 2,
                    text: String::new(),
                };
                open = Some((lang == "toml", block));
            }
            None => {}
        }
    }
    match open {
        Some(_) => Err("the README ends inside a fenced block".into()),
        None => Ok(blocks),
    }
}

/// Checks every ```toml block of `markdown`; the error lists every problem,
/// each with the README line it is on.
fn check(markdown: &str) -> Result<usize, String> {
    let blocks = toml_blocks(markdown)?;
    let mut problems = Vec::new();
    let mut whole = String::new();
    for b in &blocks {
        let first = b.text.lines().next().unwrap_or_default().trim();
        match first {
            "# kiln.toml" => {
                if let Err(e) = toml::from_str::<KilnConfig>(&b.text) {
                    problems.push(format!("README line {}: kiln.toml block: {e}", b.line));
                }
                whole.push_str(&b.text);
            }
            "# .kiln/verify.toml" => {
                if let Err(e) = verify_config::parse(&b.text) {
                    problems.push(format!("README line {}: {e}", b.line));
                }
            }
            other => problems.push(format!(
                "README line {}: a ```toml block must say which file it shows in its first \
                 line (`# kiln.toml` or `# .kiln/verify.toml`), not {other:?}",
                b.line
            )),
        }
    }
    if problems.is_empty()
        && let Err(e) = KilnConfig::from_toml(&whole)
    {
        problems.push(format!(
            "the README's kiln.toml blocks together do not load: {e}"
        ));
    }
    if problems.is_empty() {
        Ok(blocks.len())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn every_toml_block_of_the_readme_loads_with_the_real_loader() {
    let n = check(README).unwrap_or_else(|e| panic!("{e}"));
    // The configuration reference alone has more blocks than this; a
    // README whose blocks all vanished must not pass.
    assert!(n >= 6, "only {n} ```toml blocks found in README.md");
}

#[test]
fn the_readme_documents_every_section_the_loader_accepts() {
    let blocks = toml_blocks(README).expect("blocks");
    let text: String = blocks.iter().map(|b| b.text.as_str()).collect();
    for section in [
        "[sandbox]",
        "[[secrets]]",
        "[model]",
        "[budgets.",
        "[github]",
        "[intake]",
        "[[triggers]]",
        "[policy]",
        "[[roles]]",
        "[[check]]",
        "[store]",
    ] {
        assert!(
            text.contains(section),
            "no ```toml block of README.md shows {section}"
        );
    }
}

#[test]
fn a_misspelt_key_or_an_unnamed_block_fails_the_check() {
    let good = "intro\n```toml\n# kiln.toml\n[sandbox]\npids = 64\n```\n";
    assert_eq!(check(good), Ok(1));
    for (markdown, expect) in [
        (
            "```toml\n# kiln.toml\n[sandbox]\npidz = 64\n```\n".to_string(),
            "unknown field `pidz`",
        ),
        (
            "```toml\n# kiln.toml\n[sandboxes]\n```\n".to_string(),
            "unknown field `sandboxes`",
        ),
        (
            "```toml\n[sandbox]\npids = 64\n```\n".to_string(),
            "must say which file it shows",
        ),
        (
            "```toml\n# .kiln/verify.toml\n[[check]]\nname = \"x\"\nrun = []\n```\n".to_string(),
            "`run` must name a program",
        ),
        (
            // Each block parses alone, but together they declare one
            // secret twice: the whole file is checked too.
            "```toml\n# kiln.toml\n[[secrets]]\nname = \"a\"\nsource = { env = \"A\" }\n```\n\
             ```sh\n[[secrets]]\n```\n\
             ```toml\n# kiln.toml\n[[secrets]]\nname = \"a\"\nsource = { env = \"B\" }\n```\n"
                .to_string(),
            "duplicate secret name `a`",
        ),
    ] {
        match check(&markdown) {
            Err(e) => assert!(e.contains(expect), "{markdown:?}: got {e}"),
            Ok(n) => panic!("{markdown:?} passed ({n} blocks), expected {expect:?}"),
        }
    }
    assert!(
        check("```toml\n# kiln.toml\n").is_err(),
        "unterminated block"
    );
}

#[test]
fn the_readme_writes_out_the_default_triggers_exactly() {
    let blocks = toml_blocks(README).expect("blocks");
    let whole: String = blocks
        .iter()
        .filter(|b| b.text.starts_with("# kiln.toml"))
        .map(|b| b.text.as_str())
        .collect();
    let config = KilnConfig::from_toml(&whole).expect("checked above");
    assert_eq!(
        config.intake.rules(),
        kiln::intake::default_rules(),
        "the README's [[triggers]] say they are the defaults"
    );
}
