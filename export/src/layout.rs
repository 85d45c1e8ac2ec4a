//! Checkpoint layouts: which one a folder holds, where its configs, tokenizer and vision
//! tower are, and its tensors under the names the graph builders read.
//!
//! The graph builders read the original LLaVA names (`model.embed_tokens.weight`,
//! `model.layers.N.*`, `model.norm.weight`, `lm_head.weight`, `model.mm_projector.{0,2}.*`)
//! and CLIP's (`vision_model.*`). Layouts read:
//! - original LLaVA (liuhaotian/llava-v1.5-*, ys-zong/llava-v1.5-*): `config.json` with the
//!   `mm_*` fields; the vision tower is a separate CLIP checkpoint (`--vision-tower`); the
//!   checkpoint's own `model.vision_tower.*` keys are ignored, as the reference ignores them.
//! - llava-hf (`LlavaForConditionalGeneration`, `config.json` with `text_config` /
//!   `vision_config`), keys in either style transformers writes: the original format
//!   (`language_model.model.*`, `language_model.lm_head.weight`,
//!   `multi_modal_projector.linear_{1,2}.*`, `vision_tower.vision_model.*`) or
//!   `save_original_format=False` (`model.language_model.*`, `lm_head.weight`,
//!   `model.multi_modal_projector.*`, `model.vision_tower.*`). The tower is inside, so
//!   `--vision-tower` is refused. A checkpoint holding one tensor under both styles is
//!   refused (which one is meant would be a guess).
//! - a LoRA adapter folder (`adapter_config.json`) on a base checkpoint of either layout
//!   (`--base`): LLaVA's own `finetune_lora.sh` output (its `config.json` is the llava
//!   config; the base is Vicuna, a `LlamaForCausalLM` whose keys are the original names) or
//!   a PEFT adapter on a llava-hf model (no config of its own: the base's is used). Merged
//!   as `lora` says.
//!
//! The tokenizer is the checkpoint folder's `tokenizer.model`, else the base's (LLaVA's LoRA
//! output ships none). Every error names the folder and the flag that fixes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{Checkpoint, CheckpointError, TensorSource};
use crate::config::{self, ClipVisionConfig, ConfigError, LlavaConfig, VisionTower};
use crate::lora::{Adapter, LoraError};

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_MODEL: &str = "tokenizer.model";
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// One side's weights (decoder or tower), shared: a llava-hf checkpoint feeds both.
pub type Tensors = Arc<dyn TensorSource>;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{dir} is a LoRA adapter{}: pass --base DIR with the checkpoint it was trained on (`vlguard-ort prepare` fetches it)", base_hint(.base))]
    AdapterNeedsBase { dir: PathBuf, base: Option<String> },
    #[error(
        "--base {base}: {dir} is not a LoRA adapter (no adapter_config.json), so it needs no base"
    )]
    BaseWithoutAdapter { dir: PathBuf, base: PathBuf },
    #[error("{config} is the original LLaVA layout, whose vision tower is a separate CLIP checkpoint (mm_vision_tower: {tower}): pass --vision-tower DIR")]
    VisionTowerNeeded { config: PathBuf, tower: String },
    #[error("--vision-tower {tower}: {config} is a llava-hf checkpoint with its own vision tower; drop --vision-tower")]
    VisionTowerInside { config: PathBuf, tower: PathBuf },
    #[error("no LLaVA config.json in {dir}{}", .base.as_ref().map(|b| format!(" or {}", b.display())).unwrap_or_default())]
    NoConfig { dir: PathBuf, base: Option<PathBuf> },
    #[error("no tokenizer.model (SentencePiece) in {}", .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
    NoTokenizer { looked: Vec<PathBuf> },
    /// A reader's own error, passed through (the export shows it as that reader's).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Lora(#[from] LoraError),
}

fn base_hint(base: &Option<String>) -> String {
    base.as_ref()
        .map(|b| format!(" on {b} (adapter_config.json)"))
        .unwrap_or_default()
}

/// Which layout the model's config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Original,
    LlavaHf,
}

impl Layout {
    /// The graph builders' name of a tensor of a checkpoint (or a parameter of the model an
    /// adapter wraps) in this layout; `None` for what the graphs never read.
    pub fn name(self, key: &str) -> Option<String> {
        match self {
            Layout::Original => original_name(key),
            Layout::LlavaHf => hf_name(key),
        }
    }
}

fn original_name(key: &str) -> Option<String> {
    let unused = key.starts_with("model.vision_tower.") || key.ends_with(".rotary_emb.inv_freq");
    (!unused).then(|| key.to_string())
}

/// llava-hf keys of both styles, most specific prefixes first.
const HF_RULES: [(&str, &str); 11] = [
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
    ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("multi_modal_projector.linear_2.", "model.mm_projector.2."),
    (
        "model.multi_modal_projector.linear_1.",
        "model.mm_projector.0.",
    ),
    (
        "model.multi_modal_projector.linear_2.",
        "model.mm_projector.2.",
    ),
    ("vision_tower.vision_model.", "vision_model."),
    ("model.vision_tower.vision_model.", "vision_model."),
    ("model.vision_tower.", "vision_model."),
];

fn hf_name(key: &str) -> Option<String> {
    if key.ends_with(".rotary_emb.inv_freq") {
        return None;
    }
    HF_RULES
        .iter()
        .find_map(|(from, to)| key.strip_prefix(from).map(|rest| format!("{to}{rest}")))
}

/// Where everything an export reads comes from, configs parsed.
#[derive(Debug)]
pub struct Source {
    pub layout: Layout,
    pub llava: LlavaConfig,
    pub clip: ClipVisionConfig,
    /// The config file the decoder and projector dimensions come from.
    pub llava_config: PathBuf,
    /// The config file the tower's dimensions come from (the llava-hf config itself there).
    pub clip_config: PathBuf,
    /// `preprocessor_config.json` of the tower (may not exist: CLIP-336 defaults then).
    pub preprocessor: PathBuf,
    pub tokenizer: PathBuf,
    /// The folder holding the tower's weights.
    pub vision_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub base: Option<PathBuf>,
    pub adapter: Option<Adapter>,
}

impl Source {
    /// Finds the layout and parses the configs (no weights read).
    pub fn resolve(
        checkpoint: &Path,
        base: Option<&Path>,
        vision_tower: Option<&Path>,
    ) -> Result<Source, LayoutError> {
        let adapter = Adapter::find(checkpoint)?;
        match (&adapter, base) {
            (Some(a), None) => {
                return Err(LayoutError::AdapterNeedsBase {
                    dir: checkpoint.to_path_buf(),
                    base: a.config.base_model_name_or_path.clone(),
                })
            }
            (None, Some(b)) => {
                return Err(LayoutError::BaseWithoutAdapter {
                    dir: checkpoint.to_path_buf(),
                    base: b.to_path_buf(),
                })
            }
            _ => {}
        }
        let llava_config = find_config(checkpoint, base)?;
        let map = config::read_json(&llava_config)?;
        let weights_dir = base.unwrap_or(checkpoint).to_path_buf();
        let (layout, llava, clip, clip_config, vision_dir) = match config::vision_tower(&map) {
            VisionTower::Inside => {
                if let Some(tower) = vision_tower {
                    return Err(LayoutError::VisionTowerInside {
                        config: llava_config,
                        tower: tower.to_path_buf(),
                    });
                }
                let (llava, clip) = config::parse_llava_hf(&llava_config)?;
                let cfg = llava_config.clone();
                (Layout::LlavaHf, llava, clip, cfg, weights_dir.clone())
            }
            VisionTower::Separate(named) => {
                let llava = config::parse_llava(&llava_config)?;
                let tower = vision_tower.ok_or_else(|| LayoutError::VisionTowerNeeded {
                    config: llava_config.clone(),
                    tower: named.unwrap_or_else(|| "not named".to_string()),
                })?;
                let clip_config = tower.join(CONFIG_FILE);
                let clip = config::parse_clip(&clip_config)?;
                (
                    Layout::Original,
                    llava,
                    clip,
                    clip_config,
                    tower.to_path_buf(),
                )
            }
        };
        let looked: Vec<PathBuf> = [Some(checkpoint), base]
            .into_iter()
            .flatten()
            .map(|d| d.join(TOKENIZER_MODEL))
            .collect();
        let tokenizer = looked
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or(LayoutError::NoTokenizer { looked })?;
        Ok(Source {
            layout,
            llava,
            clip,
            llava_config,
            clip_config,
            preprocessor: vision_dir.join(PREPROCESSOR_FILE),
            tokenizer,
            vision_dir,
            checkpoint: checkpoint.to_path_buf(),
            base: base.map(Path::to_path_buf),
            adapter,
        })
    }

    /// The decoder-side and tower-side weights under the graph builders' names, adapter
    /// merged in (headers only: tensors are read when the graphs ask for them).
    pub fn open_weights(&self) -> Result<(Tensors, Tensors), LayoutError> {
        let dir = self.base.as_deref().unwrap_or(&self.checkpoint);
        let layout = self.layout;
        let base = Checkpoint::open(dir)?.rename(|k| layout.name(k))?;
        let llava: Tensors = match &self.adapter {
            Some(adapter) => Arc::new(adapter.apply(base, &|k| layout.name(k))?),
            None => Arc::new(base),
        };
        let clip = match layout {
            // One checkpoint holds both; their names never collide.
            Layout::LlavaHf => Arc::clone(&llava),
            Layout::Original => Arc::new(Checkpoint::open(&self.vision_dir)?),
        };
        Ok((llava, clip))
    }

    /// The manifest key of a source file: `checkpoint/`, `base/` or `vision_tower/` + name.
    pub fn hash_key(&self, path: &Path) -> String {
        let parent = path.parent().unwrap_or(Path::new(""));
        let folder = if parent == self.checkpoint {
            "checkpoint"
        } else if Some(parent) == self.base.as_deref() {
            "base"
        } else {
            "vision_tower"
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        format!("{folder}/{}", name.unwrap_or_default())
    }
}

/// The checkpoint folder's LLaVA `config.json`, else (an adapter without one) the base's.
fn find_config(checkpoint: &Path, base: Option<&Path>) -> Result<PathBuf, LayoutError> {
    let own = checkpoint.join(CONFIG_FILE);
    if own.is_file() {
        return Ok(own);
    }
    match base.map(|b| b.join(CONFIG_FILE)) {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(LayoutError::NoConfig {
            dir: checkpoint.to_path_buf(),
            base: base.map(Path::to_path_buf),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_keys_of_both_styles_map_to_one_name() {
        let pairs = [
            (
                "language_model.model.layers.3.mlp.up_proj.weight",
                "model.layers.3.mlp.up_proj.weight",
            ),
            (
                "model.language_model.layers.3.mlp.up_proj.weight",
                "model.layers.3.mlp.up_proj.weight",
            ),
            ("language_model.lm_head.weight", "lm_head.weight"),
            ("lm_head.weight", "lm_head.weight"),
            (
                "language_model.model.embed_tokens.weight",
                "model.embed_tokens.weight",
            ),
            (
                "multi_modal_projector.linear_1.bias",
                "model.mm_projector.0.bias",
            ),
            (
                "model.multi_modal_projector.linear_2.weight",
                "model.mm_projector.2.weight",
            ),
            (
                "vision_tower.vision_model.encoder.layers.0.fc1.weight",
                "vision_model.encoder.layers.0.fc1.weight",
            ),
            (
                "model.vision_tower.encoder.layers.0.fc1.weight",
                "vision_model.encoder.layers.0.fc1.weight",
            ),
            (
                "model.vision_tower.vision_model.pre_layrnorm.bias",
                "vision_model.pre_layrnorm.bias",
            ),
        ];
        for (key, want) in pairs {
            assert_eq!(hf_name(key).as_deref(), Some(want), "{key}");
        }
        assert_eq!(hf_name("image_newline"), None);
    }

    #[test]
    fn original_layout_ignores_its_own_tower() {
        assert_eq!(
            original_name("model.vision_tower.vision_tower.vision_model.post_layernorm.weight"),
            None
        );
        assert_eq!(
            original_name("model.mm_projector.0.weight").as_deref(),
            Some("model.mm_projector.0.weight")
        );
    }
}
