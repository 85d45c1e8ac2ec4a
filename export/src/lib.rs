//! vlguard-export: LLaVA-1.5 checkpoints to a vlguard-ort model directory, with no Python.
//!
//! Reads the original LLaVA layout (config.json + sharded PyTorch `.bin` or safetensors,
//! SentencePiece `tokenizer.model`) and a CLIP vision checkpoint, and writes ONNX graphs
//! (vision, projector, embed, decoder), `tokenizer.json` and `manifest.json`.

pub mod manifest;
pub mod tokenizer;
