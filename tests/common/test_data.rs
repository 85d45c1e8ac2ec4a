//! The data the tests read: files the repository carries (`tests/data`, whose README.md
//! says where each one comes from; the golden bundle's checkpoint and images are the
//! repository's `models/demo-src` and `data/mini`), and the files it cannot carry:
//! VLGuard's `test.json` and `train.json`, gated on the Hugging Face Hub behind terms each
//! user accepts, looked for where `vlguard-ort fetch dataset [--with-train]` puts them.
//!
//! A carried file that is missing fails the test loudly; a test that needs the fetched
//! dataset prints one `skipped: needs the fetched dataset (data/VLGuard/test.json)` line
//! and passes when it is absent. Used by the integration tests (`#[path]`) and by the
//! library's unit tests (`src/lib.rs`), so both say the same thing.

#![allow(dead_code)] // each test file uses a different part of this module

use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;

/// Where `vlguard-ort fetch dataset` puts the gated test set, from the repository root.
pub const FETCHED_TEST_JSON: &str = "data/VLGuard/test.json";

/// `REL` from the repository root, asserting that it exists.
pub fn repo_file(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    assert!(
        p.exists(),
        "test data {} is missing from the checkout (tests/data/README.md lists what the \
         tests read)",
        p.display()
    );
    p
}

/// The JSON lines of `REL` (from the repository root).
pub fn jsonl(rel: &str) -> Vec<Value> {
    let p = repo_file(rel);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The fetched VLGuard test.json, or `None` after printing the skip line.
pub fn fetched_test_json() -> Option<PathBuf> {
    fetched(FETCHED_TEST_JSON)
}

/// Where `vlguard-ort fetch dataset --with-train` puts the gated training set.
pub const FETCHED_TRAIN_JSON: &str = "data/VLGuard/train.json";

/// The fetched VLGuard train.json, or `None` after printing the skip line.
pub fn fetched_train_json() -> Option<PathBuf> {
    fetched(FETCHED_TRAIN_JSON)
}

/// `rel` (a fetched, gated file) from the repository root, or `None` after the skip line.
fn fetched(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    if p.is_file() {
        return Some(p);
    }
    // Written past the test harness's capture (which only takes print!/eprint!), so the
    // skip shows in a plain `cargo test`; libtest names each test's thread after it.
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(|n| format!("{n}: "))
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "{test}skipped: needs the fetched dataset ({rel})"
    );
    None
}
