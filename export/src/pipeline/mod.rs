//! The export pipeline: checkpoint folders in, a model directory out, as a row of stages.
//!
//! 1. Check the inputs (`checks`): `--out` apart from every input folder and free to
//!    write (empty, absent, or `--force`).
//! 2. Read: the layout and configs ([`Source`]), their dimensions checked; the
//!    checkpoints' headers (no tensor data yet); the tokenizer converted. Anything wrong
//!    with the inputs fails here, before a byte is written.
//! 3. Stage (`staging`): a temporary sibling of `out`, with room for the weights.
//! 4. Build the graphs into it (`build`), streaming weights one tensor at a time; write
//!    `tokenizer.json`.
//! 5. Hash every file written and every source file read.
//! 6. Write `manifest.json`.
//! 7. Commit: the staged folder renamed over `out`. Any earlier error removes it instead.

mod build;
mod checks;
mod staging;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config;
use crate::error::{io_err, ExportError};
use crate::graphs::Weights;
use crate::layout::{Source, Tensors};
use crate::manifest::{
    Dtype, Flavour, Graphs, Manifest, PreprocessSpec, ProjectorSpec, SourceSpec, TokenizerSpec,
    FORMAT_VERSION, MANIFEST_FILE,
};
use crate::tokenizer::{self, SpecialIds, TokenizerError};
use staging::sha256_file;

/// Graph and tokenizer file names inside a model directory.
pub const VISION_FILE: &str = "vision.onnx";
pub const PROJECTOR_FILE: &str = "projector.onnx";
pub const EMBED_FILE: &str = "embed.onnx";
pub const DECODER_FILE: &str = "decoder.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// `tokenizer_image_token`'s placeholder id for the image slot.
pub const IMAGE_TOKEN_ID: i64 = -200;
pub const TEMPLATE: &str = "llava_v1";

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// LLaVA checkpoint folder (original or llava-hf layout: config.json, weights,
    /// tokenizer.model) or a LoRA adapter folder (see `layout`).
    pub checkpoint: PathBuf,
    /// CLIP checkpoint folder (config.json, weights, preprocessor_config.json optional) for
    /// the original layout; `None` for llava-hf, whose tower is inside.
    pub vision_tower: Option<PathBuf>,
    /// The base checkpoint of a LoRA adapter `checkpoint`.
    pub base: Option<PathBuf>,
    /// Model directory to write.
    pub out: PathBuf,
    pub dtype: Dtype,
    /// Replace a non-empty `out`.
    pub force: bool,
    /// Seeded random weights of the configs' shapes instead of the checkpoints' (benchmarks).
    pub random_weights: bool,
    /// Decoder graph flavour (plain ONNX ops, or ONNX Runtime contrib ops).
    pub flavour: Flavour,
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub out: PathBuf,
    pub manifest: Manifest,
    /// Bytes of weights written per graph file.
    pub weight_bytes: BTreeMap<String, u64>,
    pub seconds: f64,
}

/// The tokenizer conversion, as a parameter so tests can export graphs without it.
pub type TokenizerFn<'a> = &'a dyn Fn(&[u8]) -> Result<(String, SpecialIds), TokenizerError>;

/// Exports a model directory (see the crate docs for the contract).
pub fn export(opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    export_with(opts, &tokenizer::tokenizer_json_from_sentencepiece)
}

/// [`export`] with the SentencePiece converter given by the caller.
pub fn export_with(
    opts: &ExportOptions,
    tokenize: TokenizerFn,
) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    // 1-2. Check and read the inputs: nothing is written before they pass.
    checks::check_apart(opts)?;
    checks::check_out(&opts.out, opts.force)?;
    let inputs = Inputs::read(opts, tokenize)?;

    // 3-4. Stage, then build the graphs and the tokenizer into it.
    let staging = staging::Staging::create(&opts.out)?;
    let needed = checks::estimated_bytes(&inputs.src, inputs.emitted, opts.dtype);
    checks::check_space(&staging.path, needed)?;
    let (w_llava, w_clip) = match &inputs.weights {
        Some((llava, clip)) => (Weights::Checkpoint(&**llava), Weights::Checkpoint(&**clip)),
        None => (Weights::Random, Weights::Random),
    };
    let (graphs, weight_bytes) = build::build_graphs(
        &staging.path,
        &inputs.src,
        inputs.emitted,
        opts,
        &w_llava,
        &w_clip,
    )?;
    let tok_path = staging.path.join(TOKENIZER_FILE);
    std::fs::write(&tok_path, &inputs.tokenizer_json).map_err(io_err(&tok_path))?;

    // 5-7. Hash what was written and read, write the manifest, commit.
    let model_files = staging::hash_outputs(&staging.path)?;
    let mut files = BTreeMap::new();
    for path in &inputs.hashed {
        files.insert(inputs.src.hash_key(path), sha256_file(path)?);
    }
    let manifest = inputs.into_manifest(opts, graphs, model_files, files);
    write_manifest(&staging.path, &manifest)?;
    staging.commit(&opts.out)?;
    Ok(ExportReport {
        out: opts.out.clone(),
        manifest,
        weight_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the export reads, read and checked before anything is written.
struct Inputs {
    src: Source,
    preprocess: PreprocessSpec,
    /// Vision layers the graph keeps (up to the selected one).
    emitted: usize,
    /// Source files whose sha256 the manifest records, in the order read.
    hashed: Vec<PathBuf>,
    /// Decoder-side and tower-side checkpoints (headers only); `None` for random weights.
    weights: Option<(Tensors, Tensors)>,
    tokenizer_json: String,
    special: SpecialIds,
}

impl Inputs {
    /// Configs first (a bad config fails before anything else is opened), then the
    /// checkpoint headers, then the tokenizer (cheap, and its failure should not waste an
    /// export).
    fn read(opts: &ExportOptions, tokenize: TokenizerFn) -> Result<Inputs, ExportError> {
        let src = Source::resolve(
            &opts.checkpoint,
            opts.base.as_deref(),
            opts.vision_tower.as_deref(),
        )?;
        let preprocess = config::parse_preprocessor(&src.preprocessor)?;
        let emitted = checks::check_dims(&src, opts.flavour)?;
        let mut hashed = vec![src.llava_config.clone(), src.clip_config.clone()];
        if src.preprocessor.exists() {
            hashed.push(src.preprocessor.clone());
        }

        let weights = if opts.random_weights {
            None
        } else {
            let (llava, clip) = src.open_weights()?;
            hashed.extend(llava.files().iter().chain(clip.files()).cloned());
            Some((llava, clip))
        };

        let sp_bytes = std::fs::read(&src.tokenizer).map_err(io_err(&src.tokenizer))?;
        let (tokenizer_json, special) =
            tokenize(&sp_bytes).map_err(|source| ExportError::Tokenizer {
                path: src.tokenizer.clone(),
                source,
            })?;
        hashed.push(src.tokenizer.clone());
        Ok(Inputs {
            src,
            preprocess,
            emitted,
            hashed,
            weights,
            tokenizer_json,
            special,
        })
    }

    /// The manifest of the export: these inputs, the graphs written, the sha256 of the
    /// files written (`model_files`) and of the source files read (`files`).
    fn into_manifest(
        self,
        opts: &ExportOptions,
        graphs: Graphs,
        model_files: BTreeMap<String, String>,
        files: BTreeMap<String, String>,
    ) -> Manifest {
        let (src, special) = (&self.src, &self.special);
        Manifest {
            format_version: FORMAT_VERSION,
            exporter_version: format!("vlguard-export {}", env!("CARGO_PKG_VERSION")),
            dtype: opts.dtype,
            vision: build::vision_spec(&src.clip, &src.llava, self.emitted),
            projector: ProjectorSpec {
                kind: src.llava.projector.as_str().to_string(),
                input_size: src.llava.mm_hidden_size,
                output_size: src.llava.llama.hidden_size,
            },
            decoder: build::decoder_spec(&src.llava, opts.flavour),
            preprocess: self.preprocess,
            tokenizer: TokenizerSpec {
                file: TOKENIZER_FILE.to_string(),
                bos_id: special.bos,
                eos_id: special.eos,
                unk_id: special.unk,
                image_token_id: IMAGE_TOKEN_ID,
                template: TEMPLATE.to_string(),
            },
            graphs,
            files: model_files,
            source: SourceSpec {
                checkpoint: opts.checkpoint.display().to_string(),
                vision_tower: src.vision_dir.display().to_string(),
                files,
            },
        }
    }
}

/// `manifest.json` (pretty JSON, one trailing newline) into `dir`.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ExportError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(manifest).map_err(|e| ExportError::Io {
        path: manifest_path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&manifest_path, text + "\n").map_err(io_err(&manifest_path))
}
