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

pub mod checkpoint;
pub mod config;
pub mod files;
pub mod graph_io;
pub mod graphs;
pub mod layout;
pub mod limits;
pub mod lora;
pub mod manifest;
pub mod onnx;
pub mod pickle;
pub mod tensorrt;
pub mod tokenizer;
pub mod wire;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::checkpoint::CheckpointError;
use crate::config::{ClipVisionConfig, ConfigError, LlavaConfig};
use crate::graphs::{Probes, Weights};
use crate::layout::{LayoutError, Source};
use crate::lora::LoraError;
use crate::manifest::{
    DecoderSpec, GraphKind, Graphs, Manifest, ProjectorSpec, SourceSpec, TokenizerSpec, VisionSpec,
    FORMAT_VERSION, MANIFEST_FILE,
};
pub use crate::manifest::{Dtype, Flavour};
use crate::onnx::OnnxError;
use crate::tokenizer::{SpecialIds, TokenizerError};

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

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{out} exists and is not empty; pass --force to replace it")]
    OutNotEmpty { out: PathBuf },
    #[error("{out} exists and is not a directory")]
    OutNotDir { out: PathBuf },
    #[error("--out {out} {relation} the {what} {input}: the export would replace what it reads; choose another --out")]
    OutOverlapsInput {
        out: PathBuf,
        relation: &'static str,
        what: &'static str,
        input: PathBuf,
    },
    #[error("{path}: `{field}` {message}")]
    Bound {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error("{dir} has {free} bytes free; this export writes about {needed} bytes (the weights at this dtype): free some space or export elsewhere")]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        source: TokenizerError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{llava}: mm_hidden_size {mm_hidden} differs from the vision tower's hidden_size {clip_hidden} ({clip})")]
    HiddenMismatch {
        llava: PathBuf,
        clip: PathBuf,
        mm_hidden: usize,
        clip_hidden: usize,
    },
    #[error("{path}: the fused decoder needs a head size that is a multiple of 16 (ONNX Runtime's GroupQueryAttention); this model's is {head_dim}: export it with --decoder plain")]
    FusedHeadDim { path: PathBuf, head_dim: usize },
    #[error(
        "{path}: mm_vision_select_layer {select} is out of range for a tower of {layers} layers"
    )]
    SelectLayer {
        path: PathBuf,
        select: i64,
        layers: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
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
    check_apart(opts)?;
    check_out(&opts.out, opts.force)?;

    // Configs first: a bad config fails before anything is written.
    let src = Source::resolve(
        &opts.checkpoint,
        opts.base.as_deref(),
        opts.vision_tower.as_deref(),
    )?;
    let preprocess = config::parse_preprocessor(&src.preprocessor)?;
    let emitted = check_dims(&src, opts.flavour)?;
    let mut hashed = vec![src.llava_config.clone(), src.clip_config.clone()];
    if src.preprocessor.exists() {
        hashed.push(src.preprocessor.clone());
    }

    // Checkpoint headers (no tensor data yet).
    let weights = if opts.random_weights {
        None
    } else {
        let (llava, clip) = src.open_weights()?;
        hashed.extend(llava.files.iter().chain(&clip.files).cloned());
        Some((llava, clip))
    };

    // Tokenizer before the graphs: cheap, and its failure should not waste an export.
    let sp_bytes = std::fs::read(&src.tokenizer).map_err(io_err(&src.tokenizer))?;
    let (tokenizer_json, special) =
        tokenize(&sp_bytes).map_err(|source| ExportError::Tokenizer {
            path: src.tokenizer.clone(),
            source,
        })?;
    hashed.push(src.tokenizer.clone());

    let staging = Staging::create(&opts.out)?;
    check_space(&staging.path, estimated_bytes(&src, emitted, opts.dtype))?;
    let (w_llava, w_clip) = match &weights {
        Some((llava, clip)) => (Weights::Checkpoint(llava), Weights::Checkpoint(clip)),
        None => (Weights::Random, Weights::Random),
    };
    let (graphs, weight_bytes) =
        build_graphs(&staging.path, &src, emitted, opts, &w_llava, &w_clip)?;
    let tok_path = staging.path.join(TOKENIZER_FILE);
    std::fs::write(&tok_path, tokenizer_json).map_err(io_err(&tok_path))?;
    let model_files = hash_outputs(&staging.path)?;

    let mut files = BTreeMap::new();
    for path in &hashed {
        files.insert(src.hash_key(path), sha256_file(path)?);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        exporter_version: format!("vlguard-export {}", env!("CARGO_PKG_VERSION")),
        dtype: opts.dtype,
        vision: vision_spec(&src.clip, &src.llava, emitted),
        projector: ProjectorSpec {
            kind: src.llava.projector.as_str().to_string(),
            input_size: src.llava.mm_hidden_size,
            output_size: src.llava.llama.hidden_size,
        },
        decoder: decoder_spec(&src.llava, opts.flavour),
        preprocess,
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
    };
    let manifest_path = staging.path.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| ExportError::Io {
        path: manifest_path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&manifest_path, text + "\n").map_err(io_err(&manifest_path))?;
    staging.commit(&opts.out)?;
    Ok(ExportReport {
        out: opts.out.clone(),
        manifest,
        weight_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The checks between configs: tower width = projector input, a selectable layer, a head
/// size the fused decoder takes. Returns the number of vision layers to emit.
fn check_dims(src: &Source, flavour: Flavour) -> Result<usize, ExportError> {
    let (llava, clip) = (&src.llava, &src.clip);
    check_bounds(src)?;
    if llava.mm_hidden_size != clip.hidden_size {
        return Err(ExportError::HiddenMismatch {
            llava: src.llava_config.clone(),
            clip: src.clip_config.clone(),
            mm_hidden: llava.mm_hidden_size,
            clip_hidden: clip.hidden_size,
        });
    }
    let emitted = graphs::layers_emitted(llava.select_layer, clip.num_layers).ok_or(
        ExportError::SelectLayer {
            path: src.llava_config.clone(),
            select: llava.select_layer,
            layers: clip.num_layers,
        },
    )?;
    if flavour == Flavour::Fused && llava.llama.head_dim % 16 != 0 {
        return Err(ExportError::FusedHeadDim {
            path: src.llava_config.clone(),
            head_dim: llava.llama.head_dim,
        });
    }
    Ok(emitted)
}

/// Every dimension of both configs within [`limits`], before anything is allocated or
/// written.
fn check_bounds(src: &Source) -> Result<(), ExportError> {
    use limits::*;
    let (l, c) = (&src.llava.llama, &src.clip);
    let llava = [
        ("hidden_size", l.hidden_size, MAX_HIDDEN),
        ("num_hidden_layers", l.num_layers, MAX_LAYERS),
        ("num_attention_heads", l.num_heads, MAX_HEADS),
        ("num_key_value_heads", l.num_kv_heads, MAX_HEADS),
        ("head_dim", l.head_dim, MAX_HIDDEN),
        ("intermediate_size", l.intermediate_size, MAX_INTERMEDIATE),
        ("vocab_size", l.vocab_size, MAX_VOCAB),
        (
            "max_position_embeddings",
            l.max_position_embeddings,
            MAX_CONTEXT,
        ),
        ("mm_hidden_size", src.llava.mm_hidden_size, MAX_HIDDEN),
    ];
    let clip = [
        ("hidden_size", c.hidden_size, MAX_HIDDEN),
        ("intermediate_size", c.intermediate_size, MAX_INTERMEDIATE),
        ("num_hidden_layers", c.num_layers, MAX_LAYERS),
        ("num_attention_heads", c.num_heads, MAX_HEADS),
        ("image_size", c.image_size, MAX_IMAGE_SIDE),
        ("patch_size", c.patch_size, MAX_IMAGE_SIDE),
    ];
    for (path, fields) in [
        (&src.llava_config, &llava[..]),
        (&src.clip_config, &clip[..]),
    ] {
        for &(field, value, max) in fields {
            limits::check(field, value, max).map_err(|(field, message)| ExportError::Bound {
                path: path.clone(),
                field,
                message,
            })?;
        }
    }
    Ok(())
}

/// The weight bytes the four graphs will hold at `dtype`: the free space an export needs
/// (graph structure and the tokenizer are small beside them).
fn estimated_bytes(src: &Source, emitted: usize, dtype: Dtype) -> u64 {
    let (l, c) = (&src.llava.llama, &src.clip);
    let (h, hc) = (l.hidden_size as u64, c.hidden_size as u64);
    let kv = (l.num_kv_heads * l.head_dim) as u64;
    let patch = (c.num_channels * c.patch_size * c.patch_size) as u64;
    let vision = hc * patch
        + hc * (c.num_positions() as u64 + 1)
        + emitted as u64 * (4 * (hc * hc + hc) + 2 * hc * c.intermediate_size as u64 + 6 * hc);
    let projector = hc * h + h * h + 2 * h;
    let layer = 2 * h * h + 2 * h * kv + 3 * h * l.intermediate_size as u64 + 2 * h;
    let decoder = l.num_layers as u64 * layer + h + l.vocab_size as u64 * h;
    let embed = l.vocab_size as u64 * h;
    let per_value = match dtype {
        Dtype::Fp32 => 4,
        Dtype::Fp16 => 2,
    };
    (vision + projector + decoder + embed) * per_value
}

/// `Err` when the filesystem holding `dir` has less free space than `needed` bytes.
fn check_space(dir: &Path, needed: u64) -> Result<(), ExportError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| ExportError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    // SAFETY: a NUL-terminated path and a zeroed statvfs for the call to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        // Not knowing is no reason to refuse: the write itself still fails cleanly.
        return Ok(());
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    if free < needed {
        return Err(ExportError::NoSpace {
            dir: dir.to_path_buf(),
            needed,
            free,
        });
    }
    Ok(())
}

/// sha256 of every file in the model folder (graphs, their external data, the
/// tokenizer), keyed by file name: a run checks them at load, so weights overwritten in
/// place are caught instead of mixed into a resumed run.
fn hash_outputs(dir: &Path) -> Result<BTreeMap<String, String>, ExportError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE && entry.path().is_file() {
            files.insert(name, sha256_file(&entry.path())?);
        }
    }
    Ok(files)
}

/// Writes the four graphs into `dir`; their specs and weight bytes per file.
fn build_graphs(
    dir: &Path,
    src: &Source,
    emitted: usize,
    opts: &ExportOptions,
    w_llava: &Weights,
    w_clip: &Weights,
) -> Result<(Graphs, BTreeMap<String, u64>), ExportError> {
    let (llava, dtype) = (&src.llava, opts.dtype);
    let vision = graphs::build_vision(dir, VISION_FILE, &src.clip, llava, emitted, dtype, w_clip)?;
    let projector = graphs::build_projector(dir, PROJECTOR_FILE, llava, dtype, w_llava)?;
    let embed = graphs::build_embed(dir, EMBED_FILE, llava, dtype, w_llava)?;
    let decoder = match opts.flavour {
        Flavour::Plain => {
            graphs::build_decoder(dir, DECODER_FILE, llava, dtype, w_llava, Probes::Off)?
        }
        Flavour::Fused => {
            graphs::build_fused_decoder(dir, DECODER_FILE, llava, dtype, w_llava, Probes::Off)?
        }
    };
    let weight_bytes = [
        (VISION_FILE, vision.weight_bytes),
        (PROJECTOR_FILE, projector.weight_bytes),
        (EMBED_FILE, embed.weight_bytes),
        (DECODER_FILE, decoder.weight_bytes),
    ]
    .into_iter()
    .map(|(f, b)| (f.to_string(), b))
    .collect();
    let graphs = Graphs::exported(&decoder_spec(llava, opts.flavour));
    // The manifest names the tensors the builders declared, in their order.
    for (kind, built) in [
        (GraphKind::Vision, &vision),
        (GraphKind::Projector, &projector),
        (GraphKind::Embed, &embed),
        (GraphKind::Decoder, &decoder),
    ] {
        debug_assert_eq!(graphs.inputs(kind), built.inputs, "{kind} inputs");
        debug_assert_eq!(graphs.outputs(kind), built.outputs, "{kind} outputs");
    }
    Ok((graphs, weight_bytes))
}

fn vision_spec(clip: &ClipVisionConfig, llava: &LlavaConfig, emitted: usize) -> VisionSpec {
    VisionSpec {
        image_size: clip.image_size,
        patch_size: clip.patch_size,
        num_tokens: if llava.select_feature_keeps_cls {
            clip.num_positions()
        } else {
            clip.num_positions() - 1
        },
        hidden_size: clip.hidden_size,
        num_heads: clip.num_heads,
        intermediate_size: clip.intermediate_size,
        num_layers: clip.num_layers,
        select_layer: llava.select_layer,
        layers_emitted: emitted,
        layer_norm_eps: clip.layer_norm_eps,
        hidden_act: clip.hidden_act.clone(),
    }
}

fn decoder_spec(llava: &LlavaConfig, flavour: Flavour) -> DecoderSpec {
    let l = &llava.llama;
    DecoderSpec {
        hidden_size: l.hidden_size,
        num_layers: l.num_layers,
        num_heads: l.num_heads,
        num_kv_heads: l.num_kv_heads,
        head_dim: l.head_dim,
        intermediate_size: l.intermediate_size,
        vocab_size: l.vocab_size,
        max_position_embeddings: l.max_position_embeddings,
        rope_theta: l.rope_theta,
        rms_norm_eps: l.rms_norm_eps,
        flavour,
    }
}

/// `out` must not be, contain or lie inside an input folder: with `--force` the staged
/// folder replaces `out` whole, so an `out` at or above the checkpoint deleted it (and
/// anything beside it). Compared as real paths (symlinks and `..` resolved).
fn check_apart(opts: &ExportOptions) -> Result<(), ExportError> {
    let out = real_path(&opts.out);
    let inputs = [
        ("checkpoint", Some(&opts.checkpoint)),
        ("vision tower", opts.vision_tower.as_ref()),
        ("base checkpoint", opts.base.as_ref()),
    ];
    for (what, input) in inputs {
        let Some(input) = input else { continue };
        let real = real_path(input);
        let relation = if real == out {
            "is"
        } else if real.starts_with(&out) {
            "contains"
        } else if out.starts_with(&real) {
            "lies inside"
        } else {
            continue;
        };
        return Err(ExportError::OutOverlapsInput {
            out: opts.out.clone(),
            relation,
            what,
            input: input.clone(),
        });
    }
    Ok(())
}

/// `path` made absolute with symlinks resolved as far as it exists; the rest (not there
/// yet, so no links in it) appended with `.` and `..` applied.
fn real_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    let mut real = loop {
        if let Ok(real) = existing.canonicalize() {
            break real;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            // Nothing of it exists (not even `/`): compared as written.
            _ => return absolute,
        }
    };
    for name in rest.iter().rev() {
        match Path::new(name).components().next() {
            Some(Component::ParentDir) => {
                real.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => real.push(name),
        }
    }
    real
}

fn check_out(out: &Path, force: bool) -> Result<(), ExportError> {
    match std::fs::metadata(out) {
        Err(_) => Ok(()),
        Ok(m) if !m.is_dir() => Err(ExportError::OutNotDir {
            out: out.to_path_buf(),
        }),
        Ok(_) => {
            let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
            if entries.next().is_some() && !force {
                Err(ExportError::OutNotEmpty {
                    out: out.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
    }
}

/// A temporary sibling of the output folder, removed on drop unless committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(out: &Path) -> Result<Staging, ExportError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(Staging {
            path,
            committed: false,
        })
    }

    /// Moves the staged folder to `out`, replacing whatever `check_out` allowed there.
    fn commit(mut self, out: &Path) -> Result<(), ExportError> {
        if out.exists() {
            let old = self.path.with_extension("old");
            std::fs::rename(out, &old).map_err(io_err(out))?;
            std::fs::rename(&self.path, out).map_err(io_err(out))?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            std::fs::rename(&self.path, out).map_err(io_err(out))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Lowercase hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ExportError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
