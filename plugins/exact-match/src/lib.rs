//! `exact-match`: passes an example when the model's output equals its reference answer after
//! the configured normalization, and tags each failure with the likely reason.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{EvalItem, Evaluator, ExampleResult, PluginError};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Fields tried in order for the reference answer.
    answer_fields: Vec<String>,
    /// Ignore letter case.
    ignore_case: bool,
    /// Collapse runs of whitespace and trim the ends.
    collapse_whitespace: bool,
    /// Remove ASCII punctuation before comparing.
    strip_punctuation: bool,
    /// Cut the output at the first line break before comparing (models often add a second line).
    first_line_only: bool,
    /// Strip these markers from the output (e.g. chat end tokens).
    strip_markers: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            answer_fields: ["answer", "completion", "response"].map(String::from).to_vec(),
            ignore_case: true,
            collapse_whitespace: true,
            strip_punctuation: false,
            first_line_only: false,
            strip_markers: ["<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>"].map(String::from).to_vec(),
        }
    }
}

struct ExactMatch;

impl Evaluator for ExactMatch {
    type Config = Config;
    const NAME: &'static str = "exact-match";
    const DESCRIPTION: &'static str = "Score 1 when the output equals the reference after normalization (case, whitespace, punctuation, end markers); failures are tagged empty-output, answer-with-extra-text, answer-in-output, case-or-spacing or wrong-answer.";

    fn evaluate(config: &Config, items: Vec<EvalItem>) -> Result<Vec<ExampleResult>, PluginError> {
        items.into_iter().map(|item| judge(config, item)).collect()
    }
}

fn reference(config: &Config, item: &EvalItem) -> Result<String, PluginError> {
    for f in &config.answer_fields {
        match item.example.get(f) {
            Some(serde_json::Value::String(s)) => return Ok(s.clone()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => return Ok(v.to_string()),
            _ => {}
        }
    }
    Err(PluginError::field(
        "answer_fields",
        format!("example `{}` has none of the answer fields {:?}", item.id, config.answer_fields),
    ))
}

fn normalize(config: &Config, text: &str) -> String {
    let mut s = text.to_string();
    for m in &config.strip_markers {
        s = s.replace(m.as_str(), "");
    }
    if config.first_line_only {
        s = s.trim_start().lines().next().unwrap_or_default().to_string();
    }
    if config.strip_punctuation {
        s.retain(|c| !c.is_ascii_punctuation());
    }
    if config.ignore_case {
        s = s.to_lowercase();
    }
    if config.collapse_whitespace {
        s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    s
}

fn judge(config: &Config, item: EvalItem) -> Result<ExampleResult, PluginError> {
    let reference = reference(config, &item)?;
    let (want, got) = (normalize(config, &reference), normalize(config, &item.output));
    let passed = want == got;
    let (tag, explanation) = if passed {
        (None, "matches the reference".to_string())
    } else if got.is_empty() {
        (Some("empty-output"), "the output is empty".to_string())
    } else if got.starts_with(&want) {
        (Some("answer-with-extra-text"), format!("starts with the reference `{reference}` but goes on"))
    } else if got.contains(&want) {
        (Some("answer-in-output"), format!("contains the reference `{reference}` inside other text"))
    } else if loose(&want) == loose(&got) {
        (Some("case-or-spacing"), "differs from the reference only in case, spacing or punctuation".to_string())
    } else {
        (Some("wrong-answer"), format!("expected `{reference}`"))
    };
    Ok(ExampleResult {
        id: item.id,
        score: if passed { 1.0 } else { 0.0 },
        passed,
        tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
        explanation,
    })
}

fn loose(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

trex_sdk::export_evaluator!(ExactMatch);
