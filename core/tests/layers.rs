//! The layers of `pgvault-core`, checked against its `use` statements: a module may
//! import its own layer and the layers below it, never one above. `docs/ARCHITECTURE.md`
//! draws the same table; when a module moves, both change together.

#![allow(clippy::expect_used, clippy::panic)] // a broken source tree should fail the test loudly

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules of `core/src`, lowest layer first. Modules on one line share a
/// layer.
const LAYERS: &[&[&str]] = &[
    &["error", "units", "stop_signal"],
    &[
        "keys", "notify", "schedule", "postgres", "server", "storage",
    ],
    &["pipeline"],
    &["policy"],
    &["repository"],
    &["logical"],
    &["physical"],
    &["retention", "copy"],
    &["rotation"],
    &["drill"],
    &["runner"],
    &["status"],
    &["dr_plan"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("core/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `core/src` belongs to (`logical` for
/// `logical/restore.rs`, `units` for `units.rs`); `None` for `lib.rs`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// The top-level modules a file names through `crate::…`, outside comments.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules = BTreeMap::new();
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let own = layer_of(&module).unwrap_or_else(|| {
            panic!("module {module} is in no layer; add it to LAYERS and ARCHITECTURE.md")
        });
        modules.insert(module.clone(), own);
        let text = std::fs::read_to_string(file).expect("source is readable");
        for imported in imports(&text) {
            if imported == module {
                continue;
            }
            let Some(theirs) = layer_of(&imported) else {
                continue; // a crate-root item such as `crate::TOOL_VERSION`
            };
            if theirs > own {
                upward.push(format!(
                    "{} (layer {own}) imports crate::{imported} (layer {theirs})",
                    file.strip_prefix(&src).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(modules.len() > 10, "too few modules found: {modules:?}");
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert_eq!(
        imports("use crate::drill::report; // crate::runner in a comment"),
        vec!["drill".to_string()]
    );
    assert!(layer_of("drill") > layer_of("logical"));
}
