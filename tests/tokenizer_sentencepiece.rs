//! `vlguard_export::tokenizer`: the tokenizer.json made from a SentencePiece model encodes
//! exactly like the reference slow `LlamaTokenizer`, checked with the `tokenizers` crate.
//!
//! Expected ids come from `tests/data` (provenance in its README.md):
//! - `llama2-tokenizer/cases.jsonl`: the real Llama-2 model, every VLGuard instruction
//!   (train + test), every post-image chunk and a few edge strings, encoded by transformers
//!   4.37.2's slow `LlamaTokenizer` (legacy=false) over sentencepiece;
//! - `golden-dev/reference/tokenizer_cases.jsonl`: the dev bundle's tiny BPE model (byte
//!   fallback, dummy prefix, split digits), encoded by the same reference code path;
//! - `llama2-tokenizer/tokenizer.json`: what Hugging Face's converter made from the
//!   Llama-2 model (an independent source for the vocabulary and special tokens).

use serde_json::Value;
use tokenizers::Tokenizer;
use vlguard_ort::export::tokenizer::{tokenizer_json_from_sentencepiece, TokenizerError};

#[path = "common/test_data.rs"]
mod test_data;
use test_data::{jsonl, repo_file};

fn read(rel: &str) -> Vec<u8> {
    let p = repo_file(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn convert(
    rel: &str,
) -> (
    Tokenizer,
    vlguard_ort::export::tokenizer::SpecialIds,
    String,
) {
    let (json, ids) = tokenizer_json_from_sentencepiece(&read(rel)).expect("conversion");
    let tok = Tokenizer::from_bytes(json.as_bytes()).expect("tokenizers crate loads the JSON");
    (tok, ids, json)
}

/// Encodes every `{text, ids}` case and returns (cases checked, mismatches as text).
fn check_cases(tok: &Tokenizer, cases: &[Value]) -> (usize, Vec<String>) {
    let mut n = 0;
    let mut bad = Vec::new();
    for (line, case) in cases.iter().enumerate() {
        let (Some(text), Some(want)) = (case["text"].as_str(), case["ids"].as_array()) else {
            continue;
        };
        let want: Vec<u32> = want
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let got = tok.encode(text, true).expect("encode").get_ids().to_vec();
        n += 1;
        if got != want {
            bad.push(format!(
                "line {}: {text:?}\n  want {want:?}\n  got  {got:?}",
                line + 1
            ));
        }
    }
    (n, bad)
}

#[test]
fn llama2_json_encodes_all_reference_cases() {
    let (tok, ids, _) = convert("tests/data/llama2-tokenizer/tokenizer.model");
    let cases = jsonl("tests/data/llama2-tokenizer/cases.jsonl");
    let (n, bad) = check_cases(&tok, &cases);
    assert_eq!(n, 7758, "cases.jsonl should hold 7,758 {{text, ids}} lines");
    assert!(
        bad.is_empty(),
        "{} of {n} Llama-2 cases differ:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    // Llama-2: unk 0, bos 1, eos 2 (HF tokenizer.json added_tokens, checked below).
    assert_eq!((ids.bos, ids.eos, ids.unk), (1, 2, 0));
}

#[test]
fn llama2_vocab_and_specials_match_hf_converter() {
    let (_, ids, json) = convert("tests/data/llama2-tokenizer/tokenizer.model");
    let ours: Value = serde_json::from_str(&json).unwrap();
    let hf: Value =
        serde_json::from_slice(&read("tests/data/llama2-tokenizer/tokenizer.json")).unwrap();
    assert_eq!(
        ours["model"]["vocab"], hf["model"]["vocab"],
        "vocab differs from HF's"
    );
    assert_eq!(ours["added_tokens"], hf["added_tokens"]);
    assert_eq!(ours["post_processor"], hf["post_processor"]);
    assert_eq!(ours["normalizer"], hf["normalizer"]);
    let by_name = |name: &str| hf["model"]["vocab"][name].as_u64().unwrap() as u32;
    assert_eq!(ids.bos, by_name("<s>"));
    assert_eq!(ids.eos, by_name("</s>"));
    assert_eq!(ids.unk, by_name("<unk>"));
}

#[test]
fn tiny_json_encodes_golden_cases() {
    let (tok, ids, _) = convert("models/demo-src/llava-v1.5-tiny/tokenizer.model");
    let cases = jsonl("tests/data/golden-dev/reference/tokenizer_cases.jsonl");
    let (n, bad) = check_cases(&tok, &cases);
    assert!(
        n > 2700,
        "only {n} encode cases found in tokenizer_cases.jsonl"
    );
    assert!(
        bad.is_empty(),
        "{} of {n} tiny-model cases differ:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    // README of the golden bundle: ids 0/1/2 = unk/bos/eos.
    assert_eq!((ids.bos, ids.eos, ids.unk), (1, 2, 0));
}

#[test]
fn garbage_and_truncated_models_are_errors() {
    assert!(matches!(
        tokenizer_json_from_sentencepiece(b""),
        Err(TokenizerError::Invalid(_))
    ));
    // Field 1 (pieces), length 100, but only 2 bytes follow.
    assert!(matches!(
        tokenizer_json_from_sentencepiece(&[0x0a, 100, 1, 2]),
        Err(TokenizerError::Malformed { .. })
    ));
    let full = read("models/demo-src/llava-v1.5-tiny/tokenizer.model");
    let err = tokenizer_json_from_sentencepiece(&full[..full.len() / 2]).unwrap_err();
    assert!(matches!(err, TokenizerError::Malformed { .. }), "{err}");
}

/// Protobuf bytes of a small model, written by hand (field numbers from
/// sentencepiece_model.proto): pieces <unk>/<s>/</s>/a/b/ab and a trainer spec.
fn hand_model(model_type: u8) -> Vec<u8> {
    hand_model_with(model_type, &[])
}

/// As [`hand_model`], with `trainer_extra` appended to the trainer spec.
fn hand_model_with(model_type: u8, trainer_extra: &[u8]) -> Vec<u8> {
    fn piece(text: &str, score: f32, kind: u8) -> Vec<u8> {
        let mut p = vec![0x0a, text.len() as u8];
        p.extend_from_slice(text.as_bytes());
        p.push(0x15); // field 2, fixed32
        p.extend_from_slice(&score.to_le_bytes());
        p.extend_from_slice(&[0x18, kind]); // field 3, varint
        let mut out = vec![0x0a, p.len() as u8];
        out.extend(p);
        out
    }
    let mut m = Vec::new();
    m.extend(piece("<unk>", 0.0, 2));
    m.extend(piece("<s>", 0.0, 3));
    m.extend(piece("</s>", 0.0, 3));
    m.extend(piece("\u{2581}", -1.0, 1));
    m.extend(piece("a", -2.0, 1));
    m.extend(piece("b", -3.0, 1));
    m.extend(piece("ab", -0.5, 1));
    m.extend(piece("\u{2581}ab", -0.7, 1));
    // trainer_spec { model_type }, normalizer_spec { name: "identity",
    // remove_extra_whitespaces: false }
    m.extend_from_slice(&[0x12, 2 + trainer_extra.len() as u8, 0x18, model_type]);
    m.extend_from_slice(trainer_extra);
    m.extend_from_slice(&[0x1a, 12, 0x0a, 8]);
    m.extend_from_slice(b"identity");
    m.extend_from_slice(&[0x20, 0]);
    m
}

#[test]
fn hand_written_bpe_model_converts_and_encodes() {
    let (json, ids) = tokenizer_json_from_sentencepiece(&hand_model(2)).expect("BPE converts");
    assert_eq!((ids.bos, ids.eos, ids.unk), (1, 2, 0));
    let tok = Tokenizer::from_bytes(json.as_bytes()).unwrap();
    // SentencePiece BPE by hand: "▁ab▁ba" -> merge ab (-0.5) then ▁ab (-0.7) -> [▁ab, ▁, b, a]
    let got = tok.encode("ab ba", true).unwrap().get_ids().to_vec();
    assert_eq!(got, vec![1, 7, 3, 5, 4]);
    // No byte fallback in this model: an unknown character is <unk>.
    let got = tok.encode("c", true).unwrap().get_ids().to_vec();
    assert_eq!(got, vec![1, 3, 0]);
}

#[test]
fn non_bpe_models_are_refused() {
    let err = tokenizer_json_from_sentencepiece(&hand_model(1)).unwrap_err();
    assert!(matches!(err, TokenizerError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("UNIGRAM"), "{err}");
}

#[test]
fn disabled_or_mistyped_special_ids_are_errors() {
    // bos_id = -1 (field 41, int32 sign-extended to a 10-byte varint): BOS disabled.
    let minus_one = [
        0xc8, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    let err = tokenizer_json_from_sentencepiece(&hand_model_with(2, &minus_one)).unwrap_err();
    assert!(err.to_string().contains("bos_id = -1"), "{err}");
    // eos_id = 4 names the NORMAL piece "a".
    let err = tokenizer_json_from_sentencepiece(&hand_model_with(2, &[0xd0, 0x02, 4])).unwrap_err();
    assert!(err.to_string().contains("eos_id = 4"), "{err}");
}
