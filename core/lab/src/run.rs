//! The `search`, `resume` and `show` entry points, as library functions the command line, the
//! benchmarks and the tests share. Everything here takes resolved inputs: a loaded task whose
//! base model and data are local paths (see [`crate::task::Assets`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use trex_model::BaseModel;
use trex_plugin_host::llm::{OpenAiClient, OpenAiConfig, TokenMeter};
use trex_plugin_host::{HostConfig, PluginHost};

use crate::LabError;
use crate::cache::ExperimentCache;
use crate::executor::Lab;
use crate::journal::{Event, FORMAT, FinalResult, Journal, JournalError};
use crate::observer::SharedObserver;
use crate::search::{RunState, Search, SearchSummary, Settings, load_run};
use crate::task::Task;

/// Where and how to start a search.
#[derive(Clone)]
pub struct SearchRequest {
    /// The task, loaded (see [`Task::load`]) and with any overrides applied.
    pub task: Task,
    /// The file it was loaded from.
    pub task_file: PathBuf,
    /// The plugin folder.
    pub plugins: PathBuf,
    /// Host settings (cache, capabilities); its `llm` and `tokenizer` are filled here.
    pub host: HostConfig,
    /// Search settings; the budget here overrides the task's limit by limit.
    pub settings: Settings,
    /// The run folder (default: `runs/<task>-<strategy>-s<seed>-<unix time>`).
    pub run_dir: Option<PathBuf>,
    /// Where messages and progress go.
    pub observer: SharedObserver,
    /// The experiment cache folder (`None`: every experiment runs).
    pub experiment_cache: Option<PathBuf>,
}

impl std::fmt::Debug for SearchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchRequest")
            .field("task", &self.task.name)
            .field("task_file", &self.task_file)
            .field("settings", &self.settings)
            .field("run_dir", &self.run_dir)
            .finish()
    }
}

/// The plugin host of a search: every plugin under `plugins`, with the LLM client `llm`
/// describes (charged to `meter`) behind `llm.chat`. Plugins that fail to load are logged and
/// skipped; the task's validation names any it needs.
pub async fn open_host(
    plugins: &Path,
    mut config: HostConfig,
    llm: Option<&OpenAiConfig>,
    meter: &Arc<TokenMeter>,
) -> Result<(PluginHost, Option<Arc<OpenAiClient>>), LabError> {
    let client = match llm {
        Some(cfg) => {
            let client =
                Arc::new(OpenAiClient::new(cfg.clone(), meter.clone()).map_err(|e| LabError::Run(e.to_string()))?);
            config.llm = Some(client.clone());
            Some(client)
        }
        None => None,
    };
    Ok((PluginHost::open(plugins, config).await?, client))
}

/// Whether the task's Researcher or one of its data steps may call the LLM.
fn uses_llm(task: &Task, host: &PluginHost) -> bool {
    let granted = |name: &str| host.get(name).is_some_and(|p| p.granted.llm);
    granted(&task.researcher.plugin)
        || task.start.data_recipe.steps.iter().chain(&task.search_space.data_steps).any(|s| granted(&s.plugin))
}

/// Ask the LLM server what it supports, once, before any budget is spent; the client then uses
/// the first format that worked. The journal event to record it, or why the search cannot use
/// the server.
async fn check_llm(client: &OpenAiClient, observer: &SharedObserver) -> Result<Event, LabError> {
    let probe = client.probe().await;
    if let Some(why) = probe.failure() {
        return Err(LabError::Run(why));
    }
    let format = probe.chosen.expect("no failure means a format was chosen");
    observer.message(&format!(
        "LLM {}: structured output as {}{}",
        probe.server,
        format.as_str(),
        if probe.usage_reported { "" } else { "; it reports no token counts, so they are estimated" }
    ));
    Ok(Event::Llm { server: probe.server, format: Some(format), usage_reported: probe.usage_reported })
}

/// The tokenizer of the model being fine-tuned, behind the plugins' `tokenizer.count`.
#[derive(Debug)]
pub struct ModelTokens(pub trex_model::Tokenizer);

impl trex_plugin_host::TokenCounter for ModelTokens {
    fn count(&self, text: &str) -> usize {
        self.0.encode_continuation(text).len()
    }
}

fn load_base(path: &str) -> Result<BaseModel, LabError> {
    Ok(BaseModel::load(Path::new(path))?)
}

/// A lab for `req` (its task validated against the plugins, the base model loaded, the
/// experiment cache attached), the LLM client behind `llm.chat`, and the settings with the
/// task's budget filled in. Nothing is written.
pub async fn open_lab(
    req: &SearchRequest,
    run_dir: PathBuf,
) -> Result<(Lab, Option<Arc<OpenAiClient>>, Settings, Arc<TokenMeter>), LabError> {
    let mut task = req.task.clone();
    let task_file = &req.task_file;
    let mut settings = req.settings.clone();
    settings.budget = task.budget.overridden_by(&settings.budget);
    crate::search::executor_ready(&settings.executor)?;
    let meter = Arc::new(TokenMeter::new(settings.budget.llm_tokens));
    let base = load_base(&task.base_model)?;
    let mut host_config = req.host.clone();
    host_config.tokenizer = Some(Arc::new(ModelTokens(base.tokenizer.clone())));
    let (host, client) = open_host(&req.plugins, host_config, task.llm.as_ref(), &meter).await?;
    task.validate_with(&host, task_file).await?;
    if task.researcher.plugin == "llm" && task.llm.is_none() {
        return Err(LabError::Run(format!(
            "{}: the `llm` Researcher needs an LLM: add an [llm] section (base_url, model, api_key_env) or pass --llm-base-url and --llm-model",
            task_file.display()
        )));
    }
    let mut lab = Lab::open(host, task, base, run_dir)?;
    lab.task_file = task_file.clone();
    lab.device = settings.device;
    lab.observer = req.observer.clone();
    lab.cache = req.experiment_cache.clone().map(ExperimentCache::at);
    Ok((lab, client, settings, meter))
}

/// Start a search and run it to the end of its budget.
pub async fn search(req: SearchRequest) -> Result<(PathBuf, SearchSummary), LabError> {
    let budget = req.task.budget.overridden_by(&req.settings.budget);
    if budget.is_unbounded() {
        return Err(LabError::Run(format!(
            "{}: the search has no budget: add a [budget] section (nodes, wall_minutes or train_tokens) or pass --nodes / --minutes",
            req.task_file.display()
        )));
    }
    let run_dir = req.run_dir.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let name = format!("{}-{}-s{}-{secs}", req.task.name, req.settings.strategy.as_str(), req.settings.seed);
        PathBuf::from("runs").join(name)
    });
    let (lab, client, settings, meter) = open_lab(&req, run_dir.clone()).await?;
    let observer = req.observer.clone();
    let llm_event = match &client {
        Some(c) if uses_llm(&lab.task, &lab.host) => Some(check_llm(c, &observer).await?),
        _ => None,
    };
    let mut journal = Journal::create(&run_dir)?;
    let task_file = std::fs::canonicalize(&req.task_file).unwrap_or(req.task_file.clone());
    journal.append(
        0.0,
        &Event::Start {
            format: FORMAT,
            task_file,
            task: Box::new(lab.task.clone()),
            settings: Box::new(settings.clone()),
            model: lab.model_source().to_string(),
        },
    )?;
    journal.append(0.0, &Event::Session { resumed: false })?;
    let mut state = RunState::default();
    if let Some(e) = llm_event {
        journal.append(0.0, &e)?;
        state.apply(0.0, &e).map_err(|e| LabError::Run(e.to_string()))?;
    }
    observer.message(&format!("run folder: {}", run_dir.display()));
    let lab = Arc::new(lab);
    let search = Search::new(&lab, settings, journal, state, meter, client).await?;
    let summary = search.run().await?;
    Ok((run_dir, summary))
}

/// What may change when a run is resumed.
#[derive(Debug, Clone, Default)]
pub struct ResumeOverrides {
    /// Nodes run at once (default: as the run began).
    pub workers: Option<usize>,
    /// Where nodes train from now on (default: as the run began).
    pub device: Option<trex_model::train::ComputeDevice>,
    /// The experiment cache folder (`None`: every experiment runs).
    pub experiment_cache: Option<PathBuf>,
}

/// Continue a run that was stopped or killed: finished nodes are kept, interrupted ones run
/// again, and the search goes on within what is left of its budget.
pub async fn resume(
    run_dir: &Path,
    plugins: &Path,
    host: HostConfig,
    overrides: ResumeOverrides,
    observer: SharedObserver,
) -> Result<SearchSummary, LabError> {
    let (mut journal, task_file, mut task, mut settings, model, state) = load_run(run_dir)?;
    if let Some(w) = overrides.workers {
        settings.workers = w;
    }
    if let Some(d) = overrides.device {
        settings.device = d;
    }
    let meter = Arc::new(TokenMeter::new(settings.budget.llm_tokens));
    meter.add(state.llm_tokens);
    let base = load_base(&model)?;
    let mut host_config = host;
    host_config.tokenizer = Some(Arc::new(ModelTokens(base.tokenizer.clone())));
    let (host, client) = open_host(plugins, host_config, task.llm.as_ref(), &meter).await?;
    task.validate_with(&host, &task_file)
        .await
        .map_err(|e| LabError::Run(format!("the run's task no longer validates: {e}")))?;
    journal.append(state.t_offset, &Event::Session { resumed: true })?;
    let mut state = state;
    if let Some(c) = &client
        && uses_llm(&task, &host)
    {
        // What the server accepted before is kept; a run that never checked it does so now.
        match state.llm_format {
            Some(f) => c.set_format(f),
            None => {
                let e = check_llm(c, &observer).await?;
                journal.append(state.t_offset, &e)?;
                state.apply(state.t_offset, &e).map_err(|e| LabError::Run(e.to_string()))?;
            }
        }
    }
    let mut lab = Lab::open(host, task, base, run_dir.to_path_buf())?;
    lab.task_file = task_file;
    lab.device = settings.device;
    lab.observer = observer;
    lab.cache = overrides.experiment_cache.map(ExperimentCache::at);
    let lab = Arc::new(lab);
    let search = Search::new(&lab, settings, journal, state, meter, client).await?;
    search.run().await
}

/// A run as `show` presents it.
#[derive(Debug, serde::Serialize)]
pub struct RunView {
    /// The task.
    pub task: Task,
    /// The settings.
    pub settings: Settings,
    /// Every node.
    pub nodes: Vec<crate::tree::Node>,
    /// Proposals refused.
    pub rejected: usize,
    /// The test-split figures, once written.
    #[serde(rename = "final")]
    pub final_result: Option<FinalResult>,
    /// Why the search stopped, once it has.
    pub finished: Option<String>,
    /// Search seconds so far.
    pub seconds: f64,
}

/// Read a run folder without changing it.
pub fn view(run_dir: &Path) -> Result<RunView, LabError> {
    let entries = Journal::read(run_dir)?;
    let Some(Event::Start { task, settings, .. }) = entries.first().map(|e| e.event.clone()) else {
        return Err(LabError::Journal(JournalError {
            path: Journal::path_in(run_dir),
            message: "the journal does not begin with a start event".into(),
        }));
    };
    let state = RunState::replay(&entries).map_err(|e| e.in_run(run_dir))?;
    Ok(RunView {
        task: *task,
        settings: *settings,
        rejected: state.rejected,
        final_result: state.final_result,
        finished: state.finished,
        seconds: state.t_offset,
        nodes: state.tree.nodes,
    })
}
