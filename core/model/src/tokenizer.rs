//! Tokenizers: Hugging Face `tokenizer.json` files, or byte-level BPE rebuilt from GGUF metadata
//! (vocabulary, merges, token types), plus the model's chat template.

use std::path::Path;

use trex_sdk::types::ChatMessage;

use super::ModelError;
use super::gguf::{GgufFile, Value};

/// A tokenizer and the facts about its special tokens that generation needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token, when the model uses one.
    pub bos: Option<u32>,
    /// End-of-sequence tokens (generation stops at any of them).
    pub eos: Vec<u32>,
    /// Prepend `bos` when encoding a prompt.
    pub add_bos: bool,
    /// The Jinja chat template, when the model ships one.
    pub chat_template: Option<String>,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer { path: path.into(), message: e.to_string() }
}

impl Tokenizer {
    /// Load a `tokenizer.json` (and, when present beside it, `tokenizer_config.json` for the
    /// chat template and special tokens).
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        // The tokenizers library panics on some malformed sections (a `decoder` whose JSON does
        // not match any decoder, found by fuzzing): such a file is refused like any other.
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(path))
            .map_err(|_| {
                tok_err(path, "the tokenizers library could not read it (a malformed `decoder`, `normalizer` or `pre_tokenizer` section?)")
            })?
            .map_err(|e| tok_err(path, e))?;
        let mut t = Self { inner, bos: None, eos: Vec::new(), add_bos: false, chat_template: None };
        let config_path = path.with_file_name("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&config_path) {
            let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| tok_err(&config_path, e))?;
            t.chat_template = cfg["chat_template"].as_str().map(String::from);
            let token = |key: &str| match &cfg[key] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
                _ => None,
            };
            t.bos = token("bos_token").and_then(|s| t.inner.token_to_id(&s));
            t.eos = token("eos_token").and_then(|s| t.inner.token_to_id(&s)).into_iter().collect();
            t.add_bos = cfg["add_bos_token"].as_bool().unwrap_or(false);
        }
        Ok(t)
    }

    /// Write `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join("tokenizer.json");
        self.inner.save(&path, false).map_err(|e| tok_err(&path, e))?;
        let token = |id: Option<u32>| id.map(|i| self.decode(&[i], false));
        let config = serde_json::json!({
            "bos_token": token(self.bos),
            "eos_token": token(self.eos.first().copied()),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json")).map_err(|e| tok_err(&path, e))
    }

    /// Encode text; special tokens written in the text (e.g. `<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let enc = self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default();
        match (self.add_bos, self.bos) {
            (true, Some(b)) => std::iter::once(b).chain(enc).collect(),
            _ => enc,
        }
    }

    /// Encode text without adding a beginning-of-sequence token (for continuations).
    pub fn encode_continuation(&self, text: &str) -> Vec<u32> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    /// Decode ids to text, keeping special tokens visible when `skip_special` is false.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.inner.decode(ids, skip_special).unwrap_or_default()
    }

    /// The id of a token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The bytes each token id stands for, for decoding under a grammar; `None` for special
    /// tokens and for ids without text. Byte-level BPE vocabularies (GPT-2's byte-to-character
    /// table) give the exact bytes; other vocabularies give each token's own decoded text, and
    /// `None` where that is not whole UTF-8.
    pub fn token_bytes(&self) -> Vec<Option<Vec<u8>>> {
        let byte_level = self
            .inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|json| json.contains("\"ByteLevel\""));
        let table: std::collections::HashMap<char, u8> =
            byte_level_chars().into_iter().enumerate().map(|(b, c)| (c, b as u8)).collect();
        let special = self.inner.get_added_tokens_decoder();
        (0..self.vocab_size() as u32)
            .map(|id| {
                if special.get(&id).is_some_and(|t| t.special) {
                    return None;
                }
                let piece = self.inner.id_to_token(id)?;
                if byte_level && !special.contains_key(&id) {
                    return piece.chars().map(|c| table.get(&c).copied()).collect();
                }
                let text = self.decode(&[id], false);
                (!text.is_empty() && !text.contains('\u{FFFD}')).then(|| text.into_bytes())
            })
            .collect()
    }

    /// The prompt of a one-question chat: an optional system message, then the user's turn, then
    /// the start of the assistant's.
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String, ModelError> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(ChatMessage { role: "system".into(), content: s.to_string() });
        }
        messages.push(ChatMessage { role: "user".into(), content: user.to_string() });
        self.apply_chat_template(&messages, true)
    }

    /// Render `messages` with the model's chat template (ChatML when it has none).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        self.render_chat(messages, add_generation_prompt).map_err(ModelError::ChatTemplate)
    }

    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, String> {
        let Some(template) = &self.chat_template else {
            let mut s = String::new();
            for m in messages {
                s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
            }
            if add_generation_prompt {
                s.push_str("<|im_start|>assistant\n");
            }
            return Ok(s);
        };
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| format!("the chat template does not parse: {e}"))?;
        let bos = self.bos.map(|b| self.decode(&[b], false)).unwrap_or_default();
        let eos = self.eos.first().map(|&e| self.decode(&[e], false)).unwrap_or_default();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => bos,
                    eos_token => eos,
                })
            })
            .map_err(|e| format!("the chat template failed: {e}"))
    }
}

/// Rebuild the tokenizer of a GGUF file (`tokenizer.ggml.model = gpt2`: byte-level BPE).
pub(super) fn from_gguf(file: &GgufFile) -> Result<Tokenizer, ModelError> {
    let path = file.path();
    let model = file.meta("tokenizer.ggml.model")?.as_str().unwrap_or_default();
    if model != "gpt2" {
        return Err(ModelError::Unsupported {
            path: path.into(),
            message: format!(
                "tokenizer model `{model}` (trex rebuilds byte-level BPE `gpt2` tokenizers from GGUF; for others use a Hugging Face directory with tokenizer.json)"
            ),
        });
    }
    let strings = |key: &str| -> Result<Vec<String>, ModelError> {
        match file.meta(key)? {
            Value::Array(items) => Ok(items.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()),
            _ => Err(ModelError::Corrupt { path: path.into(), message: format!("`{key}` is not an array") }),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => {
            items.iter().map(|v| if let Value::I64(i) = v { *i } else { v.as_u64().unwrap_or(1) as i64 }).collect()
        }
        _ => vec![1; tokens.len()],
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::Value::from(i))).collect();
    // Control (3) and user-defined (4) tokens are matched whole in the input text.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": types[i] == 3})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let inner: tokenizers::Tokenizer = json.to_string().parse().map_err(|e| tok_err(path, e))?;
    let id = |key: &str| file.metadata.get(key).and_then(Value::as_u64).map(|v| v as u32);
    Ok(Tokenizer {
        inner,
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        add_bos: matches!(file.metadata.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true))),
        chat_template: file.metadata.get("tokenizer.chat_template").and_then(Value::as_str).map(String::from),
    })
}

/// GPT-2's byte-level alphabet: the character that stands for each byte, by byte. Printable
/// Latin-1 bytes stand for themselves; the others, in order, for U+0100 onwards.
pub fn byte_level_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 0x100;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("Latin-1")
            } else {
                next += 1;
                char::from_u32(next - 1).expect("below the surrogates")
            }
        })
        .collect()
}
