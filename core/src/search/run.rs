//! The `search`, `resume` and `show` commands, as library functions the CLI and tests share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::executor::Lab;
use super::journal::{Event, Journal};
use super::task::Task;
use super::tree::{NodeStatus, Tree};
use super::{RunState, Search, SearchSummary, Settings, load_run};
use crate::llm::{OpenAiClient, OpenAiConfig, TokenMeter};
use crate::plugin::{HostConfig, PluginHost};

/// Where and how to start a search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// The task file or folder.
    pub task: PathBuf,
    /// The plugin folder.
    pub plugins: PathBuf,
    /// Host settings (cache, capabilities); its `llm` is filled from the task.
    pub host: HostConfig,
    /// Search settings; the budget here overrides the task's limit by limit.
    pub settings: Settings,
    /// Override the Researcher plugin.
    pub researcher: Option<String>,
    /// Override the task's base model.
    pub model: Option<String>,
    /// Override (or supply) the task's LLM settings.
    pub llm: Option<OpenAiConfig>,
    /// The run folder (default: `runs/<task>-<strategy>-s<seed>-<unix time>`).
    pub run_dir: Option<PathBuf>,
}

async fn open_host(
    plugins: &Path,
    mut config: HostConfig,
    llm: Option<&OpenAiConfig>,
    meter: &Arc<TokenMeter>,
) -> Result<PluginHost, String> {
    if let Some(cfg) = llm {
        let client = OpenAiClient::new(cfg.clone(), meter.clone()).map_err(|e| e.to_string())?;
        config.llm = Some(Arc::new(client));
    }
    let host = PluginHost::discover(plugins, config).await.map_err(|e| e.to_string())?;
    for f in host.failures() {
        tracing::warn!("skipping plugin in {}: {}", f.dir.display(), f.error);
    }
    Ok(host)
}

/// Start a search and run it to the end of its budget.
pub async fn search(req: SearchRequest) -> Result<(PathBuf, SearchSummary), String> {
    let (mut task, task_file) = Task::load(&req.task).map_err(|e| e.to_string())?;
    if let Some(r) = &req.researcher {
        if r != &task.researcher.plugin {
            task.researcher.config = serde_json::json!({});
        }
        task.researcher.plugin = r.clone();
    }
    if let Some(m) = &req.model {
        task.base_model = m.clone();
    }
    if req.llm.is_some() {
        task.llm = req.llm.clone();
    }
    let mut settings = req.settings.clone();
    settings.budget = task.budget.overridden_by(&settings.budget);
    if settings.budget.is_unbounded() {
        return Err(format!(
            "{}: the search has no budget: add a [budget] section (nodes, wall_minutes or train_tokens) or pass --nodes / --minutes",
            task_file.display()
        ));
    }
    let meter = Arc::new(TokenMeter::new(settings.budget.llm_tokens));
    let base = crate::assets::load_model(&task.base_model)?;
    let mut host_config = req.host.clone();
    host_config.tokenizer = Some(Arc::new(base.tokenizer.clone()));
    let host = open_host(&req.plugins, host_config, task.llm.as_ref(), &meter).await?;
    task.validate_with(&host).await.map_err(|e| format!("{}: {e}", task_file.display()))?;
    if task.researcher.plugin == "llm" && task.llm.is_none() {
        return Err(format!(
            "{}: the `llm` Researcher needs an LLM: add an [llm] section (base_url, model, api_key_env) or pass --llm-base-url and --llm-model",
            task_file.display()
        ));
    }
    let run_dir = req.run_dir.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from("runs").join(format!("{}-{}-s{}-{secs}", task.name, settings.strategy.as_str(), settings.seed))
    });
    let mut journal = Journal::create(&run_dir).map_err(|e| e.to_string())?;
    let task_file = std::fs::canonicalize(&task_file).unwrap_or(task_file);
    journal
        .append(
            0.0,
            Event::Start {
                task_file,
                task: Box::new(task.clone()),
                settings: Box::new(settings.clone()),
                model: base.source.display().to_string(),
            },
        )
        .map_err(|e| e.to_string())?;
    journal.append(0.0, Event::Session { resumed: false }).map_err(|e| e.to_string())?;
    eprintln!("run folder: {}", run_dir.display());
    let mut lab = Lab::open(host, task, base, run_dir.clone())?;
    lab.device = settings.device;
    let search = Search::new(&lab, settings, journal, RunState::default(), meter).await?;
    let summary = search.run().await?;
    Ok((run_dir, summary))
}

/// Continue a run that was stopped or killed: finished nodes are kept, interrupted ones run
/// again, and the search goes on within what is left of its budget.
pub async fn resume(
    run_dir: &Path,
    plugins: &Path,
    host: HostConfig,
    workers: Option<usize>,
    device: Option<crate::train::ComputeDevice>,
) -> Result<SearchSummary, String> {
    let (mut journal, _task_file, mut task, mut settings, model, state) = load_run(run_dir)?;
    if let Some(w) = workers {
        settings.workers = w;
    }
    if let Some(d) = device {
        settings.device = d;
    }
    let meter = Arc::new(TokenMeter::new(settings.budget.llm_tokens));
    meter.add(state.llm_tokens);
    let base = crate::assets::load_model(&model)?;
    let mut host_config = host;
    host_config.tokenizer = Some(Arc::new(base.tokenizer.clone()));
    let host = open_host(plugins, host_config, task.llm.as_ref(), &meter).await?;
    task.validate_with(&host).await.map_err(|e| format!("the run's task no longer validates: {e}"))?;
    journal.append(state.t_offset, Event::Session { resumed: true }).map_err(|e| e.to_string())?;
    let mut lab = Lab::open(host, task, base, run_dir.to_path_buf())?;
    lab.device = settings.device;
    let search = Search::new(&lab, settings, journal, state, meter).await?;
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
    pub nodes: Vec<super::tree::Node>,
    /// Proposals refused.
    pub rejected: usize,
    /// The final event's figures, once written.
    #[serde(rename = "final")]
    pub final_result: Option<serde_json::Value>,
    /// Why the search stopped, once it has.
    pub finished: Option<String>,
    /// Search seconds so far.
    pub seconds: f64,
}

/// Read a run folder without changing it.
pub fn view(run_dir: &Path) -> Result<RunView, String> {
    let entries = Journal::read(run_dir).map_err(|e| e.to_string())?;
    let Some(Event::Start { task, settings, .. }) = entries.first().map(|e| e.event.clone()) else {
        return Err(format!("{}: the journal does not begin with a start event", Journal::path_in(run_dir).display()));
    };
    let state = RunState::replay(&entries)?;
    Ok(RunView {
        task: *task,
        settings: *settings,
        rejected: state.rejected,
        final_result: state.final_event.map(|e| serde_json::to_value(e).expect("events serialize")),
        finished: state.finished,
        seconds: state.t_offset,
        nodes: state.tree.nodes,
    })
}

/// The tree as indented text, one node per line (and an error line under failed nodes).
pub fn render_tree(view: &RunView) -> String {
    let tree = Tree { nodes: view.nodes.clone() };
    let best = tree.best().map(|n| n.id);
    let mut out = format!(
        "task {} · strategy {} · seed {} · {} experiments, {} failed, {} proposals refused · {:.0} s\n",
        view.task.name,
        view.settings.strategy.as_str(),
        view.settings.seed,
        view.nodes.len().saturating_sub(1),
        view.nodes.iter().filter(|n| n.status == NodeStatus::Failed).count(),
        view.rejected,
        view.seconds
    );
    fn walk(tree: &Tree, id: u64, depth: usize, best: Option<u64>, out: &mut String) {
        let n = &tree.nodes[id as usize];
        let indent = "  ".repeat(depth);
        let what = match &n.proposal {
            Some(p) => super::executor::describe(p),
            None => "base model".into(),
        };
        let score = match (&n.result, n.status) {
            (Some(r), NodeStatus::Done) => {
                format!("score {:.3} gain {:+.3} {:>4.0} s", r.score, r.reward, r.cost.seconds)
            }
            _ => n.status.as_str().to_string(),
        };
        let star = if Some(id) == best { " ★" } else { "" };
        out.push_str(&format!("{indent}#{id} {score}  {what}{star}\n"));
        if let Some(e) = &n.error {
            let first: String = e.lines().next().unwrap_or("").chars().take(160).collect();
            out.push_str(&format!("{indent}   error: {first}\n"));
        }
        let kids: Vec<u64> = tree.children(id).map(|c| c.id).collect();
        for c in kids {
            walk(tree, c, depth + 1, best, out);
        }
    }
    if !tree.nodes.is_empty() {
        walk(&tree, 0, 0, best, &mut out);
    }
    if let Some(f) = &view.final_result {
        out.push_str(&format!(
            "test split: base {:.3}, best node #{} {:.3} (normalized gain {:+.3})\n",
            f["base_test"].as_f64().unwrap_or(0.0),
            f["best"],
            f["best_test"].as_f64().unwrap_or(0.0),
            f["test_gain"].as_f64().unwrap_or(0.0)
        ));
    }
    if let Some(r) = &view.finished {
        out.push_str(&format!("stopped: {r}\n"));
    }
    out
}

/// The closing lines of a search.
pub fn render_summary(run_dir: &Path, s: &SearchSummary) -> String {
    let mut out = format!(
        "\nsearch finished ({}) after {} experiments ({} failed, {} proposals refused) in {:.0} s; {} training tokens, {} LLM tokens\n",
        s.reason, s.nodes, s.failed, s.rejected, s.seconds, s.train_tokens, s.llm_tokens
    );
    out.push_str(&format!(
        "validation: base {:.3} → best node #{} {:.3}\n",
        s.base_validation, s.best, s.best_validation
    ));
    out.push_str(&format!(
        "test (held out): base {:.3} → {:.3}, normalized gain {:+.3}\n",
        s.base_test, s.best_test, s.test_gain
    ));
    match &s.adapter {
        Some(a) => out.push_str(&format!("best adapter: {}\n", a.display())),
        None => out.push_str("no experiment beat the base model on validation; no adapter to use\n"),
    }
    out.push_str(&format!("tree: trex-host show {}\n", run_dir.display()));
    out
}

/// One (strategy, seed) search of a benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRun {
    /// Strategy.
    pub strategy: String,
    /// Seed.
    pub seed: u64,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The best node's normalized gain on validation.
    pub validation_gain: f64,
    /// Normalized gain on the test split.
    pub test_gain: f64,
    /// Best validation score.
    pub best_validation: f64,
    /// Best node's test score.
    pub best_test: f64,
    /// Experiments run.
    pub nodes: usize,
    /// Experiments failed.
    pub failed: usize,
    /// Search seconds.
    pub seconds: f64,
}

/// Run (or resume, or reuse) one search per strategy and seed under `out`, each in its own run
/// folder, and report every run as it finishes.
pub async fn bench_search(
    base: SearchRequest,
    strategies: &[super::tree::Strategy],
    ablations: &[super::Ablation],
    seeds: &[u64],
    out: &Path,
    mut on_run: impl FnMut(&BenchRun),
) -> Result<Vec<BenchRun>, String> {
    let mut runs = Vec::new();
    // The full system, then each ablation on its own, at the same budget.
    let variants: Vec<Option<super::Ablation>> =
        std::iter::once(None).chain(ablations.iter().copied().map(Some)).collect();
    for &strategy in strategies {
        for &variant in &variants {
            let label = match variant {
                None => strategy.as_str().to_string(),
                Some(a) => format!("{} without {}", strategy.as_str(), a.as_str()),
            };
            for &seed in seeds {
                let folder = match variant {
                    None => format!("{}-s{seed}", strategy.as_str()),
                    Some(a) => format!("{}-no-{}-s{seed}", strategy.as_str(), a.as_str()),
                };
                let run_dir = out.join(folder);
                let done = view(&run_dir).ok().filter(|v| v.final_result.is_some());
                if done.is_none() {
                    if Journal::path_in(&run_dir).is_file() {
                        resume(&run_dir, &base.plugins, base.host.clone(), None, None).await?;
                    } else {
                        let mut req = base.clone();
                        req.settings.strategy = strategy;
                        req.settings.seed = seed;
                        req.settings.ablations = variant.into_iter().collect();
                        req.run_dir = Some(run_dir.clone());
                        search(req).await?;
                    }
                }
                let run = bench_run(&run_dir, &label, seed)?;
                on_run(&run);
                runs.push(run);
            }
        }
    }
    let json = serde_json::to_string_pretty(&runs).expect("bench runs serialize");
    std::fs::write(out.join("results.json"), json).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join("table.md"), bench_table(&runs)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(runs)
}

/// One finished benchmark run, read back from its folder.
fn bench_run(run_dir: &Path, label: &str, seed: u64) -> Result<BenchRun, String> {
    let v = view(run_dir)?;
    let f = v.final_result.clone().ok_or_else(|| format!("{}: the run has no final result", run_dir.display()))?;
    let tree = Tree { nodes: v.nodes.clone() };
    let best = tree.best().and_then(|n| n.result.clone());
    Ok(BenchRun {
        strategy: label.into(),
        seed,
        run_dir: run_dir.to_path_buf(),
        validation_gain: best.as_ref().map_or(0.0, |r| r.reward),
        test_gain: f["test_gain"].as_f64().unwrap_or(0.0),
        best_validation: best.as_ref().map_or(0.0, |r| r.score),
        best_test: f["best_test"].as_f64().unwrap_or(0.0),
        nodes: v.nodes.len().saturating_sub(1),
        failed: v.nodes.iter().filter(|n| n.status == NodeStatus::Failed).count(),
        seconds: v.seconds,
    })
}

/// Mean and sample standard deviation (0 for a single value).
pub(crate) fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

/// The Markdown table of a benchmark: one row per strategy, mean ± standard deviation over seeds.
pub fn bench_table(runs: &[BenchRun]) -> String {
    let mut out = String::from(
        "| strategy | seeds | validation gain | test gain | best validation score | best test score | experiments (failed) | seconds |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut strategies: Vec<&str> = runs.iter().map(|r| r.strategy.as_str()).collect();
    strategies.dedup();
    for s in strategies {
        let rs: Vec<&BenchRun> = runs.iter().filter(|r| r.strategy == s).collect();
        let col = |f: fn(&BenchRun) -> f64| mean_sd(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let (vg, vs) = col(|r| r.validation_gain);
        let (tg, ts) = col(|r| r.test_gain);
        let (bv, _) = col(|r| r.best_validation);
        let (bt, _) = col(|r| r.best_test);
        let (sec, _) = col(|r| r.seconds);
        let nodes: usize = rs.iter().map(|r| r.nodes).sum();
        let failed: usize = rs.iter().map(|r| r.failed).sum();
        out.push_str(&format!(
            "| {s} | {} | {vg:+.3} ± {vs:.3} | {tg:+.3} ± {ts:.3} | {bv:.3} | {bt:.3} | {nodes} ({failed}) | {sec:.0} |\n",
            rs.len()
        ));
    }
    out
}
