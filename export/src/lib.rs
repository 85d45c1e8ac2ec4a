//! vlguard-export: LLaVA-1.5 checkpoints to a vlguard-ort model directory, with no Python.
//!
//! Reads the original LLaVA layout (config.json + sharded PyTorch `.bin` or safetensors,
//! SentencePiece `tokenizer.model`) and a CLIP vision checkpoint, and writes ONNX graphs
//! (vision, projector, embed, decoder), `tokenizer.json` and `manifest.json`.
//!
//! Contract of [`export`]:
//! - Input: `--checkpoint` (LLaVA folder), `--vision-tower` (CLIP folder), `--out`, dtype.
//! - Output: `out/` holding `manifest.json`, `{vision,projector,embed,decoder}.onnx` with
//!   their `*.onnx.data` weights, and `tokenizer.json`.
//! - Everything is written into a temporary sibling of `out` that is renamed into place at
//!   the end: any error (missing shard, missing key, wrong shape, unsupported projector,
//!   non-empty `out` without `force`) leaves no half-written model directory.
//! - Weights are streamed one tensor at a time; the checkpoint is never held in memory.

pub mod checkpoint;
pub mod config;
pub mod graphs;
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

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::{ClipVisionConfig, ConfigError, LlavaConfig};
use crate::graphs::Weights;
use crate::manifest::{
    DecoderSpec, GraphSpec, Graphs, Manifest, ProjectorSpec, SourceSpec, TokenizerSpec, VisionSpec,
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
    /// LLaVA checkpoint folder: config.json, weights, tokenizer.model.
    pub checkpoint: PathBuf,
    /// CLIP checkpoint folder: config.json, weights, preprocessor_config.json (optional).
    pub vision_tower: PathBuf,
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
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
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
    check_out(&opts.out, opts.force)?;

    // Configs first: a bad config fails before anything is written.
    let llava_path = opts.checkpoint.join("config.json");
    let clip_path = opts.vision_tower.join("config.json");
    let llava = config::parse_llava(&llava_path)?;
    let clip = config::parse_clip(&clip_path)?;
    let pre_path = opts.vision_tower.join("preprocessor_config.json");
    let preprocess = config::parse_preprocessor(&pre_path)?;
    if llava.mm_hidden_size != clip.hidden_size {
        return Err(ExportError::HiddenMismatch {
            llava: llava_path,
            clip: clip_path,
            mm_hidden: llava.mm_hidden_size,
            clip_hidden: clip.hidden_size,
        });
    }
    let emitted = graphs::layers_emitted(llava.select_layer, clip.num_layers).ok_or(
        ExportError::SelectLayer {
            path: llava_path.clone(),
            select: llava.select_layer,
            layers: clip.num_layers,
        },
    )?;

    if opts.flavour == Flavour::Fused && llava.llama.head_dim % 16 != 0 {
        return Err(ExportError::FusedHeadDim {
            path: llava_path,
            head_dim: llava.llama.head_dim,
        });
    }

    let mut hashed: Vec<(String, PathBuf)> = vec![
        ("checkpoint/config.json".into(), llava_path.clone()),
        ("vision_tower/config.json".into(), clip_path.clone()),
    ];
    if pre_path.exists() {
        hashed.push((
            "vision_tower/preprocessor_config.json".into(),
            pre_path.clone(),
        ));
    }

    // Checkpoint headers (no tensor data yet).
    let (llava_ckpt, clip_ckpt) = if opts.random_weights {
        (None, None)
    } else {
        let a = Checkpoint::open(&opts.checkpoint)?;
        let b = Checkpoint::open(&opts.vision_tower)?;
        for (prefix, ck) in [("checkpoint", &a), ("vision_tower", &b)] {
            for f in &ck.files {
                let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
                hashed.push((format!("{prefix}/{}", name.unwrap_or_default()), f.clone()));
            }
        }
        (Some(a), Some(b))
    };

    // Tokenizer before the graphs: cheap, and its failure should not waste an export.
    let sp_path = opts.checkpoint.join("tokenizer.model");
    let sp_bytes = std::fs::read(&sp_path).map_err(io_err(&sp_path))?;
    let (tokenizer_json, special) =
        tokenize(&sp_bytes).map_err(|source| ExportError::Tokenizer {
            path: sp_path.clone(),
            source,
        })?;
    hashed.push(("checkpoint/tokenizer.model".into(), sp_path));

    let staging = Staging::create(&opts.out)?;
    let dir = staging.path.clone();
    let w_llava = match &llava_ckpt {
        Some(c) => Weights::Checkpoint(c),
        None => Weights::Random,
    };
    let w_clip = match &clip_ckpt {
        Some(c) => Weights::Checkpoint(c),
        None => Weights::Random,
    };
    let mut weight_bytes = BTreeMap::new();
    let vision = graphs::build_vision(
        &dir,
        VISION_FILE,
        &clip,
        &llava,
        emitted,
        opts.dtype,
        &w_clip,
    )?;
    weight_bytes.insert(VISION_FILE.to_string(), vision.weight_bytes);
    let projector = graphs::build_projector(&dir, PROJECTOR_FILE, &llava, opts.dtype, &w_llava)?;
    weight_bytes.insert(PROJECTOR_FILE.to_string(), projector.weight_bytes);
    let embed = graphs::build_embed(&dir, EMBED_FILE, &llava, opts.dtype, &w_llava)?;
    weight_bytes.insert(EMBED_FILE.to_string(), embed.weight_bytes);
    let decoder = match opts.flavour {
        Flavour::Plain => graphs::build_decoder(
            &dir,
            DECODER_FILE,
            &llava,
            opts.dtype,
            &w_llava,
            graphs::Probes::Off,
        )?,
        Flavour::Fused => graphs::build_fused_decoder(
            &dir,
            DECODER_FILE,
            &llava,
            opts.dtype,
            &w_llava,
            graphs::Probes::Off,
        )?,
    };
    weight_bytes.insert(DECODER_FILE.to_string(), decoder.weight_bytes);

    let tok_path = dir.join(TOKENIZER_FILE);
    std::fs::write(&tok_path, tokenizer_json).map_err(io_err(&tok_path))?;

    let mut files = BTreeMap::new();
    for (key, path) in &hashed {
        files.insert(key.clone(), sha256_file(path)?);
    }
    let decoder_spec = decoder_spec(&llava, opts.flavour);
    let (dec_in, dec_out) = Manifest::decoder_io(&decoder_spec);
    debug_assert_eq!((&dec_in, &dec_out), (&decoder.inputs, &decoder.outputs));
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        exporter_version: format!("vlguard-export {}", env!("CARGO_PKG_VERSION")),
        dtype: opts.dtype,
        vision: vision_spec(&clip, &llava, emitted),
        projector: ProjectorSpec {
            kind: llava.projector.as_str().to_string(),
            input_size: llava.mm_hidden_size,
            output_size: llava.llama.hidden_size,
        },
        decoder: decoder_spec,
        preprocess,
        tokenizer: TokenizerSpec {
            file: TOKENIZER_FILE.to_string(),
            bos_id: special.bos,
            eos_id: special.eos,
            unk_id: special.unk,
            image_token_id: IMAGE_TOKEN_ID,
            template: TEMPLATE.to_string(),
        },
        graphs: Graphs {
            vision: spec(VISION_FILE, vision),
            projector: spec(PROJECTOR_FILE, projector),
            embed: spec(EMBED_FILE, embed),
            decoder: GraphSpec {
                file: DECODER_FILE.to_string(),
                inputs: dec_in,
                outputs: dec_out,
            },
        },
        source: SourceSpec {
            checkpoint: opts.checkpoint.display().to_string(),
            vision_tower: opts.vision_tower.display().to_string(),
            files,
        },
    };
    let manifest_path = dir.join(MANIFEST_FILE);
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

fn spec(file: &str, g: graphs::BuiltGraph) -> GraphSpec {
    GraphSpec {
        file: file.to_string(),
        inputs: g.inputs,
        outputs: g.outputs,
    }
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
