//! vlguard-ort: the VLGuard safety benchmark on LLaVA-1.5 through ONNX Runtime.
//!
//! One module per pipeline stage, each opening with its contract:
//! dataset -> preprocess -> prompt -> engine -> generate -> results, then score, judge and
//! report on the results; fetch brings the dataset and checkpoints; export (crate
//! `vlguard-export`) turns checkpoints into the model directory the engine reads; formats
//! holds the one typed definition of every file they read and write.

pub mod browse;
pub mod cli;
pub mod convert;
pub mod dataset;
pub mod doctor;
pub mod engine;
pub mod export_cmd;
pub mod fetch;
pub mod formats;
pub mod generate;
pub mod inspect;
pub mod jsonl;
pub mod judge;
pub mod merge;
pub mod prepare;
pub mod preprocess;
pub mod prompt;
pub mod report;
pub mod reproduce;
pub mod results;
pub mod run;
pub mod score;
pub mod setup;
pub mod util;

/// The test data helpers the integration tests use too (one skip line for both).
#[cfg(test)]
#[path = "../tests/common/test_data.rs"]
mod test_data;

pub use vlguard_export as export;
