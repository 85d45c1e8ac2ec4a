//! `vlguard-ort merge`: joins the shard files that `run --shard K/N` wrote
//! (`OUT/{subset}/{engine}.shard-K-of-N.json`) into the reference-format
//! `OUT/{subset}/{engine}.json`.
//!
//! Contract: every sample of the subset (after `--limit`) must be answered by exactly one
//! shard: a missing shard, an image answered twice, a sample with no answer or an answer
//! for an image outside the subset is an error naming them, and nothing is written. The
//! shards must also have been answered alike: their run manifests
//! (`{engine}.shard-K-of-N.run.json`) must agree on everything that changes answers (the
//! model's manifest hash, its dtype and decoder, the dataset's hash, `--max-new-tokens`,
//! `--limit`, the tool version); a difference is an error naming the field and which
//! shards hold which value. A shard without a manifest is refused when others have one;
//! when none has one (files made by hand) the merge goes on with a warning. Beside the
//! merged answers goes a run manifest combined from the shards' ([`manifest`]), so the
//! merged file reads like an unsharded run's. `--status` ([`status`]) writes nothing: it
//! says which shards are complete from their journals, and which are still to run.

mod manifest;
mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::dataset::{Dataset, Sample, Subset};
use crate::formats::{Answer, Predictions, RunManifest};
use crate::results::Paths;
use crate::run::{Shard, SubsetArg};

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The engine name the shards were written under (`run --engine`, default the model
    /// folder's name).
    #[arg(long, value_parser = crate::run::parse_engine_name)]
    pub engine: String,
    /// Which subsets to join: unsafes, safe_unsafes, safe_safes or all.
    #[arg(long, value_enum)]
    pub subset: SubsetArg,
    /// VLGuard test.json the shards answered.
    #[arg(long, default_value = "data/VLGuard/test.json")]
    pub meta: PathBuf,
    /// Results folder holding OUT/{subset}/{engine}.shard-K-of-N.json.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// The --limit the shards ran with.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write nothing: print each shard's progress from its journals (complete,
    /// incomplete, not started) and the shards still to run, as `pending: K ...`.
    #[arg(long)]
    pub status: bool,
    /// With --status: the N the run was split into (default: the N of the journals found;
    /// needed when no shard has started).
    #[arg(long, value_name = "N", requires = "status")]
    pub shards: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot merge {subset}: {message}")]
    Merge { subset: Subset, message: String },
    #[error("merge --status: {0}")]
    Status(String),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::Error),
    #[error(transparent)]
    Results(#[from] crate::results::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn command(args: &MergeArgs) -> Result<ExitCode, Error> {
    let dataset = Dataset::load(&args.meta)?;
    if args.status {
        status::report(args, &dataset)?;
        return Ok(ExitCode::SUCCESS);
    }
    for subset in args.subset.subsets() {
        let mut samples = dataset.samples(subset)?;
        if let Some(limit) = args.limit {
            samples.truncate(limit);
        }
        let (merged, manifests) = merge_shards(&args.out, subset, &args.engine, &samples)?;
        let path = Paths::new(&args.out, subset.name(), &args.engine).answers;
        merged.write(&path).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!(
            "{subset}: merged {} answers -> {}",
            samples.len(),
            path.display()
        );
        write_manifest(
            &args.out,
            subset,
            &args.engine,
            &merged,
            manifests.as_deref(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The merged result's run manifest, combined from the shards' ([`manifest::combine`]),
/// which [`merge_shards`] read. When the shards have none (written by hand, or by an older
/// version), the merged answers get none either: a warning says so, and a manifest of an
/// earlier run is removed rather than left describing other answers.
fn write_manifest(
    out: &Path,
    subset: Subset,
    engine: &str,
    merged: &Predictions,
    manifests: Option<&[(Shard, RunManifest)]>,
) -> Result<(), Error> {
    let path = Paths::new(out, subset.name(), engine).manifest;
    let Some(manifests) = manifests else {
        eprintln!("{subset}: no run manifest for the merged answers: the shards have none");
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Write { path, source: e })
            }
            _ => Ok(()),
        };
    };
    let combined = manifest::combine(engine, subset, manifests, merged)
        .map_err(|message| Error::Merge { subset, message })?;
    crate::results::write_json(&path, &combined)?;
    Ok(())
}

/// The files `{engine}.shard-K-of-N{suffix}` in `dir`: (K/N, path), sorted by N, then K.
fn shards_in(dir: &Path, engine: &str, suffix: &str) -> std::io::Result<Vec<(Shard, PathBuf)>> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        match Shard::from_engine_name(stem) {
            Some((base, shard)) if base == engine => shards.push((shard, dir.join(&name))),
            _ => {}
        }
    }
    shards.sort_by_key(|(s, _)| (s.n, s.k));
    Ok(shards)
}

/// The run manifests of a subset's shards, read once.
pub type ShardManifests = Vec<(Shard, RunManifest)>;

/// Reads the shard files of one subset and returns `{image: answer}` in subset order, with
/// the shards' run manifests (`None` when no shard has one).
pub fn merge_shards(
    out: &Path,
    subset: Subset,
    engine: &str,
    samples: &[Sample],
) -> Result<(Predictions, Option<ShardManifests>), Error> {
    let fail = |message: String| Error::Merge { subset, message };
    let dir = out.join(subset.name());
    let shards =
        shards_in(&dir, engine, ".json").map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let Some(&(Shard { n, .. }, _)) = shards.first() else {
        return Err(fail(format!(
            "no {engine}.shard-K-of-N.json files in {}",
            dir.display()
        )));
    };
    if shards.iter().any(|s| s.0.n != n) {
        return Err(fail("shard files disagree on N".into()));
    }
    let found: Vec<usize> = shards.iter().map(|s| s.0.k).collect();
    let missing: Vec<usize> = (1..=n).filter(|k| !found.contains(k)).collect();
    if !missing.is_empty() {
        return Err(fail(format!("shards {missing:?} of {n} are missing")));
    }
    let manifests = shard_manifests(&shards).map_err(fail)?;
    if let Some(manifests) = &manifests {
        same_settings(manifests).map_err(fail)?;
    }
    let mut answers: HashMap<String, (usize, Answer)> = HashMap::new();
    let mut overlaps = Vec::new();
    for (Shard { k, .. }, path) in &shards {
        let shard = Predictions::read(path).map_err(|e| fail(e.to_string()))?;
        for (image, answer) in shard {
            if let Some((other, _)) = answers.get(&image) {
                overlaps.push(format!("{image} (shards {other} and {k})"));
            } else {
                answers.insert(image, (*k, answer));
            }
        }
    }
    if !overlaps.is_empty() {
        return Err(fail(format!("answered twice: {}", overlaps.join(", "))));
    }
    let mut merged = Predictions::default();
    let mut gaps = Vec::new();
    for sample in samples {
        match answers.remove(&sample.image) {
            Some((_, answer)) => {
                merged.insert(sample.image.clone(), answer);
            }
            None => gaps.push(sample.image.clone()),
        }
    }
    if !gaps.is_empty() {
        return Err(fail(format!(
            "{} samples have no answer: {}",
            gaps.len(),
            gaps.join(", ")
        )));
    }
    if !answers.is_empty() {
        let mut extra: Vec<String> = answers.into_keys().collect();
        extra.sort();
        return Err(fail(format!(
            "answers for images not in the subset: {}",
            extra.join(", ")
        )));
    }
    Ok((merged, manifests))
}

/// A run manifest field as text.
type Field = fn(&RunManifest) -> String;

/// The run manifest fields that change answers, by name.
const SETTINGS: [(&str, Field); 7] = [
    ("model (manifest sha256)", |m| {
        m.model_manifest_sha256.clone()
    }),
    ("dtype", |m| m.dtype.clone()),
    ("decoder", |m| m.decoder.clone()),
    ("dataset (test.json sha256)", |m| m.dataset_sha256.clone()),
    ("max_new_tokens", |m| m.max_new_tokens.to_string()),
    ("limit", |m| {
        m.limit.map_or("none".into(), |l| l.to_string())
    }),
    ("tool version", |m| m.tool_version.clone()),
];

/// The run manifests beside the shard files (`{engine}.shard-K-of-N.run.json`): `None`,
/// with a warning, when no shard has one (files made by hand); `Err` when only some have
/// one, or one cannot be read.
fn shard_manifests(shards: &[(Shard, PathBuf)]) -> Result<Option<ShardManifests>, String> {
    let mut manifests = Vec::new();
    let mut without = Vec::new();
    for (shard, path) in shards {
        let manifest_path = path.with_extension("run.json");
        if manifest_path.symlink_metadata().is_err() {
            without.push(shard.k.to_string());
            continue;
        }
        let manifest = RunManifest::read(&manifest_path).map_err(|e| e.to_string())?;
        manifests.push((*shard, manifest));
    }
    if manifests.is_empty() {
        eprintln!(
            "warning: no shard has a run manifest beside it: their settings cannot be compared"
        );
        return Ok(None);
    }
    if !without.is_empty() {
        return Err(format!(
            "shard(s) {} have no run manifest beside them, so what answered them cannot be compared with the others",
            without.join(", ")
        ));
    }
    Ok(Some(manifests))
}

/// `Err` naming every setting the shards' run manifests disagree on (see the module
/// contract).
fn same_settings(manifests: &[(Shard, RunManifest)]) -> Result<(), String> {
    let mut differences = Vec::new();
    for (name, field) in SETTINGS {
        // Each value with the shards that hold it, in shard order.
        let mut values: Vec<(String, Vec<String>)> = Vec::new();
        for (shard, manifest) in manifests {
            let value = field(manifest);
            match values.iter_mut().find(|(v, _)| *v == value) {
                Some((_, ks)) => ks.push(shard.k.to_string()),
                None => values.push((value, vec![shard.k.to_string()])),
            }
        }
        if values.len() > 1 {
            let held: Vec<String> = values
                .iter()
                .map(|(v, ks)| format!("{} (shard {})", shown(v), ks.join(", ")))
                .collect();
            differences.push(format!("{name}: {}", held.join(" vs ")));
        }
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the shards were answered with different settings, so their answers do not belong in one file: {}; rerun the odd shards with the others' settings",
        differences.join("; ")
    ))
}

/// A setting's value as shown: hashes shortened, empty as `-`.
fn shown(value: &str) -> String {
    match value {
        "" => "-".into(),
        v if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("{}...", &v[..12])
        }
        v => v.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_refuses_gaps_and_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("unsafes");
        std::fs::create_dir_all(&sub).unwrap();
        let sample = |image: &str| Sample::new(image, "q");
        let samples = vec![sample("a"), sample("b"), sample("c")];
        std::fs::write(sub.join("e.shard-1-of-2.json"), r#"{"a": "1", "b": "2"}"#).unwrap();
        let err = merge_shards(dir.path(), Subset::Unsafes, "e", &samples)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shards [2] of 2 are missing"), "{err}");
        std::fs::write(sub.join("e.shard-2-of-2.json"), r#"{"b": "x"}"#).unwrap();
        let err = merge_shards(dir.path(), Subset::Unsafes, "e", &samples)
            .unwrap_err()
            .to_string();
        assert!(err.contains("answered twice: b (shards 1 and 2)"), "{err}");
        std::fs::write(sub.join("e.shard-2-of-2.json"), r#"{}"#).unwrap();
        let err = merge_shards(dir.path(), Subset::Unsafes, "e", &samples)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 samples have no answer: c"), "{err}");
        std::fs::write(sub.join("e.shard-2-of-2.json"), r#"{"c": "3"}"#).unwrap();
        let (merged, _) = merge_shards(dir.path(), Subset::Unsafes, "e", &samples).unwrap();
        assert_eq!(merged.images().collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }

    /// Shard files `{"a": .., "b": ..}` and `{"c": ..}` with run manifests made by `manifest`.
    fn two_shards(dir: &Path, manifest: impl Fn(usize) -> RunManifest) {
        let sub = dir.join("unsafes");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("e.shard-1-of-2.json"), r#"{"a": "1", "b": "2"}"#).unwrap();
        std::fs::write(sub.join("e.shard-2-of-2.json"), r#"{"c": "3"}"#).unwrap();
        for k in 1..=2 {
            let path = sub.join(format!("e.shard-{k}-of-2.run.json"));
            crate::formats::write_pretty_json(&path, &manifest(k)).unwrap();
        }
    }

    fn settings(tokens: usize, model: &str) -> RunManifest {
        RunManifest {
            model_manifest_sha256: model.repeat(64),
            dataset_sha256: "d".repeat(64),
            max_new_tokens: tokens,
            dtype: "fp16".into(),
            decoder: "plain".into(),
            tool_version: "0.1.0".into(),
            ..RunManifest::default()
        }
    }

    #[test]
    fn shards_answered_with_different_settings_are_refused_naming_them() {
        let samples: Vec<Sample> = ["a", "b", "c"].map(|i| Sample::new(i, "q")).to_vec();
        let merge = |dir: &Path| merge_shards(dir, Subset::Unsafes, "e", &samples);
        let dir = tempfile::tempdir().unwrap();
        two_shards(dir.path(), |_| settings(256, "a"));
        assert!(merge(dir.path()).is_ok(), "the same settings merge");
        let dir = tempfile::tempdir().unwrap();
        two_shards(dir.path(), |k| {
            settings(if k == 1 { 256 } else { 128 }, "a")
        });
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("different settings")
                && err.contains("max_new_tokens: 256 (shard 1) vs 128 (shard 2)"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        two_shards(dir.path(), |k| {
            let mut m = settings(256, if k == 1 { "a" } else { "b" });
            m.dtype = if k == 1 { "fp16" } else { "fp32" }.into();
            m
        });
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(
                "model (manifest sha256): aaaaaaaaaaaa... (shard 1) vs bbbbbbbbbbbb... (shard 2)"
            ) && err.contains("dtype: fp16 (shard 1) vs fp32 (shard 2)"),
            "{err}"
        );
        // One manifest removed: what answered that shard is unknown.
        std::fs::remove_file(dir.path().join("unsafes/e.shard-2-of-2.run.json")).unwrap();
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("shard(s) 2 have no run manifest"), "{err}");
    }
}
