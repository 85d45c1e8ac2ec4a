//! `vlguard-ort inspect DIR`: the manifest, then every graph's inputs and outputs as ONNX
//! Runtime reads them (names, element types, shapes with -1 for dynamic axes), each checked
//! against the manifest, what TensorRT's ONNX parser would not take, and every shaping
//! manifest field against its bounds and the graphs' dimensions (exit 1 when one cannot
//! be right).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use vlguard_export::manifest::{GraphKind, Manifest};

use crate::engine::session::{check_contract, Loader};
use crate::engine::{ort_lib, trt, validate, EngineOptions, EpChoice, Error};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model directory written by `export`.
    pub model: PathBuf,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the setup folder).
    #[arg(long, env = "VLGUARD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

pub fn command(args: &InspectArgs) -> Result<ExitCode, Error> {
    let (manifest, bytes) = Manifest::load(&args.model)?;
    println!("{}", String::from_utf8_lossy(&bytes).trim_end());
    let (lib, env) = ort_lib::environment(args.ort_lib.as_deref())?;
    println!("\nONNX Runtime: {}", lib.display());
    let options = EngineOptions {
        model_dir: args.model.clone(),
        ort_lib: args.ort_lib.clone(),
        ep: EpChoice::Cpu,
        device_id: 0,
        threads: Some(1),
        trt_cache: None,
        trt_limits: trt::Limits::new(1, 1),
        trt_lib_dir: None,
        keep_finished_rows: false,
    };
    let loader = Loader {
        env,
        options: &options,
        manifest: &manifest,
        trt_dir: None,
        trt_lib_dir: None,
    };
    let mut declared = BTreeMap::new();
    for kind in GraphKind::ALL {
        let spec = manifest.graphs.get(kind);
        let path = args.model.join(&spec.file);
        let (session, _) = loader.session(kind)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("\n{kind}: {} ({size} bytes)", spec.file);
        for input in session.inputs() {
            println!("  in   {:<28} {}", input.name(), input.dtype());
        }
        for output in session.outputs() {
            println!("  out  {:<28} {}", output.name(), output.dtype());
        }
        check_contract(kind, &session, spec)?;
        declared.insert(kind, validate::declared(&session));
        match vlguard_export::tensorrt::check_file(&path) {
            Ok(found) if found.is_empty() => println!("  TensorRT 10 ONNX parser: takes it whole"),
            Ok(found) => {
                println!(
                    "  TensorRT 10 ONNX parser: {} node(s) it will not take",
                    found.len()
                );
                for finding in &found {
                    println!("    {finding}");
                }
            }
            Err(e) => println!("  TensorRT 10 ONNX parser check: {e}"),
        }
    }
    let mut problems = validate::bounds(&manifest);
    problems.extend(validate::against_graphs(&manifest, &declared));
    if problems.is_empty() {
        println!("\nmanifest.json: every shaping field within bounds and equal to the graphs'");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\nmanifest.json: {} field(s) cannot be right",
        problems.len()
    );
    for problem in &problems {
        println!("  {problem}");
    }
    Ok(ExitCode::from(1))
}
