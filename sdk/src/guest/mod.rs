//! Writing a plugin: implement one trait, add one `export_*!` line, build for `wasm32-wasip2`.
//!
//! | kind | trait | macro |
//! |---|---|---|
//! | data tool | [`DataTool`] | [`export_data_tool!`](crate::export_data_tool) |
//! | evaluator | [`Evaluator`] | [`export_evaluator!`](crate::export_evaluator) |
//! | researcher | [`Researcher`] | [`export_researcher!`](crate::export_researcher) |
//!
//! Configs are ordinary Rust types deriving `Deserialize` and `JsonSchema`; the SDK publishes
//! their schema through `describe()`, validates configs before any work starts, and turns a
//! deserialization error into a [`PluginError`] naming the field. A panic inside a plugin is
//! reported to the host's log with its message before the call fails.
//!
//! The host functions every plugin may call are [`log`], [`progress`], [`cancelled`],
//! [`count_tokens`] (with the tokenizer of the model being fine-tuned, when the host has one) and
//! [`chat`] (only when the plugin's manifest asks for the `llm` capability and the host grants
//! it).

pub mod bindings;
pub mod data_tool;
pub mod evaluator;
pub mod researcher;

use std::sync::Once;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

pub use crate::types::PluginKind;
pub use data_tool::{DataTool, Record, RecordReader, RecordWriter, RunStats, text_fields};
pub use evaluator::{Aggregate, EvalItem, Evaluator, ExampleResult};
pub use researcher::Researcher;

use bindings::imports::trex::plugin::{
    host as wit_host, llm as wit_llm, tokenizer as wit_tokenizer, types as wit_types,
};

/// The version of the plugin contract this SDK implements.
pub const API_VERSION: &str = "0.1.1";

/// Static facts about a plugin, filled in by the `export_*!` macros.
#[derive(Debug, Clone, Copy)]
pub struct PluginMeta {
    /// Plugin name (must equal the manifest's).
    pub name: &'static str,
    /// Plugin version, by default the crate's.
    pub version: &'static str,
    /// One paragraph for `trex-host plugins inspect`.
    pub description: &'static str,
}

/// An error a plugin returns on purpose. Its message reaches the user with the plugin's name.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginError {
    /// What went wrong and, ideally, what to do about it.
    pub message: String,
    /// The config or record field the error is about.
    pub field: Option<String>,
}

impl PluginError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), field: None }
    }

    /// An error about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { message: message.into(), field: Some(field.into()) }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PluginError {}

impl From<PluginError> for wit_types::PluginError {
    fn from(e: PluginError) -> Self {
        Self { message: e.message, field: e.field }
    }
}

/// Log levels for [`log`].
pub use wit_host::LogLevel;

/// Write a line to the host's log, attributed to this plugin.
pub fn log(level: LogLevel, message: &str) {
    wit_host::log(level, message);
}

/// Report progress of the current call.
pub fn progress(done: u64, total: Option<u64>, message: &str) {
    wit_host::progress(done, total, message);
}

/// True once the host wants the current call to stop; check it between batches.
pub fn cancelled() -> bool {
    wit_host::cancelled()
}

/// A chat turn for [`chat`].
pub use crate::types::ChatMessage;

/// The host's answer to [`chat`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The assistant's text.
    pub content: String,
    /// Tokens the prompt cost.
    pub prompt_tokens: u32,
    /// Tokens the reply cost.
    pub completion_tokens: u32,
}

/// Options for [`chat`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatOptions {
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Reply length cap.
    pub max_tokens: Option<u32>,
    /// A JSON Schema the reply must follow (structured output), where the server supports it.
    pub response_schema: Option<serde_json::Value>,
}

/// Why the host's LLM did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmError {
    /// The plugin's manifest does not ask for the `llm` capability, or the host denied it.
    NotGranted(String),
    /// The host runs without an LLM.
    NotConfigured(String),
    /// The LLM token budget is spent.
    BudgetExhausted(String),
    /// The server failed or answered something unusable, after the host's retries.
    Failed(String),
}

impl LlmError {
    /// The message for people.
    pub fn message(&self) -> &str {
        match self {
            Self::NotGranted(m) | Self::NotConfigured(m) | Self::BudgetExhausted(m) | Self::Failed(m) => m,
        }
    }

    /// Whether no LLM can be used at all (as opposed to a request that failed).
    pub fn unavailable(&self) -> bool {
        matches!(self, Self::NotGranted(_) | Self::NotConfigured(_))
    }
}

impl std::fmt::Display for LlmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<LlmError> for PluginError {
    fn from(e: LlmError) -> Self {
        PluginError::new(e.message())
    }
}

/// Ask the host's LLM; a failure says why as an [`LlmError`].
pub fn complete(messages: &[ChatMessage], options: &ChatOptions) -> Result<ChatReply, LlmError> {
    let request = wit_llm::ChatRequest {
        messages: messages
            .iter()
            .map(|m| wit_llm::ChatMessage { role: m.role.clone(), content: m.content.clone() })
            .collect(),
        temperature: options.temperature,
        max_tokens: options.max_tokens,
        response_schema: options.response_schema.as_ref().map(|s| s.to_string()),
    };
    wit_llm::complete(&request)
        .map(|r| ChatReply {
            content: r.content,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        })
        .map_err(|e| match e {
            wit_llm::LlmError::NotGranted(m) => LlmError::NotGranted(m),
            wit_llm::LlmError::NotConfigured(m) => LlmError::NotConfigured(m),
            wit_llm::LlmError::BudgetExhausted(m) => LlmError::BudgetExhausted(m),
            wit_llm::LlmError::Failed(m) => LlmError::Failed(m),
        })
}

/// Ask the host's LLM. Fails when no LLM is configured, the plugin lacks the `llm` capability,
/// or the plugin's LLM budget is spent ([`complete`] says which).
pub fn chat(messages: &[ChatMessage], options: &ChatOptions) -> Result<ChatReply, PluginError> {
    Ok(complete(messages, options)?)
}

/// The number of tokens in each text, counted by the tokenizer of the model being fine-tuned
/// (no special tokens added). Fails when the host runs without a tokenizer.
pub fn count_tokens(texts: &[String]) -> Result<Vec<u32>, PluginError> {
    wit_tokenizer::count(texts).map_err(PluginError::new)
}

/// Route panics to the host log (once per instance), so the user sees the message and location
/// next to the plugin's name instead of a bare trap.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(non-string panic payload)".to_string()
            };
            let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            wit_host::panicked(&format!("{message}{location}"));
        }));
    });
}

/// Parse a config document, naming the offending field on error.
fn parse_config<C: DeserializeOwned>(config: &str) -> Result<C, PluginError> {
    let text = if config.trim().is_empty() { "{}" } else { config };
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| config_error(&e))
}

fn config_error(e: &serde_path_to_error::Error<serde_json::Error>) -> PluginError {
    let msg = without_position(&e.inner().to_string());
    // serde names an unknown or missing field in its message (`unknown field `x``); the path
    // names the field whose value is wrong (`rule`, `units[0]`).
    let named = ["unknown field `", "missing field `"].iter().find_map(|prefix| {
        let start = msg.find(prefix)? + prefix.len();
        let end = msg[start..].find('`')? + start;
        Some(msg[start..end].to_string())
    });
    let path = e.path().to_string();
    let at = (path != ".").then_some(path);
    // An unknown field's path ends with it; a missing field's path is its parent's.
    let field = match (named, &at) {
        (Some(name), Some(p)) if p == &name || p.ends_with(&format!(".{name}")) => Some(p.clone()),
        (Some(name), Some(parent)) => Some(format!("{parent}.{name}")),
        (Some(name), None) => Some(name),
        (None, at) => at.clone(),
    };
    // The host shows the field next to the message, so the message does not repeat it.
    PluginError { message: format!("invalid config: {msg}"), field }
}

/// serde_json ends its messages with the position in the JSON the host serialized the config to
/// (`... at line 1 column 21`), which is no position in any file the user wrote: drop it.
fn without_position(msg: &str) -> String {
    if let Some(i) = msg.rfind(" at line ") {
        let rest = &msg[i + " at line ".len()..];
        let mut parts = rest.splitn(2, " column ");
        let (line, column) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if digits(line) && digits(column) {
            return msg[..i].to_string();
        }
    }
    msg.to_string()
}

/// Validate a config and return it re-serialized with defaults filled in.
fn validate_config<C: DeserializeOwned + serde::Serialize>(config: &str) -> Result<String, PluginError> {
    let parsed: C = parse_config(config)?;
    serde_json::to_string(&parsed).map_err(|e| PluginError::new(format!("config does not serialize: {e}")))
}

fn info<C: JsonSchema>(meta: &PluginMeta, kind: wit_types::PluginKind) -> wit_types::PluginInfo {
    wit_types::PluginInfo {
        name: meta.name.to_string(),
        kind,
        version: meta.version.to_string(),
        api_version: API_VERSION.to_string(),
        description: meta.description.to_string(),
        config_schema: serde_json::to_string(&schemars::schema_for!(C)).unwrap_or_else(|_| "{}".into()),
    }
}

fn metrics(map: &std::collections::BTreeMap<String, f64>) -> Vec<wit_types::Metric> {
    map.iter().map(|(name, value)| wit_types::Metric { name: name.clone(), value: *value }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        rule: PluginKind,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    fn field(text: &str) -> (Option<String>, String) {
        let e = parse_config::<Config>(text).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn config_errors_name_the_field() {
        assert_eq!(field(r#"{"rule": "nope"}"#).0.as_deref(), Some("rule"));
        assert_eq!(field(r#"{"rule": "evaluator", "typo": 1}"#).0.as_deref(), Some("typo"));
        assert_eq!(field(r#"{}"#).0.as_deref(), Some("rule"));
        let (f, m) = field(r#"{"rule": "evaluator", "inner": [{"n": 1}, {"n": "x"}]}"#);
        assert_eq!(f.as_deref(), Some("inner[1].n"), "{m}");
        assert_eq!(m, r#"invalid config: invalid type: string "x", expected u32"#);
        assert_eq!(field(r#"{"rule": "evaluator", "inner": [{"m": 1}]}"#).0.as_deref(), Some("inner[0].m"));
    }

    #[test]
    fn config_errors_cite_no_position_in_the_serialized_json() {
        assert_eq!(
            without_position("invalid type: string \"x\", expected u32 at line 1 column 21"),
            "invalid type: string \"x\", expected u32"
        );
        assert_eq!(without_position("expected `,` at line 3"), "expected `,` at line 3");
        assert_eq!(without_position("name at line 2 column x"), "name at line 2 column x");
    }
}
