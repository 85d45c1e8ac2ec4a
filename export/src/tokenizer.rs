//! SentencePiece `tokenizer.model` -> `tokenizer.json` (tokenizers crate format).
//!
//! PLACEHOLDER in the `export` branch: another helper writes the real converter with this
//! exact API; until it is merged every call returns `TokenizerError::Unimplemented`.

/// The special ids the model directory's manifest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the SentencePiece to tokenizer.json converter is not implemented in this build")]
    Unimplemented,
}

/// Converts a SentencePiece model to `tokenizer.json` text and its special ids.
pub fn tokenizer_json_from_sentencepiece(
    _model_bytes: &[u8],
) -> Result<(String, SpecialIds), TokenizerError> {
    Err(TokenizerError::Unimplemented)
}
