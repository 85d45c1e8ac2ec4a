//! `vlguard-ort prepare NAME`: from a model name to a model directory in one command.
//!
//! Input: NAME = an engine name of the reference (`VLGuard_eval.py` model_mappings, e.g.
//! `llava15-7b-mixed`), another released VLGuard model (`prepare --list` shows them all), or
//! any Hub repo id (`owner/name`).
//! Steps:
//! 1. NAME -> repo and model folder name: the engine name for the known models, the repo's
//!    own name otherwise. The folder name is `run`'s default `--engine`, so
//!    `prepare llava15-7b-mixed` then `run --model models/llava15-7b-mixed` writes
//!    `results/{subset}/llava15-7b-mixed.json` as the reference names it.
//! 2. The repo's file list decides what it holds: full weights (an index and its shards,
//!    one format only, safetensors preferred, or a single weights file) -> a checkpoint;
//!    otherwise `adapter_config.json` + adapter weights -> a LoRA adapter (so a "-lora" repo
//!    shipping merged weights is taken as the checkpoint it is). Only the files the export
//!    reads are fetched, into `--checkpoints/REPO`.
//! 3. An adapter's base (`--base DIR|REPO`, default the adapter config's
//!    `base_model_name_or_path`) is fetched the same way; it must be a full checkpoint.
//! 4. The original LLaVA layout's vision tower: the CLIP repo its config names
//!    (`mm_vision_tower`), config + preprocessor config + one weights file.
//! 5. Export (see `vlguard_export`) into `--out` (default `models/NAME`).
//!
//! Guarantees: every download is resumable and verified (`fetch`); a rerun after an
//! interruption fetches only what is missing and resumes partial files; the export is
//! atomic; a model directory already holding a manifest is kept (`--force` redoes the
//! export). Errors name the repo, the file or the flag that fixes it.
//!
//! The files it reads before the export (config.json, the weights index,
//! adapter_config.json) are read by the exporter's own readers (`config`, `checkpoint`,
//! `lora`), so prepare and export agree on what each holds and refuse the same things
//! (a shard index naming a file outside the folder, say) with the same message.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::export::checkpoint::{self, CheckpointError};
use crate::export::config::{self, ConfigError, VisionTower};
use crate::export::layout::{CONFIG_FILE, PREPROCESSOR_FILE, TOKENIZER_MODEL};
use crate::export::lora::{AdapterConfig, LoraError, ADAPTER_CONFIG, NON_LORA_TRAINABLES};
use crate::export::{Dtype, ExportError, ExportOptions, Flavour};
use crate::fetch::{self, Hub, ModelRequest, Policy, Token};

/// A model VLGuard published or evaluated, by the name its results files carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub name: &'static str,
    pub repo: &'static str,
    /// Whether `VLGuard_eval.py`'s model_mappings has it (else: released, not evaluated there).
    pub reference: bool,
}

const fn known(name: &'static str, repo: &'static str, reference: bool) -> Known {
    Known {
        name,
        repo,
        reference,
    }
}

/// The reference's engine names first (its `-CLean` spelling fixed: the repos are
/// `-Clean`), then the other released models under names of the same pattern.
pub const KNOWN: [Known; 18] = [
    known("llava15-7b", "liuhaotian/llava-v1.5-7b", true),
    known("llava15-13b", "liuhaotian/llava-v1.5-13b", true),
    known("llava15-7b-mixed", "ys-zong/llava-v1.5-7b-Mixed", true),
    known("llava15-13b-mixed", "ys-zong/llava-v1.5-13b-Mixed", true),
    known("llava15-7b-clean", "ys-zong/llava-v1.5-7b-Clean", true),
    known("llava15-13b-clean", "ys-zong/llava-v1.5-13b-Clean", true),
    known("llava15-7b-posthoc", "ys-zong/llava-v1.5-7b-Posthoc", false),
    known(
        "llava15-13b-posthoc",
        "ys-zong/llava-v1.5-13b-Posthoc",
        false,
    ),
    known(
        "llava15-7b-mixed-lora",
        "ys-zong/llava-v1.5-7b-Mixed-lora",
        false,
    ),
    known(
        "llava15-13b-mixed-lora",
        "ys-zong/llava-v1.5-13b-Mixed-lora",
        false,
    ),
    known(
        "llava15-7b-clean-lora",
        "ys-zong/llava-v1.5-7b-Clean-lora",
        false,
    ),
    known(
        "llava15-13b-clean-lora",
        "ys-zong/llava-v1.5-13b-Clean-lora",
        false,
    ),
    known(
        "llava15-7b-posthoc-lora",
        "ys-zong/llava-v1.5-7b-Posthoc-lora",
        false,
    ),
    known(
        "llava15-13b-posthoc-lora",
        "ys-zong/llava-v1.5-13b-Posthoc-lora",
        false,
    ),
    known("llava15-7b-hf", "llava-hf/llava-1.5-7b-hf", false),
    known("llava15-13b-hf", "llava-hf/llava-1.5-13b-hf", false),
    known("llava15-7b-lora", "liuhaotian/llava-v1.5-7b-lora", false),
    known("llava15-13b-lora", "liuhaotian/llava-v1.5-13b-lora", false),
];

#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// Engine name (e.g. llava15-7b-mixed; see --list), a released VLGuard repo, or any Hub
    /// repo id (owner/name).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// Print the known names and their repos, then exit.
    #[arg(long)]
    pub list: bool,
    /// Weight dtype of the graphs: fp16 (the reference's) or fp32.
    #[arg(long, default_value = "fp16")]
    pub dtype: String,
    /// Decoder graph: plain (every provider) or fused (ONNX Runtime contrib ops).
    #[arg(long, default_value = "plain")]
    pub decoder: String,
    /// Model directory to write [default: models/NAME]; its folder name is run's --engine.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where checkpoints are downloaded, one folder per repo (CHECKPOINTS/owner/name).
    #[arg(long, default_value = "checkpoints")]
    pub checkpoints: PathBuf,
    /// The base of a LoRA adapter: a folder or a Hub repo id [default: the adapter's
    /// base_model_name_or_path].
    #[arg(long)]
    pub base: Option<String>,
    /// Branch, tag or commit of NAME's repo.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Export again over a model directory that already holds a manifest.
    #[arg(long)]
    pub force: bool,
    /// Hub address; set it to use a mirror.
    #[arg(long, env = "HF_ENDPOINT", default_value = fetch::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Tries per request and per file before giving up (a dropped transfer resumes).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is neither a known name (vlguard-ort prepare --list) nor a Hub repo id (owner/name)"
    )]
    UnknownName(String),
    #[error("{repo}: no weights to export (no model.safetensors[.index.json], pytorch_model.bin[.index.json] or LoRA adapter); its files: {files}")]
    NoWeights { repo: String, files: String },
    #[error("{repo}: no config.json; its files: {files}")]
    NoConfig { repo: String, files: String },
    #[error("{adapter} is a LoRA adapter whose adapter_config.json names no base model: pass --base DIR|REPO")]
    NoBase { adapter: String },
    #[error("the base {base} is itself a LoRA adapter; pass a full checkpoint with --base")]
    BaseIsAdapter { base: String },
    #[error("--dtype: {0}")]
    Dtype(String),
    #[error("--decoder: {0}")]
    Flavour(String),
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    /// A model `config.json` (the one that names the vision tower).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A weights index (its shard names are what prepare fetches next).
    #[error(transparent)]
    Index(#[from] CheckpointError),
    /// An adapter's `adapter_config.json` (it names the base).
    #[error(transparent)]
    Adapter(#[from] LoraError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// A NAME resolved: the repo to fetch and the model folder name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub repo: String,
    pub name: String,
}

/// Known name, known repo (any case), or a repo id (its own name as the folder name).
pub fn resolve(name: &str) -> Result<Target, Error> {
    let hit = KNOWN
        .iter()
        .find(|k| k.name == name || k.repo.eq_ignore_ascii_case(name));
    if let Some(k) = hit {
        return Ok(Target {
            repo: k.repo.to_string(),
            name: k.name.to_string(),
        });
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match name.split_once('/') {
        Some((owner, repo)) if part_ok(owner) && part_ok(repo) => Ok(Target {
            repo: name.to_string(),
            name: repo.to_string(),
        }),
        _ => Err(Error::UnknownName(name.to_string())),
    }
}

/// The `prepare --list` text.
pub fn list_text() -> String {
    let mut out = String::from("name                      repo                                  evaluated by VLGuard_eval.py\n");
    for k in KNOWN {
        out += &format!(
            "{:<25} {:<37} {}\n",
            k.name,
            k.repo,
            if k.reference { "yes" } else { "-" }
        );
    }
    out +=
        "Any other Hub repo id (owner/name) works too: the model folder is named after the repo.\n";
    out
}

/// What a repo listing holds, by the files the export reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    /// Full weights: the index (if any) and the weights files named so far.
    Checkpoint {
        index: Option<String>,
        single: Option<String>,
    },
    /// A LoRA adapter: its weights file.
    Adapter { weights: String },
}

/// Reads a listing: full weights first (safetensors, then .bin), else an adapter.
pub fn holds(files: &[String]) -> Option<Holds> {
    let has = |f: &str| files.iter().any(|x| x == f);
    for (index, single) in checkpoint::WEIGHTS_FILES {
        if has(index) {
            return Some(Holds::Checkpoint {
                index: Some(index.to_string()),
                single: None,
            });
        }
        if has(single) {
            return Some(Holds::Checkpoint {
                index: None,
                single: Some(single.to_string()),
            });
        }
    }
    if has(ADAPTER_CONFIG) {
        for w in ["adapter_model.safetensors", "adapter_model.bin"] {
            if has(w) {
                return Some(Holds::Adapter {
                    weights: w.to_string(),
                });
            }
        }
    }
    None
}

/// One repo fetched into `CHECKPOINTS/REPO`.
struct Fetched {
    dir: PathBuf,
    adapter: bool,
}

/// The Hub side of one prepare: where to fetch from and into.
struct Fetcher<'a> {
    hub: Hub,
    checkpoints: &'a Path,
}

impl Fetcher<'_> {
    fn fetch(&self, repo: &str, revision: &str, files: &[String]) -> Result<PathBuf, Error> {
        let to = self.checkpoints.join(repo);
        let req = ModelRequest {
            repo: repo.to_string(),
            revision: revision.to_string(),
            to: to.clone(),
            include: files.to_vec(),
        };
        let outcome = fetch::fetch_model(&self.hub, &req)?;
        eprintln!(
            "prepare: {repo} @ {}: {} downloaded, {} already verified",
            outcome.commit,
            outcome.downloaded.len(),
            outcome.verified.len()
        );
        Ok(to)
    }

    /// The files of `repo` the export reads, fetched (pinned to one commit).
    fn model(&self, repo: &str, revision: &str) -> Result<Fetched, Error> {
        let listing = self.hub.list(fetch::RepoKind::Model, repo, revision)?;
        let files = &listing.files;
        let all = || files.join(", ");
        let holds = holds(files).ok_or_else(|| Error::NoWeights {
            repo: repo.to_string(),
            files: all(),
        })?;
        let optional = [
            CONFIG_FILE,
            TOKENIZER_MODEL,
            PREPROCESSOR_FILE,
            NON_LORA_TRAINABLES,
        ];
        let mut want: Vec<String> = optional
            .iter()
            .filter(|f| files.iter().any(|x| x == *f))
            .map(|f| f.to_string())
            .collect();
        let adapter = matches!(holds, Holds::Adapter { .. });
        if !adapter && !want.iter().any(|f| f == CONFIG_FILE) {
            return Err(Error::NoConfig {
                repo: repo.to_string(),
                files: all(),
            });
        }
        match &holds {
            Holds::Adapter { weights } => want.extend([ADAPTER_CONFIG.into(), weights.clone()]),
            Holds::Checkpoint { single, .. } => want.extend(single.clone()),
        }
        let commit = listing.commit.as_str();
        let mut dir = self.fetch(repo, commit, &want)?;
        if let Holds::Checkpoint {
            index: Some(index), ..
        } = &holds
        {
            dir = self.fetch(repo, commit, std::slice::from_ref(index))?;
            let shards = checkpoint::read_index(&dir.join(index))?;
            dir = self.fetch(repo, commit, &shards)?;
        }
        Ok(Fetched { dir, adapter })
    }

    /// The CLIP tower a local original-layout config names, fetched (or its folder).
    fn tower(&self, config: &Path) -> Result<Option<PathBuf>, Error> {
        let tower = match config::vision_tower(&config::read_json(config)?) {
            VisionTower::Inside => return Ok(None),
            VisionTower::Separate(None) => return Ok(None), // export says what is missing
            VisionTower::Separate(Some(tower)) => tower,
        };
        let tower = tower.as_str();
        if Path::new(tower).is_dir() {
            return Ok(Some(PathBuf::from(tower)));
        }
        let listing = self.hub.list(fetch::RepoKind::Model, tower, "main")?;
        let has = |f: &str| listing.files.iter().any(|x| x == f);
        let mut want: Vec<String> = [CONFIG_FILE, PREPROCESSOR_FILE]
            .iter()
            .filter(|f| has(f))
            .map(|f| f.to_string())
            .collect();
        // One weights format: the tower repos also carry TensorFlow and Flax copies.
        let weights = checkpoint::WEIGHTS_FILES
            .into_iter()
            .map(|(_, single)| single)
            .find(|f| has(f))
            .ok_or_else(|| Error::NoWeights {
                repo: tower.to_string(),
                files: listing.files.join(", "),
            })?;
        want.push(weights.to_string());
        Ok(Some(self.fetch(tower, &listing.commit, &want)?))
    }
}

/// The adapter's base: `--base` (a folder as is, else a repo), else its config's.
fn base_repo_or_dir(adapter_dir: &Path, base: Option<&str>, repo: &str) -> Result<String, Error> {
    if let Some(b) = base {
        return Ok(b.to_string());
    }
    let config = AdapterConfig::read(&adapter_dir.join(ADAPTER_CONFIG))?;
    config
        .base_model_name_or_path
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::NoBase {
            adapter: repo.to_string(),
        })
}

/// `vlguard-ort prepare`.
pub fn command(args: &PrepareArgs) -> Result<ExitCode, Error> {
    if args.list {
        print!("{}", list_text());
        return Ok(ExitCode::SUCCESS);
    }
    let target = resolve(args.name.as_deref().unwrap_or_default())?;
    let dtype: Dtype = args.dtype.parse().map_err(Error::Dtype)?;
    let flavour: Flavour = args.decoder.parse().map_err(Error::Flavour)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("models").join(&target.name));
    if out.join(crate::export::manifest::MANIFEST_FILE).is_file() && !args.force {
        println!(
            "{} is already exported (manifest.json there); --force exports it again",
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let policy = Policy {
        attempts: args.attempts.max(1),
        progress: !args.quiet,
        ..Policy::default()
    };
    let token = std::env::var("HF_TOKEN").ok().and_then(Token::new);
    let fetcher = Fetcher {
        hub: Hub::new(&args.endpoint, token, policy)?,
        checkpoints: &args.checkpoints,
    };
    let model = fetcher.model(&target.repo, &args.revision)?;
    let base = if model.adapter {
        let name = base_repo_or_dir(&model.dir, args.base.as_deref(), &target.repo)?;
        Some(if Path::new(&name).is_dir() {
            PathBuf::from(name)
        } else {
            let base = fetcher.model(&name, "main")?;
            if base.adapter {
                return Err(Error::BaseIsAdapter { base: name });
            }
            base.dir
        })
    } else {
        None
    };
    let own_config = model.dir.join(CONFIG_FILE);
    let config = match &base {
        Some(b) if !own_config.is_file() => b.join(CONFIG_FILE),
        _ => own_config,
    };
    let vision_tower = fetcher.tower(&config)?;
    let opts = ExportOptions {
        checkpoint: model.dir,
        vision_tower,
        base,
        out,
        dtype,
        force: args.force,
        random_weights: false,
        flavour,
    };
    let report = crate::export::export(&opts)?;
    print!("{}", crate::export_cmd::summary(&report));
    println!(
        "next: vlguard-ort run --model {} --subset all   (results named {})",
        report.out.display(),
        target.name
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_the_reference_repos() {
        // VLGuard_eval.py model_mappings (REFERENCE.md "Engine names").
        let t = resolve("llava15-7b-mixed").unwrap();
        assert_eq!(t.repo, "ys-zong/llava-v1.5-7b-Mixed");
        assert_eq!(t.name, "llava15-7b-mixed");
        assert_eq!(
            resolve("llava15-13b").unwrap().repo,
            "liuhaotian/llava-v1.5-13b"
        );
        // The reference's own spelling of the Clean repos still finds them.
        assert_eq!(
            resolve("ys-zong/llava-v1.5-7b-CLean").unwrap().name,
            "llava15-7b-clean"
        );
        let any = resolve("someone/my-llava").unwrap();
        assert_eq!(
            (any.repo.as_str(), any.name.as_str()),
            ("someone/my-llava", "my-llava")
        );
        for bad in ["llava", "a/b/c", "../x", "a/", "a b/c"] {
            assert!(matches!(resolve(bad), Err(Error::UnknownName(_))), "{bad}");
        }
    }

    #[test]
    fn full_weights_win_over_an_adapter_and_safetensors_over_bin() {
        let files = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A "-lora" repo that ships merged weights is a checkpoint.
        let merged = files(&[
            "adapter_config.json",
            "config.json",
            "pytorch_model.bin.index.json",
            "pytorch_model-00001-of-00003.bin",
        ]);
        assert_eq!(
            holds(&merged),
            Some(Holds::Checkpoint {
                index: Some("pytorch_model.bin.index.json".into()),
                single: None
            })
        );
        let adapter = files(&[
            "adapter_config.json",
            "adapter_model.bin",
            "non_lora_trainables.bin",
        ]);
        assert_eq!(
            holds(&adapter),
            Some(Holds::Adapter {
                weights: "adapter_model.bin".into()
            })
        );
        let both = files(&["model.safetensors", "pytorch_model.bin", "config.json"]);
        assert_eq!(
            holds(&both),
            Some(Holds::Checkpoint {
                index: None,
                single: Some("model.safetensors".into())
            })
        );
        assert_eq!(holds(&files(&["README.md", "config.json"])), None);
    }

    #[test]
    fn the_list_names_every_known_model() {
        let text = list_text();
        for k in KNOWN {
            assert!(text.contains(k.name) && text.contains(k.repo), "{}", k.name);
        }
    }
}
