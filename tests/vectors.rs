//! Every placement vector captured from the real nutcracker 0.5.0
//! (`tests/data/twemproxy/NAME.yml` + `NAME.tsv`, copied from the vectors the project
//! shares beside the repository) must be reproduced key for key.
//! In-process, no network.

use std::path::PathBuf;

use cutover::config::Config;

/// Where the vectors live: in the repository, so a fresh clone tests on its own.
fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/twemproxy")
}

/// Decode a hex key from a `bin_*` vector.
fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex key {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex key"))
        .collect()
}

#[test]
fn every_nutcracker_vector_set_matches() {
    let dir = vectors_dir();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("vectors at {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    sets.sort();
    assert_eq!(
        sets.len(),
        61,
        "expected all 61 vector sets in {}",
        dir.display()
    );

    let mut failures = Vec::new();
    let mut keys_checked = 0usize;
    for yml in &sets {
        let stem = yml
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_string();
        let config = Config::load(yml).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(config.pools.len(), 1, "{stem}: one pool per vector file");
        let pool = &config.pools[0];
        let placement = pool.placement();
        let tsv = std::fs::read_to_string(yml.with_extension("tsv")).expect("tsv beside yml");
        let binary = stem.starts_with("bin_");
        let mut mismatches = 0usize;
        let mut lines = 0usize;
        for line in tsv.lines() {
            let (key, expected) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("{stem}: bad line {line:?}"));
            let key = if binary {
                unhex(key)
            } else {
                key.as_bytes().to_vec()
            };
            let index = placement.server_for(&key).expect("every server is live");
            if pool.servers[index].name != expected {
                mismatches += 1;
            }
            lines += 1;
        }
        keys_checked += lines;
        assert!(lines > 0, "{stem}: empty vector file");
        if mismatches > 0 {
            failures.push(format!(
                "{stem}: {mismatches}/{lines} keys placed differently"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(keys_checked >= 40_000, "only {keys_checked} keys checked");
}

#[test]
fn float32_vectors_have_the_documented_point_counts() {
    let config = Config::load(&vectors_dir().join("ketama_25nodes_f32_156points.yml"))
        .expect("vector config");
    let placement = config.pools[0].placement();
    // 25 servers x 156 points (not 160), as nutcracker's single-precision arithmetic gives.
    assert_eq!(placement.continuum().len(), 25 * 156);
}
