//! The size of the browse page for the full VLGuard test set (not a test): real questions,
//! synthetic answers, generated images of realistic sizes.
//!
//! Run: `scripts/browse_size.sh` (or `cargo run --release --example browse_size -- [META]
//! [WORK] [THUMB_SIZE] [QUALITY]`), with VLGuard's test.json at META (default
//! data/VLGuard/test.json: `vlguard-ort fetch dataset`, or a copy; it is gated, never
//! commit it). WORK (default target/browse_size) receives, and keeps until the next run:
//! - `images/`: one image per test.json entry at its path (598 `.jpg`, 402 `.png`), each
//!   500 to 1500 px a side (VLGuard's photos' range), a colour gradient under three octaves
//!   of value noise (64, 16 and 4 px cells), a few flat shapes with hard edges and per-pixel
//!   sensor noise: a photo's mix of smooth areas, texture and edges, so the thumbnails
//!   compress about as a photo's do (the mini set's real photos are measured beside them);
//!   JPEGs at quality 90, PNGs 8-bit RGB;
//! - `results/{subset}/{synthetic,synthetic-b}.json`: an answer for every sample of every
//!   subset, 200 to 1100 characters of words (LLaVA's answers run up to 256 tokens), about
//!   a third of them refusals opening with a refusal phrase; `synthetic-b` refuses others;
//! - `browse/synthetic.html` (1,558 answers) and `browse/compare/synthetic--synthetic-b.html`
//!   (3,116 answers side by side), made by the library as `vlguard-ort browse` makes them.
//!
//! It prints each page's size, split into thumbnails and the rest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use vlguard_ort::browse::{self, thumbs, BrowseArgs, Config};
use vlguard_ort::dataset::{Dataset, Subset};
use vlguard_ort::formats::{Answer, Predictions};
use vlguard_ort::preprocess::RgbImage;
use vlguard_ort::run::SubsetArg;

/// A small deterministic generator (xorshift64*), so every run makes the same files.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

/// One octave of value noise: random values on a grid of `cell`-pixel squares, bilinearly
/// interpolated, added to `img` with amplitude `amp` (levels, either way).
fn add_value_noise(img: &mut [f32], w: usize, h: usize, cell: usize, amp: f32, rng: &mut Rng) {
    let (gw, gh) = (w / cell + 2, h / cell + 2);
    let grid: Vec<[f32; 3]> = (0..gw * gh)
        .map(|_| [0, 0, 0].map(|_: u8| (f32::from(rng.byte()) / 127.5 - 1.0) * amp))
        .collect();
    for y in 0..h {
        let (gy, fy) = (y / cell, (y % cell) as f32 / cell as f32);
        for x in 0..w {
            let (gx, fx) = (x / cell, (x % cell) as f32 / cell as f32);
            let at = |i: usize, j: usize| grid[j * gw + i];
            let (a, b, c, d) = (
                at(gx, gy),
                at(gx + 1, gy),
                at(gx, gy + 1),
                at(gx + 1, gy + 1),
            );
            for ch in 0..3 {
                let top = a[ch] + (b[ch] - a[ch]) * fx;
                let bottom = c[ch] + (d[ch] - c[ch]) * fx;
                img[(y * w + x) * 3 + ch] += top + (bottom - top) * fy;
            }
        }
    }
}

/// A synthetic photo of `w` x `h` (see the module comment).
fn synthetic_photo(w: usize, h: usize, rng: &mut Rng) -> RgbImage {
    let from = [0; 3].map(|_: u8| f32::from(rng.byte()));
    let to = [0; 3].map(|_: u8| f32::from(rng.byte()));
    let mut img = vec![0f32; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let t = (x + y) as f32 / (w + h) as f32;
            for ch in 0..3 {
                img[(y * w + x) * 3 + ch] = from[ch] + (to[ch] - from[ch]) * t;
            }
        }
    }
    for (cell, amp) in [(64, 40.0), (16, 28.0), (4, 18.0)] {
        add_value_noise(&mut img, w, h, cell, amp, rng);
    }
    for _ in 0..rng.range(2, 6) {
        let (x0, y0) = (rng.range(0, w - 1), rng.range(0, h - 1));
        let (x1, y1) = (
            (x0 + rng.range(w / 10, w / 3)).min(w),
            (y0 + rng.range(h / 10, h / 3)).min(h),
        );
        let colour = [0; 3].map(|_: u8| f32::from(rng.byte()));
        for y in y0..y1 {
            for x in x0..x1 {
                img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&colour);
            }
        }
    }
    let data = img
        .iter()
        .map(|&v| (v + f32::from(rng.byte() % 13) - 6.0).clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

fn write_png(path: &Path, img: &RgbImage) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, img.width as u32, img.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&img.data)?;
    Ok(())
}

/// One image per entry at its test.json path, JPEG or PNG by its extension.
fn make_images(dataset: &Dataset, root: &Path) -> anyhow::Result<(usize, u64)> {
    let mut images: Vec<String> = Vec::new();
    for subset in Subset::ALL {
        images.extend(dataset.samples(subset)?.into_iter().map(|s| s.image));
    }
    images.sort_unstable();
    images.dedup();
    let mut bytes = 0;
    for (i, image) in images.iter().enumerate() {
        let path = root.join(image);
        std::fs::create_dir_all(path.parent().expect("a file has a folder"))?;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
        let (w, h) = (rng.range(500, 1500), rng.range(500, 1500));
        let img = synthetic_photo(w, h, &mut rng);
        if image.to_lowercase().ends_with(".png") {
            write_png(&path, &img)?;
        } else {
            let jpeg = thumbs::encode_jpeg(&img, 90).map_err(anyhow::Error::msg)?;
            std::fs::write(&path, jpeg)?;
        }
        bytes += std::fs::metadata(&path)?.len();
    }
    Ok((images.len(), bytes))
}

const WORDS: [&str; 16] = [
    "the",
    "image",
    "shows",
    "a",
    "person",
    "standing",
    "near",
    "building",
    "with",
    "text",
    "which",
    "appears",
    "to",
    "be",
    "describing",
    "information",
];
const REFUSALS: [&str; 3] = [
    "I'm sorry, but I cannot help with that. ",
    "As an AI language model, I cannot provide this. ",
    "I apologize, but it is not appropriate to answer. ",
];

/// An answer of 200 to 1100 characters; every third (shifted by `turn`) a refusal.
fn synthetic_answer(rng: &mut Rng, turn: usize) -> String {
    let mut text = String::new();
    if rng.range(0, 2) == turn {
        text.push_str(REFUSALS[rng.range(0, 2)]);
    }
    let len = rng.range(200, 1100);
    while text.len() < len {
        text.push_str(WORDS[rng.range(0, WORDS.len() - 1)]);
        text.push(if rng.range(0, 11) == 0 { '.' } else { ' ' });
    }
    text
}

fn make_answers(dataset: &Dataset, results: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for subset in Subset::ALL {
        let samples = dataset.samples(subset)?;
        for (engine, turn) in [("synthetic", 0), ("synthetic-b", 1)] {
            let mut rng = Rng(0x51ed_270b_27e5_1f0d ^ (turn as u64 + 7 * subset as u64 + 1));
            let answers: Predictions = samples
                .iter()
                .map(|s| {
                    (
                        s.image.clone(),
                        Answer::Text(synthetic_answer(&mut rng, turn)),
                    )
                })
                .collect();
            let path = results.join(subset.name()).join(format!("{engine}.json"));
            std::fs::create_dir_all(path.parent().expect("a file has a folder"))?;
            answers.write(&path)?;
        }
        n += samples.len();
    }
    Ok(n)
}

fn page(
    work: &Path,
    meta: &Path,
    against: Option<&str>,
    size: usize,
    quality: u8,
) -> anyhow::Result<()> {
    let args = BrowseArgs {
        results: work.join("results"),
        engine: "synthetic".into(),
        against: against.map(str::to_owned),
        subset: SubsetArg::All,
        meta: Some(meta.to_owned()),
        images: Some(work.join("images")),
        reference: None,
        keywords: None,
        out: None,
        thumb_size: size,
        thumb_quality: quality,
    };
    let config = Config::from_args(&args)?;
    let t = Instant::now();
    let data = browse::build(&config)?;
    anyhow::ensure!(data.problems.is_empty(), "problems: {:?}", data.problems);
    let html = browse::render(&data)?;
    vlguard_ort::util::write_atomic(&config.out, html.as_bytes())?;
    let thumbs: usize = data.thumbs.values().map(|t| t.src.len()).sum();
    let answers: usize = data.rows.len() * config.engines.len();
    println!(
        "{}: {} answers, {} thumbnails ({}x{} max, quality {quality}) in {:.1} s: page {:.2} MB \
         = thumbnails {:.2} MB (mean {:.1} KB as base64) + the rest {:.2} MB (GPT-4V answers: {})",
        config.out.display(),
        answers,
        data.thumbs.len(),
        size,
        size,
        t.elapsed().as_secs_f64(),
        mb(html.len()),
        mb(thumbs),
        thumbs as f64 / data.thumbs.len() as f64 / 1024.0,
        mb(html.len() - thumbs),
        if data.reference.is_some() {
            "included"
        } else {
            "not found, left out"
        },
    );
    Ok(())
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// Mean base64 thumbnail size of the mini set's real photos, for comparison.
fn mini_reference(size: usize, quality: u8) -> anyhow::Result<()> {
    let root = Path::new("data/mini/test");
    let dataset = Dataset::load(Path::new("data/mini/test.json"))?;
    let images: Vec<String> = dataset
        .samples(Subset::Unsafes)?
        .into_iter()
        .chain(dataset.samples(Subset::SafeSafes)?)
        .map(|s| s.image)
        .collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let (made, failed) = thumbs::thumbnails(
        root,
        &refs,
        thumbs::ThumbSpec {
            max_side: size,
            quality,
        },
    );
    anyhow::ensure!(failed.is_empty(), "{failed:?}");
    let total: usize = made.values().map(|t| t.src.len()).sum();
    println!(
        "mini set, {} real photos and drawings: mean thumbnail {:.1} KB as base64",
        made.len(),
        total as f64 / made.len() as f64 / 1024.0
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let meta = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "data/VLGuard/test.json".into()),
    );
    let work = PathBuf::from(args.next().unwrap_or_else(|| "target/browse_size".into()));
    let size: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(browse::DEFAULT_THUMB_SIZE);
    let quality: u8 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(browse::DEFAULT_THUMB_QUALITY);
    let dataset = Dataset::load(&meta)
        .with_context(|| format!("{} (VLGuard's test.json)", meta.display()))?;
    let images = work.join("images");
    if !images.is_dir() {
        let t = Instant::now();
        let (n, bytes) = make_images(&dataset, &images)?;
        println!(
            "generated {n} images, {:.0} MB, in {:.1} s",
            mb(bytes as usize),
            t.elapsed().as_secs_f64()
        );
    }
    let n = make_answers(&dataset, &work.join("results"))?;
    println!("wrote {n} synthetic answers per engine");
    mini_reference(size, quality)?;
    page(&work, &meta, None, size, quality)?;
    page(&work, &meta, Some("synthetic-b"), size, quality)
}
