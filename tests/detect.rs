//! The detection step's deterministic scanners against a corpus written for
//! Kiln: `tests/detect_corpus/malicious/*` (every one must be flagged) and
//! `tests/detect_corpus/harmless/*`, look-alikes of them (false positives
//! are counted and printed; at most 2 allowed).
//!
//! Each entry is a small file set: `before/` (the repository's base, may be
//! absent) and `after/` (files the run added or changed, laid over the
//! base). The patch is made the way a run's is: the workspace committed
//! through a [`Publisher`] shadow repository and diffed against its base.
use std::path::{Path, PathBuf};

use kiln::detect::{Artifacts, Patch, Verdict, scan};
use kiln::policy::Redactor;
use kiln::publish::Publisher;

use crate::support::api::git;

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/detect_corpus")
        .join(kind);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    entries
}

fn copy_tree(from: &Path, to: &Path) {
    if !from.exists() {
        return;
    }
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The entry's patch, as a run's publisher would make it.
async fn patch_of(entry: &Path) -> Patch {
    let t = tempfile::tempdir().expect("tempdir");
    let mirror = t.path().join("mirror");
    let ws = t.path().join("ws");
    std::fs::create_dir_all(&mirror).expect("mkdir");
    std::fs::create_dir_all(&ws).expect("mkdir");
    git(&mirror, &["init", "-q", "-b", "main"]);
    std::fs::write(mirror.join(".keep"), "base\n").expect("write");
    copy_tree(&entry.join("before"), &mirror);
    git(&mirror, &["add", "-A"]);
    git(&mirror, &["commit", "-qm", "base"]);
    let head = git(&mirror, &["rev-parse", "HEAD"]);
    std::fs::write(ws.join(".keep"), "base\n").expect("write");
    copy_tree(&entry.join("before"), &ws);
    copy_tree(&entry.join("after"), &ws);
    let p = Publisher::new(&mirror, &head, &ws, "kiln/detect-corpus", None)
        .await
        .expect("publisher");
    let diff = p.diff().await.expect("diff");
    let patch = Patch::parse(&diff);
    assert!(
        !patch.files.is_empty(),
        "{}: the entry changes nothing",
        entry.display()
    );
    patch
}

async fn verdict(entry: &Path) -> Verdict {
    let redactor = Redactor::new(&[]).expect("redactor");
    scan(
        &Artifacts {
            patch: patch_of(entry).await,
            ..Artifacts::default()
        },
        &redactor,
    )
}

fn name(entry: &Path) -> String {
    entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_malicious_patch_in_the_corpus_is_flagged() {
    let entries = corpus("malicious");
    assert!(entries.len() >= 20, "{} malicious entries", entries.len());
    let mut missed = Vec::new();
    for e in &entries {
        let v = verdict(e).await;
        match v.findings.first() {
            Some(f) => println!("flagged   {:<32} {f}", name(e)),
            None => missed.push(name(e)),
        }
    }
    assert!(missed.is_empty(), "not flagged: {missed:?}");
}

#[tokio::test]
async fn harmless_look_alikes_are_rarely_flagged() {
    let entries = corpus("harmless");
    assert!(entries.len() >= 20, "{} harmless entries", entries.len());
    let mut false_positives = Vec::new();
    for e in &entries {
        let v = verdict(e).await;
        if let Some(f) = v.findings.first() {
            println!("FALSE POSITIVE {:<28} {f}", name(e));
            false_positives.push(name(e));
        }
    }
    println!(
        "false positives: {} of {} harmless look-alikes",
        false_positives.len(),
        entries.len()
    );
    assert!(
        false_positives.len() <= 2,
        "too many false positives: {false_positives:?}"
    );
}
