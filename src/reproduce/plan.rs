//! The model list of `reproduce`: a TOML file, or the built-in `table2`.
//!
//! Input: MODELS = `table2` (the paper's released models, by the names `prepare --list`
//! knows) or a TOML file of `[[model]]` entries, each with one source:
//! `prepare = "NAME|OWNER/REPO"` (optional `revision`, `base` = folder or repo of an
//! adapter's base) or `checkpoint = "DIR"` (optional `vision_tower`, `base`); plus optional
//! `name` (the engine name of the results files; default the prepare name or the
//! checkpoint folder's name), `dtype`, `decoder` and `paper` (the paper row to compare
//! with; default by name, see `summary`). Relative folders are taken from the TOML
//! file's folder.
//!
//! Guarantees: every entry is validated before any work (unknown keys, two sources or
//! none, a bad dtype, a name used twice, a name that is not a plain file name are errors
//! naming the entry), so a typo never surfaces hours into a run.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::export::{Dtype, Flavour};

/// `table2`: the two base models and the twelve VLGuard fine-tunes (Clean, Post-hoc,
/// Mixed; full and LoRA; 7B and 13B), the models of the paper's Table 2.
pub const TABLE2: [&str; 14] = [
    "llava15-7b",
    "llava15-7b-clean",
    "llava15-7b-clean-lora",
    "llava15-7b-posthoc",
    "llava15-7b-posthoc-lora",
    "llava15-7b-mixed",
    "llava15-7b-mixed-lora",
    "llava15-13b",
    "llava15-13b-clean",
    "llava15-13b-clean-lora",
    "llava15-13b-posthoc",
    "llava15-13b-posthoc-lora",
    "llava15-13b-mixed",
    "llava15-13b-mixed-lora",
];

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the model list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{path}: holds no [[model]] entry")]
    Empty { path: PathBuf },
    #[error("{path}: model entry {index} ({name}): {reason}")]
    Entry {
        path: PathBuf,
        index: usize,
        name: String,
        reason: String,
    },
}

/// The TOML file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    model: Vec<EntryToml>,
}

/// One `[[model]]` entry, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryToml {
    name: Option<String>,
    prepare: Option<String>,
    revision: Option<String>,
    checkpoint: Option<PathBuf>,
    vision_tower: Option<PathBuf>,
    base: Option<String>,
    dtype: Option<String>,
    decoder: Option<String>,
    paper: Option<String>,
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Fetched from the Hub and exported by `prepare`.
    Hub {
        /// The name or repo id given to `prepare`.
        prepare: String,
        repo: String,
        revision: String,
        /// An adapter's base: a folder or a repo id (default: the adapter config's).
        base: Option<String>,
    },
    /// Exported from local folders.
    Local {
        checkpoint: PathBuf,
        vision_tower: Option<PathBuf>,
        base: Option<PathBuf>,
    },
}

/// One model of the table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Engine name of its results files and its model folder's name.
    pub name: String,
    pub source: Source,
    pub dtype: Dtype,
    pub flavour: Flavour,
    /// The paper row to compare with, when one is named or known for the name.
    pub paper: Option<String>,
}

/// Defaults for what an entry leaves out (the command's flags).
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub dtype: Dtype,
    pub flavour: Flavour,
}

/// MODELS: `table2` or a TOML file.
pub fn load(models: &str, defaults: Defaults) -> Result<Vec<Model>, PlanError> {
    if models == "table2" {
        return Ok(table2(defaults));
    }
    let path = PathBuf::from(models);
    let text = std::fs::read_to_string(&path).map_err(|source| PlanError::Read {
        path: path.clone(),
        source,
    })?;
    let file: ModelsFile = toml::from_str(&text).map_err(|e| PlanError::Toml {
        path: path.clone(),
        message: e.to_string().trim_end().to_string(),
    })?;
    if file.model.is_empty() {
        return Err(PlanError::Empty { path });
    }
    let folder = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut models: Vec<Model> = Vec::with_capacity(file.model.len());
    for (i, entry) in file.model.into_iter().enumerate() {
        let index = i + 1;
        let label = entry
            .name
            .clone()
            .or_else(|| entry.prepare.clone())
            .or_else(|| entry.checkpoint.as_ref().map(|c| c.display().to_string()))
            .unwrap_or_else(|| "no name".into());
        let bad = |reason: String| PlanError::Entry {
            path: path.clone(),
            index,
            name: label.clone(),
            reason,
        };
        let model = entry_model(entry, &folder, defaults).map_err(bad)?;
        if models.iter().any(|m| m.name == model.name) {
            return Err(bad(format!(
                "the name {} is used twice (give one a `name`)",
                model.name
            )));
        }
        models.push(model);
    }
    Ok(models)
}

/// The built-in list, every name resolved by `prepare`.
pub fn table2(defaults: Defaults) -> Vec<Model> {
    TABLE2
        .iter()
        .map(|name| {
            let target = crate::prepare::resolve(name).expect("TABLE2 names are known names");
            Model {
                name: target.name,
                source: Source::Hub {
                    prepare: (*name).to_string(),
                    repo: target.repo,
                    revision: "main".into(),
                    base: None,
                },
                dtype: defaults.dtype,
                flavour: defaults.flavour,
                paper: super::summary::paper_row_for(name).map(str::to_string),
            }
        })
        .collect()
}

/// One entry validated; the error is the reason alone.
fn entry_model(entry: EntryToml, folder: &Path, defaults: Defaults) -> Result<Model, String> {
    let within = |p: PathBuf| if p.is_absolute() { p } else { folder.join(p) };
    let (source, default_name) = match (entry.prepare, entry.checkpoint) {
        (Some(_), Some(_)) => return Err("give `prepare` or `checkpoint`, not both".into()),
        (None, None) => {
            return Err("no source: give `prepare = \"NAME\"` or `checkpoint = \"DIR\"`".into())
        }
        (Some(prepare), None) => {
            if entry.vision_tower.is_some() {
                return Err("`vision_tower` goes with `checkpoint`; `prepare` fetches the tower its config names".into());
            }
            let target = crate::prepare::resolve(&prepare).map_err(|e| e.to_string())?;
            // A base that is a folder beside the TOML file is that folder; else a repo id.
            let base = entry.base.map(|b| match folder.join(&b) {
                dir if !Path::new(&b).is_absolute() && dir.is_dir() => dir.display().to_string(),
                _ => b,
            });
            let source = Source::Hub {
                prepare,
                repo: target.repo,
                revision: entry.revision.unwrap_or_else(|| "main".into()),
                base,
            };
            (source, target.name)
        }
        (None, Some(checkpoint)) => {
            if entry.revision.is_some() {
                return Err("`revision` goes with `prepare`".into());
            }
            let checkpoint = within(checkpoint);
            let name = checkpoint
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let source = Source::Local {
                checkpoint,
                vision_tower: entry.vision_tower.map(within),
                base: entry.base.map(|b| within(PathBuf::from(b))),
            };
            (source, name)
        }
    };
    let name = entry.name.unwrap_or(default_name);
    let name = crate::run::parse_engine_name(&name)?;
    let dtype = match entry.dtype {
        Some(d) => d.parse().map_err(|e| format!("dtype: {e}"))?,
        None => defaults.dtype,
    };
    let flavour = match entry.decoder {
        Some(d) => d.parse().map_err(|e| format!("decoder: {e}"))?,
        None => defaults.flavour,
    };
    let paper = match entry.paper {
        Some(p) => Some(
            super::summary::paper_row(&p)
                .ok_or_else(|| {
                    format!(
                        "paper: {p:?} is not a row the paper publishes ({})",
                        super::summary::paper_names().join(", ")
                    )
                })?
                .to_string(),
        ),
        None => super::summary::paper_row_for(&name).map(str::to_string),
    };
    Ok(Model {
        name,
        source,
        dtype,
        flavour,
        paper,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        dtype: Dtype::Fp16,
        flavour: Flavour::Plain,
    };

    fn write(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn table2_names_resolve_to_the_released_repos() {
        let models = table2(DEFAULTS);
        assert_eq!(models.len(), 14);
        for m in &models {
            let Source::Hub { repo, .. } = &m.source else {
                panic!("{}: not a Hub source", m.name);
            };
            assert!(
                repo.starts_with("ys-zong/") || repo.starts_with("liuhaotian/llava-v1.5-"),
                "{repo}"
            );
        }
        let with_paper: Vec<&str> = models
            .iter()
            .filter(|m| m.paper.is_some())
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            with_paper,
            ["llava15-7b", "llava15-7b-mixed", "llava15-13b"]
        );
    }

    #[test]
    fn entries_resolve_names_and_folders() {
        let (dir, path) = write(
            r#"
[[model]]
prepare = "llava15-7b-mixed"
dtype = "fp32"

[[model]]
name = "mine"
checkpoint = "ckpt/llava"
vision_tower = "/abs/clip"
decoder = "fused"
paper = "LLaVA-v1.5-7B"

[[model]]
prepare = "someone/lora-a"
base = "basedir"

[[model]]
prepare = "someone/lora-b"
base = "lmsys/vicuna-7b-v1.5"
"#,
        );
        std::fs::create_dir(dir.path().join("basedir")).unwrap();
        let models = load(&path, DEFAULTS).unwrap();
        let base = |m: &Model| match &m.source {
            Source::Hub { base, .. } => base.clone(),
            Source::Local { .. } => None,
        };
        let basedir = dir.path().join("basedir").display().to_string();
        assert_eq!(base(&models[2]), Some(basedir));
        assert_eq!(base(&models[3]).as_deref(), Some("lmsys/vicuna-7b-v1.5"));
        assert_eq!(models[3].name, "lora-b");
        assert_eq!(models[0].name, "llava15-7b-mixed");
        assert_eq!(models[0].dtype, Dtype::Fp32);
        assert_eq!(models[0].paper.as_deref(), Some("LLaVA-v1.5-7B-Mixed"));
        assert_eq!(
            models[1].source,
            Source::Local {
                checkpoint: dir.path().join("ckpt/llava"),
                vision_tower: Some(PathBuf::from("/abs/clip")),
                base: None
            }
        );
        assert_eq!(models[1].flavour, Flavour::Fused);
        assert_eq!(models[1].paper.as_deref(), Some("LLaVA-v1.5-7B"));
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, want) in [
            ("[[model]]\nname = \"x\"\n", "entry 1 (x): no source"),
            (
                "[[model]]\nprepare = \"a/b\"\ncheckpoint = \"c\"\n",
                "not both",
            ),
            ("[[model]]\nprepare = \"a/b\"\ndtype = \"int4\"\n", "dtype"),
            ("[[model]]\nprepare = \"a/b\"\nsize = 3\n", "unknown field"),
            (
                "[[model]]\nprepare = \"a/b\"\n[[model]]\nprepare = \"c/b\"\n",
                "entry 2 (c/b): the name b is used twice",
            ),
            (
                "[[model]]\ncheckpoint = \"x\"\nname = \"../x\"\n",
                "refused",
            ),
            ("[[model]]\nprepare = \"a/b\"\npaper = \"GPT\"\n", "paper"),
            ("", "no [[model]] entry"),
        ] {
            let (_dir, path) = write(text);
            let err = load(&path, DEFAULTS).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(load("/no/such/models.toml", DEFAULTS).is_err());
    }
}
