//! `llm-data`: data made or judged by the host's LLM (`llm.chat`).
//!
//! - `generate`: every `every`-th record is a seed. The LLM sees the seed's `fields` (and the
//!   task `instructions`) and writes `per_seed` new examples with the same fields, as JSON
//!   following a schema. Every input record passes through; each valid new example follows its
//!   seed, with `id` `<seed id>~llm<k>`, the seed's tags plus `synthetic-llm`, and
//!   `generated_from`. At most `max_new` examples are made.
//! - `judge`: the LLM rates each record from 1 to 5 against the `rubric`. Records rated below
//!   `min_score` are dropped (`judged-low`); the others get `judge_score` and `judge_reason`.
//!
//! A reply that is not the JSON asked for is handled by `on_bad_reply`: `keep` (judge: keep the
//! record unrated; generate: make nothing from that seed), `drop` (judge: drop the record) or
//! `fail`. With no LLM configured, or without the `llm` capability, the records pass through
//! unchanged and the run says so in the log and in the `llm-skipped` metric. When the LLM budget
//! runs out, the rest passes through unchanged (`llm-budget-stopped`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trex_sdk::guest::{
    ChatOptions, DataTool, LlmError, LogLevel, PluginError, Record, RecordReader, RecordWriter, RunStats, complete,
    log, progress,
};
use trex_sdk::types::ChatMessage;

/// What the LLM does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Write new examples from seed records.
    Generate,
    /// Rate each record and drop the low ones.
    Judge,
}

/// What to do when a reply is not the JSON asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OnBadReply {
    /// Judge: keep the record unrated. Generate: make nothing from that seed.
    #[default]
    Keep,
    /// Judge: drop the record. Generate: as `keep`.
    Drop,
    /// Stop the run with the error.
    Fail,
}

fn default_fields() -> Vec<String> {
    vec!["prompt".into(), "response".into()]
}

fn default_rubric() -> String {
    "The response answers the prompt correctly, completely and in the expected format.".into()
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `generate` or `judge`.
    mode: Mode,
    /// The string fields the LLM sees (and, for `generate`, writes).
    #[serde(default = "default_fields")]
    fields: Vec<String>,
    /// What the task is, in a sentence or two, for the LLM.
    #[serde(default)]
    instructions: String,
    /// `generate`: new examples per seed (1 to 20).
    #[serde(default = "one")]
    per_seed: usize,
    /// `generate`: every n-th record is a seed.
    #[serde(default = "one")]
    every: usize,
    /// `generate`: the most new examples in all.
    #[serde(default = "hundred")]
    max_new: usize,
    /// `judge`: what a good record is.
    #[serde(default = "default_rubric")]
    rubric: String,
    /// `judge`: the lowest rating (1 to 5) kept.
    #[serde(default = "three")]
    min_score: u8,
    /// Sampling temperature (default 0.8 for `generate`, 0 for `judge`).
    #[serde(default)]
    temperature: Option<f32>,
    /// What to do with a reply that is not the JSON asked for.
    #[serde(default)]
    on_bad_reply: OnBadReply,
}

fn one() -> usize {
    1
}

fn hundred() -> usize {
    100
}

fn three() -> u8 {
    3
}

/// How a chat call ended.
enum Asked {
    Reply(Value),
    /// The reply was not the JSON asked for.
    Bad(String),
    /// No LLM, or not allowed to use it: the run passes records through.
    Unavailable(String),
    /// The LLM budget is spent.
    BudgetSpent(String),
}

fn ask(config: &Config, system: &str, user: String, schema: Value, temperature: f32) -> Result<Asked, PluginError> {
    let messages = [
        ChatMessage { role: "system".into(), content: system.into() },
        ChatMessage { role: "user".into(), content: user },
    ];
    let options = ChatOptions {
        temperature: Some(config.temperature.unwrap_or(temperature)),
        max_tokens: Some(1024),
        response_schema: Some(schema),
    };
    match complete(&messages, &options) {
        Ok(reply) => Ok(match extract_json(&reply.content) {
            Some(v) => Asked::Reply(v),
            None => Asked::Bad(format!("the reply is not JSON: {}", preview(&reply.content))),
        }),
        Err(e) if e.unavailable() => Ok(Asked::Unavailable(e.to_string())),
        Err(LlmError::BudgetExhausted(message)) => Ok(Asked::BudgetSpent(message)),
        Err(e) => Err(PluginError::new(format!("the LLM call failed: {e}"))),
    }
}

/// The JSON object in a reply, also when it is wrapped in a code fence or prose.
fn extract_json(text: &str) -> Option<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str(text.trim()) {
        return Some(v);
    }
    let (start, end) = (text.find('{')?, text.rfind('}')?);
    serde_json::from_str(text.get(start..=end)?).ok().filter(Value::is_object)
}

fn preview(text: &str) -> String {
    let cut: String = text.chars().take(120).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

fn shown(record: &Record, fields: &[String]) -> Value {
    Value::Object(fields.iter().filter_map(|f| Some((f.clone(), record.get(f)?.clone()))).collect())
}

struct LlmData;

impl DataTool for LlmData {
    type Config = Config;
    const NAME: &'static str = "llm-data";
    const DESCRIPTION: &'static str = "Generate new examples from seed records, or judge records and drop low-rated ones, with the host's LLM; passes records through with a clear message when no LLM is configured.";

    fn check(config: &Config) -> Result<(), PluginError> {
        if config.fields.is_empty() {
            return Err(PluginError::field("fields", "name the fields the LLM sees, e.g. [\"prompt\", \"response\"]"));
        }
        if !(1..=20).contains(&config.per_seed) {
            return Err(PluginError::field("per_seed", format!("must be between 1 and 20, not {}", config.per_seed)));
        }
        if config.every == 0 {
            return Err(PluginError::field("every", "must be at least 1"));
        }
        if !(1..=5).contains(&config.min_score) {
            return Err(PluginError::field("min_score", format!("must be between 1 and 5, not {}", config.min_score)));
        }
        if let Some(t) = config.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(PluginError::field("temperature", format!("must lie in [0, 2], not {t}")));
        }
        Ok(())
    }

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let mut run = Run { stats: RunStats::default(), stopped: None, new: 0, bad_replies: 0, calls: 0 };
        while let Some(record) = input.next_record()? {
            let (index, position) = (input.records_read(), input.position());
            if run.stopped.is_some() {
                output.pass(position)?;
                continue;
            }
            match config.mode {
                Mode::Generate => {
                    output.pass(position)?;
                    if (index - 1).is_multiple_of(config.every as u64) && run.new < config.max_new {
                        run.generate(&config, &record, index, output)?;
                    }
                }
                Mode::Judge => run.judge(&config, position, record, output)?,
            }
            progress(index, None, if config.mode == Mode::Generate { "generating" } else { "judging" });
        }
        let Run { mut stats, stopped, new, bad_replies, calls } = run;
        stats.metrics.insert("llm-calls".into(), calls as f64);
        stats.metrics.insert("bad-replies".into(), bad_replies as f64);
        if config.mode == Mode::Generate {
            stats.metrics.insert("generated".into(), new as f64);
        }
        match stopped {
            Some(Stop::Unavailable) => {
                stats.metrics.insert("llm-skipped".into(), 1.0);
            }
            Some(Stop::Budget) => {
                stats.metrics.insert("llm-budget-stopped".into(), 1.0);
            }
            None => {}
        }
        Ok(stats)
    }
}

enum Stop {
    Unavailable,
    Budget,
}

struct Run {
    stats: RunStats,
    stopped: Option<Stop>,
    new: usize,
    bad_replies: u64,
    calls: u64,
}

impl Run {
    /// Handle a call that did not give a reply; `Some(reason)` for a bad reply.
    fn settle(&mut self, config: &Config, asked: Asked) -> Result<Option<Value>, PluginError> {
        match asked {
            Asked::Reply(v) => Ok(Some(v)),
            Asked::Bad(problem) => {
                self.bad_replies += 1;
                if config.on_bad_reply == OnBadReply::Fail {
                    return Err(PluginError::new(problem));
                }
                log(LogLevel::Warn, &problem);
                Ok(None)
            }
            Asked::Unavailable(message) => {
                log(LogLevel::Warn, &format!("skipped: {message}; records pass through unchanged"));
                self.stopped = Some(Stop::Unavailable);
                Ok(None)
            }
            Asked::BudgetSpent(message) => {
                log(LogLevel::Warn, &format!("stopped: {message}; the remaining records pass through unchanged"));
                self.stopped = Some(Stop::Budget);
                Ok(None)
            }
        }
    }

    fn generate(
        &mut self,
        config: &Config,
        seed: &Record,
        index: u64,
        output: &mut RecordWriter<'_>,
    ) -> Result<(), PluginError> {
        let want = config.per_seed.min(config.max_new - self.new);
        let field_schema: serde_json::Map<String, Value> =
            config.fields.iter().map(|f| (f.clone(), json!({"type": "string", "minLength": 1}))).collect();
        let schema = json!({
            "type": "object",
            "properties": {"examples": {"type": "array", "items": {
                "type": "object", "properties": field_schema, "required": config.fields,
                "additionalProperties": false}}},
            "required": ["examples"],
            "additionalProperties": false,
        });
        let system = "You write training examples for fine-tuning a language model. Reply with JSON only.";
        let user = format!(
            "Task: {}\n\nAn example:\n{}\n\nWrite {want} new examples of the same task, each different from the example and from each other, with the same fields ({}), correct, and in the same format. Reply as {{\"examples\": [...]}}.",
            if config.instructions.is_empty() { "(see the example)" } else { &config.instructions },
            shown(seed, &config.fields),
            config.fields.join(", "),
        );
        self.calls += 1;
        let asked = ask(config, system, user, schema, 0.8)?;
        let Some(reply) = self.settle(config, asked)? else { return Ok(()) };
        let Some(examples) = reply.get("examples").and_then(Value::as_array) else {
            return self.settle(config, Asked::Bad("the reply has no `examples` list".into())).map(drop);
        };
        let seed_id = seed.get("id").and_then(Value::as_str).map_or_else(|| format!("record-{index}"), String::from);
        let mut tags = seed.get("tags").and_then(Value::as_array).cloned().unwrap_or_default();
        tags.push(json!("synthetic-llm"));
        for (k, example) in examples.iter().take(want).enumerate() {
            let fields: Option<Vec<(String, Value)>> = config
                .fields
                .iter()
                .map(|f| {
                    let v = example.get(f)?.as_str().filter(|s| !s.trim().is_empty())?;
                    Some((f.clone(), Value::String(v.to_string())))
                })
                .collect();
            let Some(fields) = fields else {
                self.stats.drop_record("bad-llm-example");
                continue;
            };
            if fields.iter().all(|(f, v)| seed.get(f) == Some(v)) {
                self.stats.drop_record("copies-its-seed");
                continue;
            }
            let mut record: Record = fields.into_iter().collect();
            record.insert("id".into(), Value::String(format!("{seed_id}~llm{k}")));
            record.insert("tags".into(), Value::Array(tags.clone()));
            record.insert("generated_from".into(), Value::String(seed_id.clone()));
            output.push(&record)?;
            self.new += 1;
        }
        Ok(())
    }

    fn judge(
        &mut self,
        config: &Config,
        position: u64,
        mut record: Record,
        output: &mut RecordWriter<'_>,
    ) -> Result<(), PluginError> {
        let schema = json!({
            "type": "object",
            "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string"}},
            "required": ["score", "reason"],
            "additionalProperties": false,
        });
        let system = "You review training examples for fine-tuning a language model. Reply with JSON only.";
        let user = format!(
            "Task: {}\nRubric: {}\n\nExample:\n{}\n\nRate the example from 1 (unusable) to 5 (excellent) against the rubric. Reply as {{\"score\": <1-5>, \"reason\": \"<one sentence>\"}}.",
            if config.instructions.is_empty() { "(see the example)" } else { &config.instructions },
            config.rubric,
            shown(&record, &config.fields),
        );
        self.calls += 1;
        let asked = ask(config, system, user, schema, 0.0)?;
        let rated = match self.settle(config, asked)? {
            Some(reply) => match reply.get("score").and_then(Value::as_f64).filter(|s| (1.0..=5.0).contains(s)) {
                Some(score) => Some((score, reply.get("reason").and_then(Value::as_str).unwrap_or("").to_string())),
                None => {
                    self.settle(config, Asked::Bad(format!("the reply has no score from 1 to 5: {reply}")))?;
                    None
                }
            },
            None => None,
        };
        match rated {
            Some((score, _)) if score < f64::from(config.min_score) => self.stats.drop_record("judged-low"),
            Some((score, reason)) => {
                record.insert("judge_score".into(), json!(score));
                record.insert("judge_reason".into(), Value::String(reason));
                output.push(&record)?;
            }
            None if self.stopped.is_none() && config.on_bad_reply == OnBadReply::Drop => {
                self.stats.drop_record("bad-llm-reply")
            }
            None => output.pass(position)?,
        }
        Ok(())
    }
}

trex_sdk::export_data_tool!(LlmData);
