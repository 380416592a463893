//! The documents name files of the repository (`src/migrate/lane.rs`, `benches/latency.sh`)
//! to send a reader to the code. When a file moves, the name goes stale without anything
//! failing; here every such name in README.md, docs/ and benches/README.md must exist.

use std::path::Path;

/// The folders whose files the documents name.
const ROOTS: &[&str] = &["src/", "tests/", "benches/", "conf/", "examples/", "docs/"];

/// Every path in `text` that starts with one of [`ROOTS`], as far as path characters go,
/// without the punctuation a sentence puts after it.
fn named_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for root in ROOTS {
        let mut rest = text;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
                .unwrap_or(tail.len());
            // A root inside a longer word or path (`target/bench-before/src/`) is not a name.
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || "_./-".contains(c)) {
                found.push(tail[..len].trim_end_matches(['.', ',']).to_string());
            }
            rest = &tail[len.max(1)..];
        }
    }
    found
}

#[test]
fn every_file_the_documents_name_exists() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![repo.join("README.md"), repo.join("benches/README.md")];
    for entry in std::fs::read_dir(repo.join("docs")).expect("docs/") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for document in &documents {
        let text = std::fs::read_to_string(document).expect("a document");
        for name in named_paths(&text) {
            checked += 1;
            if !repo.join(&name).exists() {
                missing.push(format!("{} names {name}", document.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} names found: is the search broken?"
    );
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn a_name_ends_where_the_sentence_goes_on() {
    assert_eq!(
        named_paths("see `src/migrate/lane.rs`, and src/hash/. Then (benches/latency.sh)"),
        vec!["src/migrate/lane.rs", "src/hash/", "benches/latency.sh"]
    );
    assert!(named_paths("built in target/bench-before/src/x").is_empty());
}
