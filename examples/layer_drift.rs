//! Where the decoder flavours lose precision (issue 15): the hidden states after every
//! sub-layer of every decoder flavour against the fp32 `plain` decoder, whose answers are
//! the reference's byte for byte (not a test; numbers for the README).
//!
//! Run: `cargo run --release --example layer_drift -- [--steps N] [--work DIR] [--cross]
//! [--own-vision]` (defaults 256 and target/layer-drift).
//!
//! - Exports the bundled demo model (models/demo-src, the golden bundle `dev`'s checkpoint)
//!   as fp32/fp16 x plain/fused, and beside each decoder a copy with probe outputs
//!   (`graphs::Probes::On`: fp32 copies of the hidden states at `graphs::PROBE_POINTS` of
//!   every layer and of the final norm). Before measuring, each probe graph is checked to
//!   give its exported decoder's logits bit for bit on every prompt.
//! - Builds the 30 prompts of the bundled mini test set (the bundle's samples), or with
//!   `--cross` every one of its 20 images with every one of its 30 questions (600 prompts:
//!   more near-ties, so the greedy counts below are less a matter of luck), with the fp32
//!   model's image and text embeddings; the fp16 decoders get them rounded to fp16, so
//!   only the decoders differ. With `--own-vision` the fp16 decoders get the fp16 vision
//!   tower's image embeddings instead, as in a run: the greedy counts below are then those
//!   of `scripts/agreement.sh --batch-size 1`, and the drift includes the vision tower's.
//! - Runs every decoder over each prompt, then up to N greedy steps on the fp32 plain
//!   decoder's tokens (teacher forcing: every decoder sees the reference's answer).
//! - Prints, per probe point, the relative RMS error against fp32 plain (sqrt(sum err^2 /
//!   sum ref^2)) over all prompt positions and over all steps; then, per decoder, the steps
//!   whose argmax differs from fp32 plain's, the samples with no such step (a greedy run
//!   of that decoder gives these answers unchanged), and fp32 plain's margin between its
//!   two best logits at those steps.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use half::f16;
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use vlguard_ort::dataset::{Dataset, Subset};
use vlguard_ort::engine::{Engine, EngineOptions, EpChoice};
use vlguard_ort::export::checkpoint::Checkpoint;
use vlguard_ort::export::graphs::{self, Probes, Weights, PROBE_FINAL_NORM, PROBE_POINTS};
use vlguard_ort::export::manifest::{names, DecoderSpec, Flavour, Manifest};
use vlguard_ort::export::{config, Dtype, ExportOptions};
use vlguard_ort::generate::argmax_first;
use vlguard_ort::prompt::{PromptTokenizer, IMAGE_TOKEN_INDEX};

const PROBE_FILE: &str = "decoder.probe.onnx";
/// fp32 plain first: the reference the others are measured against.
const VARIANTS: [(Dtype, Flavour); 4] = [
    (Dtype::Fp32, Flavour::Plain),
    (Dtype::Fp32, Flavour::Fused),
    (Dtype::Fp16, Flavour::Plain),
    (Dtype::Fp16, Flavour::Fused),
];

fn label((dtype, flavour): (Dtype, Flavour)) -> String {
    let d = if dtype == Dtype::Fp16 { "fp16" } else { "fp32" };
    let f = if flavour == Flavour::Fused {
        "fused"
    } else {
        "plain"
    };
    format!("{d} {f}")
}

fn main() -> Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut steps = 256usize;
    let mut work = repo.join("target/layer-drift");
    let (mut cross, mut own_vision) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cross" => cross = true,
            "--own-vision" => own_vision = true,
            _ => {}
        }
        if arg == "--cross" || arg == "--own-vision" {
            continue;
        }
        let value = args.next().ok_or_else(|| anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--steps" => steps = value.parse().context("--steps")?,
            "--work" => work = PathBuf::from(value),
            _ => {
                return Err(anyhow!(
                    "unknown argument {arg} (--steps N, --work DIR, --cross, --own-vision)"
                ))
            }
        }
    }
    let dirs: Vec<PathBuf> = VARIANTS
        .iter()
        .map(|&v| export(&repo, &work, v))
        .collect::<Result<_>>()?;
    // Prompts per variant: the fp32 model's embeddings, or each dtype's own.
    let fp32_prompts = prompts(&repo, &dirs[0], cross)?;
    let fp16_prompts = if own_vision {
        Some(prompts(&repo, &dirs[2], cross)?)
    } else {
        None
    };
    let sets: Vec<&[Prompt]> = VARIANTS
        .iter()
        .map(|&(dtype, _)| match (&fp16_prompts, dtype) {
            (Some(p), Dtype::Fp16) => p.as_slice(),
            _ => fp32_prompts.as_slice(),
        })
        .collect();
    let count = fp32_prompts.len();
    eprintln!("{count} prompts, up to {steps} steps each");

    let (manifest, _) = Manifest::load(&dirs[0])?;
    let points = probe_points(manifest.decoder.num_layers);
    let mut stats: Vec<Stats> = (1..VARIANTS.len())
        .map(|_| Stats::new(points.len() + 1))
        .collect();
    let mut decoders: Vec<Decoder> = dirs
        .iter()
        .map(|d| Decoder::open(d, PROBE_FILE, &points))
        .collect::<Result<_>>()?;
    let mut plain: Vec<Decoder> = dirs
        .iter()
        .map(|d| Decoder::open(d, vlguard_ort::export::DECODER_FILE, &[]))
        .collect::<Result<_>>()?;
    for n in 0..count {
        let prompt: Vec<&Prompt> = sets.iter().map(|set| &set[n]).collect();
        check_probes_change_nothing(&mut decoders, &mut plain, &prompt)?;
        follow_reference(&mut decoders, &mut stats, &prompt, steps, n)
            .with_context(|| format!("prompt {n}"))?;
    }
    print_tables(&points, &stats, count);
    Ok(())
}

/// Exports the demo model as `variant` into `work`, with the probe decoder beside it.
fn export(repo: &Path, work: &Path, variant: (Dtype, Flavour)) -> Result<PathBuf> {
    let (dtype, flavour) = variant;
    let out = work.join(label(variant).replace(' ', "-"));
    let src = repo.join("models/demo-src");
    let opts = ExportOptions {
        checkpoint: src.join("llava-v1.5-tiny"),
        vision_tower: Some(src.join("clip-vit-tiny-patch14-336")),
        base: None,
        out: out.clone(),
        dtype,
        force: true,
        random_weights: false,
        flavour,
    };
    vlguard_ort::export::export(&opts)?;
    let llava = config::parse_llava(&opts.checkpoint.join("config.json"))?;
    let ckpt = Checkpoint::open(&opts.checkpoint)?;
    let w = Weights::Checkpoint(&ckpt);
    match flavour {
        Flavour::Plain => graphs::build_decoder(&out, PROBE_FILE, &llava, dtype, &w, Probes::On)?,
        Flavour::Fused => {
            graphs::build_fused_decoder(&out, PROBE_FILE, &llava, dtype, &w, Probes::On)?
        }
    };
    Ok(out)
}

/// `L0 attn_norm`, ... for every layer, then the final norm.
fn probe_points(layers: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = (0..layers)
        .flat_map(|l| {
            PROBE_POINTS
                .iter()
                .map(move |p| (format!("L{l} {p}"), graphs::probe_name(l, p)))
        })
        .collect();
    out.push(("final_norm".into(), PROBE_FINAL_NORM.into()));
    out
}

/// One prompt: its spliced fp32 embeddings `[T, H]` and the EOS id.
struct Prompt {
    embeds: Vec<f32>,
    eos: usize,
    /// fp32 text embeddings of every token id, for the steps: `embed[id]`.
    table: std::sync::Arc<Vec<Vec<f32>>>,
}

/// The embed graph's row of every token id, `[V * H]`.
fn embed_table(dir: &Path, manifest: &Manifest) -> Result<Vec<f32>> {
    let env = vlguard_ort::engine::ort_lib::environment(None)?.1;
    let spec = &manifest.graphs.embed;
    let mut session = Session::builder(env)?
        .commit_from_file(dir.join(&spec.file))
        .with_context(|| format!("{}", dir.join(&spec.file).display()))?;
    let vocab = manifest.decoder.vocab_size;
    let ids = Tensor::from_array(([1, vocab], (0..vocab as i64).collect::<Vec<_>>()))?;
    let out = session.run(vec![(spec.input_ids.clone(), ids.into_dyn())])?;
    let (_, rows) = out[spec.inputs_embeds.as_str()].try_extract_tensor::<f32>()?;
    Ok(rows.to_vec())
}

/// The mini test set's prompts (or, `cross`, every image with every question), embedded
/// by the fp32 plain model in `dir`.
fn prompts(repo: &Path, dir: &Path, cross: bool) -> Result<Vec<Prompt>> {
    let (manifest, _) = Manifest::load(dir)?;
    let tok = &manifest.tokenizer;
    let tokenizer = PromptTokenizer::from_file(&dir.join(&tok.file), tok.bos_id, tok.eos_id)?;
    let mut engine = Engine::open(&EngineOptions {
        model_dir: dir.to_path_buf(),
        ort_lib: None,
        ep: EpChoice::Cpu,
        device_id: 0,
        threads: Some(1),
        trt_cache: None,
        trt_limits: vlguard_ort::engine::trt::Limits::new(1, 256),
        trt_lib_dir: None,
        keep_finished_rows: false,
    })?;
    let images = &mut engine.images;
    let h = manifest.decoder.hidden_size;
    let rows = embed_table(dir, &manifest)?;
    let table = std::sync::Arc::new(rows.chunks(h).map(<[f32]>::to_vec).collect::<Vec<_>>());
    let data = Dataset::load(&repo.join("data/mini/test.json"))?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for subset in Subset::ALL {
        for sample in data.samples(subset)? {
            pairs.push((sample.image, sample.question));
        }
    }
    if cross {
        let mut images: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
        images.sort();
        images.dedup();
        let questions: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
        pairs = images
            .iter()
            .flat_map(|i| questions.iter().map(move |q| (i.clone(), q.clone())))
            .collect();
    }
    let mut out = Vec::new();
    let mut encoded: Option<(String, Vec<f32>)> = None;
    for (image_key, question) in pairs {
        if encoded.as_ref().is_none_or(|(k, _)| *k != image_key) {
            let path = repo.join("data/mini/test").join(&image_key);
            let pixels = vlguard_ort::preprocess::pixel_values(&path, &manifest.preprocess)?;
            encoded = Some((image_key, images.encode(&pixels, 1)?));
        }
        let image = &encoded.as_ref().expect("encoded above").1;
        let ids = tokenizer.input_ids(&question)?;
        let mut embeds = Vec::new();
        for &id in &ids {
            if id == IMAGE_TOKEN_INDEX {
                embeds.extend_from_slice(image);
            } else {
                embeds.extend_from_slice(&table[id as usize]);
            }
        }
        out.push(Prompt {
            embeds,
            eos: tok.eos_id as usize,
            table: table.clone(),
        });
    }
    Ok(out)
}

/// A decoder graph run one row at a time, holding its cache.
struct Decoder {
    session: Session,
    spec: DecoderSpec,
    fp16: bool,
    /// Probe outputs read after each call, in [`probe_points`] order.
    probes: Vec<String>,
    cache: Vec<DynValue>,
    /// Positions in the cache.
    len: usize,
}

/// What one decoder call returned: the logits `[V]` and each probe's values.
struct Outputs {
    logits: Vec<f32>,
    probes: Vec<Vec<f32>>,
}

impl Decoder {
    fn open(dir: &Path, file: &str, points: &[(String, String)]) -> Result<Decoder> {
        let (manifest, _) = Manifest::load(dir)?;
        let env = vlguard_ort::engine::ort_lib::environment(None)?.1;
        // One thread: several sessions take turns, and idle pool threads that spin would
        // slow the others down; the tiny model gains nothing from more.
        let session = Session::builder(env)?
            .with_intra_threads(1)
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_file(dir.join(file))
            .with_context(|| format!("{}", dir.join(file).display()))?;
        Ok(Decoder {
            session,
            spec: manifest.decoder,
            fp16: manifest.dtype == Dtype::Fp16,
            probes: points.iter().map(|(_, name)| name.clone()).collect(),
            cache: Vec::new(),
            len: 0,
        })
    }

    /// Empties the cache; a fused decoder's buffers hold `capacity` positions.
    fn reset(&mut self, capacity: usize) -> Result<()> {
        let d = &self.spec;
        let positions = if d.flavour == Flavour::Fused {
            capacity
        } else {
            0
        };
        let shape = [1, d.num_kv_heads, positions, d.head_dim];
        let n = shape.iter().product();
        self.cache = (0..2 * d.num_layers)
            .map(|_| self.float_tensor(shape.to_vec(), &vec![0.0; n]))
            .collect::<Result<_>>()?;
        self.len = 0;
        Ok(())
    }

    fn float_tensor(&self, shape: Vec<usize>, values: &[f32]) -> Result<DynValue> {
        Ok(if self.fp16 {
            let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
            Tensor::from_array((shape, v))?.into_dyn()
        } else {
            Tensor::from_array((shape, values.to_vec()))?.into_dyn()
        })
    }

    /// Runs `t` new positions (`embeds [t, H]`) on top of the cache.
    fn call(&mut self, embeds: &[f32], t: usize) -> Result<Outputs> {
        let d = self.spec.clone();
        let total = self.len + t;
        let mut inputs: Vec<(String, DynValue)> = vec![(
            names::INPUTS_EMBEDS.into(),
            self.float_tensor(vec![1, t, d.hidden_size], embeds)?,
        )];
        if d.flavour == Flavour::Fused {
            let seqlens = Tensor::from_array(([1usize], vec![total as i32 - 1]))?;
            let total = Tensor::from_array((Vec::<usize>::new(), vec![total as i32]))?;
            inputs.push((names::SEQLENS_K.into(), seqlens.into_dyn()));
            inputs.push((names::TOTAL_SEQUENCE_LENGTH.into(), total.into_dyn()));
        } else {
            let mask = Tensor::from_array(([1, total], vec![1i64; total]))?;
            let positions: Vec<i64> = (self.len as i64..total as i64).collect();
            let positions = Tensor::from_array(([1, t], positions))?;
            inputs.push((names::ATTENTION_MASK.into(), mask.into_dyn()));
            inputs.push((names::POSITION_IDS.into(), positions.into_dyn()));
        }
        let cache = std::mem::take(&mut self.cache);
        for (i, value) in cache.into_iter().enumerate() {
            let (l, name) = (i / 2, i % 2);
            let name = if name == 0 {
                names::past_key(l)
            } else {
                names::past_value(l)
            };
            inputs.push((name, value));
        }
        let mut out = self.session.run(inputs)?;
        for l in 0..d.num_layers {
            for name in [names::present_key(l), names::present_value(l)] {
                let value = out.remove(&name).ok_or_else(|| anyhow!("no {name}"))?;
                self.cache.push(value);
            }
        }
        self.len = total;
        let read = |name: &str| -> Result<Vec<f32>> {
            let (_, v) = out[name].try_extract_tensor::<f32>()?;
            Ok(v.to_vec())
        };
        Ok(Outputs {
            logits: read(names::LOGITS)?,
            probes: self.probes.iter().map(|p| read(p)).collect::<Result<_>>()?,
        })
    }
}

/// Each probe graph's prompt logits equal its exported decoder's, bit for bit.
fn check_probes_change_nothing(
    probed: &mut [Decoder],
    exported: &mut [Decoder],
    prompts: &[&Prompt],
) -> Result<()> {
    let h = probed[0].spec.hidden_size;
    for (i, (a, b)) in probed.iter_mut().zip(exported.iter_mut()).enumerate() {
        let prompt = prompts[i];
        let t = prompt.embeds.len() / h;
        a.reset(t)?;
        b.reset(t)?;
        let x = a.call(&prompt.embeds, t)?.logits;
        let y = b.call(&prompt.embeds, t)?.logits;
        let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
        anyhow::ensure!(
            same,
            "{}: the probe graph's logits differ from the export's",
            label(VARIANTS[i])
        );
    }
    Ok(())
}

/// Error sums of one decoder against the reference, per probe point (and the logits, last).
struct Stats {
    /// [prompt, steps] x point: (sum err^2, sum ref^2).
    sums: [Vec<(f64, f64)>; 2],
    steps: usize,
    flips: usize,
    /// Samples with no step whose argmax differs from the reference's.
    unchanged: usize,
    /// Each differing step: (prompt, step, the reference's margin between its two best).
    differing: Vec<(usize, usize, f32)>,
    max_logit_err: f32,
}

impl Stats {
    fn new(points: usize) -> Stats {
        Stats {
            sums: [vec![(0.0, 0.0); points], vec![(0.0, 0.0); points]],
            steps: 0,
            flips: 0,
            unchanged: 0,
            differing: Vec::new(),
            max_logit_err: 0.0,
        }
    }

    fn add(&mut self, phase: usize, ours: &Outputs, reference: &Outputs) {
        let values = ours.probes.iter().chain([&ours.logits]);
        let refs = reference.probes.iter().chain([&reference.logits]);
        for (i, (a, b)) in values.zip(refs).enumerate() {
            let s = &mut self.sums[phase][i];
            for (x, y) in a.iter().zip(b) {
                s.0 += f64::from(x - y).powi(2);
                s.1 += f64::from(*y).powi(2);
            }
        }
        let err = ours
            .logits
            .iter()
            .zip(&reference.logits)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        self.max_logit_err = self.max_logit_err.max(err);
    }
}

/// The greedy choice with EOS forbidden at the first step (`min_new_tokens=1`), and its
/// margin to the runner-up.
fn choose(logits: &[f32], step: usize, eos: usize) -> (usize, f32) {
    let mut l = logits.to_vec();
    if step == 0 {
        l[eos] = f32::NEG_INFINITY;
    }
    argmax_first(&l)
}

/// Runs every decoder over its prompt (`prompts[i]` for decoder i) and then the
/// reference's answer, adding to `stats`; `n` numbers the prompt in the report.
fn follow_reference(
    decoders: &mut [Decoder],
    stats: &mut [Stats],
    prompts: &[&Prompt],
    steps: usize,
    n: usize,
) -> Result<()> {
    let h = decoders[0].spec.hidden_size;
    let (eos, table) = (prompts[0].eos, &prompts[0].table);
    for (d, p) in decoders.iter_mut().zip(prompts) {
        d.reset(p.embeds.len() / h + steps + 1)?;
    }
    let mut token: Option<usize> = None;
    let mut flipped = vec![false; stats.len()];
    for step in 0..steps {
        let outs: Vec<Outputs> = decoders
            .iter_mut()
            .zip(prompts)
            .map(|(d, p)| match token {
                None => d.call(&p.embeds, p.embeds.len() / h),
                Some(t) => d.call(&table[t], 1),
            })
            .collect::<Result<_>>()?;
        let (best, margin) = choose(&outs[0].logits, step, eos);
        let phase = usize::from(step > 0);
        for (i, s) in stats.iter_mut().enumerate() {
            s.add(phase, &outs[i + 1], &outs[0]);
            s.steps += 1;
            if choose(&outs[i + 1].logits, step, eos).0 != best {
                s.flips += 1;
                s.differing.push((n, step, margin));
                flipped[i] = true;
            }
        }
        if best == eos {
            break;
        }
        token = Some(best);
    }
    for (s, f) in stats.iter_mut().zip(flipped) {
        s.unchanged += usize::from(!f);
    }
    Ok(())
}

fn rel(s: (f64, f64)) -> String {
    format!("{:.2e}", (s.0 / s.1.max(f64::MIN_POSITIVE)).sqrt())
}

fn print_tables(points: &[(String, String)], stats: &[Stats], samples: usize) {
    let others: Vec<String> = VARIANTS[1..].iter().map(|&v| label(v)).collect();
    println!("Relative RMS error against fp32 plain (prompt positions / steps):\n");
    println!("| point | {} |", others.join(" | "));
    println!("|---|{}", "---|".repeat(others.len()));
    let rows = points.iter().map(|(l, _)| l.as_str()).chain(["logits"]);
    for (i, row) in rows.enumerate() {
        let cells: Vec<String> = stats
            .iter()
            .map(|s| format!("{} / {}", rel(s.sums[0][i]), rel(s.sums[1][i])))
            .collect();
        println!("| {row} | {} |", cells.join(" | "));
    }
    println!("\nGreedy choices on the reference's answers:\n");
    println!("| decoder | steps | argmax differs | samples unchanged | max logit error | largest fp32 margin where it differs |");
    println!("|---|---|---|---|---|---|");
    for (name, s) in others.iter().zip(stats) {
        let widest = s.differing.iter().map(|d| d.2).fold(0.0f32, f32::max);
        println!(
            "| {name} | {} | {} | {}/{samples} | {:.2e} | {widest:.2e} |",
            s.steps, s.flips, s.unchanged, s.max_logit_err
        );
    }
    for (name, s) in others.iter().zip(stats) {
        if !s.differing.is_empty() && s.differing.len() <= 12 {
            let list: Vec<String> = s
                .differing
                .iter()
                .map(|(n, step, m)| format!("prompt {n} step {step} (margin {m:.1e})"))
                .collect();
            println!("{name} differs at: {}", list.join(", "));
        }
    }
}
