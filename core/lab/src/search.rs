//! The search: a tree of experiments grown by a Researcher plugin under a strategy (MCTS or a
//! baseline), each node run by the [`executor`], every event journaled so a killed run resumes
//! without losing or repeating a finished node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use trex_sdk::rng::SplitMix64;
use trex_sdk::types::{FailureKind, Outcome, PluginKind, Proposal, experiment_key};

use crate::LabError;
use crate::early_stop::EarlyStop;
use crate::executor::{self, ExecutorKind, Lab, NodeFailure, ParentRef, describe};
use crate::journal::{self, Event, FinalResult, Journal, JournalError};
use crate::memory::{self, MemoryParams};
use crate::slurm::{Cluster, Job, JobState};
use crate::task::{Budget, Task};
use crate::tree::{Cost, MctsParams, Node, NodeResult, NodeState, NodeStatus, Strategy, Tree};
use trex_plugin_host::llm::TokenMeter;
use trex_plugin_host::{CallEnv, ResearcherSession};

/// How a search runs (fixed for the life of a run; stored in its journal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Node-selection strategy.
    pub strategy: Strategy,
    /// Seed for the strategy and the Researcher.
    pub seed: u64,
    /// Nodes run at once.
    pub workers: usize,
    /// Limits.
    pub budget: Budget,
    /// MCTS constants.
    pub mcts: MctsParams,
    /// Researcher context limits.
    pub memory: MemoryParams,
    /// Rounds without a valid proposal before a node is no longer expanded.
    pub max_rejections: u32,
    /// Proposals asked for per round; the first valid one that is not a repeat is run.
    #[serde(default = "three")]
    pub proposals_per_round: u32,
    /// Leave the Researcher's bad-case analysis out of its context (an ablation; the same as
    /// `Ablation::BadCases`, kept for runs journaled before `ablations` existed).
    #[serde(default)]
    pub hide_bad_cases: bool,
    /// Parts of the system switched off, to measure what each contributes.
    #[serde(default)]
    pub ablations: Vec<Ablation>,
    /// Where nodes train.
    #[serde(default)]
    pub device: trex_model::train::ComputeDevice,
    /// The seed fresh experiments' training seeds derive from (default: `seed`). A replay sets
    /// it to one of the seeds its table was filled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_seed: Option<u64>,
    /// Where the task scores nodes on a part of the validation split: how many of the best
    /// nodes are scored on the whole split before the final choice (0: choose on the part).
    #[serde(default = "three_usize")]
    pub rescore_top: usize,
    /// Where nodes run (absent in journals of local runs and of runs from before it existed).
    #[serde(default, skip_serializing_if = "ExecutorKind::is_local")]
    pub executor: ExecutorKind,
    /// Stop an experiment's training when its loss is clearly worse than its finished
    /// siblings' at the same step (see [`crate::early_stop`]); the node fails as `stopped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub early_stop: bool,
}

fn three_usize() -> usize {
    3
}

/// A part of the system that an ablation switches off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ablation {
    /// The Researcher gets no bad-case analysis.
    BadCases,
    /// Training-recipe changes only: the Researcher is offered no data steps, and every node
    /// keeps its parent's data recipe.
    DataTools,
    /// The Researcher sees only the node it expands: no path, siblings, best or worst nodes.
    Memory,
}

impl Ablation {
    /// Every ablation.
    pub const ALL: [Ablation; 3] = [Ablation::BadCases, Ablation::DataTools, Ablation::Memory];

    /// Their names, in the same order.
    pub const NAMES: [&'static str; 3] = ["bad-cases", "data-tools", "memory"];

    /// The ablation of that name.
    pub fn from_name(name: &str) -> Option<Ablation> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The name used on the command line and in run folders.
    pub fn as_str(self) -> &'static str {
        match self {
            Ablation::BadCases => "bad-cases",
            Ablation::DataTools => "data-tools",
            Ablation::Memory => "memory",
        }
    }
}

impl Settings {
    /// Whether `a` is switched off.
    pub fn ablated(&self, a: Ablation) -> bool {
        self.ablations.contains(&a) || (a == Ablation::BadCases && self.hide_bad_cases)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Mcts,
            seed: 0,
            workers: 1,
            budget: Budget::default(),
            mcts: MctsParams::default(),
            memory: MemoryParams::default(),
            max_rejections: 3,
            proposals_per_round: 3,
            hide_bad_cases: false,
            ablations: Vec::new(),
            device: trex_model::train::ComputeDevice::Cpu,
            training_seed: None,
            rescore_top: 3,
            executor: ExecutorKind::Local,
            early_stop: false,
        }
    }
}

fn three() -> u32 {
    3
}

/// What a finished search reports.
#[derive(Debug, Clone, Serialize)]
pub struct SearchSummary {
    /// Why it stopped.
    pub reason: String,
    /// The best node by validation score.
    pub best: u64,
    /// Base model's validation score.
    pub base_validation: f64,
    /// Best node's validation score.
    pub best_validation: f64,
    /// Base model's test score.
    pub base_test: f64,
    /// Best node's test score.
    pub best_test: f64,
    /// Normalized gain on the test split.
    pub test_gain: f64,
    /// The no-model baselines (majority and format-only answers) on the same splits.
    pub baselines: Option<crate::baseline::Baselines>,
    /// The best adapter's folder (none when the base model stayed best).
    pub adapter: Option<PathBuf>,
    /// Experiments run.
    pub nodes: usize,
    /// Experiments failed.
    pub failed: usize,
    /// Proposals refused.
    pub rejected: usize,
    /// Search seconds (all sessions).
    pub seconds: f64,
    /// Tokens trained on.
    pub train_tokens: u64,
    /// LLM tokens spent.
    pub llm_tokens: u64,
}

/// An event that does not fit the run it is applied to (a node that was never created, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

/// A journal whose events do not make a run (an event about a node never created, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("journal entry {entry}: {message}")]
pub struct ReplayError {
    /// The 1-based entry.
    pub entry: usize,
    /// What is wrong with it.
    pub message: String,
}

impl ReplayError {
    /// As an error about the journal of `run_dir`.
    pub fn in_run(self, run_dir: &std::path::Path) -> LabError {
        LabError::Journal(JournalError { path: Journal::path_in(run_dir), message: self.to_string() })
    }
}

/// A run's state, rebuilt from its journal.
#[derive(Debug, Default)]
pub struct RunState {
    /// The tree.
    pub tree: Tree,
    /// Nodes the Researcher had nothing left for.
    pub exhausted: BTreeSet<u64>,
    /// Rejected proposals so far.
    pub rejected: usize,
    /// Consecutive rejections per node.
    pub rejections: BTreeMap<u64, u32>,
    /// Search seconds before this session.
    pub t_offset: f64,
    /// LLM tokens spent before this session.
    pub llm_tokens: u64,
    /// The final test-split figures, once written.
    pub final_result: Option<FinalResult>,
    /// The finished event, once written.
    pub finished: Option<String>,
    /// The structured-output format the LLM server accepts, as last journaled.
    pub llm_format: Option<trex_plugin_host::llm::ResponseFormat>,
}

impl RunState {
    /// Rebuild a run from its journal entries.
    pub fn replay(entries: &[journal::Entry]) -> Result<RunState, ReplayError> {
        let mut s = RunState::default();
        for (i, e) in entries.iter().enumerate() {
            s.apply(e.t, &e.event).map_err(|InvalidEvent(message)| ReplayError { entry: i + 1, message })?;
        }
        Ok(s)
    }

    /// Apply one event at search time `t`. The live search and `resume`'s replay both change
    /// the state only through here, so a resumed run is the run that was journaled.
    pub fn apply(&mut self, t: f64, event: &Event) -> Result<(), InvalidEvent> {
        self.t_offset = self.t_offset.max(t);
        let node = |s: &mut RunState, id: u64, what: &str| -> Result<usize, InvalidEvent> {
            if (id as usize) < s.tree.nodes.len() {
                Ok(id as usize)
            } else {
                Err(InvalidEvent(format!("a {what} node was never created")))
            }
        };
        match event {
            Event::Start { .. } | Event::Session { .. } => {}
            Event::Created { node: id, parent, proposal, llm_tokens } => {
                if *id as usize != self.tree.nodes.len() {
                    return Err(InvalidEvent("node ids are out of order".into()));
                }
                self.llm_tokens += llm_tokens;
                self.tree.nodes.push(Node::pending(*id, *parent, proposal.clone(), *llm_tokens));
                if let Some(p) = parent {
                    self.rejections.remove(p);
                }
            }
            Event::Started { node: id } => {
                let i = node(self, *id, "started")?;
                self.tree.nodes[i].state = NodeState::Running;
            }
            Event::Submitted { node: id, job } => {
                let i = node(self, *id, "submitted")?;
                self.tree.nodes[i].job = Some(job.clone());
            }
            Event::Done { node: id, result, lesson } => {
                let i = node(self, *id, "finished")?;
                let n = &mut self.tree.nodes[i];
                n.state = NodeState::Done(result.clone());
                n.lesson = lesson.clone();
            }
            Event::Failed { node: id, error, lesson, cost, kind } => {
                let i = node(self, *id, "failed")?;
                let n = &mut self.tree.nodes[i];
                n.state = NodeState::Failed { error: error.clone(), kind: *kind, cost: cost.clone() };
                n.lesson = lesson.clone();
            }
            Event::Rejected { parent, llm_tokens, .. } => {
                self.rejected += 1;
                self.llm_tokens += llm_tokens;
                *self.rejections.entry(*parent).or_default() += 1;
            }
            Event::Exhausted { node: id } => {
                self.exhausted.insert(*id);
            }
            Event::Final(f) => self.final_result = Some(f.clone()),
            Event::Finished { reason } => self.finished = Some(reason.clone()),
            Event::Llm { format, .. } => self.llm_format = *format,
        }
        Ok(())
    }

    /// Tokens trained on so far.
    pub fn train_tokens(&self) -> u64 {
        self.tree.nodes.iter().map(|n| n.cost().train_tokens).sum()
    }
}

/// The one-line lesson of a finished node.
pub fn lesson(proposal: &Proposal, result: &NodeResult, parent_score: Option<f64>) -> String {
    let mut s = format!("{}: score {:.3}", describe(proposal), result.score);
    if let Some(p) = parent_score {
        s.push_str(&format!(" ({:+.3} vs parent)", result.score - p));
    }
    if let Some(t) = &result.train {
        s.push_str(&format!("; loss {:.2}→{:.2}", t.first_loss, t.final_loss));
        if t.final_loss > 1.0 {
            s.push_str(", underfitting");
        } else if t.final_loss < 0.05 {
            s.push_str(", near-zero training loss (overfitting risk)");
        }
    }
    if let Some(c) = result.bad_cases.first() {
        s.push_str(&format!("; top failure {} ×{}", c.label, c.count));
    }
    s
}

/// The lesson of a failed node: its error, on one line.
pub fn failure_lesson(proposal: Option<&Proposal>, error: &str) -> String {
    let first: String = error.lines().next().unwrap_or("").chars().take(200).collect();
    match proposal {
        Some(p) => format!("{}: failed: {first}", describe(p)),
        None => format!("failed: {first}"),
    }
}

/// The training seed of a fresh experiment with key `key` in a search seeded `seed`.
pub fn derive_seed(seed: u64, key: &str) -> u64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in key.bytes() {
        h = SplitMix64(h ^ u64::from(b)).next_u64();
    }
    // Seeds travel through JSON and plugins as numbers: keep them exact in an f64.
    h >> 11
}

/// Check a proposal against the task's search space and the plugins; returns it with data-step
/// configs normalized, or why it is refused.
pub(crate) async fn check_proposal(lab: &Lab, mut p: Proposal) -> Result<Proposal, String> {
    let task = &lab.task;
    let space = &task.search_space;
    let r = &p.train_recipe;
    trex_model::train::check_recipe(r).map_err(|e| e.to_string())?;
    trex_model::train::check_recipe_for(lab.model_config(), r).map_err(|e| e.to_string())?;
    if lab.device == trex_model::train::ComputeDevice::Cpu {
        trex_model::train::check_batch_memory(lab.model_config(), r).map_err(|e| e.to_string())?;
    }
    let lr = &space.learning_rate;
    if !(r.learning_rate >= lr.min * (1.0 - 1e-6) && r.learning_rate <= lr.max * (1.0 + 1e-6)) {
        return Err(format!(
            "learning_rate {:.3e} is outside the search space [{:.1e}, {:.1e}]",
            r.learning_rate, lr.min, lr.max
        ));
    }
    if !lr.values.is_empty() && !lr.values.iter().any(|v| (v - r.learning_rate).abs() <= v.abs() * 1e-6) {
        return Err(format!(
            "learning_rate {:.3e} is not one of the search space's values [{}]",
            r.learning_rate,
            lr.values.iter().map(|v| format!("{v:.1e}")).collect::<Vec<_>>().join(", ")
        ));
    }
    let start = &task.start.train_recipe;
    if !space.lora_rank.is_empty() && !space.lora_rank.contains(&r.lora_rank) && r.lora_rank != start.lora_rank {
        return Err(format!("lora_rank {} is not one of {:?}", r.lora_rank, space.lora_rank));
    }
    let same = |a: f32, b: f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
    if !space.epochs.is_empty() && !same(r.epochs, start.epochs) && !space.epochs.iter().any(|e| same(r.epochs, *e)) {
        return Err(format!("epochs {} is not one of {:?} (the search space's epochs)", r.epochs, space.epochs));
    }
    if !space.targets.is_empty() {
        let allowed: BTreeSet<_> = space.targets.iter().flatten().chain(&start.targets).collect();
        if let Some(t) = r.targets.iter().find(|t| !allowed.contains(t)) {
            return Err(format!("target {} is not in the search space", t.module_name()));
        }
    }
    if space.max_seq_len.is_empty() {
        let longest = start.max_seq_len.max(2048);
        if r.max_seq_len > longest {
            return Err(format!("max_seq_len {} is more than {longest}", r.max_seq_len));
        }
    } else if r.max_seq_len != start.max_seq_len && !space.max_seq_len.contains(&r.max_seq_len) {
        return Err(format!("max_seq_len {} is not one of {:?}", r.max_seq_len, space.max_seq_len));
    }
    let allowed: BTreeSet<&str> =
        task.start.data_recipe.steps.iter().chain(&space.data_steps).map(|s| s.plugin.as_str()).collect();
    for (i, step) in p.data_recipe.steps.iter_mut().enumerate() {
        if !allowed.contains(step.plugin.as_str()) {
            return Err(format!(
                "data step {} uses plugin `{}`, which the task does not offer (offered: {})",
                i + 1,
                step.plugin,
                allowed.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        let field = format!("data step {} (`{}`)", i + 1, step.plugin);
        step.config =
            crate::task::checked_config(&lab.host, &field, &step.plugin, PluginKind::DataTool, &step.config).await?;
    }
    Ok(p)
}

/// A search over one task, in one run folder.
pub struct Search<'a> {
    lab: &'a Lab,
    /// The same lab, for node runs spawned onto their own tasks (so that `--workers N` runs
    /// their plugin calls, training and generation at the same time).
    shared: Arc<Lab>,
    /// The LLM client behind `llm.chat`, when the task has one (to journal a change of format).
    llm: Option<Arc<trex_plugin_host::llm::OpenAiClient>>,
    settings: Settings,
    journal: Journal,
    state: RunState,
    meter: Arc<TokenMeter>,
    session_started: Instant,
    /// Search seconds before this session (the journal's last time when it began).
    session_base: f64,
    researcher: ResearcherSession<'a>,
    /// The cluster nodes are submitted to, when they run as Slurm jobs.
    cluster: Option<Arc<Cluster>>,
}

impl std::fmt::Debug for Search<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Search").field("settings", &self.settings).finish()
    }
}

type NodeFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Result<NodeResult, NodeFailure>)> + 'a>>;

/// Why nodes cannot run where `executor` says, if they cannot: the Slurm options are checked
/// and a controller must answer.
pub fn executor_ready(executor: &ExecutorKind) -> Result<(), LabError> {
    if let ExecutorKind::Slurm(options) = executor {
        options.check().map_err(|e| LabError::Run(e.to_string()))?;
        crate::slurm::available()
            .map_err(|e| LabError::Run(format!("--executor slurm: no Slurm controller answers here: {e}")))?;
    }
    Ok(())
}

/// Scoring finished node `id` (result `r`) on `split` failed with `e`: what to do about it. The
/// node's result stays in the journal, so a resume after the adapter is restored finishes.
fn unreadable_adapter(lab: &Lab, id: u64, r: &NodeResult, split: &str, e: LabError) -> LabError {
    let adapter = r.adapter.as_deref().map_or_else(|| lab.run_dir.clone(), |a| lab.run_dir.join(a));
    LabError::Run(format!(
        "scoring node {id} on {split}: {e}. Its result is kept in the journal: restore its adapter ({}) and run `trex-host resume {}` to finish",
        adapter.display(),
        lab.run_dir.display()
    ))
}

/// Cancels the Slurm jobs still in flight when the search loop ends early (an error, a panic);
/// a search that ends normally has waited for all of them.
struct CancelOnDrop(Option<Arc<Cluster>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &self.0
            && c.outstanding() > 0
        {
            let jobs = c.cancel_all();
            tracing::warn!("the search stopped early: cancelled Slurm job(s) {}", jobs.join(", "));
        }
    }
}

/// Run node `id` on a task of its own; a panic in it becomes the node's failure.
fn spawn_node<'a>(
    id: u64,
    run: impl std::future::Future<Output = Result<NodeResult, NodeFailure>> + Send + 'static,
) -> NodeFuture<'a> {
    let handle = tokio::spawn(run);
    Box::pin(async move {
        let outcome = handle.await.unwrap_or_else(|e| {
            Err(NodeFailure::new(FailureKind::Other, format!("the node's task failed: {e}"), Cost::default()))
        });
        (id, outcome)
    })
}

impl<'a> Search<'a> {
    /// Start (or continue) a search: opens the Researcher and tells it every finished node.
    pub async fn new(
        lab: &'a Arc<Lab>,
        settings: Settings,
        journal: Journal,
        state: RunState,
        meter: Arc<TokenMeter>,
        llm: Option<Arc<trex_plugin_host::llm::OpenAiClient>>,
    ) -> Result<Search<'a>, LabError> {
        // What an earlier session killed mid-write left behind (data, results, cache entries).
        trex_model::files::sweep_stale_temporaries(&lab.run_dir);
        if let Some(cache) = &lab.cache {
            trex_model::files::sweep_stale_temporaries(&cache.dir);
        }
        let task = &lab.task;
        let mut brief = task.brief(settings.seed);
        if settings.ablated(Ablation::DataTools) {
            brief.search_space.data_steps.clear();
        }
        let mut researcher = lab
            .host
            .open_researcher(&task.researcher.plugin, &task.researcher.config, &brief, &CallEnv::default())
            .await?;
        for n in state.tree.nodes.iter().filter(|n| n.finished() && n.id != 0) {
            researcher.observe(&Outcome { node: n.summary() }).await?;
        }
        let session_base = state.t_offset;
        let cluster = match &settings.executor {
            ExecutorKind::Local => None,
            ExecutorKind::Slurm(options) => {
                executor_ready(&settings.executor)?;
                let program = std::env::current_exe()
                    .map_err(|e| LabError::Run(format!("cannot tell which program is running: {e}")))?;
                Some(Arc::new(Cluster::new(options.clone(), program)))
            }
        };
        Ok(Search {
            cluster,
            lab,
            shared: lab.clone(),
            llm,
            settings,
            journal,
            state,
            meter,
            session_started: Instant::now(),
            session_base,
            researcher,
        })
    }

    fn now(&self) -> f64 {
        // Not `state.t_offset`: every event journaled in this session moves that forward.
        self.session_base + self.session_started.elapsed().as_secs_f64()
    }

    /// Journal `event` (fsynced), then apply it to the state: nothing changes that is not
    /// journaled first.
    fn log(&mut self, event: Event) -> Result<(), LabError> {
        let t = self.now();
        self.journal.append(t, &event)?;
        self.state.apply(t, &event).map_err(|e| LabError::Run(e.to_string()))
    }

    fn base_score(&self) -> Option<f64> {
        self.state.tree.nodes.first().and_then(Node::score)
    }

    /// Why no further node may start, if a budget says so.
    fn spent(&self, in_flight: usize) -> Option<String> {
        let b = &self.settings.budget;
        let charged = self.state.tree.experiments_charged();
        if let Some(n) = b.nodes
            && charged > n as f64 - 1e-9
        {
            let created = self.state.tree.nodes.len().saturating_sub(1);
            return Some(if created as f64 > charged + 1e-9 {
                format!(
                    "node budget spent ({n} experiments; {created} nodes, the ones stopped early charged by their share)"
                )
            } else {
                format!("node budget spent ({n} experiments)")
            });
        }
        if let Some(m) = b.wall_minutes {
            let limit = m * 60.0;
            let durations: Vec<f64> =
                self.state.tree.nodes.iter().skip(1).filter_map(|n| n.result().map(|r| r.cost.seconds)).collect();
            let typical =
                if durations.is_empty() { 0.0 } else { durations.iter().sum::<f64>() / durations.len() as f64 };
            let waits = if in_flight > 0 { typical } else { 0.0 };
            if self.now() + typical.max(waits) > limit {
                return Some(format!(
                    "wall-time budget: {:.0} s of {limit:.0} s used, a node takes about {typical:.0} s",
                    self.now()
                ));
            }
        }
        if let Some(t) = b.train_tokens
            && self.state.train_tokens() >= t
        {
            return Some(format!("training-token budget spent ({} of {t})", self.state.train_tokens()));
        }
        if b.llm_tokens.is_some() && self.meter.exhausted() {
            return Some(format!("LLM-token budget spent ({} tokens)", self.meter.spent()));
        }
        None
    }

    /// The share of the budget spent, in [0, 1]: the largest over the limits that are set.
    fn progress(&self) -> f64 {
        let b = &self.settings.budget;
        let mut p: f64 = 0.0;
        if let Some(n) = b.nodes {
            p = p.max(self.state.tree.experiments_charged() / n.max(1) as f64);
        }
        if let Some(m) = b.wall_minutes {
            p = p.max(self.now() / (m * 60.0).max(1e-9));
        }
        if let Some(t) = b.train_tokens {
            p = p.max(self.state.train_tokens() as f64 / t.max(1) as f64);
        }
        p.min(1.0)
    }

    fn notes(&self) -> BTreeMap<String, f64> {
        let mut notes = BTreeMap::new();
        let b = &self.settings.budget;
        if let Some(n) = b.nodes {
            notes.insert("nodes_left".into(), (n as f64 - self.state.tree.experiments_charged()).max(0.0).ceil());
        }
        if let Some(m) = b.wall_minutes {
            notes.insert("seconds_left".into(), (m * 60.0 - self.now()).max(0.0).round());
        }
        if let Some(base) = self.base_score() {
            notes.insert("base_score".into(), base);
        }
        notes.insert("reference_score".into(), self.lab.task.reference_score);
        if let Some(best) = self.state.tree.best().and_then(Node::score) {
            notes.insert("best_score".into(), best);
        }
        notes
    }

    /// Refuse an experiment that already ran under the same parent (it would add nothing to the
    /// tree); one reached by another path is kept, and reuses the earlier result when it runs.
    fn not_a_repeat(&self, parent: u64, p: Proposal) -> Result<Proposal, String> {
        let key = experiment_key(&p);
        let same = self
            .state
            .tree
            .nodes
            .iter()
            .find(|c| c.parent == Some(parent) && c.proposal.as_ref().is_some_and(|q| experiment_key(q) == key));
        match same {
            Some(d) => Err(format!("the same experiment already ran from this node, as node {}", d.id)),
            None => Ok(p),
        }
    }

    /// Refuse an experiment a replay's table does not hold.
    fn servable(&self, parent: u64, p: Proposal) -> Result<Proposal, String> {
        let parent_key = self.state.tree.nodes[parent as usize].result().and_then(|r| r.key.as_deref());
        if self.lab.can_serve(&p, parent_key) {
            Ok(p)
        } else {
            Err("not in the experiment table being replayed".into())
        }
    }

    /// The training seed of `p` as a child of `parent`: a continued adapter keeps its parent's
    /// seed (so it trains on the examples that come next in the same stream); a fresh one gets a
    /// seed derived from the search seed and the experiment, so every strategy that meets the
    /// same experiment in the same search seed trains the same adapter (and shares its cached
    /// result).
    fn training_seed(&self, parent: u64, p: &Proposal) -> u64 {
        if p.train_recipe.continue_from_parent
            && let Some(q) = &self.state.tree.nodes[parent as usize].proposal
        {
            return q.train_recipe.seed;
        }
        derive_seed(self.settings.training_seed.unwrap_or(self.settings.seed), &experiment_key(p))
    }

    /// An earlier finished node that ran exactly the experiment of node `id` (same recipe, same
    /// seed and, when continued, the same parent).
    fn same_as(&self, id: u64) -> Option<&Node> {
        let node = &self.state.tree.nodes[id as usize];
        let p = node.proposal.as_ref()?;
        let key = experiment_key(p);
        self.state.tree.nodes.iter().find(|c| {
            c.id != id
                && c.result().is_some()
                && (!p.train_recipe.continue_from_parent || c.parent == node.parent)
                && c.proposal
                    .as_ref()
                    .is_some_and(|q| q.train_recipe.seed == p.train_recipe.seed && experiment_key(q) == key)
        })
    }

    /// Ask the Researcher for a child of `parent`; `None` when it gave nothing usable.
    async fn propose(&mut self, parent: u64) -> Result<Option<u64>, LabError> {
        let mut ctx = memory::context(&self.state.tree, parent, self.notes(), &self.settings.memory);
        let tried: BTreeSet<String> =
            self.state.tree.nodes.iter().filter_map(|n| n.proposal.as_ref()).map(experiment_key).collect();
        ctx.tried = tried.into_iter().collect();
        if self.settings.ablated(Ablation::BadCases) {
            ctx.bad_cases.clear();
        }
        if self.settings.ablated(Ablation::Memory) {
            ctx.parent_path.clear();
            ctx.siblings.clear();
            ctx.best.clear();
            ctx.worst.clear();
        }
        // Without data tools every node keeps its parent's data recipe.
        let parent_data = self.settings.ablated(Ablation::DataTools).then(|| {
            self.state.tree.nodes[parent as usize]
                .proposal
                .as_ref()
                .map_or_else(|| self.lab.task.start.data_recipe.clone(), |p| p.data_recipe.clone())
        });
        let before = self.meter.spent();
        let proposals = self.researcher.propose(&ctx, self.settings.proposals_per_round.max(1)).await;
        let llm_tokens = self.meter.spent() - before;
        // The server refused the format it accepted before: journal the one it accepts now.
        if let Some(c) = &self.llm
            && self.state.llm_format.is_some_and(|f| f != c.format())
        {
            self.log(Event::Llm { server: c.describe(), format: Some(c.format()), usage_reported: true })?;
        }
        // The first proposal that passes every check becomes the node; the others are dropped.
        let mut outcome: Result<Proposal, String> = Err("the Researcher returned no proposal".into());
        match proposals {
            Err(e) => outcome = Err(format!("the Researcher failed: {e}")),
            Ok(list) => {
                let mut errors = Vec::new();
                for (i, p) in list.into_iter().enumerate() {
                    let checked = match p {
                        Err(e) => Err(e.to_string()),
                        Ok(mut p) => {
                            if let Some(data) = &parent_data {
                                p.data_recipe = data.clone();
                            }
                            check_proposal(self.lab, p)
                                .await
                                .and_then(|p| self.not_a_repeat(parent, p))
                                .map(|mut p| {
                                    p.train_recipe.seed = self.training_seed(parent, &p);
                                    p
                                })
                                .and_then(|p| self.servable(parent, p))
                        }
                    };
                    match checked {
                        Ok(p) => {
                            outcome = Ok(p);
                            break;
                        }
                        Err(e) => errors.push(format!("proposal {}: {e}", i + 1)),
                    }
                }
                if outcome.is_err() && !errors.is_empty() {
                    outcome = Err(errors.join("; "));
                }
            }
        }
        match outcome {
            Ok(p) => {
                let id = self.state.tree.nodes.len() as u64;
                self.log(Event::Created { node: id, parent: Some(parent), proposal: Some(p), llm_tokens })?;
                Ok(Some(id))
            }
            Err(error) => {
                self.lab.say(format!("  proposal for node {parent} refused: {error}"));
                self.log(Event::Rejected { parent, error, llm_tokens })?;
                if self.state.rejections.get(&parent).copied().unwrap_or(0) >= self.settings.max_rejections {
                    self.log(Event::Exhausted { node: parent })?;
                    self.lab.say(format!(
                        "  node {parent} is no longer expanded: {} proposals in a row were refused",
                        self.settings.max_rejections
                    ));
                }
                Ok(None)
            }
        }
    }

    fn start_node(&mut self, id: u64) -> Result<NodeFuture<'a>, LabError> {
        // A node an earlier session submitted: take its job back, unless Slurm lost it.
        if let Some(attached) = self.reattach(id) {
            return Ok(attached);
        }
        self.log(Event::Started { node: id })?;
        let node = &self.state.tree.nodes[id as usize];
        let lab = self.shared.clone();
        let proposal = node.proposal.clone();
        let base = self.base_score();
        if let (Some(p), Some(same)) = (&proposal, self.same_as(id)) {
            lab.say(format!("node {id} (from {}): {}", node.parent.unwrap_or(0), describe(p)));
            lab.say(format!("  the same experiment ran as node {}: its result is reused", same.id));
            let mut r = same.result().cloned().expect("same_as finds finished nodes");
            r.cost = Cost { cached: true, ..Cost::default() };
            return Ok(spawn_node(id, async move { Ok(r) }));
        }
        let parent = node.parent.map(|p| &self.state.tree.nodes[p as usize]).and_then(|p| {
            let r = p.result()?;
            let adapter = lab.run_dir.join(r.adapter.as_ref()?);
            let own = p.proposal.as_ref().map_or(0.0, |q| q.train_recipe.epochs);
            let epochs_done = r.train.as_ref().map_or(0.0, |t| t.epoch_offset) + own;
            Some(ParentRef { adapter, key: r.key.clone(), epochs_done })
        });
        let stop = if self.settings.early_stop { EarlyStop::for_node(&self.state.tree, id) } else { None };
        match (proposal, base) {
            (Some(p), Some(base)) => {
                lab.say(format!("node {id} (from {}): {}", node.parent.unwrap_or(0), describe(&p)));
                if !p.rationale.is_empty() {
                    lab.say(format!("  why: {}", p.rationale));
                }
                let parent_key = parent.as_ref().and_then(|r| r.key.as_deref());
                // What the experiment cache holds is served here; the rest goes to the executor.
                match self.cluster.clone().filter(|_| !lab.holds(&p, parent_key)) {
                    Some(cluster) => self.submit(&cluster, id, p, parent, base, stop),
                    None => Ok(spawn_node(id, async move { lab.run_node(id, &p, parent, base, stop).await })),
                }
            }
            _ => {
                lab.say("node 0: scoring the base model on the validation split");
                Ok(spawn_node(id, async move { lab.score_base().await }))
            }
        }
    }

    /// Write node `id`'s spec, submit it as a Slurm job and journal the job's id.
    fn submit(
        &mut self,
        cluster: &Arc<Cluster>,
        id: u64,
        proposal: Proposal,
        parent: Option<ParentRef>,
        base_score: f64,
        early_stop: Option<EarlyStop>,
    ) -> Result<NodeFuture<'a>, LabError> {
        let lab = &self.shared;
        let run_dir =
            std::path::absolute(&lab.run_dir).map_err(|e| LabError::Run(format!("{}: {e}", lab.run_dir.display())))?;
        let config = lab.host.config();
        let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let spec = crate::worker::NodeSpec {
            format: crate::worker::SPEC_FORMAT,
            key: lab.experiment_key(&proposal, parent.as_ref().and_then(|p| p.key.as_deref())),
            run_dir,
            node: id,
            proposal,
            parent: parent.map(|p| ParentRef { adapter: absolute(&p.adapter), ..p }),
            base_score,
            task: lab.task.clone(),
            task_file: absolute(&lab.task_file),
            model: lab.model_source().to_string(),
            plugins: absolute(lab.host.dir()),
            component_cache: config.cache_dir.as_deref().map(absolute),
            grant: config.grant,
            experiment_cache: lab.cache.as_ref().map(|c| absolute(&c.dir)),
            device: lab.device,
            early_stop,
        };
        let path = crate::worker::write_spec(&spec)?;
        let dir = path.parent().expect("a spec is in its node's folder").to_path_buf();
        let name = format!("trex-{}-{id}", lab.task.name);
        let job = cluster
            .submit(id, &name, &dir, &path)
            .map_err(|e| LabError::Run(format!("node {id}: Slurm refused the job: {e}")))?;
        lab.say(format!("  submitted as Slurm job {} (output: {})", job.id, job.log().display()));
        self.log(Event::Submitted { node: id, job: job.id.clone() })?;
        let cluster = cluster.clone();
        Ok(spawn_node(id, cluster.wait(job)))
    }

    /// After a resume: wait again on the job an earlier session submitted node `id` as, when
    /// Slurm still knows it or it wrote its outcome. `None`: the node runs (again) as usual.
    fn reattach(&mut self, id: u64) -> Option<NodeFuture<'a>> {
        let cluster = self.cluster.clone()?;
        let node = &self.state.tree.nodes[id as usize];
        if node.status() != NodeStatus::Running {
            return None;
        }
        let dir = self.lab.node_dir(id);
        // Submitted when its spec was written.
        let submitted_unix = std::fs::metadata(crate::worker::spec_path(&dir))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let job = Job { id: node.job.clone()?, node: id, dir, submitted_unix };
        let written = crate::worker::outcome_path(&job.dir).is_file();
        match Cluster::state(&job.id) {
            JobState::Unknown(why) if !written => {
                self.lab.say(format!("node {id}: Slurm job {} is lost ({why}); submitting the node again", job.id));
                None
            }
            state => {
                let how = match state {
                    JobState::Active(s) | JobState::Ended(s) => s,
                    JobState::Unknown(_) => "its outcome is written".into(),
                };
                self.lab.say(format!("node {id}: re-attached to Slurm job {} ({how})", job.id));
                cluster.adopt(&job);
                Some(spawn_node(id, cluster.wait(job)))
            }
        }
    }

    async fn finish_node(&mut self, id: u64, outcome: Result<NodeResult, NodeFailure>) -> Result<(), LabError> {
        let node = &self.state.tree.nodes[id as usize];
        let parent_score = node.parent.and_then(|p| self.state.tree.nodes[p as usize].score());
        match outcome {
            Ok(mut result) => {
                result.cost.llm_tokens = node.proposal_llm_tokens;
                let lesson = match &node.proposal {
                    Some(p) => lesson(p, &result, parent_score),
                    None => format!("base model: score {:.3}", result.score),
                };
                self.lab.say(format!(
                    "node {id} done: score {:.3} ({}/{}), gain {:+.3}, {:.0} s",
                    result.score, result.passed, result.total, result.reward, result.cost.seconds
                ));
                self.log(Event::Done { node: id, result: Box::new(result), lesson })?;
            }
            Err(NodeFailure { error, kind, mut cost, out_of_space }) => {
                if id == 0 {
                    return Err(LabError::Run(format!("scoring the base model failed: {error}")));
                }
                if out_of_space {
                    // Not the experiment's fault: the node stays unfinished, to run again on resume.
                    return Err(LabError::Run(format!(
                        "node {id} stopped: {error}\nthe disk is full; free some space, then run `trex-host resume {}`",
                        self.lab.run_dir.display()
                    )));
                }
                cost.llm_tokens = node.proposal_llm_tokens;
                let lesson = failure_lesson(node.proposal.as_ref(), &error);
                self.lab.say(format!("node {id} failed: {error}"));
                self.log(Event::Failed { node: id, error, lesson, cost, kind: Some(kind) })?;
            }
        }
        if id != 0 {
            let summary = self.state.tree.nodes[id as usize].summary();
            if let Err(e) = self.researcher.observe(&Outcome { node: summary }).await {
                self.lab.say(format!("  the Researcher could not take the outcome in: {e}"));
            }
        }
        Ok(())
    }

    /// Run until a budget is spent or no node is left to expand; then score the best node on
    /// the test split.
    pub async fn run(mut self) -> Result<SearchSummary, LabError> {
        if self.settings.budget.is_unbounded() {
            return Err(LabError::Run(
                "the search has no budget: set [budget] in the task or pass --nodes / --minutes".into(),
            ));
        }
        let resumed = !self.state.tree.nodes.is_empty();
        if !resumed {
            self.log(Event::Created { node: 0, parent: None, proposal: None, llm_tokens: 0 })?;
        }
        // Nodes that were pending or running when an earlier session stopped run again first.
        let mut queue: VecDeque<u64> = self.state.tree.nodes.iter().filter(|n| !n.finished()).map(|n| n.id).collect();
        if resumed && !queue.is_empty() {
            self.lab.say(format!("resuming: running again the interrupted node(s) {queue:?}"));
        }
        let mut in_flight: FuturesUnordered<NodeFuture<'a>> = FuturesUnordered::new();
        let _cancel = CancelOnDrop(self.cluster.clone());
        let mut reason = self.state.finished.clone();
        // The root must be scored before anything else can be expanded.
        if queue.front() == Some(&0) {
            queue.pop_front();
            let fut = self.start_node(0)?;
            let (id, r) = fut.await;
            self.finish_node(id, r).await?;
        }
        while reason.is_none() || !in_flight.is_empty() {
            while reason.is_none() && in_flight.len() < self.settings.workers.max(1) {
                if let Some(id) = queue.pop_front() {
                    let fut = self.start_node(id)?;
                    in_flight.push(fut);
                    continue;
                }
                if let Some(why) = self.spent(in_flight.len()) {
                    reason = Some(why);
                    break;
                }
                let created = self.state.tree.nodes.len() as u64;
                let mut rng = SplitMix64(self.settings.seed ^ created.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let progress = self.progress();
                match self.state.tree.select(
                    self.settings.strategy,
                    &self.settings.mcts,
                    &self.state.exhausted,
                    &mut rng,
                    progress,
                ) {
                    None => {
                        if in_flight.is_empty() {
                            reason = Some("no node left to expand".into());
                        }
                        break;
                    }
                    Some(parent) => {
                        if let Some(id) = self.propose(parent).await? {
                            let fut = self.start_node(id)?;
                            in_flight.push(fut);
                        }
                    }
                }
            }
            let next = match self.cluster.clone() {
                None => in_flight.next().await,
                Some(cluster) => {
                    // The jobs in flight are the search's: on Ctrl-C, and once the wall-time
                    // budget is spent, they are cancelled (and become failed nodes).
                    let left = self.settings.budget.wall_minutes.map(|m| m * 60.0 - self.now());
                    let over = async {
                        match left {
                            Some(s) if cluster.outstanding() > 0 => {
                                tokio::time::sleep(std::time::Duration::from_secs_f64(s.max(0.0))).await
                            }
                            _ => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        n = in_flight.next() => n,
                        _ = over => {
                            let jobs = cluster.cancel_all();
                            self.lab.say(format!("wall-time budget spent: cancelled Slurm job(s) {}", jobs.join(", ")));
                            continue;
                        }
                        _ = tokio::signal::ctrl_c() => {
                            let jobs = cluster.cancel_all();
                            return Err(LabError::Run(format!(
                                "interrupted: cancelled the Slurm job(s) in flight ({}); `trex-host resume {}` runs those nodes again",
                                jobs.join(", "),
                                self.lab.run_dir.display()
                            )));
                        }
                    }
                }
            };
            match next {
                Some((id, r)) => self.finish_node(id, r).await?,
                None if reason.is_none() => {}
                None => break,
            }
        }
        let reason = reason.unwrap_or_else(|| "stopped".into());
        self.finalize(reason).await
    }

    /// The node the search hands over: the best by validation score, or, where nodes were
    /// scored on a part of the validation split, the best of the top few on the whole split
    /// (so that the choice does not overfit a small sample). Returns it and the re-scored nodes.
    async fn choose(&self) -> Result<(Node, Vec<(u64, f64)>), LabError> {
        let tree = &self.state.tree;
        let best =
            tree.best().cloned().ok_or_else(|| LabError::Run("no node finished, not even the base model".into()))?;
        let k = self.settings.rescore_top;
        if k < 2 || !self.lab.validation_is_limited() {
            return Ok((best, Vec::new()));
        }
        let mut top: Vec<&Node> =
            tree.nodes.iter().filter(|n| n.id != 0 && n.result().is_some_and(|r| r.adapter.is_some())).collect();
        top.sort_by(|a, b| b.score().unwrap_or(0.0).total_cmp(&a.score().unwrap_or(0.0)).then(a.id.cmp(&b.id)));
        top.truncate(k);
        if top.len() < 2 {
            return Ok((best, Vec::new()));
        }
        self.lab.say(format!(
            "scoring the {} best nodes ({}) on the whole validation split before choosing",
            top.len(),
            top.iter().map(|n| format!("#{}", n.id)).collect::<Vec<_>>().join(", ")
        ));
        let mut rescored = Vec::with_capacity(top.len());
        for n in &top {
            let r = n.result().expect("finished nodes were kept");
            let score = self
                .lab
                .score_full_validation(r)
                .await
                .map_err(|e| unreadable_adapter(self.lab, n.id, r, "the whole validation split", e))?;
            rescored.push((n.id, score));
        }
        // The best on the whole split; ties go to the better score on the part, then the older node.
        let (chosen, _) = rescored
            .iter()
            .copied()
            .fold(None::<(u64, f64)>, |b, (id, s)| match b {
                Some((_, bs)) if bs >= s => b,
                _ => Some((id, s)),
            })
            .expect("at least two nodes");
        Ok((tree.nodes[chosen as usize].clone(), rescored))
    }

    async fn finalize(mut self, reason: String) -> Result<SearchSummary, LabError> {
        let lab = self.lab;
        let (best, base_test, best_test, baselines) = match &self.state.final_result {
            Some(f) => (self.state.tree.nodes[f.best as usize].clone(), f.base_test, f.best_test, f.baselines.clone()),
            None => {
                lab.say(format!("search stopped: {reason}"));
                let (best, rescored) = self.choose().await?;
                lab.say(format!("scoring the base model and the chosen node ({}) on the test split", best.id));
                let root = self.state.tree.nodes[0].result().cloned().expect("the base model was scored");
                let base_test = lab.score_test(&root).await?;
                let best_test = match best.result() {
                    Some(r) if r.adapter.is_some() => {
                        lab.score_test(r).await.map_err(|e| unreadable_adapter(lab, best.id, r, "the test split", e))?
                    }
                    _ => base_test,
                };
                let test_gain = executor::normalized_gain(best_test, base_test, lab.task.reference_score);
                let baselines = lab.baselines().await?;
                self.log(Event::Final(FinalResult {
                    best: best.id,
                    validation: best.score().unwrap_or(0.0),
                    base_test,
                    best_test,
                    test_gain,
                    rescored,
                    baselines: baselines.clone(),
                }))?;
                self.log(Event::Finished { reason: reason.clone() })?;
                (best, base_test, best_test, baselines)
            }
        };
        let nodes = &self.state.tree.nodes;
        Ok(SearchSummary {
            reason,
            best: best.id,
            base_validation: self.base_score().unwrap_or(0.0),
            best_validation: best.score().unwrap_or(0.0),
            base_test,
            best_test,
            test_gain: executor::normalized_gain(best_test, base_test, lab.task.reference_score),
            baselines,
            adapter: best.result().and_then(|r| r.adapter.as_ref()).map(|a| lab.run_dir.join(a)),
            nodes: nodes.len().saturating_sub(1),
            failed: nodes.iter().filter(|n| n.status() == NodeStatus::Failed).count(),
            rejected: self.state.rejected,
            seconds: self.now(),
            train_tokens: self.state.train_tokens(),
            llm_tokens: self.meter.spent(),
        })
    }
}

/// Read a run folder's journal: the start event's contents and the replayed state.
pub fn load_run(run_dir: &std::path::Path) -> Result<(Journal, PathBuf, Task, Settings, String, RunState), LabError> {
    let (journal, entries) = Journal::open(run_dir)?;
    let Some(Event::Start { task_file, task, settings, model, .. }) = entries.first().map(|e| e.event.clone()) else {
        return Err(LabError::Journal(JournalError {
            path: Journal::path_in(run_dir),
            message: "the journal does not begin with a start event".into(),
        }));
    };
    let state = RunState::replay(&entries).map_err(|e| e.in_run(run_dir))?;
    Ok((journal, task_file, *task, *settings, model, state))
}
