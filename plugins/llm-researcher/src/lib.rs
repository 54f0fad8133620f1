//! `llm`: a Researcher that asks the host's LLM (through `llm.chat`; the plugin never sees a key
//! or a socket). The compressed research memory goes in as JSON; the reply must be
//! `{"proposals": [Proposal, ...]}`. Each proposal is checked against the Proposal schema and
//! the task's search space; an invalid reply is sent back once with the validation error, and a
//! second invalid reply is reported as this round's error (the host records it and goes on).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{ChatOptions, LogLevel, PluginError, Researcher, chat};
use trex_sdk::types::{ChatMessage, Outcome, Proposal, ResearchContext, SearchSpace, TaskBrief};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Sampling temperature.
    temperature: f32,
    /// Reply length cap, in tokens.
    max_tokens: u32,
    /// Extra guidance appended to the system prompt (domain hints, house rules).
    instructions: String,
    /// Times an invalid reply is sent back with its validation error before the round is given up.
    retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self { temperature: 0.2, max_tokens: 1500, instructions: String::new(), retries: 1 }
    }
}

/// The reply format.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Reply {
    /// Proposed experiments, most promising first (at least one: a server that decodes by the
    /// schema then cannot answer with an empty list).
    #[schemars(length(min = 1, max = 8))]
    proposals: Vec<Proposal>,
}

struct LlmResearcher {
    config: Config,
    task: TaskBrief,
    observed: Vec<String>,
}

/// The JSON object in a reply, without Markdown fences or prose around it.
fn json_part(text: &str) -> &str {
    let t = text.trim();
    match (t.find('{'), t.rfind('}')) {
        (Some(a), Some(b)) if b > a => &t[a..=b],
        _ => t,
    }
}

/// Checks a proposal against the search space; the error names the field.
fn check(space: &SearchSpace, allowed_steps: &[String], p: &Proposal) -> Result<(), String> {
    let r = &p.train_recipe;
    let lr = &space.learning_rate;
    if !(r.learning_rate >= lr.min && r.learning_rate <= lr.max) {
        return Err(format!("train_recipe.learning_rate {} is outside [{}, {}]", r.learning_rate, lr.min, lr.max));
    }
    if !space.lora_rank.is_empty() && !space.lora_rank.contains(&r.lora_rank) {
        return Err(format!("train_recipe.lora_rank {} is not one of {:?}", r.lora_rank, space.lora_rank));
    }
    if let Some(max) = space.epochs.iter().copied().reduce(f32::max)
        && !(r.epochs > 0.0 && r.epochs <= max)
    {
        return Err(format!("train_recipe.epochs {} must be in (0, {max}]", r.epochs));
    }
    if r.targets.is_empty() {
        return Err("train_recipe.targets is empty".into());
    }
    for (i, s) in p.data_recipe.steps.iter().enumerate() {
        if !allowed_steps.contains(&s.plugin) {
            return Err(format!(
                "data_recipe.steps[{i}].plugin `{}` is not offered; use one of {allowed_steps:?}",
                s.plugin
            ));
        }
    }
    Ok(())
}

impl LlmResearcher {
    fn allowed_steps(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .task
            .start
            .iter()
            .flat_map(|p| p.data_recipe.steps.iter())
            .chain(&self.task.search_space.data_steps)
            .map(|s| s.plugin.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn system_prompt(&self) -> String {
        let t = &self.task;
        let mut s = format!(
            "You are the research lead of a fine-tuning team. Task `{}` (domain {}): {}\n\
             The metric `{}` is maximized on a validation split. Each experiment is a data recipe \
             (data-tool steps applied to the training split) plus a LoRA training recipe.\n\
             Search space (stay inside it): {}\n\
             The starting experiment: {}\n\
             Reply with one JSON object only: {{\"proposals\": [{{\"data_recipe\": {{\"steps\": [...]}}, \
             \"train_recipe\": {{...}}, \"rationale\": \"one sentence\"}}]}}. Fields of train_recipe not given \
             take their defaults. Learn from the lessons and bad cases you are shown; do not repeat an \
             experiment that already ran.",
            t.name,
            t.domain,
            t.goal,
            t.metric,
            serde_json::to_string(&t.search_space).unwrap_or_default(),
            t.start.as_ref().and_then(|p| serde_json::to_string(p).ok()).unwrap_or_else(|| "none".into()),
        );
        if !self.config.instructions.is_empty() {
            s.push('\n');
            s.push_str(&self.config.instructions);
        }
        s
    }

    fn parse(&self, text: &str, max: u32) -> Result<Vec<Proposal>, String> {
        let reply: Reply = serde_json::from_str(json_part(text))
            .map_err(|e| format!("the reply is not a JSON object of the form {{\"proposals\": [...]}}: {e}"))?;
        if reply.proposals.is_empty() {
            return Err("the reply has no proposals".into());
        }
        let allowed = self.allowed_steps();
        for (i, p) in reply.proposals.iter().enumerate() {
            check(&self.task.search_space, &allowed, p).map_err(|e| format!("proposals[{i}]: {e}"))?;
        }
        Ok(reply.proposals.into_iter().take(max as usize).collect())
    }
}

/// The reply schema with the task's search space written into the training recipe (allowed
/// ranks, epochs, sequence lengths, the learning-rate range or grid): a server that decodes by
/// the schema then writes only recipes the task allows, and one that does not is told them.
fn reply_schema(space: &SearchSpace, start: Option<&Proposal>) -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Reply)).expect("the reply schema serializes");
    let Some(props) = schema.pointer_mut("/$defs/TrainRecipe/properties").and_then(|p| p.as_object_mut()) else {
        return schema;
    };
    let start = start.map(|p| &p.train_recipe);
    let mut one_of = |field: &str, mut values: Vec<serde_json::Value>, keep: Option<serde_json::Value>| {
        if values.is_empty() {
            return;
        }
        if let Some(k) = keep
            && !values.contains(&k)
        {
            values.push(k);
        }
        if let Some(p) = props.get_mut(field).and_then(|p| p.as_object_mut()) {
            p.insert("enum".into(), serde_json::Value::Array(values));
        }
    };
    one_of("lora_rank", space.lora_rank.iter().map(|r| (*r).into()).collect(), start.map(|s| s.lora_rank.into()));
    one_of(
        "epochs",
        space.epochs.iter().map(|e| f64::from(*e).into()).collect(),
        start.map(|s| f64::from(s.epochs).into()),
    );
    one_of("max_seq_len", space.max_seq_len.iter().map(|n| (*n).into()).collect(), start.map(|s| s.max_seq_len.into()));
    // The learning rate: the task's grid, else nine log-spaced values across its range (grammar
    // converters honour a list, not always a numeric range).
    let lr = &space.learning_rate;
    let grid: Vec<f64> = if lr.values.is_empty() {
        (0..9)
            .map(|i| {
                let v = lr.min * (lr.max / lr.min).powf(f64::from(i) / 8.0);
                let scale = 10f64.powf(v.log10().floor() - 1.0);
                ((v / scale).round() * scale).clamp(lr.min, lr.max)
            })
            .collect()
    } else {
        lr.values.clone()
    };
    one_of("learning_rate", grid.into_iter().map(Into::into).collect(), None);
    if let Some(p) = props.get_mut("learning_rate").and_then(|p| p.as_object_mut()) {
        p.remove("default");
    }
    // A field left out takes its default, which may lie outside the space: ask for each one.
    if let Some(recipe) = schema.pointer_mut("/$defs/TrainRecipe").and_then(|r| r.as_object_mut()) {
        let required = ["learning_rate", "lora_rank", "epochs", "targets"].map(serde_json::Value::from).to_vec();
        recipe.insert("required".into(), serde_json::Value::Array(required));
    }
    schema
}

impl Researcher for LlmResearcher {
    type Config = Config;
    const NAME: &'static str = "llm";
    const DESCRIPTION: &'static str = "Ask the host's LLM for experiments: the compressed research memory in, JSON proposals out, each validated against the schema and the search space (an invalid reply is retried once with the error).";

    fn open(config: Config, task: TaskBrief) -> Result<Self, PluginError> {
        if config.max_tokens == 0 {
            return Err(PluginError::field("max_tokens", "must be at least 1"));
        }
        Ok(Self { config, task, observed: Vec::new() })
    }

    fn propose(&mut self, context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError> {
        let schema = Some(reply_schema(&self.task.search_space, self.task.start.as_ref()));
        let options = ChatOptions {
            temperature: Some(self.config.temperature),
            max_tokens: Some(self.config.max_tokens),
            response_schema: schema,
        };
        let mut user = format!(
            "Research memory (JSON):\n{}\n\nPropose up to {max} experiment(s) that expand node {}.",
            serde_json::to_string(&context).unwrap_or_default(),
            context.node.id
        );
        if !self.observed.is_empty() {
            let n = self.observed.len();
            user.push_str(&format!("\nMost recent outcomes: {}", self.observed[n.saturating_sub(3)..].join(" / ")));
        }
        let mut messages = vec![
            ChatMessage { role: "system".into(), content: self.system_prompt() },
            ChatMessage { role: "user".into(), content: user },
        ];
        let mut last_error = String::new();
        for attempt in 0..=self.config.retries {
            let reply = chat(&messages, &options)?;
            match self.parse(&reply.content, max) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    trex_sdk::guest::log(LogLevel::Warn, &format!("invalid LLM reply (attempt {}): {e}", attempt + 1));
                    last_error = e.clone();
                    let echoed: String = reply.content.chars().take(2000).collect();
                    messages.push(ChatMessage { role: "assistant".into(), content: echoed });
                    messages.push(ChatMessage {
                        role: "user".into(),
                        content: format!("That reply was invalid: {e}. Answer again with the JSON object only."),
                    });
                }
            }
        }
        Err(PluginError::new(format!(
            "the LLM gave no valid proposal in {} attempt(s); last problem: {last_error}",
            self.config.retries + 1
        )))
    }

    fn observe(&mut self, outcome: Outcome) -> Result<(), PluginError> {
        self.observed.push(format!("node {}: {}", outcome.node.id, outcome.node.lesson));
        Ok(())
    }
}

trex_sdk::export_researcher!(LlmResearcher);
