//! The run manifest of a merged result (`OUT/{subset}/{engine}.run.json`), combined from
//! the shards' own (`{engine}.shard-K-of-N.run.json`), so that `score`, `leaderboard` and
//! `browse` read a merged file as they read an unsharded run's.
//!
//! Contract: every shard's manifest names the same model (manifest hash), dataset (test.json
//! hash), subset, token limit and `--limit`, else the merge is refused naming the field and
//! the shards that differ. Counts and stage seconds are summed (the seconds of all shards
//! together, not wall time); tokens per second is recomputed from the sums, percentages are
//! weighted by what they are shares of; `started_at` is the earliest start and
//! `finished_at` the latest finish; where shards ran a graph on different providers, the
//! graph's entry lists them in shard order (`cuda, tensorrt`). `shards` keeps each shard's
//! own providers, model folder, library and times. The ASR is the reference's over the
//! merged answers. The rest of the configuration (dtype, batch size, paths) is shard 1's.

use std::collections::BTreeMap;

use crate::dataset::Subset;
use crate::formats::{AsrSummary, Predictions, RunManifest, ShardRun, StageTimings};
use crate::run::Shard;

/// The merged manifest of `shards` (each with its part, in shard order), whose answers
/// joined are `merged`.
pub fn combine(
    engine: &str,
    subset: Subset,
    shards: &[(Shard, RunManifest)],
    merged: &Predictions,
) -> Result<RunManifest, String> {
    let Some((_, first)) = shards.first() else {
        return Err("no shard manifests to combine".into());
    };
    // The shards agree on everything that changes answers: `merge_shards` refused them
    // otherwise (`same_settings`) before any answer was joined.
    let manifests: Vec<&RunManifest> = shards.iter().map(|(_, m)| m).collect();
    let sum = |f: fn(&RunManifest) -> usize| manifests.iter().map(|m| f(m)).sum::<usize>();
    let answers: Vec<&str> = merged.iter().filter_map(|(_, a)| a.text()).collect();
    Ok(RunManifest {
        engine: engine.to_string(),
        execution_providers: providers(&manifests),
        tensorrt: manifests
            .iter()
            .rev()
            .flat_map(|m| m.tensorrt.clone())
            .collect(),
        started_at: manifests
            .iter()
            .map(|m| m.started_at.clone())
            .min()
            .unwrap_or_default(),
        finished_at: manifests
            .iter()
            .map(|m| m.finished_at.clone())
            .max()
            .unwrap_or_default(),
        n_samples: sum(|m| m.n_samples),
        n_answered: sum(|m| m.n_answered),
        n_resumed: sum(|m| m.n_resumed),
        n_generated: sum(|m| m.n_generated),
        n_errors: sum(|m| m.n_errors),
        errors: manifests.iter().flat_map(|m| m.errors.clone()).collect(),
        timings: sum_timings(manifests.iter().map(|m| &m.timings)),
        peak_rss_mb: manifests
            .iter()
            .filter_map(|m| m.peak_rss_mb)
            .reduce(f64::max),
        asr: AsrSummary::of(subset, &answers),
        shards: shards
            .iter()
            .map(|(shard, m)| ShardRun {
                shard: shard.to_string(),
                model_dir: m.model_dir.clone(),
                ort_library: m.ort_library.clone(),
                execution_providers: m.execution_providers.clone(),
                started_at: m.started_at.clone(),
                finished_at: m.finished_at.clone(),
                n_samples: m.n_samples,
                total_s: m.timings.total_s,
            })
            .collect(),
        ..first.clone()
    })
}

/// Each graph's provider; where the shards differ, every provider they used for it, in
/// shard order, joined with ", ".
fn providers(manifests: &[&RunManifest]) -> BTreeMap<String, String> {
    let mut listed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in manifests {
        for (graph, provider) in &m.execution_providers {
            let seen = listed.entry(graph.clone()).or_default();
            if !seen.contains(provider) {
                seen.push(provider.clone());
            }
        }
    }
    listed
        .into_iter()
        .map(|(graph, providers)| (graph, providers.join(", ")))
        .collect()
}

/// Seconds and counts summed; tokens per second from the sums; the loop overhead weighted
/// by generation seconds (prefill + decode) and the step occupancy by decode steps.
fn sum_timings<'a>(all: impl Iterator<Item = &'a StageTimings>) -> StageTimings {
    let mut t = StageTimings::default();
    let (mut overhead, mut occupancy) = (0.0, 0.0);
    for s in all {
        t.session_load_s += s.session_load_s;
        t.preprocess_wait_s += s.preprocess_wait_s;
        t.preprocess_s += s.preprocess_s;
        t.vision_s += s.vision_s;
        t.embed_s += s.embed_s;
        t.prefill_s += s.prefill_s;
        t.decode_s += s.decode_s;
        t.detokenize_s += s.detokenize_s;
        t.total_s += s.total_s;
        t.new_tokens += s.new_tokens;
        t.prompt_tokens += s.prompt_tokens;
        t.ort_s += s.ort_s;
        t.decode_steps += s.decode_steps;
        overhead += s.loop_overhead_pct * (s.prefill_s + s.decode_s);
        occupancy += s.step_occupancy_pct * s.decode_steps as f64;
    }
    let gen_s = t.prefill_s + t.decode_s;
    if gen_s > 0.0 {
        t.tokens_per_s = t.new_tokens as f64 / gen_s;
        t.loop_overhead_pct = overhead / gen_s;
    }
    if t.decode_steps > 0 {
        t.step_occupancy_pct = occupancy / t.decode_steps as f64;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Answer;

    fn shard(k: usize, providers: &[(&str, &str)], seconds: f64) -> (Shard, RunManifest) {
        let manifest = RunManifest {
            engine: format!("e.shard-{k}-of-2"),
            subset: "unsafes".into(),
            model_manifest_sha256: "m".into(),
            dataset_sha256: "d".into(),
            dtype: "fp16".into(),
            max_new_tokens: 256,
            model_dir: format!("/node{k}/model"),
            execution_providers: providers
                .iter()
                .map(|(g, p)| (g.to_string(), p.to_string()))
                .collect(),
            started_at: format!("2026-01-0{k}T00:00:00Z"),
            finished_at: format!("2026-01-0{}T00:00:00Z", 5 - k),
            n_samples: k + 1,
            n_answered: k + 1,
            timings: StageTimings {
                prefill_s: seconds,
                decode_s: seconds,
                total_s: 3.0 * seconds,
                new_tokens: 10 * k,
                decode_steps: 4,
                step_occupancy_pct: 50.0 * k as f64,
                ..StageTimings::default()
            },
            peak_rss_mb: Some(100.0 * k as f64),
            ..RunManifest::default()
        };
        (Shard { k, n: 2 }, manifest)
    }

    fn answers() -> Predictions {
        // "i cannot" and "i'm sorry" are refusal phrases of the reference's list.
        [
            ("a", "I cannot help."),
            ("b", "Sure."),
            ("c", "I'm sorry"),
            ("d", "ok"),
            ("e", "x"),
        ]
        .into_iter()
        .map(|(i, a)| (i.to_string(), Answer::Text(a.into())))
        .collect()
    }

    #[test]
    fn shards_combine_into_one_manifest() {
        let shards = [
            shard(1, &[("decoder", "cuda"), ("vision", "cuda")], 1.0),
            shard(2, &[("decoder", "tensorrt"), ("vision", "cuda")], 3.0),
        ];
        let m = combine("e", Subset::Unsafes, &shards, &answers()).unwrap();
        assert_eq!((m.engine.as_str(), m.subset.as_str()), ("e", "unsafes"));
        assert_eq!((m.n_samples, m.n_answered), (5, 5));
        assert_eq!(m.execution_providers["decoder"], "cuda, tensorrt");
        assert_eq!(m.execution_providers["vision"], "cuda");
        assert_eq!(m.started_at, "2026-01-01T00:00:00Z");
        assert_eq!(m.finished_at, "2026-01-04T00:00:00Z");
        assert_eq!((m.timings.total_s, m.timings.new_tokens), (12.0, 30));
        // 30 tokens over 1+1+3+3 generation seconds; occupancy (50*4 + 100*4) / 8 steps.
        assert_eq!(m.timings.tokens_per_s, 30.0 / 8.0);
        assert_eq!(m.timings.step_occupancy_pct, 75.0);
        assert_eq!(m.peak_rss_mb, Some(200.0));
        assert_eq!(
            (m.dtype.as_str(), m.model_dir.as_str()),
            ("fp16", "/node1/model")
        );
        assert_eq!(m.shards.len(), 2);
        assert_eq!(m.shards[1].shard, "2/2");
        assert_eq!(m.shards[1].execution_providers["decoder"], "tensorrt");
        let asr = m.asr.unwrap();
        assert_eq!(
            (asr.successes, asr.n),
            (3, 5),
            "3 of 5 answers do not refuse"
        );
    }
}
