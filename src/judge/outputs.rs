//! What a judge run leaves behind: the reference-format output files (`{stem}.json`,
//! `{stem}.swapped.json`), the summary (`{stem}.summary.json`, a `formats::JudgeSummary`)
//! and the reference's line on stdout, all from the verdicts once every request is done.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{prompt, Error, Item, JudgeConfig, Order, Outcome, Usage, Verdict};
use crate::formats::{
    CostSummary, JudgeRun, JudgeSummary, JudgedItem, SwapSummary, TallySummary, UsageSummary,
};
use crate::util::{python_float_repr, sha256_hex};

/// Counts for one seat order. `wins + losses + content_policy + other_replies + errors == n`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub n: usize,
    pub wins: usize,
    pub losses: usize,
    pub content_policy: usize,
    pub other_replies: usize,
    pub errors: usize,
}

impl Tally {
    /// wins / n, as the reference divides (every item in the denominator).
    pub fn win_rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.wins as f64 / self.n as f64
        }
    }

    /// The counts as the summary file writes them.
    pub fn summary(&self) -> TallySummary {
        TallySummary {
            win_rate: self.win_rate(),
            wins: self.wins,
            n: self.n,
            losses: self.losses,
            content_policy: self.content_policy,
            other_replies: self.other_replies,
            errors: self.errors,
        }
    }

    fn add(&mut self, outcome: Option<Outcome>) {
        match outcome {
            Some(Outcome::Win) => self.wins += 1,
            Some(Outcome::Loss) => self.losses += 1,
            Some(Outcome::ContentPolicy) => self.content_policy += 1,
            // Harm verdicts never reach a helpfulness tally; were one there, it is no win.
            Some(Outcome::Other | Outcome::Safe | Outcome::Unsafe) => self.other_replies += 1,
            Some(Outcome::Error) | None => self.errors += 1,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct JudgeReport {
    pub original: Tally,
    pub swapped: Option<Tally>,
    /// (wins_original + wins_swapped) / (2 n): a split verdict counts half.
    pub debiased_win_rate: Option<f64>,
    pub usage: Usage,
    pub cost: Option<f64>,
    /// Verdicts taken from the journal instead of asked.
    pub resumed: usize,
    /// Requests sent by this run (items, not HTTP attempts).
    pub asked: usize,
    pub summary: JudgeSummary,
}

impl JudgeReport {
    pub fn complete(&self) -> bool {
        self.original.errors == 0 && self.swapped.is_none_or(|s| s.errors == 0)
    }

    /// 0 when every item has a verdict, 1 when some are errors (recorded, rerun to retry).
    pub fn exit_code(&self) -> ExitCode {
        crate::util::exit_code(self.complete())
    }
}

/// The reference's output file: its items, each with `output_1`, `output_2`, `choice`.
fn reference_output<'a>(
    items: &'a [Item],
    order: Order,
    verdicts: &'a HashMap<(String, Order), Verdict>,
) -> Vec<JudgedItem<'a>> {
    items
        .iter()
        .map(|item| {
            let (output_1, output_2) = item.outputs(order);
            JudgedItem {
                item: &item.reference,
                output_1,
                output_2,
                choice: verdicts
                    .get(&(item.image().to_owned(), order))
                    .and_then(|v| v.choice.as_deref()),
            }
        })
        .collect()
}

/// Writes `value` as Python's `json.dump(indent=4)`, atomically.
pub(super) fn write_file<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> Result<(), Error> {
    crate::formats::write_python_json(path, value).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Counts per seat order and token usage over every item's verdicts.
fn tallies(
    config: &JudgeConfig,
    items: &[Item],
    orders: &[Order],
    verdicts: &HashMap<(String, Order), Verdict>,
) -> (Tally, Option<Tally>, Usage) {
    let verdict = |item: &Item, order: Order| verdicts.get(&(item.image().to_owned(), order));
    let tally = |order: Order| {
        let mut t = Tally {
            n: items.len(),
            ..Tally::default()
        };
        for item in items {
            t.add(verdict(item, order).map(|v| v.outcome));
        }
        t
    };
    let usage = total_usage(
        items
            .iter()
            .flat_map(|item| orders.iter().filter_map(move |&o| verdict(item, o))),
    );
    let swapped = config.swap.then(|| tally(Order::Swapped));
    (tally(Order::Original), swapped, usage)
}

/// The tokens of every verdict.
pub(super) fn total_usage<'a>(verdicts: impl Iterator<Item = &'a Verdict>) -> Usage {
    let mut usage = Usage::default();
    for v in verdicts {
        let u = v.usage();
        usage.prompt_tokens += u.prompt_tokens;
        usage.completion_tokens += u.completion_tokens;
        usage.total_tokens += u.total_tokens;
    }
    usage
}

/// What `usage` cost at `--price-in` / `--price-out` (per million tokens).
pub(super) fn cost(config: &JudgeConfig, usage: Usage) -> Option<f64> {
    config.prices.map(|(pin, pout)| {
        (usage.prompt_tokens as f64 * pin + usage.completion_tokens as f64 * pout) / 1e6
    })
}

/// The tokens and cost as the summaries write them, with the prices the cost was
/// computed at.
pub(super) fn usage_summary(config: &JudgeConfig, usage: Usage, cost: Option<f64>) -> UsageSummary {
    UsageSummary {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
        cost: config
            .prices
            .zip(cost)
            .map(|((pin, pout), cost)| CostSummary {
                price_in_per_million: pin,
                price_out_per_million: pout,
                cost,
            }),
    }
}

/// The summary file of a finished run (`report` is complete but for its `summary`).
fn summary(config: &JudgeConfig, report: &JudgeReport) -> JudgeSummary {
    let (original, usage) = (&report.original, &report.usage);
    JudgeSummary {
        engine: config.engine.clone(),
        judge_model: config.model.clone(),
        // A password in the URL stays out of the file.
        base_url: config.api_key.redact(&config.base_url),
        original: original.summary(),
        complete: report.complete(),
        usage: usage_summary(config, *usage, report.cost),
        swap: report
            .swapped
            .zip(report.debiased_win_rate)
            .map(|(swapped, debiased)| SwapSummary {
                win_rate_original: original.win_rate(),
                win_rate_swapped: swapped.win_rate(),
                debiased_win_rate: debiased,
                swapped: swapped.summary(),
            }),
        max_tokens: config.max_tokens,
        predictions: config.predictions.display().to_string(),
        reference: config.reference.display().to_string(),
        prompt_sha256: sha256_hex(prompt::JUDGE_PROMPT_TEMPLATE.as_bytes()),
        run: JudgeRun {
            resumed: report.resumed,
            asked: report.asked,
            finished_at: crate::util::utc_now_rfc3339(),
        },
    }
}

/// The reference's line, then the swapped and debiased rates with `--swap`.
fn print_rates(
    config: &JudgeConfig,
    report: &JudgeReport,
    stdout: &mut dyn Write,
) -> Result<(), Error> {
    let rate = |label: &str, rate: f64| {
        format!("{label} of {}: {}", config.engine, python_float_repr(rate))
    };
    let mut lines = vec![rate("Winning rate", report.original.win_rate())];
    if let (Some(s), Some(debiased)) = (report.swapped, report.debiased_win_rate) {
        lines.push(format!(
            "Winning rate of {} (swapped seats): {}",
            config.engine,
            python_float_repr(s.win_rate())
        ));
        lines.push(rate("Debiased winning rate", debiased));
    }
    for line in lines {
        // The engine name comes from a file name.
        let line = crate::util::escape_controls(&line);
        writeln!(stdout, "{line}").map_err(|source| Error::Write {
            path: PathBuf::from("<stdout>"),
            source,
        })?;
    }
    Ok(())
}

pub(super) fn finish(
    config: &JudgeConfig,
    items: &[Item],
    orders: &[Order],
    verdicts: &HashMap<(String, Order), Verdict>,
    resumed: usize,
    asked: usize,
    stdout: &mut dyn Write,
) -> Result<JudgeReport, Error> {
    let (original, swapped, usage) = tallies(config, items, orders, verdicts);
    let debiased_win_rate = swapped.map(|s| {
        if original.n == 0 {
            0.0
        } else {
            (original.wins + s.wins) as f64 / (2 * original.n) as f64
        }
    });
    let cost = cost(config, usage);

    write_file(
        &config.out,
        &reference_output(items, Order::Original, verdicts),
    )?;
    if config.swap {
        write_file(
            &config.swapped_path(),
            &reference_output(items, Order::Swapped, verdicts),
        )?;
    }
    let mut report = JudgeReport {
        original,
        swapped,
        debiased_win_rate,
        usage,
        cost,
        resumed,
        asked,
        summary: JudgeSummary::default(),
    };
    report.summary = summary(config, &report);
    write_file(&config.summary_path(), &report.summary)?;

    print_rates(config, &report, stdout)?;
    if !report.complete() {
        eprintln!(
            "judge: {} request(s) have no verdict (counted as not won above); rerun the same command to ask for them again",
            original.errors + swapped.map_or(0, |s| s.errors)
        );
    }
    Ok(report)
}
