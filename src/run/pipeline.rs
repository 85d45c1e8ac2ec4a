//! The image side of a run, ahead of the decoder: preprocessing on rayon threads, then the
//! vision tower + projector, one batch at a time through channels that hold one batch, so
//! the three stages overlap a batch apart.
//!
//! Where images are encoded ([`Images::start`]): `ahead`, on a thread of their own, one
//! batch ahead of the decoder, when the vision tower or the decoder runs on a GPU; or
//! inline, on the decoder's thread when it asks, when both run on the CPU: two ONNX Runtime
//! thread pools on the same cores slowed the 100M benchmark by ~25% (measured), more than
//! the overlap gains.

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Instant;

use rayon::prelude::*;
use vlguard_export::manifest::PreprocessSpec;

use crate::dataset::Sample;
use crate::engine::{self, ImageEncoder};
use crate::preprocess::{self, Pixels};

/// Where a run's images come from and how they are read.
pub struct ImageSource<'a> {
    /// `--images`: test.json's `image` paths are relative to it and must stay under it.
    pub root: &'a Path,
    pub spec: &'a PreprocessSpec,
    /// `--max-image-bytes`.
    pub max_bytes: u64,
}

/// A batch of samples with their preprocessed images (or the error each one hit).
struct Prepared {
    samples: Vec<Sample>,
    pixels: Vec<Result<Pixels, preprocess::Error>>,
    seconds: f64,
}

/// One sample's image after the vision tower: its projected embeddings (`[N, H]`) and
/// the sha256 of the file they came from.
pub struct Image {
    pub embeds: Vec<f32>,
    pub sha256: String,
}

/// Why a sample has no image embeddings.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file was refused, or could not be read or decoded.
    #[error(transparent)]
    Read(#[from] preprocess::Error),
    /// The vision tower or the projector failed on the batch the image was in (every
    /// image of the batch shares the error).
    #[error(transparent)]
    Vision(Arc<engine::Error>),
}

/// A batch after the vision tower: each sample with its image, or the error its image
/// hit (a refused or unreadable file, or the batch's vision error).
pub struct Encoded {
    pub samples: Vec<(Sample, Result<Image, ImageError>)>,
    /// Preprocessing seconds on the rayon threads, vision tower + projector seconds.
    pub preprocess_s: f64,
    pub vision_s: f64,
}

/// The running image stages (scoped threads: they borrow the samples and the encoder).
pub struct Images<'scope> {
    producer: ScopedJoinHandle<'scope, ()>,
    stage: Stage<'scope>,
}

enum Stage<'scope> {
    Ahead {
        rx: mpsc::Receiver<Encoded>,
        thread: ScopedJoinHandle<'scope, ()>,
    },
    Inline {
        rx: mpsc::Receiver<Prepared>,
        encoder: &'scope mut ImageEncoder,
    },
}

impl<'scope> Images<'scope> {
    /// Starts preprocessing `pending` (in that order, `batch` images at a time) and, when
    /// `ahead`, the vision thread.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        pending: &'env [Sample],
        batch: usize,
        source: &'env ImageSource<'env>,
        encoder: &'env mut ImageEncoder,
        ahead: bool,
    ) -> Images<'scope> {
        let (tx, rx) = mpsc::sync_channel::<Prepared>(1);
        let producer = scope.spawn(move || preprocess(pending, batch, source, tx));
        let stage = if ahead {
            let (tx, out) = mpsc::sync_channel::<Encoded>(1);
            let thread = scope.spawn(move || {
                for prepared in rx {
                    if tx.send(encode(prepared, encoder)).is_err() {
                        break;
                    }
                }
            });
            Stage::Ahead { rx: out, thread }
        } else {
            Stage::Inline { rx, encoder }
        };
        Images { producer, stage }
    }

    /// The next encoded batch, `None` at the end of the stream.
    pub fn next(&mut self) -> Option<Encoded> {
        match &mut self.stage {
            Stage::Ahead { rx, .. } => rx.recv().ok(),
            Stage::Inline { rx, encoder } => rx.recv().ok().map(|p| encode(p, encoder)),
        }
    }

    /// Stops the stages (a thread ends once its receiver is gone); `false` if one of
    /// them panicked.
    pub fn finish(self) -> bool {
        let vision = match self.stage {
            Stage::Inline { .. } => true,
            Stage::Ahead { rx, thread } => {
                drop(rx);
                thread.join().is_ok()
            }
        };
        self.producer.join().is_ok() && vision
    }
}

/// Preprocessing on rayon threads, `batch` images at a time into `tx` (a channel that
/// holds one batch).
fn preprocess(
    pending: &[Sample],
    batch: usize,
    source: &ImageSource,
    tx: mpsc::SyncSender<Prepared>,
) {
    for samples in pending.chunks(batch) {
        let t = Instant::now();
        let pixels = samples
            .par_iter()
            .map(|s| {
                let path = preprocess::image_under(source.root, &s.image)?;
                preprocess::load(&path, source.spec, source.max_bytes)
            })
            .collect();
        let prepared = Prepared {
            samples: samples.to_vec(),
            pixels,
            seconds: t.elapsed().as_secs_f64(),
        };
        if tx.send(prepared).is_err() {
            break;
        }
    }
}

/// Vision tower + projector over the images of a preprocessed batch that loaded.
fn encode(prepared: Prepared, encoder: &mut ImageEncoder) -> Encoded {
    let mut loaded = Vec::new();
    let mut pixels = Vec::new();
    let mut samples = Vec::with_capacity(prepared.samples.len());
    for (sample, p) in prepared.samples.into_iter().zip(prepared.pixels) {
        match p {
            Ok(p) => {
                pixels.extend_from_slice(&p.values);
                loaded.push((sample, p.sha256));
            }
            Err(error) => samples.push((sample, Err(error.into()))),
        }
    }
    let t = Instant::now();
    if !loaded.is_empty() {
        match encoder.encode(&pixels, loaded.len()) {
            Ok(embeds) => {
                let per_image = embeds.len() / loaded.len();
                for ((sample, sha256), rows) in loaded.into_iter().zip(embeds.chunks(per_image)) {
                    let image = Image {
                        embeds: rows.to_vec(),
                        sha256,
                    };
                    samples.push((sample, Ok(image)));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                samples.extend(
                    loaded
                        .into_iter()
                        .map(|(s, _)| (s, Err(ImageError::Vision(Arc::clone(&error))))),
                );
            }
        }
    }
    Encoded {
        samples,
        preprocess_s: prepared.seconds,
        vision_s: t.elapsed().as_secs_f64(),
    }
}
