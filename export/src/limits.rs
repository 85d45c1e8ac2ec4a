//! Bounds on every dimension that sizes a tensor, shared by the exporter (configs, before
//! anything is written) and the runtime (the manifest, before anything runs). Far above
//! any LLaVA-1.5 (7B: hidden 4096, MLP 11008; 13B: 5120 / 13824; vocab 32,000 or 32,064;
//! context 4,096; image 336), far below what would exhaust memory or disk: a config with
//! `vocab_size` 2,000,000,000 or `num_hidden_layers` 10^9 is an error naming the field,
//! not 54 GB written or a 48 GB allocation.

pub const MAX_HIDDEN: usize = 1 << 16;
pub const MAX_INTERMEDIATE: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_HEADS: usize = 1 << 10;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_CONTEXT: usize = 1 << 20;
pub const MAX_IMAGE_SIDE: usize = 4096;

/// `Err((field, message))` when `value` is 0 or over `max`.
pub fn check(field: &'static str, value: usize, max: usize) -> Result<(), (&'static str, String)> {
    if value == 0 || value > max {
        return Err((field, format!("is {value}; it must be between 1 and {max}")));
    }
    Ok(())
}
