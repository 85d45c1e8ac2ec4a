//! `vlguard-ort inspect DIR`: the manifest, then every graph's inputs and outputs as its
//! file declares them (names, element types, shapes; read without loading the weights, so a
//! model larger than memory can be inspected), each checked
//! against the manifest, what TensorRT's ONNX parser would not take, and every shaping
//! manifest field against its bounds and the graphs' dimensions (exit 1 when one cannot
//! be right).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use vlguard_export::manifest::{GraphKind, Manifest};

use vlguard_export::graph_io;

use crate::engine::session::check_names;
use crate::engine::{validate, Error};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model directory written by `export`. Needs neither ONNX Runtime nor the memory of the
    /// weights: everything shown comes from the manifest and the graph files.
    pub model: PathBuf,
}

pub fn command(args: &InspectArgs) -> Result<ExitCode, Error> {
    let (manifest, bytes) = Manifest::load(&args.model)?;
    // A model folder may come from anywhere: its manifest is shown escaped.
    let text = String::from_utf8_lossy(&bytes);
    println!("{}", crate::util::escape_lines(text.trim_end()));
    // Names inside the folder, regular files only: a graph that is a symlink to
    // /dev/zero would be read without end.
    crate::engine::verify::check_layout(&args.model, &manifest)?;
    let mut declared = BTreeMap::new();
    for kind in GraphKind::ALL {
        let file = manifest.graphs.file(kind);
        let path = args.model.join(file);
        // From the graph file itself: a session would load every weight (a 13B decoder
        // in fp16 took all of 24 GB and was killed).
        let io = graph_io::read_file(&path).map_err(|e| Error::Session {
            graph: kind,
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("\n{kind}: {file} ({size} bytes)");
        for (what, list) in [("in ", &io.inputs), ("out", &io.outputs)] {
            for value in list {
                println!("  {what}  {:<28} {}", value.name, value.type_text());
            }
        }
        let inputs: Vec<&str> = io.inputs.iter().map(|v| v.name.as_str()).collect();
        let outputs: Vec<&str> = io.outputs.iter().map(|v| v.name.as_str()).collect();
        check_names(kind, &inputs, &outputs, &manifest.graphs)?;
        let dims = io.inputs.iter().chain(&io.outputs);
        declared.insert(
            kind,
            dims.map(|v| (v.name.clone(), v.shape()))
                .collect::<validate::Declared>(),
        );
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
