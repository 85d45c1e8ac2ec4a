//! The read-only `../shared` folder beside the checkout (golden bundle, VLGuard data,
//! Llama-2 tokenizer cases). A test that needs it and cannot find it fails loudly.

#![allow(dead_code)] // each test file uses a different part of this module

use std::path::PathBuf;

use serde_json::Value;

/// `../shared/REL`, asserting that it exists.
pub fn shared(rel: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")).join(rel);
    assert!(
        p.exists(),
        "test data {} is missing: these tests need the shared folder beside the checkout \
         (../shared from the repository root)",
        p.display()
    );
    p
}

/// The JSON lines of `../shared/REL`.
pub fn jsonl(rel: &str) -> Vec<Value> {
    let p = shared(rel);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}
