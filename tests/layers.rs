//! The layers of `src/` import only downward: each module's `crate::` paths name only the
//! modules below it (README.md, Layout). A new import that climbs fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module and the modules it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("hash", &[]),
    ("logging", &[]),
    ("resp", &[]),
    ("config", &["hash"]),
    ("command", &["resp"]),
    ("engine", &["command", "resp"]),
    ("upstream", &["config", "hash", "resp", "command"]),
    (
        "migrate",
        &["config", "hash", "resp", "command", "engine", "upstream"],
    ),
    (
        "fleet",
        &[
            "config", "hash", "resp", "command", "engine", "upstream", "migrate",
        ],
    ),
    (
        "proxy",
        &[
            "config", "hash", "resp", "command", "engine", "upstream", "migrate", "fleet",
        ],
    ),
    ("stats", &["upstream"]),
    (
        "admin",
        &[
            "config", "hash", "resp", "command", "engine", "upstream", "migrate", "fleet", "proxy",
            "stats",
        ],
    ),
];

/// The `crate::NAME` modules a source file names.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

/// Every `.rs` file of module `name` (a folder or a file).
fn files(src: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let folder = src.join(name);
    if folder.is_dir() {
        let mut out = Vec::new();
        let mut stack = vec![folder];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        out
    } else {
        vec![src.join(format!("{name}.rs"))]
    }
}

#[test]
fn every_layer_imports_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut climbing = Vec::new();
    for (module, allowed) in ALLOWED {
        for file in files(&src, module) {
            let text = std::fs::read_to_string(&file).expect("source file");
            for name in imports(&text) {
                if name != *module && !allowed.contains(&name.as_str()) {
                    climbing.push(format!("{} imports crate::{name}", file.display()));
                }
            }
        }
    }
    assert!(climbing.is_empty(), "{climbing:#?}");
    // Every top-level module is in the table.
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let name = line.trim_end_matches(';');
        assert!(
            ALLOWED.iter().any(|(m, _)| *m == name),
            "{name} has no place in the layers"
        );
    }
}
