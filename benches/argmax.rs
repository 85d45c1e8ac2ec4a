//! Host-side greedy choice per decoder step: `argmax_first` over `rows x 32,000` logits.
//! `cargo bench --bench argmax` (release build); prints milliseconds per step.

use std::time::Instant;
use vlguard_ort::generate::argmax_first;

fn main() {
    let vocab = 32_000;
    let mut state = 12_345u64;
    for rows in [1usize, 8, 32, 64] {
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 40) as f32 / 1e5 - 50.0
            })
            .collect();
        let reps = 2_000 / rows;
        let started = Instant::now();
        let mut picked = 0usize;
        for _ in 0..reps {
            for row in logits.chunks(vocab) {
                picked = picked.wrapping_add(std::hint::black_box(argmax_first(row)).0);
            }
        }
        let ms = started.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("rows {rows:>2}: {ms:.3} ms per step (checksum {picked})");
    }
}
