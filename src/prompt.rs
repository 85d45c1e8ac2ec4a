//! Prompt stage: question -> `llava_v1` prompt -> input ids with one image slot, and
//! generated ids -> answer text.
//!
//! Contract (REFERENCE.md "Prompt", "Tokenization", "Generation"):
//! - [`PromptTokenizer::prompt_text`] wraps a question in the `llava_v1` conversation
//!   template with `mm_use_im_start_end = false`, byte for byte as LLaVA builds it.
//! - [`PromptTokenizer::input_ids`] is LLaVA's `tokenizer_image_token`: the prompt is split on
//!   `<image>`, each chunk is encoded on its own with BOS (the model directory's
//!   `tokenizer.json`, made by `vlguard_export::tokenizer` from the checkpoint's SentencePiece
//!   model), BOS is kept once at the start, every later chunk's first id (its BOS) is dropped,
//!   and one [`IMAGE_TOKEN_INDEX`] sits between chunks. Encoding the whole prompt at once
//!   would give different ids (the chunk after the image starts with its own `▁`).
//! - [`PromptTokenizer::decode`] is the slow `LlamaTokenizer.decode(ids,
//!   skip_special_tokens=True)` of transformers 4.37 (legacy=false,
//!   clean_up_tokenization_spaces=false) over SentencePiece's decoder: special ids (BOS,
//!   EOS, UNK, every added special token) are skipped; the first remaining piece loses one
//!   leading `▁`; `▁` becomes a space; nothing is stripped; each run of byte pieces `<0xNN>`
//!   is decoded leniently: valid UTF-8 is kept and EACH byte of an invalid sequence becomes
//!   one U+FFFD (`E2 82 41` -> "\u{FFFD}\u{FFFD}A"), which is SentencePiece's rule and not
//!   Python's `errors='replace'` nor Hugging Face's `ByteFallback` decoder (both replace a
//!   whole invalid sequence with one U+FFFD). Ids outside the vocabulary are skipped.
//!
//! Guarantees: no panics on any input; load and encode failures are [`PromptError`]s naming
//! the file or the chunk.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;
use vlguard_export::manifest::TokenizerSpec;

/// The id LLaVA puts where the image features go (`IMAGE_TOKEN_INDEX`): the exporter's,
/// which it records in the manifest ([`PromptTokenizer::for_model`] takes it from there).
pub use vlguard_export::IMAGE_TOKEN_ID as IMAGE_TOKEN_INDEX;

/// The placeholder the prompt is split on (`DEFAULT_IMAGE_TOKEN`).
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// `conv_templates["llava_v1"].system`.
const LLAVA_V1_SYSTEM: &str = "A chat between a curious human and an artificial intelligence \
assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

/// SentencePiece's whitespace symbol (U+2581).
const SPACE_SYMBOL: char = '\u{2581}';

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("tokenizer {path}: {what} id {id} is not in its vocabulary (size {vocab})")]
    SpecialNotInVocab {
        path: PathBuf,
        what: &'static str,
        id: u32,
        vocab: usize,
    },
    #[error("cannot encode chunk {chunk} of the prompt for question {question:?}: {message}")]
    Encode {
        chunk: usize,
        question: String,
        message: String,
    },
}

/// How one vocabulary id is detokenized.
#[derive(Debug, Clone)]
enum Detok {
    /// BOS, EOS, UNK and other special tokens: dropped (`skip_special_tokens=True`).
    Skip,
    /// A byte-fallback piece `<0xNN>`.
    Byte(u8),
    /// An ordinary piece, as written in the vocabulary (with `▁`).
    Text(String),
}

/// The model directory's tokenizer with the ids the prompt and decoding rules need.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    /// The id put in the image slot.
    image_token_id: i64,
    /// Indexed by id.
    detok: Vec<Detok>,
}

/// `<0xNN>` (two upper-case hex digits, SentencePiece's byte piece spelling) -> the byte.
fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Appends `bytes` as SentencePiece's decoder does: each maximal valid UTF-8 stretch as is,
/// one U+FFFD per byte that does not start a valid character. (SentencePiece re-examines the
/// byte after an invalid one; the bytes of an invalid sequence reported by `Utf8Chunks`
/// are a truncated character's lead + continuation bytes, each invalid on its own there.)
fn push_lenient_utf8(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
}

/// Largest vocabulary a tokenizer may have (as `engine::validate` bounds the manifest's).
const MAX_VOCAB: usize = 1 << 22;

impl PromptTokenizer {
    /// The tokenizer of a model directory, with the special ids and image slot id its
    /// manifest records.
    pub fn for_model(dir: &Path, spec: &TokenizerSpec) -> Result<Self, PromptError> {
        let mut tokenizer = Self::from_file(&dir.join(&spec.file), spec.bos_id, spec.eos_id)?;
        tokenizer.image_token_id = spec.image_token_id;
        Ok(tokenizer)
    }

    /// Loads `tokenizer.json` with these BOS/EOS ids (the image slot id is LLaVA's).
    pub fn from_file(path: &Path, bos: u32, eos: u32) -> Result<Self, PromptError> {
        let load_error = |message: String| PromptError::Load {
            path: path.to_path_buf(),
            message,
        };
        // tokenizers 0.23 panics on some malformed files (`.expect("Helper")` in its
        // decoder deserializer): a bad tokenizer.json is an error like any other.
        let loaded = std::panic::catch_unwind(|| Tokenizer::from_file(path))
            .map_err(|_| load_error("the tokenizers library panicked reading it".into()))?;
        let tokenizer = loaded.map_err(|e| load_error(e.to_string()))?;
        // Its post-processor can panic at the first encode too (a template naming a special
        // token the file does not define): tried once here, so that it is one load error.
        let encodes = std::panic::catch_unwind(AssertUnwindSafe(|| tokenizer.encode("a", true)));
        if encodes.is_err() {
            return Err(load_error(
                "the tokenizers library panicked encoding with it".into(),
            ));
        }
        let vocab = tokenizer.get_vocab(true);
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        // The decode table has one slot per id up to the largest: a forged id of 2^32 - 1
        // would ask for 100 GB. The bound is the manifest check's largest vocabulary.
        if size > MAX_VOCAB {
            return Err(load_error(format!(
                "token id {} is over {MAX_VOCAB}, the largest vocabulary accepted",
                size - 1
            )));
        }
        for (what, id) in [("BOS", bos), ("EOS", eos)] {
            if id as usize >= size {
                return Err(PromptError::SpecialNotInVocab {
                    path: path.to_path_buf(),
                    what,
                    id,
                    vocab: size,
                });
            }
        }
        let mut detok = vec![Detok::Skip; size];
        for (piece, &id) in &vocab {
            detok[id as usize] = match byte_piece(piece) {
                Some(b) => Detok::Byte(b),
                None => Detok::Text(piece.clone()),
            };
        }
        // `all_special_ids` of the slow tokenizer: BOS, EOS, UNK (the converter marks
        // control and unknown pieces as special added tokens).
        for (&id, token) in tokenizer.get_added_tokens_decoder().iter() {
            if token.special {
                if let Some(d) = detok.get_mut(id as usize) {
                    *d = Detok::Skip;
                }
            }
        }
        detok[bos as usize] = Detok::Skip;
        detok[eos as usize] = Detok::Skip;
        Ok(Self {
            tokenizer,
            bos,
            eos,
            image_token_id: IMAGE_TOKEN_INDEX,
            detok,
        })
    }

    pub fn bos(&self) -> u32 {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The `llava_v1` prompt around `question` (REFERENCE.md "Prompt", exact text).
    pub fn prompt_text(question: &str) -> String {
        format!("{LLAVA_V1_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:")
    }

    /// `tokenizer_image_token(prompt_text(question))`: ids with the image slot id at
    /// each `<image>` (one for the template; more only if the question itself holds one).
    pub fn input_ids(&self, question: &str) -> Result<Vec<i64>, PromptError> {
        let prompt = Self::prompt_text(question);
        let mut chunks = Vec::new();
        for (i, chunk) in prompt.split(IMAGE_PLACEHOLDER).enumerate() {
            let error = |message: String| PromptError::Encode {
                chunk: i,
                question: question.to_string(),
                message,
            };
            // A panic of the tokenizers library on this text is this sample's error.
            let enc =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.tokenizer.encode(chunk, true)))
                    .map_err(|_| error("the tokenizers library panicked".into()))?
                    .map_err(|e| error(e.to_string()))?;
            chunks.push(enc.get_ids().to_vec());
        }
        // As LLaVA does it: when the first chunk starts with BOS, keep that BOS once and drop
        // the first id of every chunk (each chunk's own BOS).
        let offset = usize::from(chunks.first().and_then(|c| c.first()) == Some(&self.bos));
        let mut ids = Vec::with_capacity(chunks.iter().map(Vec::len).sum::<usize>() + 1);
        if offset == 1 {
            ids.push(i64::from(self.bos));
        }
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                ids.push(self.image_token_id);
            }
            ids.extend(chunk.iter().skip(offset).map(|&id| i64::from(id)));
        }
        Ok(ids)
    }

    /// SentencePiece-exact answer text of generated ids (see the module contract).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut first = true;
        for &id in ids {
            match self.detok.get(id as usize) {
                None | Some(Detok::Skip) => {}
                Some(Detok::Byte(b)) => {
                    bytes.push(*b);
                    first = false;
                }
                Some(Detok::Text(piece)) => {
                    push_lenient_utf8(&mut out, &bytes);
                    bytes.clear();
                    let mut piece = piece.as_str();
                    if first {
                        // "since we manually add the prefix space, we have to remove it"
                        piece = piece.strip_prefix(SPACE_SYMBOL).unwrap_or(piece);
                        first = false;
                    }
                    out.extend(
                        piece
                            .chars()
                            .map(|c| if c == SPACE_SYMBOL { ' ' } else { c }),
                    );
                }
            }
        }
        push_lenient_utf8(&mut out, &bytes);
        out
    }
}

/// A prompt's size in decoder positions: its input ids, one of them the image slot, which
/// the image's feature rows replace when the prompt is spliced (LLaVA's
/// `prepare_inputs_labels_for_multimodal`). The one place that arithmetic is written: the
/// run's admission against the model's context, the slot capacity, the generator's check
/// against it and the TensorRT profile all ask this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptShape {
    /// Input ids, the image slot included.
    pub ids: usize,
    /// Feature rows of the image (`vision.num_tokens`: 336/14 = 24, 24*24 = 576 for LLaVA-1.5).
    pub image_tokens: usize,
}

impl PromptShape {
    /// Text tokens: every id but the image slot.
    pub fn text_tokens(self) -> usize {
        self.ids.saturating_sub(1)
    }

    /// Positions once the image is spliced in (the slot becomes `image_tokens` rows).
    pub fn positions(self) -> usize {
        self.text_tokens() + self.image_tokens
    }

    /// Positions the prompt and an answer of `max_new_tokens` take: what a cache must hold.
    pub fn with_answer(self, max_new_tokens: usize) -> usize {
        self.positions() + max_new_tokens
    }

    /// Whether the prompt and an answer of `max_new_tokens` fit in `capacity` positions.
    pub fn fits(self, max_new_tokens: usize, capacity: usize) -> bool {
        self.with_answer(max_new_tokens) <= capacity
    }
}

/// A prompt whose ids hold other than exactly one image slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the prompt has {found} image slots (id {id}); exactly one is expected")]
pub struct ImageSlotError {
    pub found: usize,
    pub id: i64,
}

/// Where the image goes in `ids`: the index of the one id that is `image_token_id`.
/// The one check of the slot, for the generator's admission and the decoders' splice alike.
pub fn image_slot(ids: &[i64], image_token_id: i64) -> Result<usize, ImageSlotError> {
    let mut slots = ids
        .iter()
        .enumerate()
        .filter(|&(_, &id)| id == image_token_id);
    match (slots.next(), slots.count()) {
        (Some((slot, _)), 0) => Ok(slot),
        (first, rest) => Err(ImageSlotError {
            found: usize::from(first.is_some()) + rest,
            id: image_token_id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 576 image rows: LLaVA-1.5's CLIP ViT-L/14 at 336 px (24 x 24 patches).
    #[test]
    fn prompt_shape_counts_the_slot_as_the_image() {
        let shape = PromptShape {
            ids: 40,
            image_tokens: 576,
        };
        assert_eq!(shape.text_tokens(), 39);
        assert_eq!(shape.positions(), 615);
        assert_eq!(shape.with_answer(128), 743);
        assert!(shape.fits(128, 743));
        assert!(!shape.fits(128, 742));
    }

    #[test]
    fn image_slot_wants_exactly_one() {
        assert_eq!(image_slot(&[1, 5, -200, 7], -200), Ok(2));
        let none = image_slot(&[1, 5, 7], -200).unwrap_err();
        assert_eq!(
            none.to_string(),
            "the prompt has 0 image slots (id -200); exactly one is expected"
        );
        assert_eq!(
            image_slot(&[-200, 1, -200, -200], -200).unwrap_err().found,
            3
        );
    }

    fn lenient(bytes: &[u8]) -> String {
        let mut s = String::new();
        push_lenient_utf8(&mut s, bytes);
        s
    }

    // Expected values: REFERENCE.md "Generation" and sentencepiece 0.1.99
    // `string_util::DecodeUTF8` (one U+FFFD per byte that does not start a valid char).
    #[test]
    fn lenient_utf8_replaces_each_invalid_byte() {
        assert_eq!(lenient(&[0xE2, 0x82, 0x41]), "\u{FFFD}\u{FFFD}A");
        assert_eq!(lenient(&[0xF0, 0x9F, 0x98]), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(lenient(&[0xF0, 0x9F, 0x98, 0x80]), "\u{1F600}");
        assert_eq!(lenient(&[0x01]), "\u{1}");
        // Overlong, surrogate and above U+10FFFF: invalid byte by byte.
        assert_eq!(lenient(&[0xC0, 0x80]), "\u{FFFD}\u{FFFD}");
        assert_eq!(lenient(&[0xED, 0xA0, 0x80]), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(
            lenient(&[0xF4, 0x90, 0x80, 0x80]),
            "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        assert_eq!(lenient(&[0x80, 0xC3, 0xA9]), "\u{FFFD}\u{e9}");
    }

    #[test]
    fn byte_pieces_are_recognised_exactly() {
        assert_eq!(byte_piece("<0x0A>"), Some(0x0A));
        assert_eq!(byte_piece("<0xFF>"), Some(0xFF));
        assert_eq!(byte_piece("<0xff>"), None);
        assert_eq!(byte_piece("<0x0A"), None);
        assert_eq!(byte_piece("<0x0AB>"), None);
        assert_eq!(byte_piece("▁<0x0A>"), None);
    }

    #[test]
    fn prompt_text_is_llava_v1() {
        // REFERENCE.md "Prompt".
        assert_eq!(
            PromptTokenizer::prompt_text("Q?"),
            "A chat between a curious human and an artificial intelligence assistant. The \
             assistant gives helpful, detailed, and polite answers to the human's questions. \
             USER: <image>\nQ? ASSISTANT:"
        );
    }
}
