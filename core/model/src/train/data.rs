//! Training examples: reading records, applying the chat template, tokenizing, marking which
//! positions carry a loss (the completion only), truncating to the recipe's length.

use std::path::Path;

use trex_sdk::types::ChatMessage;

use super::TrainError;
use crate::Tokenizer;

/// A prompt and the completion the model should learn, as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Identifier (from the record, or `file:line`).
    pub id: String,
    /// The prompt, chat template applied.
    pub prompt: String,
    /// The completion the model should learn.
    pub completion: String,
    /// Append the tokenizer's end-of-sequence id after the completion (false when the
    /// completion text already carries its end-of-turn marker).
    pub add_eos: bool,
}

/// An example as token ids, with per-position targets.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedExample {
    /// Prompt and completion ids.
    pub tokens: Vec<u32>,
    /// For position `i`, the next token when it belongs to the completion, else −1.
    pub targets: Vec<i64>,
    /// Whether the example was cut to fit `max_seq_len`.
    pub truncated: bool,
}

impl TokenizedExample {
    /// Positions with a loss.
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }
}

fn text(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(String::from)
}

/// Turn one record into an example. Accepted shapes, in order:
/// `{prompt_text, completion_text}` (as written by the `chat-format` plugin, used verbatim);
/// `{messages, completion}` or `{messages}` ending with an assistant turn;
/// `{prompt, response | completion | answer}`.
pub fn parse_record(
    record: &serde_json::Value,
    tokenizer: &Tokenizer,
) -> Result<(Option<String>, Example), TrainError> {
    record_example(record, tokenizer).map_err(TrainError::Data)
}

fn record_example(record: &serde_json::Value, tokenizer: &Tokenizer) -> Result<(Option<String>, Example), String> {
    let id = match record.get("id") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(n @ serde_json::Value::Number(_)) => Some(n.to_string()),
        _ => None,
    };
    if let (Some(prompt), Some(completion)) = (text(record, "prompt_text"), text(record, "completion_text")) {
        return Ok((id, Example { id: String::new(), prompt, completion, add_eos: false }));
    }
    let (messages, completion): (Vec<ChatMessage>, String) = if let Some(raw) = record.get("messages") {
        let mut messages: Vec<ChatMessage> = serde_json::from_value(raw.clone())
            .map_err(|e| format!("field `messages` is not a list of {{role, content}}: {e}"))?;
        match text(record, "completion") {
            Some(c) => (messages, c),
            None => match messages.pop() {
                Some(m) if m.role == "assistant" => (messages, m.content),
                _ => {
                    return Err("field `messages` must end with an assistant turn (or add a `completion` field)".into());
                }
            },
        }
    } else {
        let prompt = text(record, "prompt").ok_or("no `prompt_text`, `messages` or `prompt` field")?;
        let completion = ["response", "completion", "answer"]
            .iter()
            .find_map(|k| text(record, k))
            .ok_or("no `response`, `completion` or `answer` field next to `prompt`")?;
        (vec![ChatMessage { role: "user".into(), content: prompt }], completion)
    };
    if messages.is_empty() {
        return Err("the conversation has no turn before the answer".into());
    }
    let prompt = tokenizer.apply_chat_template(&messages, true).map_err(|e| e.to_string())?;
    Ok((id, Example { id: String::new(), prompt, completion, add_eos: true }))
}

/// Read JSON-lines training records from `path`.
pub fn load_jsonl(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<Example>, TrainError> {
    let data =
        std::fs::read_to_string(path).map_err(|e| TrainError::Data(format!("{}: cannot read: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TrainError::Data(format!("{}: line {}: not JSON: {e}", path.display(), i + 1)))?;
        let (id, mut ex) = parse_record(&value, tokenizer)
            .map_err(|e| TrainError::Data(format!("{}: line {}: {e}", path.display(), i + 1)))?;
        ex.id = id.unwrap_or_else(|| format!("{}:{}", path.display(), i + 1));
        out.push(ex);
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!("{}: no records (the file is empty)", path.display())));
    }
    Ok(out)
}

/// Tokenize examples; each keeps at most `max_len` tokens (the prompt is cut from the left first,
/// then the completion from the right).
pub fn tokenize(examples: &[Example], tokenizer: &Tokenizer, max_len: usize) -> Vec<TokenizedExample> {
    examples
        .iter()
        .map(|e| {
            let mut prompt = tokenizer.encode(&e.prompt);
            let mut completion = tokenizer.encode_continuation(&e.completion);
            if e.add_eos
                && let Some(&eos) = tokenizer.eos.first()
            {
                completion.push(eos);
            }
            let mut truncated = false;
            if prompt.len() + completion.len() > max_len {
                truncated = true;
                let keep_prompt = max_len.saturating_sub(completion.len()).max(1).min(prompt.len());
                prompt.drain(..prompt.len() - keep_prompt);
                completion.truncate(max_len - prompt.len());
            }
            let p = prompt.len();
            let mut tokens = prompt;
            tokens.extend(&completion);
            let targets = (0..tokens.len())
                .map(|i| if i + 1 >= p && i + 1 < tokens.len() { tokens[i + 1] as i64 } else { -1 })
                .collect();
            TokenizedExample { tokens, targets, truncated }
        })
        .collect()
}
