//! Image decoding and CLIP preprocessing, Pillow-exact. (Owner: preprocess work; stub.)
//!
//! Contract: `pixel_values(path, spec)` returns `[3, crop, crop]` float32 CHW exactly as
//! `CLIPImageProcessor.preprocess(Image.open(path).convert('RGB'))` computes it.

use std::path::{Path, PathBuf};

use vlguard_export::manifest::PreprocessSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read image {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decode image {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
}

/// Decodes and preprocesses one image into `[3, crop, crop]` CHW float32.
pub fn pixel_values(path: &Path, _spec: &PreprocessSpec) -> Result<Vec<f32>, Error> {
    Err(Error::Decode {
        path: path.to_path_buf(),
        reason: "preprocessing is not implemented yet".into(),
    })
}

/// Preprocesses many images on rayon threads; results keep the input order.
pub fn pixel_values_batch(
    paths: &[PathBuf],
    spec: &PreprocessSpec,
) -> Vec<Result<Vec<f32>, Error>> {
    paths.iter().map(|p| pixel_values(p, spec)).collect()
}
