//! `load-bfcl`: reads a Berkeley Function-Calling Leaderboard (BFCL) category from the dataset
//! folder (`/data`, read-only) and emits one chat training record per question.
//!
//! BFCL files are JSON lines: `{"id", "question": [[{role, content}, ...]], "function": [docs]}`,
//! with ground truth in `possible_answer/<same file>`: `{"id", "ground_truth": [{name: {arg:
//! [acceptable values]}}]}`. Each output record carries the conversation (a system turn listing
//! the functions as JSON, then the user turns), the canonical answer as a JSON list of calls
//! `[{"name", "arguments"}]` in `completion` (for each argument the first acceptable value;
//! arguments whose only acceptable value is `""` are optional and omitted), the full ground
//! truth in `answer` for AST-style evaluation, the function docs, and the category as a tag.
//! Input records pass through unchanged, so loaders compose.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trex_sdk::guest::{DataTool, PluginError, RecordReader, RecordWriter, RunStats};
use trex_sdk::types::OnBadRecord;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Question file, relative to the dataset folder (e.g. `BFCL_v4_simple_python.json`).
    questions: String,
    /// Ground-truth file, relative to the dataset folder; defaults to `possible_answer/<questions>`.
    answers: Option<String>,
    /// System prompt; `{functions}` is replaced by the function docs as JSON.
    system_prompt: String,
    /// Load at most this many questions.
    limit: Option<usize>,
    /// What to do with a question that cannot be converted (multi-turn, no ground truth).
    on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            questions: String::new(),
            answers: None,
            system_prompt: "You can call these functions. Reply with only a JSON list of calls, \
                            [{\"name\": ..., \"arguments\": {...}}], and nothing else.\nFunctions:\n{functions}"
                .into(),
            limit: None,
            on_bad_record: OnBadRecord::Skip,
        }
    }
}

fn read_lines(path: &str) -> Result<Vec<Value>, PluginError> {
    let full = format!("/data/{}", path.trim_start_matches('/'));
    let text = std::fs::read_to_string(&full).map_err(|e| {
        PluginError::new(format!("cannot read {full}: {e} (is the BFCL data folder the task's dataset folder, and does the plugin have the `dataset` capability?)"))
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| PluginError::new(format!("{full}: line {}: {e}", i + 1))))
        .collect()
}

/// The canonical call list for a ground truth: first acceptable value per argument.
fn canonical(ground_truth: &Value) -> Option<Value> {
    let calls = ground_truth.as_array()?;
    let mut out = Vec::new();
    for call in calls {
        let (name, args) = call.as_object()?.iter().next()?;
        let mut arguments = serde_json::Map::new();
        for (arg, acceptable) in args.as_object()? {
            let first = acceptable.as_array()?.iter().find(|v| v.as_str() != Some(""));
            if let Some(v) = first {
                arguments.insert(arg.clone(), v.clone());
            }
        }
        out.push(json!({"name": name, "arguments": arguments}));
    }
    Some(Value::Array(out))
}

struct LoadBfcl;

impl DataTool for LoadBfcl {
    type Config = Config;
    const NAME: &'static str = "load-bfcl";
    const DESCRIPTION: &'static str = "Load a BFCL function-calling category from the dataset folder as chat training records (functions in the system turn, the canonical JSON call list as completion, the ground truth for AST evaluation).";

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        if config.questions.is_empty() {
            return Err(PluginError::field(
                "questions",
                "name the BFCL question file, e.g. BFCL_v4_simple_python.json",
            ));
        }
        while input.next_text().is_some() {
            output.pass(input.position())?;
        }
        let answers_path = config.answers.clone().unwrap_or_else(|| format!("possible_answer/{}", config.questions));
        let answers: HashMap<String, Value> = read_lines(&answers_path)?
            .into_iter()
            .filter_map(|a| Some((a.get("id")?.as_str()?.to_string(), a.get("ground_truth")?.clone())))
            .collect();
        let category = config.questions.trim_start_matches("BFCL_v4_").trim_end_matches(".json").to_string();
        let mut stats = RunStats::default();
        let questions = read_lines(&config.questions)?;
        for (i, q) in questions.iter().enumerate().take(config.limit.unwrap_or(usize::MAX)) {
            let line = i as u64 + 1;
            let Some(id) = q.get("id").and_then(|v| v.as_str()) else {
                stats.bad_record(config.on_bad_record, line, "question without an `id`")?;
                continue;
            };
            let turns = q.get("question").and_then(|v| v.as_array()).cloned().unwrap_or_default();
            if turns.len() != 1 {
                stats.bad_record(config.on_bad_record, line, "multi-turn questions are not converted")?;
                continue;
            }
            let Some(truth) = answers.get(id) else {
                stats.bad_record(config.on_bad_record, line, "no ground truth for the question")?;
                continue;
            };
            let Some(completion) = canonical(truth) else {
                stats.bad_record(
                    config.on_bad_record,
                    line,
                    "ground truth is not a list of {name: {argument: [values]}}",
                )?;
                continue;
            };
            let functions = q.get("function").cloned().unwrap_or(Value::Array(Vec::new()));
            let mut messages = vec![
                json!({"role": "system", "content": config.system_prompt.replace("{functions}", &functions.to_string())}),
            ];
            messages.extend(turns[0].as_array().cloned().unwrap_or_default());
            output.push(&json!({
                "id": id,
                "messages": messages,
                "completion": completion.to_string(),
                "answer": truth,
                "functions": functions,
                "tags": [category],
            }))?;
        }
        stats.metrics.insert("questions".into(), questions.len() as f64);
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(LoadBfcl);
