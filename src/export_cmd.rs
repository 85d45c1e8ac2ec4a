//! `vlguard-ort export`: flags to `vlguard_export::ExportOptions`, then a short summary.
//!
//! Input: the flags below. Output: the model directory `--out` (see `vlguard_export`), and
//! on stdout one line per graph (weight bytes) plus the dimensions that matter. Errors come
//! from the exporter unchanged (they name the file, key or shape), or name the bad
//! `--dtype`.

use std::path::PathBuf;
use std::process::ExitCode;

use vlguard_export::{Dtype, ExportError, ExportOptions, ExportReport};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Checkpoint folder: original LLaVA layout (config.json, weights, tokenizer.model),
    /// llava-hf layout (LlavaForConditionalGeneration, tower inside), or a LoRA adapter
    /// (adapter_config.json; give its base with --base).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// CLIP vision tower checkpoint folder (config.json, weights, preprocessor_config.json);
    /// needed by the original LLaVA layout only.
    #[arg(long)]
    pub vision_tower: Option<PathBuf>,
    /// The base checkpoint folder a LoRA adapter --checkpoint was trained on (Vicuna for
    /// LLaVA's own LoRA output, a llava-hf model for PEFT adapters on one); the adapter is
    /// merged into it while exporting.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight and activation dtype of the graphs: fp32 or fp16 (fp16 keeps norms and
    /// softmax in fp32).
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Replace a non-empty --out.
    #[arg(long)]
    pub force: bool,
    /// Seeded random weights of the configs' shapes instead of the checkpoints' weights
    /// (for benchmarks: needs only the config.json files and tokenizer.model).
    #[arg(long)]
    pub random_weights: bool,
    /// Decoder graph: `plain` (standard ONNX ops, every provider including TensorRT) or
    /// `fused` (ONNX Runtime contrib ops for CPU/CUDA: in-place KV cache, GroupQueryAttention).
    #[arg(long, default_value = "plain")]
    pub decoder: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--dtype: {0}")]
    Dtype(String),
    #[error("--decoder: {0}")]
    Flavour(String),
    #[error(transparent)]
    Export(#[from] ExportError),
}

impl ExportArgs {
    /// Validates the flags into the exporter's options.
    pub fn options(&self) -> Result<ExportOptions, Error> {
        let dtype: Dtype = self.dtype.parse().map_err(Error::Dtype)?;
        Ok(ExportOptions {
            checkpoint: self.checkpoint.clone(),
            vision_tower: self.vision_tower.clone(),
            base: self.base.clone(),
            out: self.out.clone(),
            dtype,
            force: self.force,
            random_weights: self.random_weights,
            flavour: self.decoder.parse().map_err(Error::Flavour)?,
        })
    }
}

pub fn command(args: &ExportArgs) -> Result<ExitCode, Error> {
    let opts = args.options()?;
    let report = vlguard_export::export(&opts)?;
    print!("{}", summary(&report));
    Ok(ExitCode::SUCCESS)
}

/// The text `export` prints: where, dtype, time, weights per graph, the key dimensions.
pub fn summary(report: &ExportReport) -> String {
    let m = &report.manifest;
    let mut out = format!(
        "exported {} ({}) in {:.1} s\n",
        report.out.display(),
        m.dtype.as_str(),
        report.seconds
    );
    for (file, bytes) in &report.weight_bytes {
        out += &format!(
            "  {file:<16} {:>10.1} MiB of weights\n",
            *bytes as f64 / 1048576.0
        );
    }
    out += &format!(
        "  vision: {} of {} layers, {} tokens x {}; decoder: {} layers, hidden {}, heads {} ({} kv), vocab {}\n",
        m.vision.layers_emitted,
        m.vision.num_layers,
        m.vision.num_tokens,
        m.vision.hidden_size,
        m.decoder.num_layers,
        m.decoder.hidden_size,
        m.decoder.num_heads,
        m.decoder.num_kv_heads,
        m.decoder.vocab_size
    );
    out
}
