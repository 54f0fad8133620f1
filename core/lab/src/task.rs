//! `task.toml`: what a search optimizes and what it may change.
//!
//! ```toml
//! name = "unit-conversion"
//! domain = "unit-conversion"
//! goal = "Answer unit conversions with the value and unit only."
//! base_model = "smollm2"            # a .gguf file, a Hugging Face folder, or a known name
//! reference_score = 0.6             # the score that counts as a normalized gain of 1
//! dataset_dir = "data"              # relative to this file; mounted read-only at /data
//!
//! [splits]
//! train = "train.jsonl"
//! validation = "validation.jsonl"
//! test = "test.jsonl"
//!
//! [prompt]                          # how validation and test prompts are rendered
//! system = "Answer with the converted value and its unit only."
//! max_new_tokens = 16
//!
//! [evaluator]
//! plugin = "exact-match"
//! metric = "accuracy"
//!
//! [budget]                          # any subset; the command line overrides
//! nodes = 5
//! wall_minutes = 8
//!
//! [start.train_recipe]              # the first experiment (a Proposal)
//! epochs = 0.5
//! [[start.data_recipe.steps]]
//! plugin = "chat-format"
//!
//! [search_space]                    # what the Researcher may change (a SearchSpace)
//! lora_rank = [8, 16]
//! ```
//!
//! Every data step (in `start` and in `search_space.data_steps`) and the evaluator's config are
//! validated by their plugins before the search starts, so a misspelled field fails at once,
//! naming the step and the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trex_sdk::types::{PluginKind, Proposal, SearchSpace, TaskBrief};

use trex_plugin_host::PluginHost;

/// A task definition, as read from `task.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Task name (used for run folders and reports).
    pub name: String,
    /// Domain, e.g. `tool-use`.
    #[serde(default)]
    pub domain: String,
    /// The goal in a sentence or two (shown to the Researcher).
    #[serde(default)]
    pub goal: String,
    /// Base model: a `.gguf` file, a Hugging Face folder (relative to the task file), or a known
    /// name such as `smollm2`.
    #[serde(default = "default_model")]
    pub base_model: String,
    /// The validation score that counts as a normalized gain of 1 (e.g. a strong baseline's).
    pub reference_score: f64,
    /// Folder of the split files, relative to the task file; `fetch:<name>` names a data set
    /// fetched from a package registry and prepared in the cache on first use (see [`Assets`]).
    #[serde(default = "default_dataset_dir")]
    pub dataset_dir: PathBuf,
    /// The split files.
    pub splits: Splits,
    /// How evaluation prompts are rendered and how long answers may be.
    #[serde(default)]
    pub prompt: PromptFormat,
    /// The evaluator plugin and the metric it reports.
    pub evaluator: EvaluatorSpec,
    /// The default budget.
    #[serde(default)]
    pub budget: Budget,
    /// The first experiment.
    pub start: Proposal,
    /// What the Researcher may change.
    #[serde(default)]
    pub search_space: SearchSpace,
    /// The Researcher plugin and its config.
    #[serde(default)]
    pub researcher: ResearcherSpec,
    /// The LLM behind `llm.chat`, for Researchers and data tools that use one.
    #[serde(default)]
    pub llm: Option<trex_plugin_host::llm::OpenAiConfig>,
    /// How nodes are submitted when the search runs them as Slurm jobs (`--executor slurm`;
    /// `--slurm-*` flags override these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::slurm::SlurmOptions>,
}

fn default_model() -> String {
    "smollm2".into()
}

fn default_dataset_dir() -> PathBuf {
    PathBuf::from(".")
}

/// The split files, relative to `dataset_dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Splits {
    /// Raw training records; the data recipe turns them into training examples.
    pub train: PathBuf,
    /// Held-out records scored for every node.
    pub validation: PathBuf,
    /// Held-out records scored once, for the final best node (and the base model).
    pub test: PathBuf,
}

/// How evaluation prompts are rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PromptFormat {
    /// System message put before every prompt (use the same one as the chat-format step).
    pub system: Option<String>,
    /// Field of a validation/test record holding the user prompt.
    pub prompt_field: String,
    /// Tokens generated at most per answer.
    pub max_new_tokens: usize,
    /// Generation stops at any of these texts.
    pub stop: Vec<String>,
    /// Score at most this many validation records (the first ones), to bound node cost.
    pub validation_limit: Option<usize>,
    /// Sequences decoded together: a continuous batch, where a finished answer's slot goes to
    /// the next prompt at once. Larger is faster up to the machine's limit; the answers are the
    /// same at any size.
    pub batch_size: usize,
}

impl Default for PromptFormat {
    fn default() -> Self {
        Self {
            system: None,
            prompt_field: "prompt".into(),
            max_new_tokens: 32,
            stop: Vec::new(),
            validation_limit: None,
            batch_size: 32,
        }
    }
}

/// The evaluator plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSpec {
    /// Plugin name.
    pub plugin: String,
    /// Its config.
    #[serde(default = "empty_object")]
    #[schemars(schema_with = "object_schema")]
    pub config: serde_json::Value,
    /// Name of the metric the evaluator's score stands for (higher is better).
    #[serde(default = "default_metric")]
    pub metric: String,
}

fn default_metric() -> String {
    "score".into()
}

/// A JSON object of any fields (a plugin's config, which its own schema describes).
pub(crate) fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object" })
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Limits of a search. Each is optional; the search stops at the first one reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Experiments run (the base model's evaluation is not one).
    pub nodes: Option<u64>,
    /// Wall time; a node is only started when the time left covers a typical node.
    pub wall_minutes: Option<f64>,
    /// Tokens trained on (prompt and completion, all epochs).
    pub train_tokens: Option<u64>,
    /// LLM tokens (prompt and completion) spent by plugins.
    pub llm_tokens: Option<u64>,
}

impl Budget {
    /// `self` with every limit `other` sets replacing this one's.
    pub fn overridden_by(&self, other: &Budget) -> Budget {
        Budget {
            nodes: other.nodes.or(self.nodes),
            wall_minutes: other.wall_minutes.or(self.wall_minutes),
            train_tokens: other.train_tokens.or(self.train_tokens),
            llm_tokens: other.llm_tokens.or(self.llm_tokens),
        }
    }

    /// Whether no limit is set at all (a search would never stop).
    pub fn is_unbounded(&self) -> bool {
        self.nodes.is_none() && self.wall_minutes.is_none() && self.train_tokens.is_none()
    }
}

/// The Researcher plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResearcherSpec {
    /// Plugin name.
    #[serde(default = "default_researcher")]
    pub plugin: String,
    /// Its config.
    #[serde(default = "empty_object")]
    #[schemars(schema_with = "object_schema")]
    pub config: serde_json::Value,
}

fn default_researcher() -> String {
    "heuristic".into()
}

impl Default for ResearcherSpec {
    fn default() -> Self {
        Self { plugin: default_researcher(), config: empty_object() }
    }
}

/// Turns the names a task may use for things fetched from package registries into local paths:
/// `dataset_dir = "fetch:NAME"` and a known `base_model` such as `smollm2`. The lab fetches
/// nothing itself; `trex-host` supplies an implementation that downloads into its cache.
pub trait Assets {
    /// The folder of the prepared data set `name`.
    fn dataset(&self, name: &str) -> Result<PathBuf, AssetError>;
    /// The local file or folder of model `name` when it is a known name, `None` when `name` is
    /// to be read as a path.
    fn model(&self, name: &str) -> Result<Option<PathBuf>, AssetError>;
}

/// Why a named model or data set could not be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AssetError(pub String);

/// [`Assets`] for tasks that name only local files: `fetch:` is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFiles;

impl Assets for LocalFiles {
    fn dataset(&self, name: &str) -> Result<PathBuf, AssetError> {
        Err(AssetError(format!("`fetch:{name}` needs a host that fetches data sets (trex-host does)")))
    }

    fn model(&self, _name: &str) -> Result<Option<PathBuf>, AssetError> {
        Ok(None)
    }
}

/// [`PluginHost::check_config`], its error prefixed with the `field` of the task or proposal it is
/// about.
pub(crate) async fn checked_config(
    host: &PluginHost,
    field: &str,
    plugin: &str,
    kind: PluginKind,
    config: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    host.check_config(plugin, kind, config).await.map_err(|e| format!("{field}: {e}"))
}

/// Why a task cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TaskError {
    /// The task file.
    pub path: PathBuf,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Task {
    /// Read `task.toml` (or a folder holding one). Relative paths become relative to its folder;
    /// `fetch:` data sets and known model names are resolved by `assets`.
    pub fn load(path: &Path, assets: &dyn Assets) -> Result<(Task, PathBuf), TaskError> {
        let file = if path.is_dir() { path.join("task.toml") } else { path.to_path_buf() };
        let err = |message: String| TaskError { path: file.clone(), message };
        let text = std::fs::read_to_string(&file).map_err(|e| err(format!("cannot read the task file: {e}")))?;
        let mut task: Task = toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        task.dataset_dir = match task.dataset_dir.to_str().and_then(|d| d.strip_prefix("fetch:")) {
            Some(name) => assets.dataset(name).map_err(|e| err(format!("dataset_dir: {e}")))?,
            None => base.join(&task.dataset_dir),
        };
        let local_model = base.join(&task.base_model);
        if local_model.exists() {
            task.base_model = local_model.display().to_string();
        } else {
            task.set_base_model(&task.base_model.clone(), assets).map_err(|e| err(format!("base_model: {e}")))?;
        }
        task.check().map_err(err)?;
        Ok((task, file))
    }

    /// Use Researcher plugin `name`; its config is reset unless it is the task's own Researcher.
    pub fn set_researcher(&mut self, name: &str) {
        if name != self.researcher.plugin {
            self.researcher = ResearcherSpec { plugin: name.to_string(), config: empty_object() };
        }
    }

    /// Use `name` (a known model name, a `.gguf` file or a Hugging Face folder) as the base
    /// model, resolving a known name through `assets`.
    pub fn set_base_model(&mut self, name: &str, assets: &dyn Assets) -> Result<(), AssetError> {
        self.base_model = match assets.model(name)? {
            Some(path) => path.display().to_string(),
            None => name.to_string(),
        };
        Ok(())
    }

    /// Checks that need no plugin: numbers in range, split files present.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.reference_score.is_finite() {
            return Err("reference_score must be a number".into());
        }
        for (field, f) in [
            ("splits.train", &self.splits.train),
            ("splits.validation", &self.splits.validation),
            ("splits.test", &self.splits.test),
        ] {
            let p = self.dataset_dir.join(f);
            if !p.is_file() {
                return Err(format!("{field}: {} does not exist", p.display()));
            }
        }
        trex_model::train::check_recipe(&self.start.train_recipe).map_err(|e| format!("start.train_recipe: {e}"))?;
        let lr = &self.search_space.learning_rate;
        if !(lr.min > 0.0 && lr.min <= lr.max) {
            return Err(format!("search_space.learning_rate: needs 0 < min <= max, got [{}, {}]", lr.min, lr.max));
        }
        if self.search_space.lora_rank.contains(&0) {
            return Err("search_space.lora_rank: ranks must be at least 1".into());
        }
        if self.search_space.epochs.iter().any(|e| !(e.is_finite() && *e > 0.0)) {
            return Err("search_space.epochs: epoch counts must be positive".into());
        }
        if let Some(v) = lr.values.iter().find(|v| !(**v >= lr.min && **v <= lr.max)) {
            return Err(format!("search_space.learning_rate.values: {v:e} is outside [{:e}, {:e}]", lr.min, lr.max));
        }
        let (lo, hi) = trex_model::train::RECIPE_BOUNDS
            .iter()
            .find(|b| b.0 == "max_seq_len")
            .map_or((2.0, 32768.0), |b| (b.1, b.2));
        if let Some(n) = self.search_space.max_seq_len.iter().find(|n| !(f64::from(**n) >= lo && f64::from(**n) <= hi))
        {
            return Err(format!("search_space.max_seq_len: {n} is outside [{lo}, {hi}]"));
        }
        if self.prompt.max_new_tokens == 0 {
            return Err("prompt.max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// Validate every plugin reference and config with the plugins themselves; configs come
    /// back with their defaults filled in.
    /// `file` is the task file, named in errors.
    pub async fn validate_with(&mut self, host: &PluginHost, file: &Path) -> Result<(), TaskError> {
        self.validate_plugins(host).await.map_err(|message| TaskError { path: file.to_path_buf(), message })
    }

    async fn validate_plugins(&mut self, host: &PluginHost) -> Result<(), String> {
        for (i, step) in self.start.data_recipe.steps.iter_mut().enumerate() {
            let field = format!("start.data_recipe.steps[{i}] (`{}`)", step.plugin);
            step.config = checked_config(host, &field, &step.plugin, PluginKind::DataTool, &step.config).await?;
        }
        for (i, step) in self.search_space.data_steps.iter_mut().enumerate() {
            let field = format!("search_space.data_steps[{i}] (`{}`)", step.plugin);
            step.config = checked_config(host, &field, &step.plugin, PluginKind::DataTool, &step.config).await?;
        }
        let (e, r) = (&mut self.evaluator, &mut self.researcher);
        let field = format!("evaluator (`{}`)", e.plugin);
        e.config = checked_config(host, &field, &e.plugin, PluginKind::Evaluator, &e.config).await?;
        let field = format!("researcher (`{}`)", r.plugin);
        r.config = checked_config(host, &field, &r.plugin, PluginKind::Researcher, &r.config).await?;
        Ok(())
    }

    /// What the Researcher is told when its session opens.
    pub fn brief(&self, seed: u64) -> TaskBrief {
        TaskBrief {
            name: self.name.clone(),
            domain: self.domain.clone(),
            goal: self.goal.clone(),
            metric: self.evaluator.metric.clone(),
            search_space: self.search_space.clone(),
            seed,
            start: Some(self.start.clone()),
        }
    }

    /// The task folders under `dir` (those holding a `task.toml`), sorted by name.
    pub fn folders(dir: &Path) -> Result<Vec<PathBuf>, TaskError> {
        trex_plugin_host::folders_holding(dir, "task.toml")
            .map_err(|e| TaskError { path: dir.to_path_buf(), message: format!("cannot list task folders: {e}") })
    }

    /// Path of a split file.
    pub fn split_path(&self, split: &Path) -> PathBuf {
        self.dataset_dir.join(split)
    }
}
