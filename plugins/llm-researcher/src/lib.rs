//! `llm`: a Researcher that asks the host's LLM (through `llm.chat`; the plugin never sees a key
//! or a socket). The compressed research memory goes in as JSON; the reply must be
//! `{"proposals": [Proposal, ...]}`. Each proposal is checked against the Proposal schema and
//! the task's search space; an invalid reply is sent back once with the validation error, and a
//! second invalid reply is reported as this round's error (the host records it and goes on).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
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
    #[schemars(length(min = 1, max = 8))] // = MAX_PROPOSALS
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

/// The reply schema with the task's search space written into it (allowed ranks, epochs,
/// sequence lengths, target sets, the learning-rate range or grid, the offered data steps and
/// their config fields): a server that decodes by the schema then writes only recipes the task
/// allows, and one that does not is told them.
fn reply_schema(space: &SearchSpace, start: Option<&Proposal>, max: u32) -> serde_json::Value {
    let steps = offered_steps(space, start);
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
                // Two significant digits, written as such (5.6e-4, not 0.0005600000000000001).
                let two: f64 = format!("{v:.1e}").parse().unwrap_or(v);
                two.clamp(lr.min, lr.max)
            })
            .collect()
    } else {
        lr.values.clone()
    };
    one_of("learning_rate", grid.into_iter().map(Into::into).collect(), None);
    if let Some(p) = props.get_mut("learning_rate").and_then(|p| p.as_object_mut()) {
        p.remove("default");
    }
    // Target sets: one of the space's (or the start's), each written whole.
    let mut target_sets: Vec<serde_json::Value> =
        space.targets.iter().filter_map(|t| serde_json::to_value(t).ok()).filter(|t| t != &json!([])).collect();
    if let Some(t) = start.and_then(|s| serde_json::to_value(&s.targets).ok())
        && !target_sets.contains(&t)
    {
        target_sets.push(t);
    }
    if !target_sets.is_empty() {
        props.insert("targets".into(), json!({ "enum": target_sets }));
    }
    // A field left out takes its default, which may lie outside the space: ask for each one.
    if let Some(recipe) = schema.pointer_mut("/$defs/TrainRecipe").and_then(|r| r.as_object_mut()) {
        let required = ["learning_rate", "lora_rank", "epochs", "targets"].map(serde_json::Value::from).to_vec();
        recipe.insert("required".into(), serde_json::Value::Array(required));
    }
    // Data steps: one of the offered plugins, each with only the config fields its offered
    // configs set, typed as they are there (the brief carries configs, not the plugins' schemas).
    let variants: Vec<serde_json::Value> = steps.iter().map(|(plugin, config)| step_schema(plugin, config)).collect();
    if !variants.is_empty()
        && let Some(items) = schema.pointer_mut("/$defs/DataRecipe/properties/steps")
    {
        items["items"] = json!({ "anyOf": variants });
    }
    // A bounded reply: at most the proposals asked for, and no string or list a small model can
    // loop in until `max_tokens` cuts the JSON short.
    if let Some(list) = schema.pointer_mut("/properties/proposals").and_then(|p| p.as_object_mut()) {
        list.insert("maxItems".into(), max.clamp(1, MAX_PROPOSALS).into());
    }
    if let Some(list) = schema.pointer_mut("/$defs/DataRecipe/properties/steps").and_then(|p| p.as_object_mut()) {
        list.insert("maxItems".into(), MAX_STEPS.into());
    }
    bound_lengths(&mut schema);
    schema
}

/// Proposals per reply at most (the `Reply` type's bound too).
const MAX_PROPOSALS: u32 = 8;
/// Data steps per proposal at most, in the reply schema.
const MAX_STEPS: u32 = 8;
/// Characters per string at most (a rationale, a config value), in the reply schema.
const MAX_STRING_CHARS: u32 = 240;

/// Give every string schema without a length bound `maxLength`, and every array schema without
/// an item bound `maxItems`, so that no document the schema accepts is unboundedly long.
fn bound_lengths(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            let types: Vec<String> = match map.get("type") {
                Some(serde_json::Value::String(t)) => vec![t.clone()],
                Some(serde_json::Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            };
            let enumerated = map.contains_key("enum") || map.contains_key("const");
            if !enumerated && types.iter().any(|t| t == "string") && !map.contains_key("maxLength") {
                map.insert("maxLength".into(), MAX_STRING_CHARS.into());
            }
            if !enumerated && types.iter().any(|t| t == "array") && !map.contains_key("maxItems") {
                map.insert("maxItems".into(), MAX_STEPS.into());
            }
            for (key, value) in map.iter_mut() {
                // Values, not schemas, live under these keys.
                if !matches!(key.as_str(), "enum" | "const" | "default" | "examples") {
                    bound_lengths(value);
                }
            }
        }
        serde_json::Value::Array(values) => values.iter_mut().for_each(bound_lengths),
        _ => {}
    }
}

/// The data steps a proposal may use, with every config field they are offered with (the start
/// recipe's and the search space's configs, merged per plugin).
fn offered_steps(
    space: &SearchSpace,
    start: Option<&Proposal>,
) -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
    let mut steps: Vec<(String, serde_json::Map<String, serde_json::Value>)> = Vec::new();
    for step in start.iter().flat_map(|p| p.data_recipe.steps.iter()).chain(&space.data_steps) {
        let fields = step.config.as_object().cloned().unwrap_or_default();
        match steps.iter_mut().find(|(p, _)| p == &step.plugin) {
            Some((_, known)) => {
                for (k, v) in fields {
                    known.entry(k).or_insert(v);
                }
            }
            None => steps.push((step.plugin.clone(), fields)),
        }
    }
    steps.sort_by(|a, b| a.0.cmp(&b.0));
    steps
}

/// `{"plugin": NAME, "config": {...}}` with the config's fields typed as in `example`.
fn step_schema(plugin: &str, example: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    fn type_of(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Bool(_) => json!({ "type": "boolean" }),
            serde_json::Value::Number(n) if n.is_f64() => json!({ "type": "number" }),
            serde_json::Value::Number(_) => json!({ "type": "integer" }),
            serde_json::Value::String(_) => json!({ "type": "string" }),
            // An empty list's items are taken to be strings; free objects and free values
            // would let a reply grow without bound.
            serde_json::Value::Array(a) => match a.first() {
                Some(first) => json!({ "type": "array", "items": type_of(first) }),
                None => json!({ "type": "array", "items": { "type": "string" } }),
            },
            serde_json::Value::Object(o) => json!({
                "type": "object",
                "properties": o.iter().map(|(k, v)| (k.clone(), type_of(v))).collect::<serde_json::Map<_, _>>(),
                "additionalProperties": false,
            }),
            serde_json::Value::Null => json!({ "type": "null" }),
        }
    }
    let fields: serde_json::Map<String, serde_json::Value> =
        example.iter().map(|(k, v)| (k.clone(), type_of(v))).collect();
    json!({
        "type": "object",
        "properties": {
            "plugin": { "const": plugin },
            "config": { "type": "object", "properties": fields, "additionalProperties": false },
        },
        "required": ["plugin"],
        "additionalProperties": false,
    })
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
        let schema = Some(reply_schema(&self.task.search_space, self.task.start.as_ref(), max));
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
                Err(mut e) => {
                    if reply.completion_tokens >= self.config.max_tokens {
                        e.push_str(&format!(
                            " (the reply stopped at the `max_tokens` limit, {}: raise `max_tokens` in the llm Researcher's config)",
                            self.config.max_tokens
                        ));
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> (SearchSpace, Proposal) {
        let space: SearchSpace = serde_json::from_value(json!({
            "learning_rate": {"min": 1e-4, "max": 1e-2, "log": true},
            "lora_rank": [8, 16],
            "epochs": [0.5, 1.0],
            "targets": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]],
            "data_steps": [
                {"plugin": "dedup-exact", "config": {"fields": ["messages"], "normalize": true}},
                {"plugin": "clean-text", "config": {}}
            ]
        }))
        .unwrap();
        let start: Proposal = serde_json::from_value(json!({
            "data_recipe": {"steps": [
                {"plugin": "chat-format", "config": {"template": "chatml"}},
                {"plugin": "filter-length", "config": {"max": 400, "unit": "chars"}}
            ]},
            "train_recipe": {"lora_rank": 8, "targets": ["q_proj", "v_proj"], "learning_rate": 5e-4, "epochs": 0.25},
            "rationale": "start"
        }))
        .unwrap();
        (space, start)
    }

    #[test]
    fn the_schema_offers_only_the_tasks_steps_fields_and_target_sets() {
        let (space, start) = space();
        let schema = reply_schema(&space, Some(&start), 3);
        let variants = schema.pointer("/$defs/DataRecipe/properties/steps/items/anyOf").unwrap().as_array().unwrap();
        let plugins: Vec<&str> =
            variants.iter().map(|v| v.pointer("/properties/plugin/const").unwrap().as_str().unwrap()).collect();
        assert_eq!(plugins, ["chat-format", "clean-text", "dedup-exact", "filter-length"]);
        let filter = &variants[3]["properties"]["config"];
        assert_eq!(filter["additionalProperties"], false);
        assert_eq!(filter["properties"]["max"]["type"], "integer");
        assert_eq!(filter["properties"]["unit"]["type"], "string");
        assert_eq!(variants[1]["properties"]["config"]["properties"], json!({}), "clean-text: its defaults only");
        assert_eq!(variants[2]["properties"]["config"]["properties"]["fields"]["items"]["type"], "string");
        let targets = schema.pointer("/$defs/TrainRecipe/properties/targets/enum").unwrap();
        assert_eq!(targets, &json!([["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]));
        assert_eq!(schema.pointer("/$defs/TrainRecipe/properties/epochs/enum").unwrap(), &json!([0.5, 1.0, 0.25]));
    }

    /// Every string and list in the reply schema is bounded, so a model that loops inside one
    /// cannot run a constrained reply into `max_tokens`; values under `enum` are left as given.
    #[test]
    fn the_schema_bounds_every_string_and_list_and_asks_for_at_most_max_proposals() {
        let (space, start) = space();
        let schema = reply_schema(&space, Some(&start), 2);
        assert_eq!(schema.pointer("/properties/proposals/maxItems").unwrap(), 2);
        assert_eq!(reply_schema(&space, Some(&start), 100).pointer("/properties/proposals/maxItems").unwrap(), 8);
        assert_eq!(schema.pointer("/$defs/DataRecipe/properties/steps/maxItems").unwrap(), MAX_STEPS);
        assert_eq!(schema.pointer("/$defs/Proposal/properties/rationale/maxLength").unwrap(), MAX_STRING_CHARS);
        let grid = schema.pointer("/$defs/TrainRecipe/properties/learning_rate/enum").unwrap();
        assert_eq!(grid, &json!([1e-4, 1.8e-4, 3.2e-4, 5.6e-4, 1e-3, 1.8e-3, 3.2e-3, 5.6e-3, 1e-2]));
        fn unbounded(v: &serde_json::Value, at: String, found: &mut Vec<String>) {
            let Some(map) = v.as_object() else { return };
            let ty = |t: &str| match map.get("type") {
                Some(serde_json::Value::String(s)) => s == t,
                Some(serde_json::Value::Array(a)) => a.iter().any(|x| x == t),
                _ => false,
            };
            let fixed = map.contains_key("enum") || map.contains_key("const");
            if !fixed
                && ((ty("string") && !map.contains_key("maxLength")) || (ty("array") && !map.contains_key("maxItems")))
            {
                found.push(at.clone());
            }
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("enum" | "const" | "default", _) => {}
                    (_, serde_json::Value::Array(items)) => {
                        for (i, item) in items.iter().enumerate() {
                            unbounded(item, format!("{at}/{k}/{i}"), found);
                        }
                    }
                    _ => unbounded(child, format!("{at}/{k}"), found),
                }
            }
        }
        let mut found = Vec::new();
        unbounded(&schema, String::new(), &mut found);
        assert!(found.is_empty(), "unbounded: {found:?}");
        let targets = schema.pointer("/$defs/TrainRecipe/properties/targets/enum/0").unwrap();
        assert_eq!(targets, &json!(["q_proj", "v_proj"]), "enum values are not schemas");
    }
}
