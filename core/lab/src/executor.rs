//! The Executor: runs one node end to end. Data (cached by the content hash of the training
//! split and the recipe) → training (fresh, or continuing from the parent's adapter) →
//! generation on the validation split → the evaluator plugin → bad-case analysis; the adapter
//! and the per-example evaluation are stored in the node's folder.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trex_sdk::types::{DataRecipe, FailureKind, Proposal};

use crate::LabError;
use crate::cache::ExperimentCache;
use crate::pipeline::read_jsonl;

use crate::analysis::{Scored, bad_cases};
use crate::baseline::{self, Baselines};
use crate::observer::{NodeProgress, NodeReporter, SharedObserver, Silent, Stage};
use crate::task::{PromptFormat, Task};
use crate::tree::{Cost, NodeResult, StageSeconds, StepStats, TrainSummary};
use trex_model::generate::{Generation, GenerationConfig, generate};
use trex_model::train;
use trex_model::{BaseModel, Llama, LoraAdapter, Tokenizer};
use trex_plugin_host::{CallEnv, EvalItem, EvalReport, PluginHost};

/// A held-out record ready to be scored.
#[derive(Debug, Clone)]
pub struct EvalRecord {
    /// Example id.
    pub id: String,
    /// The record as given to the evaluator.
    pub value: serde_json::Value,
    /// The prompt, chat template applied.
    pub prompt: String,
    /// The user prompt as written in the record.
    pub user_prompt: String,
    /// The reference answer, when the record has one.
    pub expected: Option<String>,
}

/// Which held-out split to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Scored for every node.
    Validation,
    /// Scored once, at the end.
    Test,
    /// The whole validation split, where the task scores nodes on a part of it: scored for the
    /// few best nodes before the final choice.
    FullValidation,
}

/// A scored split: the evaluator's report and what the model wrote.
#[derive(Debug)]
pub struct Scoring {
    /// The evaluator's report.
    pub report: EvalReport,
    /// The model's outputs, in record order.
    pub outputs: Vec<Generation>,
    /// Wall seconds generating the outputs.
    pub generate_seconds: f64,
    /// Wall seconds of the evaluator.
    pub evaluate_seconds: f64,
}

/// The prompt settings as the experiment key sees them. The batch size does not change an answer
/// (continuous batching, checked by the model's tests), so every batch size keys as 8, the size
/// keys were written with before the batch stopped mattering.
fn prompt_key(prompt: &PromptFormat) -> PromptFormat {
    PromptFormat { batch_size: 8, ..prompt.clone() }
}

/// Everything a node needs: the plugins, the task, the model and the held-out prompts.
pub struct Lab {
    /// The plugin host.
    pub host: PluginHost,
    /// The task (validated).
    pub task: Task,
    /// The run folder.
    pub run_dir: PathBuf,
    model: Arc<Llama<f32>>,
    tokenizer: Arc<Tokenizer>,
    model_source: String,
    train_records: Vec<String>,
    train_hash: String,
    validation: Vec<EvalRecord>,
    /// Every validation record (`validation` is the first `validation_limit` of them).
    validation_full: Vec<EvalRecord>,
    test: Vec<EvalRecord>,
    /// Where messages and node progress go.
    pub observer: SharedObserver,
    /// Where nodes train.
    pub device: train::ComputeDevice,
    /// The experiment cache, when the search uses one.
    pub cache: Option<ExperimentCache>,
    /// The file the task was loaded from (for messages; empty when it was not loaded from one).
    pub task_file: PathBuf,
    /// What every experiment of this lab shares and its result depends on: the base model's
    /// content, the splits, the evaluator and the prompt settings (see [`crate::cache`]).
    base_key: String,
}

/// What a node needs of its parent to continue its adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    /// The parent's adapter folder.
    pub adapter: PathBuf,
    /// The parent's cache key.
    pub key: Option<String>,
    /// Epochs of the data stream the parent's lineage has trained on.
    pub epochs_done: f32,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("task", &self.task.name).field("run_dir", &self.run_dir).finish()
    }
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// A one-line description of an experiment, for lessons and progress lines: learning rate,
/// rank (and alpha when it is not twice the rank), targets (and `top N` when only the top N
/// blocks are adapted), epochs, batch (times the gradient
/// accumulation), sequence length, and dropout and weight decay when set, then the data steps.
pub fn describe(p: &Proposal) -> String {
    let r = &p.train_recipe;
    let targets: Vec<&str> = r.targets.iter().map(|t| t.module_name().trim_end_matches("_proj")).collect();
    let steps: Vec<&str> = p.data_recipe.steps.iter().map(|s| s.plugin.as_str()).collect();
    let mut line = format!("lr {:.1e} r{}", r.learning_rate, r.lora_rank);
    if r.lora_alpha != 2.0 * r.lora_rank as f32 {
        line.push_str(&format!(" α{}", r.lora_alpha));
    }
    line.push_str(&format!(" [{}]", targets.join(",")));
    if r.lora_layers > 0 {
        line.push_str(&format!(" top {}", r.lora_layers));
    }
    line.push_str(&format!(" {} ep", r.epochs));
    if r.continue_from_parent {
        line.push_str(" (continued)");
    }
    line.push_str(&format!(" b{}", r.batch_size));
    if r.grad_accumulation > 1 {
        line.push_str(&format!("×{}", r.grad_accumulation));
    }
    line.push_str(&format!(" len {}", r.max_seq_len));
    if r.lora_dropout > 0.0 {
        line.push_str(&format!(" drop {}", r.lora_dropout));
    }
    if r.weight_decay > 0.0 {
        line.push_str(&format!(" wd {}", r.weight_decay));
    }
    let data = if steps.is_empty() { "raw".into() } else { steps.join("→") };
    format!("{line} | data: {data}")
}

/// Why a node failed, and what it cost before it did.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFailure {
    /// The error, naming the step, plugin or file.
    pub error: String,
    /// Its kind, for the Researcher.
    pub kind: FailureKind,
    /// What the node cost so far.
    pub cost: Cost,
    /// The disk filled or a quota ran out while the node wrote a file: not the experiment's
    /// fault, so the search stops and the node runs again on resume.
    pub out_of_space: bool,
}

impl NodeFailure {
    /// A failure that is the experiment's own (not a full disk).
    pub fn new(kind: FailureKind, error: impl Into<String>, cost: Cost) -> NodeFailure {
        NodeFailure { error: error.into(), kind, cost, out_of_space: false }
    }
}

/// A node step's error: what it says, and whether a full disk caused it.
#[derive(Debug)]
pub(crate) struct StepError {
    message: String,
    out_of_space: bool,
}

impl StepError {
    /// A failed write (or read) of `path`.
    fn io(path: &Path, e: &std::io::Error) -> StepError {
        StepError { message: format!("{}: {e}", path.display()), out_of_space: trex_model::out_of_space(e) }
    }

    /// The node's failure, of `kind`, having cost `cost`.
    fn into_failure(self, kind: FailureKind, cost: Cost) -> NodeFailure {
        NodeFailure { error: self.message, kind, cost, out_of_space: self.out_of_space }
    }
}

impl From<String> for StepError {
    fn from(message: String) -> StepError {
        StepError { message, out_of_space: false }
    }
}

impl Lab {
    /// Load the model and the splits; `run_dir` receives node folders and the data cache.
    pub fn open(host: PluginHost, task: Task, base: BaseModel, run_dir: PathBuf) -> Result<Lab, LabError> {
        let train_path = task.split_path(&task.splits.train);
        let train_bytes =
            std::fs::read(&train_path).map_err(|e| LabError::Run(format!("{}: {e}", train_path.display())))?;
        let train_records = read_jsonl(&train_path)?;
        let train_hash = hex_sha256(&[&train_bytes]);
        let tokenizer = Arc::new(base.tokenizer);
        let load = |split: &Path, limit: Option<usize>| -> Result<Vec<EvalRecord>, LabError> {
            let path = task.split_path(split);
            let mut out = Vec::new();
            for (i, text) in read_jsonl(&path)?.into_iter().enumerate().take(limit.unwrap_or(usize::MAX)) {
                let value: serde_json::Value = serde_json::from_str(&text).expect("read_jsonl checked every line");
                let field = &task.prompt.prompt_field;
                let user_prompt = value.get(field).and_then(|v| v.as_str()).map(String::from).ok_or_else(|| {
                    LabError::Run(format!(
                        "{}: line {}: no string field `{field}` (prompt.prompt_field)",
                        path.display(),
                        i + 1
                    ))
                })?;
                let prompt = tokenizer.chat_prompt(task.prompt.system.as_deref(), &user_prompt)?;
                let id = match value.get("id") {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(n @ serde_json::Value::Number(_)) => n.to_string(),
                    _ => format!("{}:{}", split.display(), i + 1),
                };
                let expected = ["answer", "completion", "response"]
                    .iter()
                    .find_map(|f| value.get(*f).and_then(|v| v.as_str()).map(String::from));
                out.push(EvalRecord { id, value, prompt, user_prompt, expected });
            }
            Ok(out)
        };
        let validation_full = load(&task.splits.validation, None)?;
        let keep = task.prompt.validation_limit.unwrap_or(usize::MAX).min(validation_full.len());
        let validation = validation_full[..keep].to_vec();
        let test = load(&task.splits.test, None)?;
        let model_source = base.source.display().to_string();
        let model_hash = crate::cache::hash_model(&base.source)
            .map_err(|e| LabError::Run(format!("cannot read the base model {}: {e}", base.source.display())))?;
        let evaluator = host.get(&task.evaluator.plugin).map(|p| p.wasm_sha256.clone()).unwrap_or_default();
        // The whole split (its full score is cached too) and the part nodes are scored on.
        let validation_ids: Vec<&str> = validation.iter().map(|r| r.id.as_str()).collect();
        let validation_text = serde_json::to_string(&validation_full.iter().map(|r| &r.value).collect::<Vec<_>>())
            .expect("records serialize");
        let base_key = crate::cache::hash(&[
            b"trex-experiment-v1",
            model_hash.as_bytes(),
            train_hash.as_bytes(),
            validation_text.as_bytes(),
            validation_ids.join("\n").as_bytes(),
            evaluator.as_bytes(),
            task.evaluator.config.to_string().as_bytes(),
            serde_json::to_string(&prompt_key(&task.prompt)).expect("prompts serialize").as_bytes(),
        ]);
        let model = Arc::new(Llama::new(base.config, base.weights));
        Ok(Lab {
            host,
            task,
            run_dir,
            model,
            tokenizer,
            model_source,
            train_records,
            train_hash,
            validation,
            validation_full,
            test,
            observer: Arc::new(Silent),
            device: train::ComputeDevice::Cpu,
            cache: None,
            task_file: PathBuf::new(),
            base_key,
        })
    }

    /// The cache key of `proposal` (its training seed as set by the search), continued from a
    /// parent with key `parent` when it continues.
    pub fn experiment_key(&self, proposal: &Proposal, parent: Option<&str>) -> String {
        let plugins: Vec<String> = proposal
            .data_recipe
            .steps
            .iter()
            .map(|s| self.host.get(&s.plugin).map(|p| p.wasm_sha256.clone()).unwrap_or_default())
            .collect();
        let continued = if proposal.train_recipe.continue_from_parent { parent.unwrap_or("") } else { "" };
        crate::cache::hash(&[
            self.base_key.as_bytes(),
            self.device.as_str().as_bytes(),
            plugins.join(",").as_bytes(),
            trex_sdk::types::experiment_key(proposal).as_bytes(),
            &proposal.train_recipe.seed.to_le_bytes(),
            continued.as_bytes(),
        ])
    }

    /// The cache key of the base model's own scores.
    fn base_model_key(&self) -> String {
        crate::cache::hash(&[self.base_key.as_bytes(), b"base model"])
    }

    /// A cached result for `key` as this run sees it: scored on the cache's validation subset
    /// when it has one, its reward against `base_score`, nothing paid for it; or the failure it
    /// ended in.
    fn cached_outcome(&self, key: &str, base_score: Option<f64>) -> Option<Result<NodeResult, NodeFailure>> {
        let cache = self.cache.as_ref()?;
        let (entry, dir) = cache.lookup(key)?;
        let Some(mut result) = entry.result else {
            let f = entry.failure.expect("lookup keeps entries with a result or a failure");
            let error = format!("{} (from the experiment cache)", f.error);
            return Some(Err(NodeFailure::new(f.kind, error, Cost { cached: true, ..Cost::default() })));
        };
        if let Some(subset) = &cache.subset {
            let kept: Vec<&crate::cache::Verdict> = entry.verdicts.iter().filter(|v| subset.keeps(&v.id)).collect();
            if !kept.is_empty() {
                result.score = kept.iter().map(|v| v.score).sum::<f64>() / kept.len() as f64;
                result.passed = kept.iter().filter(|v| v.passed).count() as u64;
                result.total = kept.len() as u64;
            }
        }
        result.reward = base_score.map_or(0.0, |b| normalized_gain(result.score, b, self.task.reference_score));
        result.adapter = result.adapter.map(|a| dir.join(a).display().to_string());
        result.cost = Cost { cached: true, ..Cost::default() };
        result.key = Some(key.to_string());
        Some(Ok(result))
    }

    /// Keep a finished result in the cache (a failure to write it is only logged: the run goes
    /// on without it).
    fn to_cache(&self, key: &str, result: &NodeResult, scoring: &Scoring, adapter: Option<&Path>) {
        let Some(cache) = &self.cache else { return };
        let verdicts = scoring
            .report
            .results
            .iter()
            .map(|r| crate::cache::Verdict { id: r.id.clone(), score: r.score, passed: r.passed })
            .collect();
        let entry = crate::cache::Entry {
            result: Some(result.clone()),
            failure: None,
            verdicts,
            test_score: None,
            full_validation: None,
            lab: self.base_key.clone(),
        };
        if let Err(e) = cache.store(key, entry, adapter) {
            tracing::warn!("cannot cache the experiment {key}: {e}");
        }
    }

    /// Score the base model on the validation split (node 0), from the cache when it is there.
    pub async fn score_base(&self) -> Result<NodeResult, NodeFailure> {
        let key = self.base_model_key();
        if let Some(r) = self.cached_outcome(&key, None) {
            return r;
        }
        let fail = |e: StepError| e.into_failure(FailureKind::Other, Cost::default());
        if self.cache.as_ref().is_some_and(|c| c.only) {
            return Err(fail(not_in_table().into()));
        }
        let started = Instant::now();
        let scoring = self.score(None, Split::Validation, None).await.map_err(|e| fail(e.into()))?;
        let mut r = self.result_of(0, &scoring, None).map_err(fail)?;
        r.cost.seconds = started.elapsed().as_secs_f64();
        r.cost.generated_tokens = scoring.outputs.iter().map(|g| g.tokens as u64).sum();
        r.cost.stages = StageSeconds {
            generate: scoring.generate_seconds,
            evaluate: scoring.evaluate_seconds,
            ..StageSeconds::default()
        };
        r.key = Some(key.clone());
        self.to_cache(&key, &r, &scoring, None);
        Ok(r)
    }

    /// The test-split score of the node whose result is `result` (the base model when it has no
    /// adapter), from the cache when it was scored before.
    pub async fn score_test(&self, result: &NodeResult) -> Result<f64, LabError> {
        self.cached_score(result, Split::Test, |e| &mut e.test_score).await
    }

    /// Whether nodes are scored on a part of the validation split only.
    pub fn validation_is_limited(&self) -> bool {
        self.validation.len() < self.validation_full.len()
    }

    /// The score of the node whose result is `result` on the whole validation split (its
    /// validation score when the task scores nodes on all of it), from the cache when it was
    /// scored before.
    pub async fn score_full_validation(&self, result: &NodeResult) -> Result<f64, LabError> {
        if !self.validation_is_limited() {
            return Ok(result.score);
        }
        self.cached_score(result, Split::FullValidation, |e| &mut e.full_validation).await
    }

    /// `result`'s score on `split`: the cache entry's `field` when it holds one, else scored now
    /// (refused when the lab only replays its cache) and kept there.
    async fn cached_score(
        &self,
        result: &NodeResult,
        split: Split,
        field: fn(&mut crate::cache::Entry) -> &mut Option<f64>,
    ) -> Result<f64, LabError> {
        if let (Some(cache), Some(k)) = (&self.cache, &result.key)
            && let Some((mut entry, _)) = cache.lookup(k)
            && let Some(score) = *field(&mut entry)
        {
            return Ok(score);
        }
        if self.cache.as_ref().is_some_and(|c| c.only) {
            return Err(LabError::Run(not_in_table()));
        }
        let adapter = match &result.adapter {
            Some(a) => Some(Arc::new(self.load_adapter(a)?)),
            None => None,
        };
        let score = self.score(adapter, split, None).await.map_err(LabError::Run)?.report.score;
        if let (Some(cache), Some(k)) = (&self.cache, &result.key) {
            let _ = cache.update(k, |e| *field(e) = Some(score));
        }
        Ok(score)
    }

    /// The no-model baselines ([`crate::baseline`]) on the validation split the search scores
    /// and on the test split; `None` when no training record has an answer, or in a replay
    /// (which scores nothing).
    pub async fn baselines(&self) -> Result<Option<Baselines>, LabError> {
        if self.cache.as_ref().is_some_and(|c| c.only) {
            return Ok(None);
        }
        let answers = baseline::training_answers(&self.train_records);
        let Some(majority) = baseline::majority(&answers) else { return Ok(None) };
        let score = |records: &[EvalRecord], outputs: Vec<String>| {
            let items: Vec<EvalItem> = records
                .iter()
                .zip(outputs)
                .map(|(r, output)| EvalItem { id: r.id.clone(), example: r.value.clone(), output })
                .collect();
            let eval = &self.task.evaluator;
            let env = self.call_env();
            async move {
                self.host
                    .evaluate(&eval.plugin, &eval.config, &items, 64, &env)
                    .await
                    .map(|r| r.score)
                    .map_err(|e| LabError::Run(format!("evaluator `{}` on a baseline: {e}", eval.plugin)))
            }
        };
        let same = |records: &[EvalRecord]| vec![majority.clone(); records.len()];
        // The seeds differ by split so that the two draws are independent.
        Ok(Some(Baselines {
            majority_validation: score(&self.validation, same(&self.validation)).await?,
            majority_test: score(&self.test, same(&self.test)).await?,
            format_only_validation: score(&self.validation, baseline::drawn(&answers, self.validation.len(), 1))
                .await?,
            format_only_test: score(&self.test, baseline::drawn(&answers, self.test.len(), 2)).await?,
            majority_answer: majority,
        }))
    }

    /// Whether the experiment cache holds `proposal` continued from a parent with key `parent`
    /// (it is then served without running).
    pub fn holds(&self, proposal: &Proposal, parent: Option<&str>) -> bool {
        self.cache.as_ref().is_some_and(|c| c.lookup(&self.experiment_key(proposal, parent)).is_some())
    }

    /// Whether `proposal`, continued from a parent with key `parent`, can be served: always,
    /// unless the lab replays its cache, which must then hold it.
    pub fn can_serve(&self, proposal: &Proposal, parent: Option<&str>) -> bool {
        match &self.cache {
            Some(c) if c.only => c.lookup(&self.experiment_key(proposal, parent)).is_some(),
            _ => true,
        }
    }

    /// Score on the test split (and on the whole validation split, where nodes see a part of
    /// it) every cached experiment of this lab that has no test score yet (what a replay's
    /// final choice and regret need); returns how many were scored.
    pub async fn score_cached_tests(&self, mut progress: impl FnMut(usize, usize)) -> Result<usize, LabError> {
        let Some(cache) = &self.cache else { return Ok(0) };
        let todo: Vec<(String, crate::cache::Entry, PathBuf)> = cache
            .keys_of(&self.base_key)
            .into_iter()
            .filter_map(|k| cache.lookup(&k).map(|(e, dir)| (k, e, dir)))
            .filter(|(_, e, _)| e.test_score.is_none() && e.result.is_some())
            .collect();
        for (i, (key, entry, dir)) in todo.iter().enumerate() {
            progress(i, todo.len());
            let adapter = match entry.result.as_ref().and_then(|r| r.adapter.as_ref()) {
                Some(a) => Some(Arc::new(self.load_adapter(&dir.join(a).display().to_string())?)),
                None => None,
            };
            let score = self.score(adapter.clone(), Split::Test, None).await.map_err(LabError::Run)?.report.score;
            cache.update(key, |e| e.test_score = Some(score)).map_err(|e| LabError::Run(e.to_string()))?;
            if self.validation_is_limited() && entry.full_validation.is_none() {
                let full = self.score(adapter, Split::FullValidation, None).await.map_err(LabError::Run)?.report.score;
                cache.update(key, |e| e.full_validation = Some(full)).map_err(|e| LabError::Run(e.to_string()))?;
            }
        }
        progress(todo.len(), todo.len());
        Ok(todo.len())
    }

    /// Every cached experiment of this lab: its key and entry.
    pub fn cached_entries(&self) -> Vec<(String, crate::cache::Entry)> {
        let Some(cache) = &self.cache else { return Vec::new() };
        cache.keys_of(&self.base_key).into_iter().filter_map(|k| cache.lookup(&k).map(|(e, _)| (k, e))).collect()
    }

    /// Where the base model was loaded from.
    pub fn model_source(&self) -> &str {
        &self.model_source
    }

    /// The base model's configuration.
    pub fn model_config(&self) -> &trex_model::LlamaConfig {
        &self.model.config
    }

    /// The per-call environment of plugins run for this lab: the task's dataset folder, and
    /// scratch folders made inside the run folder.
    fn call_env(&self) -> CallEnv {
        CallEnv {
            dataset_dir: Some(self.task.dataset_dir.clone()),
            scratch_parent: Some(self.run_dir.join("scratch")),
            ..CallEnv::default()
        }
    }

    /// Tell the observer.
    pub fn say(&self, line: impl AsRef<str>) {
        self.observer.message(line.as_ref());
    }

    /// Where node `id` keeps its files.
    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.run_dir.join("nodes").join(id.to_string())
    }

    /// Run the data recipe on the training split (or read its cached output).
    pub(crate) async fn build_data(&self, recipe: &DataRecipe) -> Result<(Vec<String>, Vec<StepStats>), StepError> {
        let recipe_json = serde_json::to_vec(recipe).expect("recipes serialize");
        let key = hex_sha256(&[self.train_hash.as_bytes(), &recipe_json]);
        let dir = self.run_dir.join("data");
        let (data_path, stats_path) = (dir.join(format!("{key}.jsonl")), dir.join(format!("{key}.stats.json")));
        if let (Ok(text), Ok(stats)) = (std::fs::read_to_string(&data_path), std::fs::read_to_string(&stats_path))
            && let Ok(stats) = serde_json::from_str::<Vec<StepStats>>(&stats)
        {
            return Ok((text.lines().map(String::from).collect(), stats));
        }
        let env = self.call_env();
        let mut records = self.train_records.clone();
        let mut stats = Vec::new();
        for (i, step) in recipe.steps.iter().enumerate() {
            let mut run = self
                .host
                .run_data_tool(&step.plugin, &step.config, records, &env)
                .await
                .map_err(|e| format!("data step {} (`{}`): {e}", i + 1, step.plugin))?;
            records = std::mem::take(&mut run.records);
            stats.push(StepStats {
                plugin: step.plugin.clone(),
                records_in: run.records_in,
                records_out: run.records_out,
                dropped: run.dropped,
            });
        }
        std::fs::create_dir_all(&dir).map_err(|e| StepError::io(&dir, &e))?;
        let write = |path: &Path, text: String| -> Result<(), StepError> {
            trex_model::files::write_atomically(path, text.as_bytes()).map_err(|e| StepError::io(path, &e))
        };
        write(&data_path, records.iter().map(|r| format!("{r}\n")).collect())?;
        write(&stats_path, serde_json::to_string(&stats).expect("stats serialize"))?;
        Ok((records, stats))
    }

    /// How every node's answers are generated: the task's `[prompt]` settings, greedy.
    pub fn generation_config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.task.prompt.max_new_tokens,
            stop: self.task.prompt.stop.clone(),
            batch_size: self.task.prompt.batch_size.max(1),
            ..GenerationConfig::default()
        }
    }

    /// Generate answers for a held-out split and score them with the evaluator plugin.
    pub(crate) async fn score(
        &self,
        adapter: Option<Arc<LoraAdapter<f32>>>,
        split: Split,
        reporter: Option<&NodeReporter>,
    ) -> Result<Scoring, String> {
        self.score_with(adapter, split, reporter, self.generation_config()).await
    }

    /// The base model's answers on `split` under `config`, scored, bypassing the cache: for the
    /// evaluation benchmark, which varies the batching (the answers must not change).
    pub async fn score_base_with(&self, split: Split, config: GenerationConfig) -> Result<Scoring, LabError> {
        self.score_with(None, split, None, config).await.map_err(LabError::Run)
    }

    async fn score_with(
        &self,
        adapter: Option<Arc<LoraAdapter<f32>>>,
        split: Split,
        reporter: Option<&NodeReporter>,
        config: GenerationConfig,
    ) -> Result<Scoring, String> {
        let records = match split {
            Split::Validation => &self.validation,
            Split::Test => &self.test,
            Split::FullValidation => &self.validation_full,
        };
        let prompts: Vec<String> = records.iter().map(|r| r.prompt.clone()).collect();
        let (model, tokenizer) = (self.model.clone(), self.tokenizer.clone());
        let total = prompts.len() as u64;
        let which = match split {
            Split::Test => "test",
            Split::Validation => "validation",
            Split::FullValidation => "whole validation split",
        };
        if let Some(r) = reporter {
            r.report(Stage::Generate, 0, total, which);
        }
        let handle = reporter.map(NodeReporter::handle);
        let generating = Instant::now();
        let outputs = tokio::task::spawn_blocking(move || {
            generate(&model, &tokenizer, adapter.as_deref(), &prompts, &config, |done| {
                if let Some((observer, node)) = &handle {
                    let p = NodeProgress { stage: Stage::Generate, done: done as u64, total, detail: which.into() };
                    observer.progress(*node, &p);
                }
            })
        })
        .await
        .map_err(|e| format!("generation panicked: {e}"))?;
        let generate_seconds = generating.elapsed().as_secs_f64();
        let evaluating = Instant::now();
        let items: Vec<EvalItem> = records
            .iter()
            .zip(&outputs)
            .map(|(r, g)| EvalItem { id: r.id.clone(), example: r.value.clone(), output: g.text.clone() })
            .collect();
        let eval = &self.task.evaluator;
        if let Some(r) = reporter {
            r.report(Stage::Evaluate, 0, total, which);
        }
        let env = self.call_env();
        let report = self
            .host
            .evaluate(&eval.plugin, &eval.config, &items, 64, &env)
            .await
            .map_err(|e| format!("evaluator `{}`: {e}", eval.plugin))?;
        Ok(Scoring { report, outputs, generate_seconds, evaluate_seconds: evaluating.elapsed().as_secs_f64() })
    }

    /// Turn a scoring into a node result (bad-case analysis included) and store the
    /// per-example evaluation in the node's folder.
    pub(crate) fn result_of(
        &self,
        id: u64,
        scoring: &Scoring,
        base_score: Option<f64>,
    ) -> Result<NodeResult, StepError> {
        let records = &self.validation;
        let scored: Vec<Scored<'_>> = records
            .iter()
            .zip(&scoring.outputs)
            .zip(&scoring.report.results)
            .map(|((r, g), res)| Scored {
                prompt: &r.user_prompt,
                expected: r.expected.as_deref(),
                output: &g.text,
                finish: g.finish,
                result: res,
            })
            .collect();
        let dir = self.node_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| StepError::io(&dir, &e))?;
        let mut lines = String::new();
        for s in &scored {
            let line = serde_json::json!({
                "id": s.result.id, "prompt": s.prompt, "expected": s.expected, "output": s.output,
                "finish": s.finish, "score": s.result.score, "passed": s.result.passed,
                "tags": s.result.tags, "explanation": s.result.explanation,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        let path = dir.join("evaluation.jsonl");
        trex_model::files::write_atomically(&path, lines.as_bytes()).map_err(|e| StepError::io(&path, &e))?;
        let score = scoring.report.score;
        Ok(NodeResult {
            score,
            reward: base_score.map_or(0.0, |b| normalized_gain(score, b, self.task.reference_score)),
            passed: scoring.report.passed,
            total: scoring.report.total,
            metrics: scoring.report.metrics.clone(),
            bad_cases: bad_cases(&scored, 3, 8),
            data: Vec::new(),
            train: None,
            cost: Cost::default(),
            adapter: None,
            key: None,
        })
    }

    /// Run one experiment. On failure, the error and what the node cost so far. With
    /// `early_stop`, training stops when its loss is clearly worse than the siblings' there,
    /// and the node fails as [`FailureKind::Stopped`] (a cached result is served whole).
    pub async fn run_node(
        &self,
        id: u64,
        proposal: &Proposal,
        parent: Option<ParentRef>,
        base_score: f64,
        early_stop: Option<crate::early_stop::EarlyStop>,
    ) -> Result<NodeResult, NodeFailure> {
        let key = self.experiment_key(proposal, parent.as_ref().and_then(|p| p.key.as_deref()));
        if let Some(cached) = self.cached_outcome(&key, Some(base_score)) {
            let mut r = cached?;
            // A search keeps its own copy, so that its run folder stands alone; a replay reads
            // the cache in place.
            if let Some(a) = r.adapter.clone().filter(|_| !self.cache.as_ref().is_some_and(|c| c.only)) {
                let dir = self.node_dir(id).join("adapter");
                let failed = |e: std::io::Error| {
                    let error = StepError {
                        message: format!("cannot copy the cached adapter {a}: {e}"),
                        out_of_space: trex_model::out_of_space(&e),
                    };
                    error.into_failure(FailureKind::Other, Cost::default())
                };
                // Copied whole or not at all, as a trained adapter is written.
                let from = Path::new(&a);
                trex_model::files::write_folder_atomically(
                    &dir,
                    |_, e| failed(e),
                    |tmp| trex_model::files::copy_dir(from, tmp).map_err(failed),
                )?;
                r.adapter = Some(format!("nodes/{id}/adapter"));
            }
            return Ok(r);
        }
        if self.cache.as_ref().is_some_and(|c| c.only) {
            return Err(NodeFailure::new(FailureKind::Other, not_in_table(), Cost::default()));
        }
        let outcome = self.train_and_score(id, proposal, parent, base_score, &key, early_stop).await;
        // A recipe that diverges or is refused does so every time: keep that too.
        if let (Err(f), Some(cache)) = (&outcome, &self.cache)
            && matches!(f.kind, FailureKind::Diverged | FailureKind::Recipe)
        {
            let failure = Some(crate::cache::CachedFailure { error: f.error.clone(), kind: f.kind });
            let entry = crate::cache::Entry {
                result: None,
                failure,
                verdicts: Vec::new(),
                test_score: None,
                full_validation: None,
                lab: self.base_key.clone(),
            };
            if let Err(e) = cache.store(&key, entry, None) {
                tracing::warn!("cannot cache the experiment {key}: {e}");
            }
        }
        outcome
    }

    async fn train_and_score(
        &self,
        id: u64,
        proposal: &Proposal,
        parent: Option<ParentRef>,
        base_score: f64,
        key: &str,
        early_stop: Option<crate::early_stop::EarlyStop>,
    ) -> Result<NodeResult, NodeFailure> {
        let started = Instant::now();
        let reporter = NodeReporter::new(self.observer.clone(), id);
        reporter.report(Stage::Data, 0, proposal.data_recipe.steps.len() as u64, "");
        let fail = |kind: FailureKind, error: StepError, tokens: u64| {
            let cost = Cost { train_tokens: tokens, seconds: started.elapsed().as_secs_f64(), ..Cost::default() };
            error.into_failure(kind, cost)
        };
        let (records, data) =
            self.build_data(&proposal.data_recipe).await.map_err(|e| fail(FailureKind::Plugin, e, 0))?;
        let mut examples = Vec::with_capacity(records.len());
        for (i, text) in records.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                fail(FailureKind::Plugin, format!("data recipe output, record {}: not JSON: {e}", i + 1).into(), 0)
            })?;
            let (rid, mut ex) = train::data::parse_record(&value, &self.tokenizer).map_err(|e| {
                fail(
                    FailureKind::Recipe,
                    format!(
                        "data recipe output, record {} is not a training example: {e} (add a chat-format step?)",
                        i + 1
                    )
                    .into(),
                    0,
                )
            })?;
            ex.id = rid.unwrap_or_else(|| format!("record-{}", i + 1));
            examples.push(ex);
        }
        let recipe = proposal.train_recipe.clone();
        let tokenized = train::data::tokenize(&examples, &self.tokenizer, recipe.max_seq_len as usize);
        let data_seconds = started.elapsed().as_secs_f64();
        let config = self.model.config.clone();
        let parent = parent.filter(|_| recipe.continue_from_parent);
        let continued = parent.is_some();
        let epoch_offset = parent.as_ref().map_or(0.0, |p| p.epochs_done);
        let mut adapter = match &parent {
            Some(p) => train::peft::load_adapter(&p.adapter, &config)
                .map_err(|e| fail(FailureKind::Other, format!("parent adapter: {e}").into(), 0))?,
            None => LoraAdapter::from_recipe(&config, &recipe),
        };
        let model = self.model.clone();
        let device = self.device;
        let (observer, node) = reporter.handle();
        let n_examples = tokenized.len() as u64;
        let trained = tokio::task::spawn_blocking(move || {
            let mut losses = Vec::new();
            let mut stopped = None;
            let r = train::train_from(device, &model, &mut adapter, &tokenized, &recipe, epoch_offset, None, |s| {
                let detail = format!("loss {:.3}", s.loss);
                let p = NodeProgress { stage: Stage::Train, done: s.step as u64, total: s.total_steps as u64, detail };
                observer.progress(node, &p);
                losses.push(s.loss);
                stopped = early_stop.as_ref().and_then(|e| e.verdict(&losses, s.total_steps));
                if stopped.is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            });
            r.map(|r| (adapter, r, stopped))
        })
        .await
        .map_err(|e| fail(FailureKind::Other, format!("training panicked: {e}").into(), 0))?;
        let (adapter, report, stopped) = trained.map_err(|e| {
            let kind = match e {
                train::TrainError::Diverged { .. } => FailureKind::Diverged,
                train::TrainError::Recipe(_) | train::TrainError::Data(_) => FailureKind::Recipe,
                _ => FailureKind::Other,
            };
            fail(kind, format!("training: {e}").into(), 0)
        })?;
        if let Some(why) = stopped {
            // Not cached: the verdict depends on the siblings, not on the experiment alone.
            let mut failure = fail(FailureKind::Stopped, why.into(), report.tokens as u64);
            failure.cost.share = Some(report.steps as f32 / report.planned_steps.max(1) as f32);
            return Err(failure);
        }
        let adapter_dir = self.node_dir(id).join("adapter");
        train::peft::save_adapter(&adapter_dir, &adapter, &self.model_source).map_err(|e| {
            let error = StepError { message: format!("saving the adapter: {e}"), out_of_space: e.out_of_space() };
            fail(FailureKind::Other, error, report.tokens as u64)
        })?;
        let train_seconds = started.elapsed().as_secs_f64() - data_seconds;
        let scoring = self
            .score(Some(Arc::new(adapter)), Split::Validation, Some(&reporter))
            .await
            .map_err(|e| fail(FailureKind::Plugin, e.into(), report.tokens as u64))?;
        let generated_tokens = scoring.outputs.iter().map(|g| g.tokens as u64).sum();
        let mut result = self
            .result_of(id, &scoring, Some(base_score))
            .map_err(|e| fail(FailureKind::Other, e, report.tokens as u64))?;
        result.data = data;
        result.train = Some(TrainSummary {
            examples: n_examples,
            steps: report.steps as u64,
            first_loss: report.first_loss as f64,
            final_loss: report.final_loss as f64,
            tokens: report.tokens as u64,
            truncated: report.truncated as u64,
            seconds: report.seconds,
            continued,
            epoch_offset,
            loss_curve: crate::tree::loss_curve(&report.losses, crate::tree::LOSS_CURVE_POINTS),
        });
        result.cost = Cost {
            train_tokens: report.tokens as u64,
            seconds: started.elapsed().as_secs_f64(),
            generated_tokens,
            stages: StageSeconds {
                data: data_seconds,
                train: train_seconds,
                generate: scoring.generate_seconds,
                evaluate: scoring.evaluate_seconds,
            },
            ..Cost::default()
        };
        result.adapter = Some(format!("nodes/{id}/adapter"));
        result.key = Some(key.to_string());
        self.to_cache(key, &result, &scoring, Some(&adapter_dir));
        Ok(result)
    }

    /// Load a node's adapter for scoring.
    pub fn load_adapter(&self, rel: &str) -> Result<LoraAdapter<f32>, LabError> {
        Ok(train::peft::load_adapter(&self.run_dir.join(rel), &self.model.config).map_err(train::TrainError::from)?)
    }
}

/// Where a search's nodes run: in its own process, or as Slurm jobs (each a `trex-host worker`
/// call, see [`crate::worker`]). The search loop hands a node to it and gets the node's outcome
/// back either way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExecutorKind {
    /// In the search's process (`--workers` nodes at once).
    #[default]
    Local,
    /// One Slurm job per node (`--workers` jobs in flight at most).
    Slurm(crate::slurm::SlurmOptions),
}

impl ExecutorKind {
    /// Whether nodes run in the search's process.
    pub fn is_local(&self) -> bool {
        matches!(self, ExecutorKind::Local)
    }

    /// Its name on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm(_) => "slurm",
        }
    }
}

/// Why a replay cannot serve an experiment.
fn not_in_table() -> String {
    "not in the experiment table: fill it with `trex-host bench table` before replaying".into()
}

/// `(score − base) / (reference − base)`; when the base already reaches the reference, the raw
/// difference.
pub fn normalized_gain(score: f64, base: f64, reference: f64) -> f64 {
    let span = reference - base;
    if span > 1e-9 { (score - base) / span } else { score - base }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trex_sdk::types::TrainRecipe;

    fn proposal(recipe: TrainRecipe) -> Proposal {
        Proposal { data_recipe: DataRecipe { steps: vec![] }, train_recipe: recipe, rationale: String::new() }
    }

    #[test]
    fn the_one_line_description_tells_apart_experiments_that_differ_in_batch_or_length() {
        let base = TrainRecipe::default();
        assert_eq!(describe(&proposal(base.clone())), "lr 2.0e-4 r8 [q,v] 1 ep b4 len 256 | data: raw");
        let lines: Vec<String> = [
            TrainRecipe { batch_size: 8, ..base.clone() },
            TrainRecipe { max_seq_len: 96, ..base.clone() },
            TrainRecipe { grad_accumulation: 2, ..base.clone() },
            TrainRecipe { lora_alpha: 32.0, ..base.clone() },
            TrainRecipe { weight_decay: 0.01, ..base.clone() },
            TrainRecipe { continue_from_parent: true, ..base.clone() },
        ]
        .into_iter()
        .map(|r| describe(&proposal(r)))
        .collect();
        assert_eq!(
            lines,
            [
                "lr 2.0e-4 r8 [q,v] 1 ep b8 len 256 | data: raw",
                "lr 2.0e-4 r8 [q,v] 1 ep b4 len 96 | data: raw",
                "lr 2.0e-4 r8 [q,v] 1 ep b4×2 len 256 | data: raw",
                "lr 2.0e-4 r8 α32 [q,v] 1 ep b4 len 256 | data: raw",
                "lr 2.0e-4 r8 [q,v] 1 ep b4 len 256 wd 0.01 | data: raw",
                "lr 2.0e-4 r8 [q,v] 1 ep (continued) b4 len 256 | data: raw",
            ]
        );
    }
}
