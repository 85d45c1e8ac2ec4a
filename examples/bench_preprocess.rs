//! Throughput of `preprocess::pixel_values_batch` on the 20 golden images (not a test).
//!
//! Run: `cargo run --release --example bench_preprocess -- [REPEATS] [THREADS]`
//! (defaults 10 and 2). Compare with `python3 scripts/bench_preprocess.py` (the same
//! images through transformers' CLIPImageProcessor) on the same machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vlguard_ort::export::manifest::PreprocessSpec;
use vlguard_ort::preprocess::{decode_rgb, normalize_chw, pixel_values_batch, resize_and_crop};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let repeats: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    // The golden bundle's manifest lists its 20 images, which are the mini set's.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo.join("tests/data/golden-dev/manifest.json"),
    )?)?;
    let images: Vec<PathBuf> = manifest["image_notes"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("manifest.json has no image_notes"))?
        .keys()
        .map(|k| repo.join("data/mini/test").join(k))
        .collect();
    let paths: Vec<PathBuf> = (0..repeats).flat_map(|_| images.iter().cloned()).collect();
    let spec = PreprocessSpec::default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    // One warm-up pass (page cache, allocator).
    pool.install(|| pixel_values_batch(&images, &spec));
    let t = Instant::now();
    let results = pool.install(|| pixel_values_batch(&paths, &spec));
    let secs = t.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} images failed");
    println!(
        "rust pixel_values_batch: {} images ({} x {repeats}) on {threads} threads in {secs:.3} s = {:.1} images/s",
        paths.len(),
        images.len(),
        paths.len() as f64 / secs
    );
    // Single-thread stage breakdown over the same images.
    let (mut t_dec, mut t_res, mut t_norm) = (0.0, 0.0, 0.0);
    for _ in 0..repeats {
        for p in &images {
            let t = Instant::now();
            let rgb = decode_rgb(p)?;
            t_dec += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let crop = resize_and_crop(&rgb, &spec).map_err(anyhow::Error::msg)?;
            t_res += t.elapsed().as_secs_f64();
            let t = Instant::now();
            std::hint::black_box(normalize_chw(&crop, &spec));
            t_norm += t.elapsed().as_secs_f64();
        }
    }
    let n = (repeats * images.len()) as f64 / 1000.0;
    println!(
        "per image, 1 thread: decode {:.2} ms, resize+crop {:.2} ms, normalize {:.2} ms",
        t_dec / n,
        t_res / n,
        t_norm / n
    );
    Ok(())
}
