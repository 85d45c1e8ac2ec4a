//! SentencePiece `tokenizer.model` -> Hugging Face `tokenizer.json`, with no Python.
//!
//! Input: the bytes of a SentencePiece `ModelProto` (protobuf) as LLaVA-1.5 checkpoints ship
//! it. Output: the text of a `tokenizers`-crate JSON whose BPE model encodes like the
//! reference: transformers' slow `LlamaTokenizer` (legacy=false, add_bos_token=true,
//! add_eos_token=false) over SentencePiece's BPE (`bpe_model.cc`), plus the BOS/EOS/UNK ids.
//!
//! How the JSON reproduces SentencePiece:
//! - SentencePiece BPE repeatedly merges the adjacent symbol pair whose concatenation is a
//!   NORMAL piece with the highest score (leftmost on ties). Every way to split such a piece
//!   into two symbols becomes one `merges` entry, ranked by the merged piece's score (then by
//!   piece id and the ids of the halves, the order of Hugging Face's converter), so the
//!   `tokenizers` BPE (lowest rank first, leftmost on ties) takes the same steps. Control,
//!   unknown and byte pieces are never merge targets, as in SentencePiece.
//! - Characters outside the vocabulary fall back to `<0xNN>` byte pieces (`byte_fallback`).
//! - The slow tokenizer encodes `"▁" + text` with spaces written `▁` (legacy=false adds that
//!   `▁` itself, whatever the model's `add_dummy_prefix`): a `Prepend("▁")` +
//!   `Replace(" ", "▁")` normalizer, no pre-tokenizer (one word, as SentencePiece sees it).
//! - `split_digits` is a training-time rule in SentencePiece (no piece holds a decimal digit
//!   next to anything else); encoding needs no digit pre-tokenizer, and a `Digits`
//!   pre-tokenizer would be wrong (it splits every Unicode numeric, e.g. Llama's `²,`).
//! - A `TemplateProcessing` post-processor adds BOS; control and unknown pieces are added
//!   tokens (special, not normalized). The `decoder` is the usual Llama one, but the runtime
//!   detokenizes with SentencePiece's own rules (`vlguard_ort::prompt`), not with it.
//!
//! Guarantees: models this module cannot reproduce exactly are refused with
//! [`TokenizerError::Unsupported`] (non-BPE, a normalization rule other than identity,
//! `remove_extra_whitespaces`, whitespace as suffix, USER_DEFINED or UNUSED pieces) rather
//! than converted approximately. Known limit, shared with Hugging Face's converter: when
//! two different merges have equal scores, SentencePiece takes the leftmost while a ranked
//! merge list takes the earlier rank (Llama-2's whitespace-only pieces all score -1e9; runs
//! of 1 to 400 spaces were checked to come out the same either way against sentencepiece
//! 0.1.99). A literal `<s>`/`</s>` typed inside the text is split out as a special token
//! as the slow tokenizer does, but the text after it gets a `▁` prefix that the slow
//! tokenizer does not add (out of scope, as for Hugging Face's own tokenizer.json).

use serde_json::{json, Map, Value};

use crate::wire::{self, WireError};

/// Ids of the special pieces, read from the model's trainer spec (and checked against the
/// piece types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("SentencePiece model: {0}")]
    Malformed(#[from] WireError),
    #[error("SentencePiece model: field `{field}` is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("SentencePiece model: {0}")]
    Invalid(String),
    #[error("SentencePiece model not supported (it could not be reproduced exactly): {0}")]
    Unsupported(String),
}

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct Piece {
    piece: String,
    score: f32,
    kind: PieceType,
}

/// The fields of `TrainerSpec` this conversion reads, with the proto defaults.
#[derive(Debug, Clone)]
struct TrainerSpec {
    /// 1 = UNIGRAM (the proto default), 2 = BPE, 3 = WORD, 4 = CHAR.
    model_type: u64,
    byte_fallback: bool,
    treat_whitespace_as_suffix: bool,
    unk_id: i64,
    bos_id: i64,
    eos_id: i64,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
        }
    }
}

/// The fields of `NormalizerSpec` this conversion reads, with the proto defaults.
#[derive(Debug, Clone)]
struct NormalizerSpec {
    name: String,
    precompiled_charsmap_len: usize,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap_len: 0,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct ModelProto {
    pieces: Vec<Piece>,
    trainer: TrainerSpec,
    normalizer: NormalizerSpec,
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, TokenizerError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| TokenizerError::NotUtf8 { field })
}

fn expect_varint(v: &wire::Value<'_>, field: &'static str) -> Result<u64, TokenizerError> {
    match v {
        wire::Value::Varint(x) => Ok(*x),
        _ => Err(TokenizerError::Invalid(format!(
            "field `{field}` has the wrong wire type (expected a varint)"
        ))),
    }
}

/// An `int32` field: negative values are sign-extended to 64 bits on the wire.
fn expect_i32(v: &wire::Value<'_>, field: &'static str) -> Result<i64, TokenizerError> {
    Ok(i64::from(expect_varint(v, field)? as i64 as i32))
}

fn expect_bytes<'a>(
    v: &wire::Value<'a>,
    field: &'static str,
) -> Result<(&'a [u8], usize), TokenizerError> {
    match v {
        wire::Value::Bytes(b, off) => Ok((b, *off)),
        _ => Err(TokenizerError::Invalid(format!(
            "field `{field}` has the wrong wire type (expected length-delimited)"
        ))),
    }
}

/// The sentencepiece_model.proto field numbers read here (sentencepiece's
/// src/sentencepiece_model.proto), one module per message.
mod field {
    /// ModelProto.
    pub mod model {
        pub const PIECES: u32 = 1;
        pub const TRAINER_SPEC: u32 = 2;
        pub const NORMALIZER_SPEC: u32 = 3;
    }
    /// ModelProto.SentencePiece.
    pub mod piece {
        pub const PIECE: u32 = 1;
        pub const SCORE: u32 = 2;
        pub const TYPE: u32 = 3;
    }
    /// TrainerSpec.
    pub mod trainer {
        pub const MODEL_TYPE: u32 = 3;
        pub const TREAT_WHITESPACE_AS_SUFFIX: u32 = 24;
        pub const BYTE_FALLBACK: u32 = 35;
        pub const UNK_ID: u32 = 40;
        pub const BOS_ID: u32 = 41;
        pub const EOS_ID: u32 = 42;
    }
    /// NormalizerSpec.
    pub mod normalizer {
        pub const NAME: u32 = 1;
        pub const PRECOMPILED_CHARSMAP: u32 = 2;
        pub const REMOVE_EXTRA_WHITESPACES: u32 = 4;
        pub const ESCAPE_WHITESPACES: u32 = 5;
    }
}

fn parse_piece(buf: &[u8], base: usize, index: usize) -> Result<Piece, TokenizerError> {
    let mut r = wire::Reader::new(buf, base);
    let mut piece = None;
    let mut score = 0.0f32;
    let mut kind = PieceType::Normal;
    while let Some((field, v)) = r.next_field()? {
        match field {
            field::piece::PIECE => {
                piece = Some(utf8(expect_bytes(&v, "pieces.piece")?.0, "pieces.piece")?)
            }
            field::piece::SCORE => match v {
                wire::Value::Fixed32(bits) => score = f32::from_bits(bits),
                _ => {
                    return Err(TokenizerError::Invalid(format!(
                        "piece {index}: score is not a float"
                    )))
                }
            },
            field::piece::TYPE => {
                let t = expect_varint(&v, "pieces.type")?;
                kind = PieceType::from_proto(t).ok_or_else(|| {
                    TokenizerError::Invalid(format!("piece {index}: unknown piece type {t}"))
                })?;
            }
            _ => {}
        }
    }
    let piece = piece
        .filter(|p| !p.is_empty())
        .ok_or_else(|| TokenizerError::Invalid(format!("piece {index} has no text")))?;
    Ok(Piece { piece, score, kind })
}

fn parse_trainer(buf: &[u8], base: usize) -> Result<TrainerSpec, TokenizerError> {
    let mut r = wire::Reader::new(buf, base);
    let mut t = TrainerSpec::default();
    while let Some((field, v)) = r.next_field()? {
        match field {
            field::trainer::MODEL_TYPE => {
                t.model_type = expect_varint(&v, "trainer_spec.model_type")?
            }
            field::trainer::TREAT_WHITESPACE_AS_SUFFIX => {
                t.treat_whitespace_as_suffix =
                    expect_varint(&v, "trainer_spec.treat_whitespace_as_suffix")? != 0
            }
            field::trainer::BYTE_FALLBACK => {
                t.byte_fallback = expect_varint(&v, "trainer_spec.byte_fallback")? != 0
            }
            field::trainer::UNK_ID => t.unk_id = expect_i32(&v, "trainer_spec.unk_id")?,
            field::trainer::BOS_ID => t.bos_id = expect_i32(&v, "trainer_spec.bos_id")?,
            field::trainer::EOS_ID => t.eos_id = expect_i32(&v, "trainer_spec.eos_id")?,
            _ => {}
        }
    }
    Ok(t)
}

fn parse_normalizer(buf: &[u8], base: usize) -> Result<NormalizerSpec, TokenizerError> {
    let mut r = wire::Reader::new(buf, base);
    let mut n = NormalizerSpec::default();
    while let Some((field, v)) = r.next_field()? {
        match field {
            field::normalizer::NAME => {
                n.name = utf8(
                    expect_bytes(&v, "normalizer_spec.name")?.0,
                    "normalizer_spec.name",
                )?
            }
            field::normalizer::PRECOMPILED_CHARSMAP => {
                n.precompiled_charsmap_len =
                    expect_bytes(&v, "normalizer_spec.precompiled_charsmap")?
                        .0
                        .len()
            }
            field::normalizer::REMOVE_EXTRA_WHITESPACES => {
                n.remove_extra_whitespaces =
                    expect_varint(&v, "normalizer_spec.remove_extra_whitespaces")? != 0
            }
            field::normalizer::ESCAPE_WHITESPACES => {
                n.escape_whitespaces = expect_varint(&v, "normalizer_spec.escape_whitespaces")? != 0
            }
            _ => {}
        }
    }
    Ok(n)
}

fn parse_model(bytes: &[u8]) -> Result<ModelProto, TokenizerError> {
    let mut r = wire::Reader::new(bytes, 0);
    let mut m = ModelProto::default();
    while let Some((field, v)) = r.next_field()? {
        match field {
            field::model::PIECES => {
                let (b, off) = expect_bytes(&v, "pieces")?;
                let index = m.pieces.len();
                m.pieces.push(parse_piece(b, off, index)?);
            }
            field::model::TRAINER_SPEC => {
                let (b, off) = expect_bytes(&v, "trainer_spec")?;
                m.trainer = parse_trainer(b, off)?;
            }
            field::model::NORMALIZER_SPEC => {
                let (b, off) = expect_bytes(&v, "normalizer_spec")?;
                m.normalizer = parse_normalizer(b, off)?;
            }
            _ => {}
        }
    }
    if m.pieces.is_empty() {
        return Err(TokenizerError::Invalid(
            "no pieces (is this a SentencePiece tokenizer.model?)".into(),
        ));
    }
    Ok(m)
}

/// Refuses what the JSON below cannot reproduce exactly.
fn check_supported(m: &ModelProto) -> Result<(), TokenizerError> {
    let t = &m.trainer;
    let n = &m.normalizer;
    if t.model_type != 2 {
        let name = match t.model_type {
            1 => "UNIGRAM",
            3 => "WORD",
            4 => "CHAR",
            _ => "unknown",
        };
        return Err(TokenizerError::Unsupported(format!(
            "model_type {name} ({}); only BPE is converted",
            t.model_type
        )));
    }
    if n.precompiled_charsmap_len > 0 || !(n.name.is_empty() || n.name == "identity") {
        return Err(TokenizerError::Unsupported(format!(
            "normalization rule `{}` (only `identity` is converted)",
            n.name
        )));
    }
    if n.remove_extra_whitespaces {
        return Err(TokenizerError::Unsupported(
            "normalizer_spec.remove_extra_whitespaces = true".into(),
        ));
    }
    if !n.escape_whitespaces {
        return Err(TokenizerError::Unsupported(
            "normalizer_spec.escape_whitespaces = false".into(),
        ));
    }
    if t.treat_whitespace_as_suffix {
        return Err(TokenizerError::Unsupported(
            "trainer_spec.treat_whitespace_as_suffix = true".into(),
        ));
    }
    if let Some((i, p)) = m
        .pieces
        .iter()
        .enumerate()
        .find(|(_, p)| matches!(p.kind, PieceType::UserDefined | PieceType::Unused))
    {
        return Err(TokenizerError::Unsupported(format!(
            "piece {i} `{}` is {:?} (SentencePiece matches/resegments those outside BPE)",
            p.piece, p.kind
        )));
    }
    Ok(())
}

/// The id of a special piece from the trainer spec, checked against the piece list.
fn special_id(m: &ModelProto, id: i64, what: &str, want: PieceType) -> Result<u32, TokenizerError> {
    let idx = usize::try_from(id)
        .ok()
        .filter(|&i| i < m.pieces.len())
        .ok_or_else(|| {
            TokenizerError::Invalid(format!(
                "trainer_spec.{what}_id = {id} is not a piece id (vocab size {})",
                m.pieces.len()
            ))
        })?;
    let p = &m.pieces[idx];
    if p.kind != want {
        return Err(TokenizerError::Invalid(format!(
            "trainer_spec.{what}_id = {id} names `{}` of type {:?}, expected {want:?}",
            p.piece, p.kind
        )));
    }
    u32::try_from(idx).map_err(|_| TokenizerError::Invalid(format!("{what} id too large")))
}

/// The merge list: every split of every NORMAL piece into two halves that can both be
/// symbols during SentencePiece's BPE (a NORMAL piece, or a single character in the vocab),
/// ordered by the merged piece's score (high first), then piece id, then the halves' ids.
fn merges(m: &ModelProto, vocab: &std::collections::HashMap<&str, usize>) -> Vec<[String; 2]> {
    let can_be_symbol = |s: &str| -> Option<usize> {
        let id = *vocab.get(s)?;
        let single_char = s.chars().nth(1).is_none();
        (m.pieces[id].kind == PieceType::Normal || single_char).then_some(id)
    };
    // (score, piece id, left id, right id, split byte offset)
    let mut out: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
    for (id, p) in m.pieces.iter().enumerate() {
        if p.kind != PieceType::Normal {
            continue;
        }
        for (split, _) in p.piece.char_indices().skip(1) {
            let (l, r) = p.piece.split_at(split);
            if let (Some(li), Some(ri)) = (can_be_symbol(l), can_be_symbol(r)) {
                out.push((p.score, id, li, ri, split));
            }
        }
    }
    out.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    out.into_iter()
        .map(|(_, id, _, _, split)| {
            let (l, r) = m.pieces[id].piece.split_at(split);
            [l.to_string(), r.to_string()]
        })
        .collect()
}

fn added_token(id: usize, content: &str) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": true,
    })
}

/// Converts a SentencePiece BPE `tokenizer.model` into `tokenizer.json` text (see the module
/// docs for what is reproduced) and returns it with the BOS/EOS/UNK ids.
pub fn tokenizer_json_from_sentencepiece(
    model_bytes: &[u8],
) -> Result<(String, SpecialIds), TokenizerError> {
    let m = parse_model(model_bytes)?;
    check_supported(&m)?;

    let ids = SpecialIds {
        bos: special_id(&m, m.trainer.bos_id, "bos", PieceType::Control)?,
        eos: special_id(&m, m.trainer.eos_id, "eos", PieceType::Control)?,
        unk: special_id(&m, m.trainer.unk_id, "unk", PieceType::Unknown)?,
    };

    let mut vocab_index = std::collections::HashMap::with_capacity(m.pieces.len());
    let mut vocab = Map::with_capacity(m.pieces.len());
    for (id, p) in m.pieces.iter().enumerate() {
        if vocab_index.insert(p.piece.as_str(), id).is_some() {
            return Err(TokenizerError::Invalid(format!(
                "piece `{}` is defined twice (ids {} and {id})",
                p.piece,
                vocab_index[p.piece.as_str()]
            )));
        }
        vocab.insert(p.piece.clone(), json!(id));
    }
    if m.trainer.byte_fallback {
        // tokenizers' byte fallback looks pieces up as `<0xNN>`: all 256 must exist.
        for b in 0..=255u8 {
            let name = format!("<0x{b:02X}>");
            match vocab_index.get(name.as_str()) {
                Some(&i) if m.pieces[i].kind == PieceType::Byte => {}
                _ => {
                    return Err(TokenizerError::Invalid(format!(
                        "byte_fallback is on but byte piece `{name}` is missing"
                    )))
                }
            }
        }
    }

    let added: Vec<Value> = m
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.kind, PieceType::Control | PieceType::Unknown))
        .map(|(id, p)| added_token(id, &p.piece))
        .collect();

    let bos = &m.pieces[ids.bos as usize].piece;
    let unk = &m.pieces[ids.unk as usize].piece;
    let special = |type_id: u32| json!({"SpecialToken": {"id": bos, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});

    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        // The slow tokenizer (legacy=false) encodes "▁" + text, spaces written "▁".
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            ],
        },
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special(0), seq("A", 0)],
            "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
            "special_tokens": {bos.as_str(): {"id": bos, "ids": [ids.bos], "tokens": [bos]}},
        },
        // Hugging Face's Llama decoder, for tools that read this file; vlguard-ort
        // detokenizes with SentencePiece's rules instead (see vlguard_ort::prompt).
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": m.trainer.byte_fallback,
            "ignore_merges": false,
            "vocab": Value::Object(vocab),
            "merges": merges(&m, &vocab_index),
        },
    });
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| TokenizerError::Invalid(format!("cannot serialize tokenizer.json: {e}")))?;
    Ok((text, ids))
}
