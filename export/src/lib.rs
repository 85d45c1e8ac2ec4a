//! vlguard-export: LLaVA-1.5 checkpoints to a vlguard-ort model directory, with no Python.
//!
//! Reads the original LLaVA layout (config.json + sharded PyTorch `.bin` or safetensors,
//! SentencePiece `tokenizer.model`) with a CLIP vision checkpoint, the llava-hf layout (tower
//! inside), and LoRA adapters on either (merged while streaming), see [`layout`] and
//! [`lora`]; writes ONNX graphs (vision, projector, embed, decoder), `tokenizer.json` and
//! `manifest.json`.
//!
//! Contract of [`export`]:
//! - Input: `--checkpoint` (LLaVA or adapter folder), `--vision-tower` (CLIP folder, original
//!   layout only), `--base` (an adapter's base), `--out`, dtype.
//! - Output: `out/` holding `manifest.json`, `{vision,projector,embed,decoder}.onnx` with
//!   their `*.onnx.data` weights, and `tokenizer.json`.
//! - Everything is written into a temporary sibling of `out` that is renamed into place at
//!   the end: any error (missing shard, missing key, wrong shape, unsupported projector,
//!   non-empty `out` without `force`) leaves no half-written model directory.
//! - Weights are streamed one tensor at a time; the checkpoint is never held in memory.
//!
//! Where things are: [`pipeline`] runs the export as stages (checks, reading, staging,
//! graph building, hashing, manifest, commit) and [`error`] holds its error. Beside it, one
//! module per input or output format: [`config`] (config.json files), [`checkpoint`]
//! (safetensors, PyTorch zips and shard indexes, via [`pickle`]), [`lora`] (adapters, a
//! layer over the checkpoint reader), [`layout`] (which layout a folder holds),
//! [`tokenizer`] (SentencePiece to tokenizer.json), [`onnx`] (the ONNX writer, over
//! [`wire`]), [`graphs`] (the graph builders), [`manifest`] (manifest.json), [`graph_io`]
//! and [`tensorrt`] (reading graphs back), [`files`] and [`limits`] (shared guards).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod files;
pub mod graph_io;
pub mod graphs;
pub mod layout;
pub mod limits;
pub mod lora;
pub mod manifest;
pub mod onnx;
pub mod pickle;
pub mod pipeline;
pub mod tensorrt;
pub mod tokenizer;
pub mod wire;

pub use crate::error::ExportError;
pub use crate::manifest::{Dtype, Flavour};
pub use crate::pipeline::{
    export, export_with, ExportOptions, ExportReport, TokenizerFn, DECODER_FILE, EMBED_FILE,
    IMAGE_TOKEN_ID, PROJECTOR_FILE, TEMPLATE, TOKENIZER_FILE, VISION_FILE,
};
