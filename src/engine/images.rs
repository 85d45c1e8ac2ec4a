//! The vision tower and the projector of a model: pixels in, projected image embeddings
//! out. Sessions are `Send`, so a run can encode the next images on another thread while
//! the decoder works.

use ort::session::SessionInputValue;
use vlguard_export::manifest::{GraphKind, Manifest, ProjectorGraph, VisionGraph};

use super::session::{take, to_f32, Graph};
use super::Error;

pub struct ImageEncoder {
    vision: Graph,
    projector: Graph,
    /// The two graphs' tensor names.
    vision_io: VisionGraph,
    projector_io: ProjectorGraph,
    image_size: usize,
    /// Image embedding rows per image (`vision.num_tokens`).
    pub tokens: usize,
    /// Seconds inside `Session::run`.
    ort_s: f64,
}

impl ImageEncoder {
    pub fn new(vision: Graph, projector: Graph, manifest: &Manifest) -> ImageEncoder {
        let g = &manifest.graphs;
        ImageEncoder {
            vision,
            projector,
            vision_io: g.vision.clone(),
            projector_io: g.projector.clone(),
            image_size: manifest.vision.image_size,
            tokens: manifest.vision.num_tokens,
            ort_s: 0.0,
        }
    }

    /// `pixel_values [B,3,S,S]` -> projected image embeddings `[B,N,H]` as host f32.
    pub fn encode(&mut self, pixel_values: &[f32], batch: usize) -> Result<Vec<f32>, Error> {
        let s = self.image_size;
        let pixels = self
            .vision
            .float_tensor(pixel_values, vec![batch, 3, s, s])?;
        let t = std::time::Instant::now();
        let failed = self.vision.failed();
        let mut out = self
            .vision
            .session
            .run(vec![(
                self.vision_io.pixel_values.as_str(),
                SessionInputValue::from(pixels),
            )])
            .map_err(failed)?;
        let features = take(&mut out, &self.vision_io.image_features, GraphKind::Vision)?;
        drop(out);
        let failed = self.projector.failed();
        let mut out = self
            .projector
            .session
            .run(vec![(
                self.projector_io.image_features.as_str(),
                SessionInputValue::from(features),
            )])
            .map_err(failed)?;
        let embeds = take(
            &mut out,
            &self.projector_io.image_embeds,
            GraphKind::Projector,
        )?;
        self.ort_s += t.elapsed().as_secs_f64();
        to_f32(&embeds, "projector output")
    }

    /// Seconds inside ONNX Runtime session runs so far.
    pub fn ort_seconds(&self) -> f64 {
        self.ort_s
    }
}
