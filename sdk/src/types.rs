//! The JSON documents that cross the plugin boundary, with their JSON Schemas.
//!
//! Host and guests share these types: the host serializes them, a plugin deserializes them (and
//! the reverse for proposals and reports). Every type rejects unknown fields, so a misspelled
//! field is an error that names the field rather than a silently ignored setting.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Transforms a stream of records (`world data-tool`).
    DataTool,
    /// Scores model outputs (`world evaluator`).
    Evaluator,
    /// Proposes experiments (`world researcher`).
    Researcher,
}

impl PluginKind {
    /// Every kind, in a stable order.
    pub const ALL: [PluginKind; 3] = [Self::DataTool, Self::Evaluator, Self::Researcher];

    /// The kebab-case name used in `plugin.toml` and in the WIT world names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DataTool => "data-tool",
            Self::Evaluator => "evaluator",
            Self::Researcher => "researcher",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PluginKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown plugin kind `{s}`: expected one of data-tool, evaluator, researcher"))
    }
}

/// What a data tool does with a record it cannot process (a missing field, a wrong type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnBadRecord {
    /// Drop the record and count it under a `bad-record` reason.
    #[default]
    Skip,
    /// Stop the run with an error naming the record and the problem.
    Fail,
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// A training example as trex stores it after chat formatting: the prompt (chat template
/// applied) and the completion the model should learn. The loss is taken on `completion` only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrainingExample {
    /// A stable identifier, when the source has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The conversation up to the assistant's answer.
    pub messages: Vec<ChatMessage>,
    /// The assistant's answer the model should learn.
    pub completion: String,
    /// Labels used for stratified sampling and bad-case clustering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// One step of a data recipe: a data-tool plugin and its config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataStep {
    /// The data-tool plugin's name.
    pub plugin: String,
    /// The plugin's config; validated against the plugin's schema before any work starts.
    #[serde(default = "empty_object")]
    #[schemars(schema_with = "object_schema")]
    pub config: serde_json::Value,
}

/// A JSON object of any fields: what a plugin config is. Said as `"type": "object"` rather than
/// left open, so that servers which turn a schema into a decoding grammar (llama.cpp) can.
fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object" })
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// An ordered pipeline of data tools applied to the task's training split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataRecipe {
    /// Steps, applied in order.
    #[serde(default)]
    pub steps: Vec<DataStep>,
}

/// A linear layer of a Llama-family block that LoRA can adapt (PEFT module names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// `q_proj`
    QProj,
    /// `k_proj`
    KProj,
    /// `v_proj`
    VProj,
    /// `o_proj`
    OProj,
    /// `gate_proj`
    GateProj,
    /// `up_proj`
    UpProj,
    /// `down_proj`
    DownProj,
}

impl LoraTarget {
    /// Every target, in block order.
    pub const ALL: [LoraTarget; 7] =
        [Self::QProj, Self::KProj, Self::VProj, Self::OProj, Self::GateProj, Self::UpProj, Self::DownProj];

    /// The PEFT module name.
    pub fn module_name(self) -> &'static str {
        match self {
            Self::QProj => "q_proj",
            Self::KProj => "k_proj",
            Self::VProj => "v_proj",
            Self::OProj => "o_proj",
            Self::GateProj => "gate_proj",
            Self::UpProj => "up_proj",
            Self::DownProj => "down_proj",
        }
    }
}

/// How to train one LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainRecipe {
    /// LoRA rank.
    pub lora_rank: u32,
    /// LoRA alpha (the update is scaled by alpha / rank).
    pub lora_alpha: f32,
    /// Dropout on the LoRA input.
    pub lora_dropout: f32,
    /// Which linear layers get adapters.
    pub targets: Vec<LoraTarget>,
    /// Adapt only the top this many transformer blocks (0: every block). Training stops the
    /// backward pass below the lowest adapted block, so fewer blocks train faster.
    #[serde(skip_serializing_if = "is_zero")]
    pub lora_layers: u32,
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Passes over the training data.
    pub epochs: f32,
    /// Sequences per optimizer step (before accumulation).
    pub batch_size: u32,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accumulation: u32,
    /// Longer examples are truncated to this many tokens.
    pub max_seq_len: u32,
    /// Fraction of steps spent warming the learning rate up (then cosine decay).
    pub warmup_ratio: f32,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f32,
    /// Start from the parent experiment's adapter instead of a fresh one.
    pub continue_from_parent: bool,
    /// Seed for initialization, dropout and data order.
    pub seed: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for TrainRecipe {
    fn default() -> Self {
        Self {
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            targets: vec![LoraTarget::QProj, LoraTarget::VProj],
            lora_layers: 0,
            learning_rate: 2e-4,
            weight_decay: 0.0,
            epochs: 1.0,
            batch_size: 4,
            grad_accumulation: 1,
            max_seq_len: 256,
            warmup_ratio: 0.1,
            grad_clip: 1.0,
            continue_from_parent: false,
            seed: 0,
        }
    }
}

/// An inclusive range of floats, sampled uniformly or log-uniformly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatRange {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sample the logarithm uniformly (for learning rates).
    #[serde(default)]
    pub log: bool,
    /// When set, only these values are allowed (a grid within `min`..`max`): Researchers step
    /// between them instead of multiplying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<f64>,
}

/// What the Researcher may change, declared by the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSpace {
    /// Learning-rate range.
    pub learning_rate: FloatRange,
    /// LoRA ranks to choose from.
    pub lora_rank: Vec<u32>,
    /// Epoch counts to choose from.
    pub epochs: Vec<f32>,
    /// Target sets to choose from.
    pub targets: Vec<Vec<LoraTarget>>,
    /// Data-tool steps the Researcher may add to a recipe, with their default configs.
    pub data_steps: Vec<DataStep>,
    /// Sequence lengths to choose from (empty: the start recipe's is kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub max_seq_len: Vec<u32>,
}

impl Default for SearchSpace {
    fn default() -> Self {
        use LoraTarget::*;
        Self {
            learning_rate: FloatRange { min: 5e-5, max: 1e-3, log: true, values: Vec::new() },
            lora_rank: vec![4, 8, 16],
            epochs: vec![1.0, 2.0, 3.0],
            targets: vec![vec![QProj, VProj], vec![QProj, KProj, VProj, OProj], LoraTarget::ALL.to_vec()],
            data_steps: Vec::new(),
            max_seq_len: Vec::new(),
        }
    }
}

/// What a Researcher is told about the task when its session opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskBrief {
    /// Task name.
    pub name: String,
    /// Domain, e.g. `tool-use`.
    #[serde(default)]
    pub domain: String,
    /// The goal in one or two sentences.
    #[serde(default)]
    pub goal: String,
    /// Name of the metric being maximized.
    #[serde(default)]
    pub metric: String,
    /// What may be changed.
    #[serde(default)]
    pub search_space: SearchSpace,
    /// Seed the Researcher should use for its own randomness.
    #[serde(default)]
    pub seed: u64,
    /// The task's starting experiment: what a Researcher expanding the root (the untouched base
    /// model) usually proposes first, or varies.
    #[serde(default)]
    pub start: Option<Proposal>,
}

/// A proposed experiment: a data recipe plus a training recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// Data pipeline applied to the training split.
    #[serde(default)]
    pub data_recipe: DataRecipe,
    /// Training recipe.
    pub train_recipe: TrainRecipe,
    /// Why this experiment is worth running, in a sentence.
    #[serde(default)]
    pub rationale: String,
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    /// Proposed, not started.
    Pending,
    /// Being built, trained or evaluated.
    Running,
    /// Finished with a score.
    Done,
    /// Failed; its error is kept as a lesson.
    Failed,
}

impl NodeStatus {
    /// The lower-case name (`pending`, `running`, `done`, `failed`), as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status == "failed"` keeps compiling for plugins written when the status was a string.
impl PartialEq<&str> for NodeStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a node failed, when the host can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The training loss became NaN or infinite: the learning rate (or its warmup) was too high.
    Diverged,
    /// The recipe was refused when the node ran (a limit of the host or the model).
    Recipe,
    /// A data-tool or evaluator plugin failed.
    Plugin,
    /// The host stopped its training early: its training loss was clearly worse than its
    /// siblings' at the same step (only in searches that ask for early stopping).
    Stopped,
    /// Anything else (files, devices, the host), and any kind a newer host names that this
    /// plugin does not know.
    #[serde(other)]
    Other,
}

/// A short account of one experiment node, as shown to a Researcher.
///
/// Documents the host sends (this, [`ResearchContext`], [`Outcome`], [`TaskBrief`]) accept
/// fields they do not know, so that a plugin keeps working when a newer host adds one; documents
/// a plugin sends ([`Proposal`] and its recipes) are strict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeSummary {
    /// Node id within the run.
    pub id: u64,
    /// Parent node id (`None` for the root, the untouched base model).
    #[serde(default)]
    pub parent: Option<u64>,
    /// The experiment the node ran.
    #[serde(default)]
    pub proposal: Option<Proposal>,
    /// Where the node is in its life.
    pub status: NodeStatus,
    /// Why it failed, when it failed and the host can tell (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// Validation score, when done.
    #[serde(default)]
    pub score: Option<f64>,
    /// Normalized gain over the base model, when done.
    #[serde(default)]
    pub reward: Option<f64>,
    /// One-line lesson learned from this node (or its error when it failed).
    #[serde(default)]
    pub lesson: String,
    /// Numbers measured while the node ran: `first_loss`, `final_loss`, `train_tokens`,
    /// `train_examples`, `dropped_records`, `seconds`, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// A cluster of failures that share an evaluator tag or an error pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BadCaseCluster {
    /// The shared tag or pattern.
    pub label: String,
    /// How many validation examples fall in it.
    pub count: u64,
    /// A few representative examples (input, expected, got).
    #[serde(default)]
    pub examples: Vec<String>,
}

/// The compressed memory a Researcher sees when asked for proposals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResearchContext {
    /// The node being expanded.
    pub node: NodeSummary,
    /// Its ancestors, root first.
    #[serde(default)]
    pub parent_path: Vec<NodeSummary>,
    /// Its existing children and siblings.
    #[serde(default)]
    pub siblings: Vec<NodeSummary>,
    /// Best results so far, best first.
    #[serde(default)]
    pub best: Vec<NodeSummary>,
    /// Worst results and failures so far.
    #[serde(default)]
    pub worst: Vec<NodeSummary>,
    /// Failure clusters of the node being expanded.
    #[serde(default)]
    pub bad_cases: Vec<BadCaseCluster>,
    /// Free-form numbers the host wants to share (budget left, records per step, ...).
    #[serde(default)]
    pub notes: BTreeMap<String, f64>,
    /// The [`experiment_key`] of every experiment the search has run or queued, anywhere in the
    /// tree: a proposal with one of these keys would repeat one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<String>,
}

/// What identifies an experiment: its data recipe and its training recipe, without the
/// training seed (the host derives that from the experiment and the search seed). Two
/// proposals with the same key are the same experiment. Numbers count to 6 significant digits
/// and object keys in any order, so the key is the same in every plugin and in the host.
pub fn experiment_key(p: &Proposal) -> String {
    let mut train = p.train_recipe.clone();
    train.seed = 0;
    let doc = serde_json::json!({ "data": p.data_recipe, "train": train });
    let mut text = String::new();
    canonical(&doc, &mut text);
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `v` as text with object keys sorted and numbers to 6 significant digits.
fn canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_i64() {
            Some(i) => out.push_str(&i.to_string()),
            None => out.push_str(&format!("{:.5e}", n.as_f64().unwrap_or(0.0))),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// The result of an experiment, reported back to the Researcher that proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Outcome {
    /// The node that ran the experiment.
    pub node: NodeSummary,
}

/// The JSON Schemas of every document type, by name, for `trex-host schema`.
pub fn all_schemas() -> BTreeMap<&'static str, serde_json::Value> {
    fn schema<T: JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).expect("a JSON Schema always serializes")
    }
    BTreeMap::from([
        ("ChatMessage", schema::<ChatMessage>()),
        ("TrainingExample", schema::<TrainingExample>()),
        ("DataStep", schema::<DataStep>()),
        ("DataRecipe", schema::<DataRecipe>()),
        ("TrainRecipe", schema::<TrainRecipe>()),
        ("SearchSpace", schema::<SearchSpace>()),
        ("TaskBrief", schema::<TaskBrief>()),
        ("Proposal", schema::<Proposal>()),
        ("ResearchContext", schema::<ResearchContext>()),
        ("Outcome", schema::<Outcome>()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_kind_a_plugin_does_not_know_reads_as_other() {
        let kinds: Vec<FailureKind> = serde_json::from_str(r#"["stopped", "diverged", "out-of-luck"]"#).unwrap();
        assert_eq!(kinds, vec![FailureKind::Stopped, FailureKind::Diverged, FailureKind::Other]);
        assert_eq!(serde_json::to_string(&FailureKind::Stopped).unwrap(), r#""stopped""#);
    }

    /// Every sub-schema says what it is (a type, a reference, a choice or a constant): servers
    /// that compile the reply schema into a decoding grammar (llama.cpp) give up on an open one
    /// and fall back to any JSON.
    #[test]
    fn the_proposal_schema_has_no_open_sub_schema() {
        fn walk(v: &serde_json::Value, path: &str, open: &mut Vec<String>) {
            let Some(o) = v.as_object() else { return };
            if let Some(props) = o.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    let says = ["type", "$ref", "oneOf", "anyOf", "allOf", "enum", "const"]
                        .iter()
                        .any(|key| p.get(*key).is_some());
                    if !says {
                        open.push(format!("{path}.{k}"));
                    }
                    walk(p, &format!("{path}.{k}"), open);
                }
            }
            for key in ["$defs", "items"] {
                match o.get(key) {
                    Some(serde_json::Value::Object(m)) if key == "$defs" => {
                        m.iter().for_each(|(k, d)| walk(d, &format!("{path}.{k}"), open))
                    }
                    Some(d) => walk(d, path, open),
                    None => {}
                }
            }
        }
        let schema = serde_json::to_value(schemars::schema_for!(Proposal)).unwrap();
        let mut open = Vec::new();
        walk(&schema, "Proposal", &mut open);
        assert!(open.is_empty(), "open sub-schemas: {open:?}");
    }

    #[test]
    fn experiment_keys_ignore_the_seed_key_order_and_float_noise() {
        let p = Proposal {
            data_recipe: DataRecipe {
                steps: vec![DataStep { plugin: "chat-format".into(), config: serde_json::json!({"b": 1, "a": 2.5}) }],
            },
            train_recipe: TrainRecipe { learning_rate: 5e-4, seed: 7, ..TrainRecipe::default() },
            rationale: "x".into(),
        };
        let mut q = p.clone();
        q.train_recipe.seed = 99;
        q.train_recipe.learning_rate = 2.5e-4 * 2.0 * (1.0 + 1e-12);
        q.data_recipe.steps[0].config = serde_json::from_str(r#"{"a": 2.5, "b": 1}"#).unwrap();
        q.rationale = "another reason".into();
        assert_eq!(experiment_key(&p), experiment_key(&q));
        let mut r = p.clone();
        r.train_recipe.learning_rate = 1e-3;
        assert_ne!(experiment_key(&p), experiment_key(&r));
        let mut c = p.clone();
        c.train_recipe.continue_from_parent = true;
        assert_ne!(experiment_key(&p), experiment_key(&c));
        assert_eq!(experiment_key(&p).len(), 16);
    }

    #[test]
    fn train_recipe_rejects_misspelled_field() {
        let err = serde_json::from_str::<TrainRecipe>(r#"{"lora_rnk": 4}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `lora_rnk`"), "{err}");
    }

    #[test]
    fn train_recipe_fills_defaults() {
        let r: TrainRecipe = serde_json::from_str(r#"{"lora_rank": 32}"#).unwrap();
        assert_eq!(r.lora_rank, 32);
        assert_eq!(r.learning_rate, TrainRecipe::default().learning_rate);
    }

    #[test]
    fn every_schema_names_its_properties() {
        let schemas = all_schemas();
        let recipe = &schemas["TrainRecipe"];
        assert!(recipe["properties"]["lora_rank"].is_object(), "{recipe}");
        assert_eq!(recipe["additionalProperties"], serde_json::Value::Bool(false));
    }

    #[test]
    fn plugin_kind_round_trips() {
        for k in PluginKind::ALL {
            assert_eq!(k.as_str().parse::<PluginKind>().unwrap(), k);
        }
        assert!("data_tool".parse::<PluginKind>().unwrap_err().contains("data-tool"));
    }
}
