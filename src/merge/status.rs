//! `merge --status`: where each shard of a `run --shard K/N` stands, read from its journals
//! (`OUT/{subset}/{engine}.shard-K-of-N.journal.jsonl`) and answers files, and which shards
//! are still to run: the list `scripts/slurm/submit.sh --resume` resubmits.
//!
//! A shard is complete when, in every subset, its answers file exists and its journal
//! answers every sample of its range; not started when no subset has a journal; otherwise
//! incomplete (stopped, or some samples failed). Journals are read without their locks, so
//! a shard still running shows its progress so far. N is `--shards`, else the N of the
//! shard journals found (one N, or an error naming them).
//!
//! Output (stdout): one line per shard, then `pending: K K ...` (`pending: none` when every
//! shard is complete). Nothing is written.

use std::path::Path;

use crate::dataset::{Dataset, Subset};
use crate::results::Paths;
use crate::run::Shard;

use super::{shards_in, Error, MergeArgs};

/// One subset of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    journal: bool,
    answers_file: bool,
    answered: usize,
    failed: usize,
    total: usize,
}

impl Progress {
    fn complete(&self) -> bool {
        self.journal && self.answers_file && self.answered == self.total
    }

    fn describe(&self, subset: Subset) -> String {
        if !self.journal {
            return format!("{subset} not started");
        }
        let mut text = format!("{subset} {}/{}", self.answered, self.total);
        if self.failed > 0 {
            text += &format!(" ({} failed)", self.failed);
        }
        if self.answered == self.total && !self.answers_file {
            text += " (no answers file: stopped before writing it)";
        }
        text
    }
}

/// Prints each shard's line and the pending list; returns the pending shards.
pub fn report(args: &MergeArgs, dataset: &Dataset) -> Result<Vec<Shard>, Error> {
    let subsets = args.subset.subsets();
    let n = match args.shards {
        Some(n) if n > 0 => n,
        Some(_) => return Err(Error::Status("--shards must be at least 1".into())),
        None => found_count(&args.out, &subsets, &args.engine)?,
    };
    let mut pending = Vec::new();
    for k in 1..=n {
        let shard = Shard { k, n };
        let mut parts = Vec::new();
        for &subset in &subsets {
            let mut samples = dataset.samples(subset)?;
            if let Some(limit) = args.limit {
                samples.truncate(limit);
            }
            let samples = &samples[shard.range(samples.len())];
            parts.push((
                subset,
                progress(&args.out, subset, &args.engine, shard, samples)?,
            ));
        }
        let state = if parts.iter().all(|(_, p)| p.complete()) {
            "complete"
        } else if parts.iter().all(|(_, p)| !p.journal) {
            "not started"
        } else {
            "incomplete"
        };
        if state != "complete" {
            pending.push(shard);
        }
        let detail: Vec<String> = parts.iter().map(|(s, p)| p.describe(*s)).collect();
        println!("shard {shard}: {state} ({})", detail.join(", "));
    }
    let list: Vec<String> = pending.iter().map(|s| s.k.to_string()).collect();
    if list.is_empty() {
        println!("pending: none");
    } else {
        println!("pending: {}", list.join(" "));
    }
    Ok(pending)
}

/// One subset of one shard, from its journal and answers file.
fn progress(
    out: &Path,
    subset: Subset,
    engine: &str,
    shard: Shard,
    samples: &[crate::dataset::Sample],
) -> Result<Progress, Error> {
    let paths = Paths::new(out, subset.name(), &shard.engine_name(engine));
    let mut progress = Progress {
        journal: paths.journal.is_file(),
        answers_file: paths.answers.is_file(),
        answered: 0,
        failed: 0,
        total: samples.len(),
    };
    if progress.journal {
        let entries = crate::results::read_entries(&paths.journal)?;
        for sample in samples {
            match entries.get(&sample.image) {
                Some(e) if e.answer.is_some() => progress.answered += 1,
                Some(_) => progress.failed += 1,
                None => {}
            }
        }
    }
    Ok(progress)
}

/// The one N of the shard journals of `engine` under `out`.
fn found_count(out: &Path, subsets: &[Subset], engine: &str) -> Result<usize, Error> {
    let mut counts = Vec::new();
    for subset in subsets {
        let dir = out.join(subset.name());
        if !dir.is_dir() {
            continue;
        }
        let found = shards_in(&dir, engine, ".journal.jsonl")
            .map_err(|e| Error::Status(format!("{}: {e}", dir.display())))?;
        counts.extend(found.into_iter().map(|(shard, _)| shard.n));
    }
    counts.sort_unstable();
    counts.dedup();
    match counts[..] {
        [n] => Ok(n),
        [] => Err(Error::Status(format!(
            "no {engine}.shard-K-of-N journals under {}: pass --shards N",
            out.display()
        ))),
        _ => Err(Error::Status(format!(
            "journals of {engine} split {counts:?} ways under {}: pass --shards N",
            out.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::JournalEntry;

    fn entry(image: &str, answer: Option<&str>) -> String {
        let e = JournalEntry {
            image: image.into(),
            answer: answer.map(Into::into),
            error: answer.is_none().then(|| "bad".into()),
            new_tokens: 1,
            ended_with_eos: true,
            min_margin: None,
            image_sha256: None,
        };
        serde_json::to_string(&e).unwrap() + "\n"
    }

    #[test]
    fn progress_comes_from_the_journal_and_the_answers_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("unsafes");
        std::fs::create_dir_all(&sub).unwrap();
        let samples: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|i| crate::dataset::Sample::new(i, "q"))
            .collect();
        let shard = Shard { k: 2, n: 3 };
        let read = || progress(dir.path(), Subset::Unsafes, "e", shard, &samples).unwrap();
        assert_eq!(read().describe(Subset::Unsafes), "unsafes not started");
        // One answer, one failure, a torn last line (a header is not needed to read it).
        let journal = sub.join("e.shard-2-of-3.journal.jsonl");
        let text = format!("{}{}{{\"ima", entry("a", Some("x")), entry("b", None));
        std::fs::write(&journal, text).unwrap();
        let p = read();
        assert_eq!((p.answered, p.failed, p.complete()), (1, 1, false));
        assert_eq!(p.describe(Subset::Unsafes), "unsafes 1/3 (1 failed)");
        std::fs::write(
            &journal,
            [
                entry("a", Some("x")),
                entry("b", Some("y")),
                entry("c", Some("z")),
            ]
            .concat(),
        )
        .unwrap();
        assert!(!read().complete(), "no answers file yet");
        std::fs::write(sub.join("e.shard-2-of-3.json"), "{}").unwrap();
        assert!(read().complete());
        assert_eq!(found_count(dir.path(), &[Subset::Unsafes], "e").unwrap(), 3);
        std::fs::write(sub.join("e.shard-1-of-2.journal.jsonl"), "").unwrap();
        let err = found_count(dir.path(), &[Subset::Unsafes], "e")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("split [2, 3] ways") && err.contains("--shards"),
            "{err}"
        );
    }
}
