//! Shard indexes (`model.safetensors.index.json`, `pytorch_model.bin.index.json`): which
//! files hold a sharded checkpoint's tensors.
//!
//! Guarantee: every shard name read is a plain file name (no `/`, `\\`, or leading `.`),
//! so a forged index cannot point outside the checkpoint folder; both the exporter and
//! `prepare` (which fetches the shards it lists) read indexes here.

use std::collections::BTreeSet;
use std::path::Path;

use super::{io_err, CheckpointError};

/// The shard file names an index's `weight_map` lists, sorted, each once.
pub fn read_index(path: &Path) -> Result<Vec<String>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |reason: String| CheckpointError::BadIndex {
        index: path.to_path_buf(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards = BTreeSet::new();
    for (key, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("`{key}` maps to a non-string")))?;
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            return Err(bad(format!(
                "shard name `{shard}` is not a plain file name"
            )));
        }
        shards.insert(shard.to_string());
    }
    Ok(shards.into_iter().collect())
}
