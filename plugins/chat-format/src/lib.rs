//! `chat-format`: turns prompt/response records or chat transcripts into trex training examples,
//! rendering the prompt with a chat template.
//!
//! Input records take one of two shapes:
//! - `{"prompt": "...", "response": "..."}` (field names configurable; `completion` and
//!   `answer` are accepted for the response too);
//! - `{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}`
//!   where the last assistant turn is the completion.
//!
//! Each output record is a `TrainingExample` plus `prompt_text` (the rendered prompt, ready
//! for tokenization) and `completion_text` (the completion followed by the template's end
//! marker), so the loss can be taken on the completion only.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, Record, RecordReader, RecordWriter, RunStats};
use trex_sdk::types::{ChatMessage, OnBadRecord, TrainingExample};

/// Chat templates the tool can render.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Template {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen2).
    #[default]
    Chatml,
    /// Llama 3 header tokens.
    Llama3,
    /// `### System:` / `### User:` / `### Assistant:` blocks, for base models.
    Plain,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Chat template used to render `prompt_text`.
    template: Template,
    /// System message prepended to every conversation that has none.
    system: Option<String>,
    /// Field holding the prompt in prompt/response records.
    prompt_field: String,
    /// Field holding the response; `completion` and `answer` are tried when it is absent.
    response_field: String,
    /// Field holding a chat transcript.
    messages_field: String,
    /// Field copied to the example's `id`, when present.
    id_field: String,
    /// Field (a string or a list of strings) copied to the example's `tags`.
    tags_field: String,
    /// What to do with a record that has neither shape.
    on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            template: Template::Chatml,
            system: None,
            prompt_field: "prompt".into(),
            response_field: "response".into(),
            messages_field: "messages".into(),
            id_field: "id".into(),
            tags_field: "tags".into(),
            on_bad_record: OnBadRecord::Skip,
        }
    }
}

struct ChatFormat;

impl DataTool for ChatFormat {
    type Config = Config;
    const NAME: &'static str = "chat-format";
    const DESCRIPTION: &'static str = "Turn prompt/response records or chat transcripts into training examples with a chat template (chatml, llama3 or plain); the loss is later taken on the completion only.";

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let mut stats = RunStats::default();
        let mut prompt_chars = 0u64;
        let mut kept = 0u64;
        while let Some(record) = input.next_record()? {
            match to_example(&config, &record) {
                Ok(example) => {
                    let prompt_text = render_prompt(config.template, &example.messages);
                    let completion_text = format!("{}{}", example.completion, end_marker(config.template));
                    prompt_chars += prompt_text.chars().count() as u64;
                    kept += 1;
                    let mut out = serde_json::to_value(&example).map_err(|e| PluginError::new(e.to_string()))?;
                    out["prompt_text"] = prompt_text.into();
                    out["completion_text"] = completion_text.into();
                    output.push(&out)?;
                }
                Err(problem) => stats.bad_record(config.on_bad_record, input.records_read(), &problem)?,
            }
        }
        if kept > 0 {
            stats.metrics.insert("mean-prompt-chars".into(), prompt_chars as f64 / kept as f64);
        }
        Ok(stats)
    }
}

fn string_field<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record.get(name).and_then(|v| v.as_str())
}

fn to_example(config: &Config, record: &Record) -> Result<TrainingExample, String> {
    let id = record.get(&config.id_field).and_then(|v| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let tags = match record.get(&config.tags_field) {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    let (mut messages, completion) = if let Some(raw) = record.get(&config.messages_field) {
        let mut messages: Vec<ChatMessage> = serde_json::from_value(raw.clone())
            .map_err(|e| format!("`{}` is not a list of {{role, content}} turns: {e}", config.messages_field))?;
        match messages.pop() {
            Some(last) if last.role == "assistant" => (messages, last.content),
            _ => return Err(format!("`{}` must end with an assistant turn", config.messages_field)),
        }
    } else {
        let prompt = string_field(record, &config.prompt_field).ok_or_else(|| {
            format!("missing string field `{}` (or `{}`)", config.prompt_field, config.messages_field)
        })?;
        let response = [config.response_field.as_str(), "completion", "answer"]
            .iter()
            .find_map(|f| string_field(record, f))
            .ok_or_else(|| format!("missing string field `{}`", config.response_field))?;
        (vec![ChatMessage { role: "user".into(), content: prompt.into() }], response.to_string())
    };
    if messages.is_empty() {
        return Err("the conversation has no turn before the assistant's answer".into());
    }
    if let Some(system) = &config.system
        && messages.first().is_none_or(|m| m.role != "system")
    {
        messages.insert(0, ChatMessage { role: "system".into(), content: system.clone() });
    }
    Ok(TrainingExample { id, messages, completion, tags })
}

fn render_prompt(template: Template, messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    match template {
        Template::Chatml => {
            for m in messages {
                out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
            }
            out.push_str("<|im_start|>assistant\n");
        }
        Template::Llama3 => {
            out.push_str("<|begin_of_text|>");
            for m in messages {
                out.push_str(&format!("<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", m.role, m.content));
            }
            out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
        }
        Template::Plain => {
            for m in messages {
                let role = match m.role.as_str() {
                    "system" => "System",
                    "assistant" => "Assistant",
                    _ => "User",
                };
                out.push_str(&format!("### {role}:\n{}\n\n", m.content));
            }
            out.push_str("### Assistant:\n");
        }
    }
    out
}

fn end_marker(template: Template) -> &'static str {
    match template {
        Template::Chatml => "<|im_end|>",
        Template::Llama3 => "<|eot_id|>",
        Template::Plain => "\n",
    }
}

trex_sdk::export_data_tool!(ChatFormat);
