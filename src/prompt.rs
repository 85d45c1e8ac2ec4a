//! Prompt template, `tokenizer_image_token` and SentencePiece-exact detokenizing.
//! (Owner: tokenizer work; placeholder with the agreed API until it lands.)

use std::path::{Path, PathBuf};

pub const IMAGE_TOKEN_INDEX: i64 = -200;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot load tokenizer {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot tokenize: {0}")]
    Encode(String),
}

pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
}

impl PromptTokenizer {
    pub fn from_file(path: &Path, _bos: u32, _eos: u32) -> Result<Self, PromptError> {
        let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| PromptError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(PromptTokenizer { tokenizer })
    }

    pub fn prompt_text(question: &str) -> String {
        format!("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. USER: <image>\n{question} ASSISTANT:")
    }

    pub fn input_ids(&self, question: &str) -> Result<Vec<i64>, PromptError> {
        let text = Self::prompt_text(question);
        let mut ids = Vec::new();
        for (i, chunk) in text.split("<image>").enumerate() {
            let enc = self
                .tokenizer
                .encode(chunk, true)
                .map_err(|e| PromptError::Encode(e.to_string()))?;
            let chunk_ids = enc.get_ids();
            let skip = usize::from(i > 0);
            if i > 0 {
                ids.push(IMAGE_TOKEN_INDEX);
            }
            ids.extend(chunk_ids[skip..].iter().map(|&id| id as i64));
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}
