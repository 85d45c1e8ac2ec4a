//! LLaVA's fine-tuning data as VLGuard's `convert_to_llava_format.py` writes it
//! (`train_llava_format.json`): `train.json`'s items, each with its `instr-resp` replaced
//! by `conversations`, a list of [`Turn`]s, human first (the first human turn's value
//! starts with `<image>`). The items keep every other field as the input spelled it, so
//! they stay JSON objects in file order (`serde_json::Map`); the turns are this type.

use serde::Serialize;

/// One turn of a conversation, `{"from": "human" | "gpt", "value": ...}` in that key order.
/// The value is whatever the input pair held (text in VLGuard's file; any JSON value is
/// carried over as the reference script carries it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    pub from: Speaker,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    Human,
    Gpt,
}
