//! Every reader of untrusted bytes, fed mutated copies of real files: no panic, no abort,
//! no hang, bounded allocation.
//!
//! Readers (one test each): the pickle VM, the PyTorch zip (`.bin`) reader, its shard
//! index, the safetensors header, config.json (LLaVA, CLIP, preprocessor), the model
//! manifest (and the run's bounds check on it), the ONNX graph checker, the SentencePiece
//! `tokenizer.model` converter, `tokenizer.json` as the run loads it (the tokenizers
//! library, then the decode table), the JPEG and PNG decoders (with the resize and crop after
//! them), test.json, the run journal, predictions files, the leaderboard's run manifests
//! and judge summaries, the judge's journal and reference answers, the harm judge's
//! verdicts, summary and replies, and the dataset archive unpacker. Seeds are the repository's own files (models/demo-src, data/mini,
//! tests/fixtures) or files the test writes with the project's own writers (a demo
//! export, journals); each input is a seed with one to four stacked mutations
//! ([`fuzz::mutate`]: bit flips, interesting bytes and integers, truncation, deletion,
//! duplication, splicing with another seed, format tokens, inflated decimal numbers),
//! aimed mostly at the bytes that describe the rest (headers, tables, central
//! directories; PNG chunk CRCs are repaired after mutation so the decoder looks past them).
//!
//! Each input runs under `catch_unwind` on a worker thread whose heap this binary's
//! allocator caps at [`fuzz::CAP`] (768 MiB: the largest legitimate need is one image at
//! Pillow's pixel limit, 512 MiB of RGB): past it the allocator refuses, which aborts the
//! binary with a message naming the reader and the case. A case that runs longer than
//! [`fuzz::HANG`] fails the test; panics fail it at the end, grouped by site, with their
//! inputs saved under the target folder. Each finding fixed has a regression test below,
//! named after it.
//!
//! `VLGUARD_FUZZ_ITERS` sets the executions per reader (default: each reader's own count,
//! about a minute in all on two cores in a debug build); `VLGUARD_FUZZ_SEED` the seed
//! (default fixed, so CI is repeatable); `VLGUARD_FUZZ_REPLAY=CASE` runs that one case and
//! saves its input. `scripts/fuzz.sh` runs them long.

mod fuzz;

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fuzz::{fuzz, no_fixup, peak_heap_of, span, Scratch, Seed, Target};
use vlguard_export::manifest::Manifest;

// ------------------------------------------------------------------ seeds

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    let path = repo(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()))
}

const LLAVA: &str = "models/demo-src/llava-v1.5-tiny";
const CLIP: &str = "models/demo-src/clip-vit-tiny-patch14-336";
const SHARDS: [&str; 2] = [
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model-00002-of-00002.bin",
];

/// A PyTorch zip with its structure as focus: local headers, `data.pkl`, the central
/// directory; and the bytes of its `data.pkl`.
fn torch_zip_seed(rel: &str) -> (Seed, Vec<u8>) {
    let bytes = read(rel);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).expect("seed zip");
    let mut focus = span(zip.central_directory_start() as usize..bytes.len());
    let mut pickle = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).expect("seed entry");
        let start = entry.data_start().expect("data start") as usize;
        focus.push(entry.header_start() as usize..start);
        if entry.name().expect("entry name").ends_with("data.pkl") {
            focus.push(start..start + entry.compressed_size() as usize);
            std::io::Read::read_to_end(&mut entry, &mut pickle).expect("data.pkl");
        }
    }
    (Seed { bytes, focus }, pickle)
}

/// The JPEG and PNG fixtures of the decoder tests: every colour type, bit depth,
/// subsampling, progressive, arithmetic-coded, interlaced, CMYK.
fn image_seeds(extension: &str) -> Vec<Seed> {
    let dir = repo("tests/fixtures/preprocess");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    names.sort();
    assert!(
        !names.is_empty(),
        "no .{extension} fixture in {}",
        dir.display()
    );
    names
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("fixture");
            let focus = if extension == "png" {
                png_chunks(&bytes)
                    .iter()
                    .map(|c| {
                        // Chunk headers and every chunk but the compressed pixels; of
                        // those, the zlib header and the first block header.
                        let end = if &bytes[c.start + 4..c.start + 8] == b"IDAT" {
                            (c.start + 24).min(c.end)
                        } else {
                            c.end
                        };
                        c.start..end
                    })
                    .collect()
            } else {
                // The markers up to the end of the first scan header.
                let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]);
                let end = sos.map_or(bytes.len(), |at| {
                    at + 2 + usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]))
                });
                span(0..end)
            };
            Seed { bytes, focus }
        })
        .collect()
}

/// The byte ranges of a PNG's chunks (length, type, data, CRC), as far as they are whole.
fn png_chunks(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 12).checked_add(len).filter(|&e| e <= bytes.len()) else {
            break;
        };
        chunks.push(at..end);
        at = end;
    }
    chunks
}

/// CRC-32 (ISO-HDLC, PNG's), bit by bit: only inputs of a few KB pass through here.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Rewrites every whole chunk's CRC, so the decoder reads the mutated chunk itself.
fn png_fix_crcs(bytes: &mut [u8]) {
    for chunk in png_chunks(bytes) {
        let crc = crc32(&bytes[chunk.start + 4..chunk.end - 4]);
        bytes[chunk.end - 4..chunk.end].copy_from_slice(&crc.to_be_bytes());
    }
}

/// The demo model exported once (plain decoder, fp32), for the manifest and the graphs.
fn demo_export() -> &'static Path {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("demo");
        let opts = vlguard_export::ExportOptions {
            checkpoint: repo(LLAVA),
            vision_tower: Some(repo(CLIP)),
            base: None,
            out: out.clone(),
            dtype: vlguard_export::manifest::Dtype::Fp32,
            force: false,
            random_weights: false,
            flavour: vlguard_export::manifest::Flavour::Plain,
        };
        vlguard_export::export(&opts).expect("export of the demo model");
        (tmp, out)
    })
    .1
}

const JSON_TOKENS: &[&[u8]] = &[
    b"null",
    b"[]",
    b"{}",
    b"\"\"",
    b",",
    b":",
    b"\"\\ud800\"",
    b"\\u0000",
    b"-0",
    b"1e999",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":",
    b"true",
    b"\xEF\xBB\xBF",
    b"\xff\xfe",
];

/// Pickle opcodes a state dict uses, and some it must refuse.
const PICKLE_TOKENS: &[&[u8]] = &[
    b"}",
    b"(",
    b"t",
    b"R",
    b"\x85",
    b"\x86",
    b"\x87",
    b"]",
    b"e",
    b"a",
    b"s",
    b"u",
    b"0",
    b"q\xff",
    b"r\xff\xff\xff\xff",
    b"h\xff",
    b"j\xff\xff\xff\x7f",
    b"J\xff\xff\xff\xff",
    b"K\xff",
    b"M\xff\xff",
    b"X\xff\xff\xff\x7f",
    b"\x8c\xff",
    b"\x94",
    b"\x95\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"cos\nsystem\n",
    b"Q",
    b"N",
    b"\x88",
    b"\x8a\x08",
    b"\x80\x05",
    b".",
];

// ------------------------------------------------------------------ the readers

use vlguard_export::checkpoint::{Checkpoint, CheckpointError};

/// Every tensor of `ckpt`, read as the exporter reads its weights: `info` checks the
/// shape the config implies, so it is asked for the shape the checkpoint reports.
/// `true` when every tensor read.
fn read_every_tensor(ckpt: &Checkpoint) -> bool {
    let keys: Vec<String> = ckpt.keys().map(str::to_string).collect();
    let mut all = true;
    for key in keys {
        let shape = match ckpt.info(&key, &[]) {
            Ok(info) => info.shape.clone(),
            Err(CheckpointError::Shape { found, .. }) => found,
            Err(_) => {
                all = false;
                continue;
            }
        };
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        all &= ckpt
            .info(&key, &shape)
            .is_ok_and(|info| ckpt.read(info).is_ok());
    }
    all
}

#[test]
fn pickle_vm() {
    let seeds = SHARDS
        .iter()
        .map(|s| Seed::whole(torch_zip_seed(&format!("{LLAVA}/{s}")).1))
        .collect();
    fuzz(Target {
        name: "pickle",
        seeds,
        tokens: PICKLE_TOKENS,
        fixup: no_fixup,
        iterations: 16_000,
        run: Box::new(|input, _| {
            let Ok(tensors) = vlguard_export::pickle::read_state_dict(input) else {
                return false;
            };
            for (_, t) in tensors {
                t.is_contiguous();
            }
            true
        }),
    });
}

#[test]
fn torch_zip_checkpoint() {
    let seeds = SHARDS
        .iter()
        .map(|s| torch_zip_seed(&format!("{LLAVA}/{s}")).0)
        .collect();
    fuzz(Target {
        name: "torch-zip",
        seeds,
        tokens: &[
            b"PK\x03\x04",
            b"PK\x01\x02",
            b"PK\x05\x06",
            b"data.pkl",
            b"/data/0",
        ],
        fixup: no_fixup,
        iterations: 4_500,
        run: Box::new(|input, scratch| {
            scratch.put("pytorch_model.bin", input);
            Checkpoint::open(scratch.dir.path()).is_ok_and(|ckpt| read_every_tensor(&ckpt))
        }),
    });
}

#[test]
fn checkpoint_shard_index() {
    fuzz(Target {
        name: "shard-index",
        seeds: vec![Seed::whole(read(&format!(
            "{LLAVA}/pytorch_model.bin.index.json"
        )))],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 6_000,
        run: Box::new(|input, scratch| {
            for shard in SHARDS {
                if !scratch.path(shard).exists() {
                    std::fs::copy(repo(&format!("{LLAVA}/{shard}")), scratch.path(shard))
                        .expect("copy shard");
                }
            }
            scratch.put("pytorch_model.bin.index.json", input);
            Checkpoint::open(scratch.dir.path()).is_ok()
        }),
    });
}

#[test]
fn safetensors_header() {
    let bytes = read(&format!("{CLIP}/model.safetensors"));
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    fuzz(Target {
        name: "safetensors",
        seeds: vec![Seed {
            bytes,
            focus: span(0..header_end),
        }],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 3_000,
        run: Box::new(|input, scratch| {
            scratch.put("model.safetensors", input);
            Checkpoint::open(scratch.dir.path()).is_ok_and(|ckpt| read_every_tensor(&ckpt))
        }),
    });
}

#[test]
fn config_json() {
    use vlguard_export::config;
    fuzz(Target {
        name: "config",
        seeds: [
            format!("{LLAVA}/config.json"),
            format!("{CLIP}/config.json"),
            format!("{CLIP}/preprocessor_config.json"),
        ]
        .iter()
        .map(|p| Seed::whole(read(p)))
        .collect(),
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 15_000,
        run: Box::new(|input, scratch| {
            let path = scratch.put("config.json", input);
            let llava = config::parse_llava(&path).is_ok();
            let clip = config::parse_clip(&path).is_ok();
            config::parse_preprocessor(&path).is_ok() || llava || clip
        }),
    });
}

#[test]
fn model_manifest() {
    let bytes = std::fs::read(demo_export().join("manifest.json")).expect("manifest");
    // A version 1 manifest too: its ordered lists are read by role on load.
    let v1 = std::fs::read(repo("tests/data/manifest-v1/demo-fp32-fused.json")).expect("v1");
    fuzz(Target {
        name: "manifest",
        seeds: vec![Seed::whole(bytes), Seed::whole(v1)],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 20_000,
        run: Box::new(|input, scratch| {
            scratch.put("manifest.json", input);
            Manifest::load(scratch.dir.path()).is_ok_and(|(m, _)| {
                // The file names it gives are held to the folder (none is there to read).
                let _ = vlguard_ort::engine::verify::check_layout(scratch.dir.path(), &m);
                vlguard_ort::engine::validate::bounds(&m).is_empty()
            })
        }),
    });
}

#[test]
fn onnx_graphs() {
    let seeds = ["vision", "projector", "embed", "decoder"]
        .iter()
        .map(|g| Seed::whole(std::fs::read(demo_export().join(format!("{g}.onnx"))).unwrap()))
        .collect();
    fuzz(Target {
        name: "onnx",
        seeds,
        tokens: &[
            b"\x0a\xff\xff\xff\xff\x0f",
            b"\x3a\x80\x80\x80\x80\x10",
            b"\x12\x00",
        ],
        fixup: no_fixup,
        iterations: 18_000,
        run: Box::new(|input, _| vlguard_export::tensorrt::check(input).is_ok()),
    });
}

#[test]
fn sentencepiece_model() {
    fuzz(Target {
        name: "tokenizer-model",
        seeds: vec![Seed::whole(read(&format!("{LLAVA}/tokenizer.model")))],
        tokens: &[
            b"\x0a\xff\xff\xff\xff\x0f",
            b"\x12\x00",
            b"\x0a\x05\x0a\x01a\x15",
        ],
        fixup: no_fixup,
        iterations: 2_000,
        run: Box::new(|input, _| {
            vlguard_export::tokenizer::tokenizer_json_from_sentencepiece(input).is_ok()
        }),
    });
}

#[test]
fn tokenizer_json() {
    use vlguard_ort::prompt::PromptTokenizer;
    let bytes = std::fs::read(demo_export().join("tokenizer.json")).expect("tokenizer.json");
    let (manifest, _) = Manifest::load(demo_export()).expect("manifest");
    let (bos, eos) = (manifest.tokenizer.bos_id, manifest.tokenizer.eos_id);
    fuzz(Target {
        name: "tokenizer-json",
        seeds: vec![Seed::whole(bytes)],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 600,
        run: Box::new(move |input, scratch| {
            let path = scratch.put("tokenizer.json", input);
            let Ok(tokenizer) = PromptTokenizer::from_file(&path, bos, eos) else {
                return false;
            };
            // A prompt through it and back, as a run does.
            let ids = tokenizer.input_ids("What is in <image> this picture?");
            let ids: Vec<u32> = ids.unwrap_or_default().iter().map(|&i| i as u32).collect();
            tokenizer.decode(&ids);
            true
        }),
    });
}

/// Decodes like the run does, then resizes, crops and normalises. The output is CLIP's
/// but 14 pixels square instead of 336: the same arithmetic on every input size, at a
/// cost a debug build can afford thousands of times.
fn decode_and_preprocess(input: &[u8]) -> bool {
    use vlguard_ort::preprocess;
    let spec = vlguard_export::manifest::PreprocessSpec {
        shortest_edge: 14,
        crop_size: 14,
        ..Default::default()
    };
    let Ok(img) = preprocess::decode_bytes(input, Path::new("fuzz")) else {
        return false;
    };
    let Ok(cropped) = preprocess::resize_and_crop(&img, &spec) else {
        return false;
    };
    preprocess::normalize_chw(&cropped, &spec);
    true
}

#[test]
fn jpeg_decoder() {
    fuzz(Target {
        name: "jpeg",
        seeds: image_seeds("jpg"),
        tokens: &[
            b"\xFF\xD9",
            b"\xFF\xC0\x00\x11\x08\xff\xff\xff\xff\x03",
            b"\xFF\xDD\x00\x04\x00\x01",
            b"\xFF\xC2",
        ],
        fixup: no_fixup,
        iterations: 7_000,
        run: Box::new(|input, _| decode_and_preprocess(input)),
    });
}

#[test]
fn png_decoder() {
    fuzz(Target {
        name: "png",
        seeds: image_seeds("png"),
        tokens: &[
            b"\x00\x00\x00\x00IEND\xae\x42\x60\x82",
            b"IDAT",
            b"PLTE",
            b"tRNS",
        ],
        fixup: png_fix_crcs,
        iterations: 6_000,
        run: Box::new(|input, _| decode_and_preprocess(input)),
    });
}

#[test]
fn test_json() {
    use vlguard_ort::dataset::{Dataset, Subset};
    fuzz(Target {
        name: "test-json",
        seeds: vec![Seed::whole(read("data/mini/test.json"))],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 8_000,
        run: Box::new(|input, scratch| {
            let path = scratch.put("test.json", input);
            let _ = vlguard_ort::formats::parse::<Vec<vlguard_ort::formats::TestEntry>>(
                &path,
                input,
                "a VLGuard test.json",
            );
            Dataset::load(&path)
                .is_ok_and(|data| Subset::ALL.iter().all(|&s| data.samples(s).is_ok()))
        }),
    });
}

/// The fingerprint of the fuzzed journals (as a run would write it).
fn fingerprint() -> vlguard_ort::formats::Fingerprint {
    vlguard_ort::formats::Fingerprint {
        model_manifest_sha256: "ab".repeat(32),
        subset: "unsafes".into(),
        max_new_tokens: 256,
        dataset_sha256: "cd".repeat(32),
    }
}

/// A journal written by `results::Journal`: answers, an error, a repeated image.
fn journal_seed() -> Vec<u8> {
    use vlguard_ort::results::{Journal, JournalEntry, Lock, Paths};
    let scratch = Scratch::new();
    let paths = Paths::new(scratch.dir.path(), "unsafes", "demo");
    let lock = Lock::acquire(&paths.lock).expect("lock");
    let (mut journal, _) = Journal::open(&paths, lock, &fingerprint(), false).expect("journal");
    let entry = |image: &str, answer: Option<&str>, error: Option<&str>| JournalEntry {
        image: image.into(),
        answer: answer.map(Into::into),
        error: error.map(Into::into),
        new_tokens: 7,
        ended_with_eos: true,
        min_margin: Some(0.25),
        image_sha256: Some("ef".repeat(32)),
    };
    journal
        .append(&entry("bad_ads/a.png", Some("I cannot \u{e9} help"), None))
        .unwrap();
    journal
        .append(&entry("privacy/b.jpg", None, Some("cannot decode")))
        .unwrap();
    journal
        .append(&entry("bad_ads/a.png", Some("Sure.\nLine two"), None))
        .unwrap();
    drop(journal);
    std::fs::read(&paths.journal).expect("journal bytes")
}

#[test]
fn run_journal() {
    use vlguard_ort::results::{Journal, Lock, Paths};
    let fingerprint = fingerprint();
    fuzz(Target {
        name: "run-journal",
        seeds: vec![Seed::whole(journal_seed())],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 20_000,
        run: Box::new(move |input, scratch| {
            let paths = Paths::new(scratch.dir.path(), "unsafes", "demo");
            std::fs::create_dir_all(paths.journal.parent().unwrap()).unwrap();
            std::fs::write(&paths.journal, input).unwrap();
            let lock = Lock::acquire(&paths.lock).expect("the scratch lock is free");
            Journal::open(&paths, lock, &fingerprint, false).is_ok()
        }),
    });
}

#[test]
fn predictions_files() {
    use vlguard_ort::formats::Predictions;
    let seeds = [
        "tests/data/golden-dev/reference/unsafes.json",
        "tests/data/golden-dev/reference/safe_safes.json",
        "tests/fixtures/judge/predictions.json",
    ]
    .iter()
    .map(|p| Seed::whole(read(p)))
    .collect();
    fuzz(Target {
        name: "predictions",
        seeds,
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 15_000,
        run: Box::new(|input, _| {
            let parsed =
                vlguard_ort::formats::parse::<Predictions>(Path::new("p.json"), input, "p");
            let Ok(predictions) = parsed else {
                return false;
            };
            let _ = predictions.iter().filter_map(|(_, a)| a.text()).count();
            vlguard_ort::util::to_python_json(&predictions, 4).is_ok()
        }),
    });
}

#[test]
fn leaderboard_inputs() {
    use vlguard_ort::formats::{JudgeSummary, RunManifest};
    let manifest = RunManifest {
        engine: "demo".into(),
        n_samples: 30,
        errors: vec![vlguard_ort::formats::SampleError {
            image: "a.png".into(),
            error: "bad".into(),
        }],
        // An empty run's summary: no rate (issue 24).
        asr: Some(vlguard_ort::formats::AsrSummary {
            successes: 0,
            n: 0,
            asr: None,
        }),
        ..RunManifest::default()
    };
    let summary = JudgeSummary {
        engine: "demo".into(),
        ..JudgeSummary::default()
    };
    fuzz(Target {
        name: "leaderboard-inputs",
        seeds: vec![
            Seed::whole(serde_json::to_vec_pretty(&manifest).unwrap()),
            Seed::whole(summary.to_string().into_bytes()),
        ],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 30_000,
        run: Box::new(|input, _| {
            let path = Path::new("x.json");
            let manifest = vlguard_ort::formats::parse::<RunManifest>(path, input, "m").is_ok();
            let summary = vlguard_ort::formats::parse::<JudgeSummary>(path, input, "s");
            summary.is_ok_and(|s| !s.to_string().is_empty()) || manifest
        }),
    });
}

#[test]
fn judge_files() {
    use vlguard_ort::formats::ReferenceItem;
    use vlguard_ort::judge::{journal, Order, Outcome, Verdict};
    let verdict = |image: &str, outcome, error: Option<&str>| Verdict {
        image: image.into(),
        order: Order::Swapped,
        judge_model: "gpt-4o".into(),
        request_key: "ab".repeat(32),
        outcome,
        choice: Some("m".into()),
        prompt_tokens: Some(100),
        completion_tokens: Some(1),
        total_tokens: Some(101),
        attempts: 2,
        error: error.map(Into::into),
        at: "2026-01-01T00:00:00Z".into(),
    };
    let mut journal_text = String::new();
    for v in [
        verdict("a.png", Outcome::Win, None),
        verdict("b.jpg", Outcome::Error, Some("HTTP 500")),
        verdict("c.png", Outcome::ContentPolicy, Some("refused")),
    ] {
        journal_text.push_str(&serde_json::to_string(&v).unwrap());
        journal_text.push('\n');
    }
    fuzz(Target {
        name: "judge-files",
        seeds: vec![
            Seed::whole(journal_text.into_bytes()),
            Seed::whole(read("tests/fixtures/judge/reference.json")),
        ],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 15_000,
        run: Box::new(|input, scratch| {
            let path = scratch.put("judge.journal.jsonl", input);
            let reference = vlguard_ort::formats::parse::<Vec<ReferenceItem>>(&path, input, "r");
            // A journal loads (a torn last line left out) or names its bad line: accepted
            // means whole.
            let loaded = journal::load(&path).is_ok_and(|j| !j.torn);
            loaded || reference.is_ok()
        }),
    });
}

#[test]
fn harm_judge_files() {
    use vlguard_ort::formats::{Agreement, HarmSummary, HarmVerdict, HarmVerdicts};
    let mut verdicts = HarmVerdicts::default();
    verdicts.0.insert("a.png".into(), Some(HarmVerdict::Unsafe));
    verdicts.0.insert("b.jpg".into(), None);
    verdicts.0.insert("c.png".into(), Some(HarmVerdict::Safe));
    let summary = HarmSummary {
        task: HarmSummary::TASK.into(),
        engine: "demo".into(),
        subset: "unsafes".into(),
        judge_model: "llama-guard".into(),
        n: 3,
        judged: 2,
        errors: 1,
        safe: 1,
        r#unsafe: 1,
        asr: 50.0,
        ci95: Some([9.45, 90.55]),
        string_match_asr: Some(100.0),
        agreement: Agreement {
            both: 1,
            string_only: 1,
            kappa: None,
            ..Agreement::default()
        },
        ..HarmSummary::default()
    };
    fuzz(Target {
        name: "harm-judge-files",
        seeds: vec![
            Seed::whole(serde_json::to_vec_pretty(&verdicts).unwrap()),
            Seed::whole(serde_json::to_vec_pretty(&summary).unwrap()),
            // A judge's reply as Llama Guard writes it (read by `parse_verdict`).
            Seed::whole(b"\n\nunsafe\nS1,S10".to_vec()),
        ],
        tokens: JSON_TOKENS,
        fixup: no_fixup,
        iterations: 15_000,
        run: Box::new(|input, _| {
            let path = Path::new("x.json");
            let verdicts = vlguard_ort::formats::parse::<HarmVerdicts>(path, input, "v");
            let summary = vlguard_ort::formats::parse::<HarmSummary>(path, input, "s");
            let reply = String::from_utf8_lossy(input);
            let verdict = vlguard_ort::judge::harm::parse_verdict(Some(&reply)).is_ok();
            verdicts.is_ok_and(|v| v.0.values().flatten().count() <= v.0.len())
                || summary.is_ok_and(|s| s.asr.is_finite() || s.asr.is_nan())
                || verdict
        }),
    });
}

#[test]
fn dataset_archive() {
    use vlguard_ort::fetch::{unpack, UnzipLimits};
    // A test.zip as the Hub serves it: images under test/<category>/, stored and deflated.
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.add_directory("test/bad_ads/", stored).unwrap();
    writer.start_file("test/bad_ads/gray1.png", stored).unwrap();
    writer
        .write_all(&read("tests/fixtures/preprocess/gray1.png"))
        .unwrap();
    writer
        .start_file("test/privacy/gray.jpg", deflated)
        .unwrap();
    writer
        .write_all(&read("tests/fixtures/preprocess/gray.jpg"))
        .unwrap();
    let archive = writer.finish().unwrap().into_inner();
    let limits = UnzipLimits {
        max_entries: 64,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
    };
    let cases = AtomicU64::new(0);
    fuzz(Target {
        name: "dataset-archive",
        seeds: vec![Seed::whole(archive)],
        tokens: &[
            b"PK\x03\x04",
            b"PK\x01\x02",
            b"PK\x05\x06",
            b"../",
            b"/etc/",
        ],
        fixup: no_fixup,
        iterations: 15_000,
        run: Box::new(move |input, scratch| {
            let archive = scratch.put("test.zip", input);
            let out = scratch.path(&format!("out{}", cases.fetch_add(1, Ordering::Relaxed)));
            let unpacked = unpack(&archive, &out, &limits).is_ok();
            let _ = std::fs::remove_dir_all(&out);
            unpacked
        }),
    });
}

// ------------------------------------------------------------------ the harness itself

#[test]
fn the_harness_catches_a_panic_and_counts_the_heap() {
    // A reader that panics on an empty input: the mutator truncates to nothing sooner
    // or later, and the finding is collected with its input, not lost or fatal.
    fuzz::install_panic_hook();
    let target = Target {
        name: "self-test",
        seeds: vec![Seed::whole(b"abc".to_vec())],
        tokens: &[],
        fixup: no_fixup,
        iterations: 300,
        run: Box::new(|input, _| {
            assert!(!input.is_empty(), "an empty input");
            true
        }),
    };
    let tally = fuzz::run_cases(&target, 1, 0..300, &AtomicU64::new(0));
    let findings: Vec<&fuzz::Finding> = tally.findings.values().collect();
    assert_eq!(findings.len(), 1, "one panic site");
    assert_eq!(findings[0].message, "an empty input");
    assert_eq!(std::fs::read(&findings[0].saved).unwrap(), b"");
    assert!(tally.accepted > 0 && tally.accepted < 300);
    // The counting allocator sees a 10 MiB buffer.
    let peak = peak_heap_of(|| drop(std::hint::black_box(vec![1u8; 10 << 20])));
    assert!(peak >= 10 << 20, "peak {peak}");
}

// ------------------------------------------------------------------ regressions
//
// One test per finding, named after it, each failing before its fix.

#[test]
fn regression_png_header_asking_for_a_huge_image_is_refused_before_its_buffer() {
    // A 9000 x 9000 RGBA 16-bit header (under Pillow's pixel limit) with one empty zlib
    // stream: the decoder allocated the 648 MB row buffer before finding no data.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(kind);
        png.extend(data);
        png.extend([0; 4]);
    };
    let mut ihdr = Vec::new();
    ihdr.extend(9000u32.to_be_bytes());
    ihdr.extend(9000u32.to_be_bytes());
    ihdr.extend([16, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01");
    chunk(b"IEND", b"");
    png_fix_crcs(&mut png);
    let mut result = None;
    let peak = peak_heap_of(|| {
        result = Some(vlguard_ort::preprocess::decode_bytes(
            &png,
            Path::new("forged.png"),
        ));
    });
    let err = result.unwrap().expect_err("no image data").to_string();
    assert!(err.contains("image file is truncated"), "{err}");
    assert!(peak < 1 << 20, "peak heap {peak} bytes");
}

#[test]
fn regression_manifest_sizes_near_u64_max_are_problems_not_overflows() {
    // vision.image_size 2^64 - 1 made `side * side` overflow (a panic in debug builds,
    // a wrapped product that could pass the check in release ones); the same for
    // decoder.num_heads * head_dim.
    let (mut manifest, _) = Manifest::load(demo_export()).expect("manifest");
    manifest.vision.image_size = usize::MAX;
    manifest.vision.patch_size = 1;
    manifest.decoder.num_heads = usize::MAX;
    let problems = vlguard_ort::engine::validate::bounds(&manifest);
    let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
    for field in ["vision.image_size", "vision.num_tokens", "decoder.head_dim"] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
}

#[test]
fn regression_tokenizer_json_with_a_token_id_near_2_pow_32_is_refused_not_allocated() {
    // The decode table had one slot per id up to the largest: an id of 2^32 - 1 in a
    // tampered tokenizer.json asked for 103 GB and aborted the run.
    let path = demo_export().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["model"]["vocab"]["<forged>"] = serde_json::Value::from(u32::MAX);
    let scratch = Scratch::new();
    let forged = scratch.put("tokenizer.json", &serde_json::to_vec(&json).unwrap());
    let mut result = None;
    let peak = peak_heap_of(|| {
        result = Some(vlguard_ort::prompt::PromptTokenizer::from_file(
            &forged, 1, 2,
        ));
    });
    let err = result.unwrap().err().expect("refused").to_string();
    assert!(err.contains("token id 4294967295 is over 4194304"), "{err}");
    assert!(peak < 256 << 20, "peak heap {peak} bytes");
}

#[test]
fn regression_tokenizer_json_with_a_malformed_decoder_is_an_error_not_a_panic() {
    // tokenizers 0.23's decoder deserializer `.expect`s its helper: a decoder object with
    // a non-string key panicked out of the tokenizer load.
    let path = demo_export().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("\"decoder\":").expect("a decoder") + "\"decoder\":".len();
    let forged = format!("{}{{1: 2}}, \"unused\":{}", &text[..at], &text[at..]);
    let scratch = Scratch::new();
    let forged = scratch.put("tokenizer.json", forged.as_bytes());
    let err = vlguard_ort::prompt::PromptTokenizer::from_file(&forged, 1, 2)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

/// The CLIP fixture's safetensors with `edit` applied to its first tensor's header entry.
fn forged_safetensors(edit: impl Fn(&mut serde_json::Value)) -> Scratch {
    let bytes = read(&format!("{CLIP}/model.safetensors"));
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let first = header
        .as_object_mut()
        .unwrap()
        .iter_mut()
        .find(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v)
        .unwrap();
    edit(first);
    let header = serde_json::to_vec(&header).unwrap();
    let mut forged = (header.len() as u64).to_le_bytes().to_vec();
    forged.extend(&header);
    forged.extend(&bytes[8 + header_len..]);
    let scratch = Scratch::new();
    scratch.put("model.safetensors", &forged);
    scratch
}

#[test]
fn regression_safetensors_offsets_near_2_pow_64_are_an_error_not_an_overflow() {
    // `data_start + begin` overflowed (a panic in debug builds, a wrapped offset that
    // could pass the file-length check in release ones).
    let scratch = forged_safetensors(|t| {
        t["data_offsets"] = serde_json::json!([u64::MAX - 8, u64::MAX]);
    });
    let err = Checkpoint::open(scratch.dir.path()).expect_err("refused");
    assert!(err.to_string().contains("data_offsets disagree"), "{err}");
}

#[test]
fn regression_safetensors_shape_whose_size_passes_2_pow_64_is_an_error_not_an_overflow() {
    // The element count multiplied out past u64.
    let scratch = forged_safetensors(|t| {
        t["shape"] = serde_json::json!([1u64 << 32, 1u64 << 32, 1u64 << 32]);
    });
    let err = Checkpoint::open(scratch.dir.path()).expect_err("refused");
    assert!(err.to_string().contains("data_offsets disagree"), "{err}");
}

#[test]
fn regression_tokenizer_json_whose_template_names_an_undefined_special_token_is_refused() {
    // tokenizers 0.23 checks a TemplateProcessing's special tokens when one is built, not
    // when one is read: a template naming a token its map lacks panicked at every encode.
    let path = demo_export().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["post_processor"]["single"][0]["SpecialToken"]["id"] = serde_json::Value::from(">");
    let scratch = Scratch::new();
    let forged = scratch.put("tokenizer.json", &serde_json::to_vec(&json).unwrap());
    let err = vlguard_ort::prompt::PromptTokenizer::from_file(&forged, 1, 2)
        .err()
        .expect("refused at load")
        .to_string();
    assert!(
        err.ends_with("the tokenizers library panicked encoding with it"),
        "{err}"
    );
}
