//! The scheduler against a scripted decoder: stop rules, both refill policies, rows that
//! ride along or are dropped, bad prompts and decoder failures (typed: the engine's error
//! reaches the feed as the variant the decoder returned).

use std::collections::VecDeque;

use super::*;
use crate::engine::Error as EngineError;

/// A scripted model: a prompt's image embedding holds `1000 + row`, and row `r`'s k-th
/// token is `script[r][k]` (7 past its end). At a row's first token the double also puts
/// the EOS logit (2) above everything: the scheduler must ban it.
struct Scripted {
    vocab: usize,
    script: Vec<Vec<u32>>,
    /// Physical rows: (slot, row id, tokens given so far); `None` for a free row.
    rows: Vec<Option<(usize, usize, usize)>>,
    /// Keep finished rows in the batch (a device cache) instead of dropping them.
    riders: bool,
    joins_live: bool,
    counters: Counters,
    /// What happened, for the assertions.
    opens: Vec<(usize, usize)>,
    prefills: Vec<Vec<usize>>,
    steps: Vec<usize>,
    /// The step call (0-based) that fails, and its error, if any.
    fail_step: Option<(usize, EngineError)>,
}

impl Scripted {
    fn new(script: Vec<Vec<u32>>) -> Scripted {
        Scripted {
            vocab: 10,
            script,
            rows: Vec::new(),
            riders: false,
            joins_live: true,
            counters: Counters::default(),
            opens: Vec::new(),
            prefills: Vec::new(),
            steps: Vec::new(),
            fail_step: None,
        }
    }

    fn logits_for(&mut self, row: usize) -> Vec<f32> {
        let mut logits = vec![0f32; self.vocab];
        let (_, id, given) = self.rows[row].as_mut().expect("a live row");
        let token = self.script[*id].get(*given).copied().unwrap_or(7);
        logits[token as usize] = 1.0;
        if *given == 0 {
            logits[2] = 5.0;
        }
        *given += 1;
        logits
    }

    fn row_of(&self, slot: usize) -> Option<usize> {
        self.rows
            .iter()
            .position(|r| r.is_some_and(|(s, _, _)| s == slot))
    }
}

impl Decoder for Scripted {
    type Error = EngineError;

    fn open(&mut self, slots: usize, capacity: usize) -> Result<(), EngineError> {
        self.opens.push((slots, capacity));
        self.rows = vec![None; slots];
        Ok(())
    }

    fn prefill(&mut self, slots: &[usize], prompts: &[&Prompt]) -> Result<Vec<f32>, EngineError> {
        assert!(
            self.joins_live || self.rows.iter().all(Option::is_none),
            "a prompt joined a live batch of a decoder that cannot take it"
        );
        self.prefills.push(slots.to_vec());
        let mut logits = Vec::new();
        for (&slot, prompt) in slots.iter().zip(prompts) {
            assert!(slot < self.rows.len(), "slot {slot} has no row");
            let id = prompt.image_embeds[0] as usize - 1000;
            self.rows[slot] = Some((slot, id, 0));
            logits.extend(self.logits_for(slot));
        }
        Ok(logits)
    }

    fn step(&mut self, slots: &[usize], _tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.steps.push(self.rows.len());
        self.counters.step_rows += self.rows.len();
        if self
            .fail_step
            .as_ref()
            .is_some_and(|(step, _)| *step == self.steps.len() - 1)
        {
            if let Some((_, error)) = self.fail_step.take() {
                return Err(error);
            }
        }
        let mut logits = Vec::new();
        for &slot in slots {
            let row = self.row_of(slot).expect("a stepped slot has a row");
            logits.extend(self.logits_for(row));
        }
        Ok(logits)
    }

    fn retain(&mut self, live: &[usize]) -> Result<(), EngineError> {
        if !self.riders {
            self.rows
                .retain(|r| r.is_some_and(|(slot, _, _)| live.contains(&slot)));
        }
        Ok(())
    }

    fn joins_live_batch(&self) -> bool {
        self.joins_live
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

fn prompt(row: usize, text_len: usize) -> Prompt {
    let mut ids: Vec<i64> = (0..text_len as i64).map(|i| 10 + i).collect();
    ids.insert(1, -200);
    Prompt {
        ids,
        image_embeds: vec![1000.0 + row as f32; 2 * 2],
        image_tokens: 2,
    }
}

fn config(max: usize) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: max,
        eos_id: 2,
        image_token_id: -200,
    }
}

/// Prompts keyed by their index, outcomes collected by key.
struct Stream {
    queue: VecDeque<Queued<usize>>,
    outcomes: Vec<Option<Outcome<EngineError>>>,
    tokens: usize,
}

impl Stream {
    fn new(prompts: Vec<Prompt>) -> Stream {
        let n = prompts.len();
        Stream {
            queue: prompts
                .into_iter()
                .enumerate()
                .map(|(key, prompt)| Queued { key, prompt })
                .collect(),
            outcomes: (0..n).map(|_| None).collect(),
            tokens: 0,
        }
    }
}

impl Feed for Stream {
    type Key = usize;
    type DecoderError = EngineError;
    type Error = Error<EngineError>;
    fn next(&mut self, n: usize) -> Result<Option<Vec<Queued<usize>>>, Self::Error> {
        let k = n.min(self.queue.len());
        Ok((k > 0).then(|| self.queue.drain(..k).collect()))
    }
    fn finish(&mut self, key: usize, outcome: Outcome<EngineError>) -> Result<(), Self::Error> {
        assert!(self.outcomes[key].is_none(), "prompt {key} ended twice");
        self.outcomes[key] = Some(outcome);
        Ok(())
    }
    fn tokens(&mut self, n: usize) {
        self.tokens += n;
    }
}

/// Runs `prompts` through the scheduler; every prompt must end exactly once.
fn run(
    decoder: &mut Scripted,
    prompts: Vec<Prompt>,
    schedule: Schedule,
    max: usize,
) -> (Vec<Outcome<EngineError>>, Timings, usize) {
    let mut stream = Stream::new(prompts);
    let timings = generate(decoder, schedule, &config(max), &mut stream).unwrap();
    let outcomes = stream
        .outcomes
        .into_iter()
        .map(|o| o.expect("every prompt ends in the feed"))
        .collect();
    (outcomes, timings, stream.tokens)
}

fn static_batches(slots: usize) -> Schedule {
    Schedule {
        slots,
        refill: Refill::Static,
    }
}

fn continuous(slots: usize, capacity: usize) -> Schedule {
    Schedule {
        slots,
        refill: Refill::Continuous { capacity },
    }
}

fn script5() -> Vec<Vec<u32>> {
    vec![
        vec![5, 2],
        vec![4, 4, 4, 4, 4],
        vec![3, 2],
        vec![2, 6, 6, 2],
        vec![8, 8, 8],
    ]
}

fn tokens(outcome: &Outcome<EngineError>) -> &[u32] {
    &outcome.as_ref().unwrap().tokens
}

#[test]
fn stops_at_eos_or_the_limit_and_bans_eos_first() {
    let script = vec![vec![5, 6, 2, 9], vec![4, 4, 4, 4, 4, 4], vec![2, 3, 2]];
    let mut decoder = Scripted::new(script);
    let prompts = vec![prompt(0, 3), prompt(1, 5), prompt(2, 4)];
    let (out, timings, counted) = run(&mut decoder, prompts, static_batches(3), 4);
    // Row 0 stops on EOS (kept in tokens); row 1 runs to the limit; row 2's scripted EOS
    // at its first token is banned (the double's top logit then is its token 2 = EOS,
    // banned, so the next best, index 0, wins).
    assert_eq!(tokens(&out[0]), [5, 6, 2]);
    assert!(out[0].as_ref().unwrap().ended_with_eos);
    assert_eq!(tokens(&out[1]), [4, 4, 4, 4]);
    assert!(!out[1].as_ref().unwrap().ended_with_eos);
    assert_eq!(
        tokens(&out[2])[0],
        0,
        "EOS must be banned at the first step"
    );
    assert_eq!(tokens(&out[2])[1..], [3, 2]);
    assert_eq!(counted, timings.new_tokens);
    assert_eq!(timings.new_tokens, 3 + 4 + 3);
    assert_eq!(timings.prompt_tokens, (3 + 2) + (5 + 2) + (4 + 2));
}

#[test]
fn a_static_batch_gets_a_cache_sized_for_its_longest_prompt() {
    let mut decoder = Scripted::new(script5());
    let prompts: Vec<Prompt> = (0..5).map(|r| prompt(r, 2 + r)).collect();
    run(&mut decoder, prompts, static_batches(2), 5);
    // Batches {0,1}, {2,3}, {4}: longest positions 3+2, 5+2, 6+2, plus 5 new tokens.
    assert_eq!(decoder.opens, vec![(2, 5 + 5), (2, 7 + 5), (1, 8 + 5)]);
    assert!(decoder.prefills.iter().all(|p| p[0] == 0));
}

#[test]
fn finished_rows_leave_a_host_batch_and_ride_along_on_a_device() {
    let script = vec![vec![5, 2], vec![4, 4, 4, 4], vec![3, 3, 2]];
    let prompts = || vec![prompt(0, 2), prompt(1, 2), prompt(2, 3)];
    let mut host = Scripted::new(script.clone());
    let (dropping, _, _) = run(&mut host, prompts(), static_batches(3), 4);
    // Row 0 ends after one step, row 2 after two: the batch shrinks 3 -> 2 -> 1.
    assert_eq!(host.steps, vec![3, 2, 1]);
    let mut device = Scripted::new(script);
    device.riders = true;
    let (kept, timings, _) = run(&mut device, prompts(), static_batches(3), 4);
    assert_eq!(device.steps, vec![3, 3, 3]);
    assert_eq!(timings.step_rows, 9);
    assert_eq!(timings.step_tokens, 3 + 2 + 1);
    for (a, b) in dropping.iter().zip(&kept) {
        assert_eq!(a.as_ref().unwrap(), b.as_ref().unwrap());
    }
}

#[test]
fn continuous_gives_each_prompt_its_tokens_alone() {
    let prompts: Vec<Prompt> = (0..5).map(|r| prompt(r, 2 + r % 3)).collect();
    let mut slotted = Scripted::new(script5());
    let (streamed, _, _) = run(&mut slotted, prompts.clone(), continuous(2, 64), 5);
    for (r, got) in streamed.iter().enumerate() {
        let mut alone = Scripted::new(script5());
        let (expected, _, _) = run(&mut alone, vec![prompts[r].clone()], static_batches(1), 5);
        // Alone, the prompt is key 0 with row id r (from its image embedding).
        assert_eq!(got.as_ref().unwrap(), expected[0].as_ref().unwrap(), "{r}");
    }
}

#[test]
fn a_finished_row_frees_its_slot_for_the_next_prompt() {
    let prompts: Vec<Prompt> = (0..5).map(|r| prompt(r, 2)).collect();
    let mut slotted = Scripted::new(script5());
    slotted.riders = true;
    run(&mut slotted, prompts, continuous(2, 64), 5);
    // Rows 0 and 1 start; row 0 ends after 2 tokens (one step), so prompt 2 joins in
    // slot 0 while row 1 goes on in slot 1; and so on.
    assert_eq!(slotted.opens, vec![(2, 64)]);
    assert_eq!(slotted.prefills[0], vec![0, 1]);
    assert_eq!(slotted.prefills[1], vec![0]);
    assert_eq!(slotted.prefills.iter().flatten().count(), 5);
    // A device-style decoder never shrinks the batch.
    assert!(slotted.steps.iter().all(|&b| b == 2), "{:?}", slotted.steps);
}

#[test]
fn a_host_decoder_compacts_once_the_stream_runs_dry() {
    let prompts: Vec<Prompt> = (0..3).map(|r| prompt(r, 2)).collect();
    let mut slotted = Scripted::new(script5());
    let (results, _, _) = run(&mut slotted, prompts, continuous(2, 64), 5);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(slotted.steps.first(), Some(&2));
    assert_eq!(slotted.steps.last(), Some(&1), "{:?}", slotted.steps);
}

#[test]
fn bad_or_too_long_prompts_fail_alone() {
    let mut prompts: Vec<Prompt> = (0..3).map(|r| prompt(r, 2)).collect();
    prompts[1].ids.retain(|&id| id != -200); // no image slot
    prompts.push(prompt(3, 40)); // 40 text + 2 image positions: over the capacity
    let mut slotted = Scripted::new(script5());
    let (results, _, _) = run(&mut slotted, prompts, continuous(2, 20), 5);
    assert!(results[0].is_ok() && results[2].is_ok());
    let no_slot = results[1].as_ref().unwrap_err();
    assert!(
        matches!(
            no_slot,
            Failure::Prompt(PromptError::ImageSlots(ImageSlotError { found: 0, .. }))
        ),
        "{no_slot:?}"
    );
    assert!(no_slot.to_string().contains("0 image slots"));
    let too_long = results[3].as_ref().unwrap_err();
    assert!(
        matches!(
            too_long,
            Failure::Prompt(PromptError::OverCapacity {
                positions: 42,
                capacity: 20,
                ..
            })
        ),
        "{too_long:?}"
    );
    assert_eq!(
        too_long.to_string(),
        "the prompt has 42 positions: with 5 new tokens it exceeds the cache capacity 20"
    );
}

#[test]
fn a_decoder_failure_fails_the_rows_in_flight_and_the_stream_goes_on() {
    for schedule in [continuous(2, 64), static_batches(2)] {
        let prompts: Vec<Prompt> = (0..5).map(|r| prompt(r, 2)).collect();
        let mut slotted = Scripted::new(script5());
        let lost = EngineError::Cuda {
            call: "cudaStreamSynchronize",
            code: 700,
        };
        slotted.fail_step = Some((0, lost));
        let (results, _, _) = run(&mut slotted, prompts, schedule, 5);
        // The first step fails with rows 0 and 1 in flight; 2, 3, 4 come after.
        for r in [0, 1] {
            let failure = results[r].as_ref().unwrap_err();
            assert_eq!(
                failure.to_string(),
                "cudaStreamSynchronize failed with CUDA error 700",
                "{schedule:?}"
            );
        }
        for r in [2, 3, 4] {
            assert!(
                results[r].is_ok(),
                "{schedule:?} prompt {r}: {:?}",
                results[r]
            );
        }
    }
}

#[test]
fn rows_done_at_their_first_token_never_take_a_slot() {
    let prompts: Vec<Prompt> = (0..3).map(|r| prompt(r, 2)).collect();
    let mut slotted = Scripted::new(script5());
    let (results, timings, _) = run(&mut slotted, prompts, continuous(2, 64), 1);
    assert!(results.iter().all(|r| tokens(r).len() == 1));
    assert!(slotted.steps.is_empty());
    assert_eq!(timings.new_tokens, 3);
}

#[test]
fn the_feed_sees_the_decoders_error_by_variant_and_with_its_text() {
    // An allocation that did not fit, and a shape that broke the contract: each prompt
    // in flight gets the very error (one shared value), typed, so a caller can retry
    // smaller on out-of-memory and stop on a shape error; the text is the engine's own.
    let cases = [
        (
            EngineError::Cuda {
                call: "cudaMemcpyAsync",
                code: crate::engine::CUDA_ERROR_MEMORY_ALLOCATION,
            },
            true,
            "cudaMemcpyAsync failed with CUDA error 2",
        ),
        (
            EngineError::CacheFull {
                positions: 70,
                capacity: 64,
            },
            false,
            "fused decoder: 70 positions do not fit the cache's 64 (prompt + max new tokens)",
        ),
    ];
    for (error, out_of_memory, text) in cases {
        let prompts: Vec<Prompt> = (0..3).map(|r| prompt(r, 2)).collect();
        let mut slotted = Scripted::new(script5());
        slotted.fail_step = Some((0, error));
        let (results, _, _) = run(&mut slotted, prompts, continuous(2, 64), 5);
        let (Err(Failure::Decoder(first)), Err(Failure::Decoder(second))) =
            (&results[0], &results[1])
        else {
            panic!("rows 0 and 1 end with the decoder's error: {results:?}");
        };
        assert!(
            Arc::ptr_eq(first, second),
            "one error for the rows in flight"
        );
        assert_eq!(first.is_out_of_memory(), out_of_memory, "{first:?}");
        if !out_of_memory {
            assert!(
                matches!(
                    **first,
                    EngineError::CacheFull {
                        positions: 70,
                        capacity: 64
                    }
                ),
                "{first:?}"
            );
        }
        assert_eq!(results[0].as_ref().unwrap_err().to_string(), text);
        assert!(results[2].is_ok(), "the stream goes on: {:?}", results[2]);
    }
}
