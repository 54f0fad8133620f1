//! `trex-host search`, `resume` and `show`: the main job, continuing it, and looking at it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use trex_lab::executor::ExecutorKind;
use trex_lab::memory::MemoryParams;
use trex_lab::run::{ResumeOverrides, SearchRequest};
use trex_lab::slurm::SlurmOptions;
use trex_lab::task::Budget;
use trex_lab::tree::{Backup, MctsParams, Strategy};
use trex_lab::{Ablation, Settings};
use trex_model::train::ComputeDevice;
use trex_plugin_host::llm::OpenAiConfig;

use super::{Global, host_config};
use crate::progress::Bars;
use crate::render::{render_summary, render_tree};

/// Search over fine-tuning experiments for a task (the main job).
#[derive(clap::Args, Debug)]
pub struct SearchCommand {
    /// The task: a task.toml file or the folder holding one.
    task: PathBuf,
    /// How the next node to expand is chosen.
    #[arg(long, value_parser = super::named(&Strategy::NAMES, Strategy::from_name), default_value = "mcts")]
    strategy: Strategy,
    /// Researcher plugin (default: the task's, else `heuristic`).
    #[arg(long)]
    researcher: Option<String>,
    /// Seed of the strategy and the Researcher.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Nodes run at once, within one budget.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Budget: experiments (overrides the budget section of the task).
    #[arg(long)]
    nodes: Option<u64>,
    /// Budget: wall-clock minutes; no node starts when the time left would not cover a typical one.
    #[arg(long)]
    minutes: Option<f64>,
    /// Budget: tokens trained on.
    #[arg(long)]
    train_tokens: Option<u64>,
    /// Budget: LLM tokens spent by plugins.
    #[arg(long)]
    llm_tokens: Option<u64>,
    /// Run folder [default: runs/TASK-STRATEGY-sSEED-UNIXTIME].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Base model (overrides the task's base_model).
    #[arg(long)]
    model: Option<String>,
    /// MCTS: UCT exploration constant, against scores normalized to [0, 1] over the finished
    /// nodes; it shrinks to zero as the budget runs out.
    #[arg(long, default_value_t = MctsParams::default().exploration)]
    exploration: f64,
    /// MCTS: progressive widening allows max(1, floor(k * subtree_nodes^alpha)) children; this is k.
    #[arg(long, default_value_t = MctsParams::default().widening_k)]
    widening_k: f64,
    /// MCTS: progressive widening exponent alpha.
    #[arg(long, default_value_t = MctsParams::default().widening_alpha)]
    widening_alpha: f64,
    /// MCTS: reward of a failed node.
    #[arg(long, default_value_t = MctsParams::default().failure_reward, allow_hyphen_values = true)]
    failure_reward: f64,
    /// MCTS and AB-MCTS: children the root gets (the start recipe and distinct alternatives)
    /// before the search goes deeper.
    #[arg(long, default_value_t = MctsParams::default().drafts)]
    drafts: usize,
    /// MCTS: how a subtree's value is backed up: `max` (find the best experiment) or `mean`.
    #[arg(long, value_parser = super::named(&["max", "mean"], Backup::from_name), default_value = "max")]
    backup: Backup,
    /// Approximate token budget of the Researcher's context.
    #[arg(long, default_value_t = 3000)]
    context_tokens: usize,
    /// OpenAI-compatible server root up to /v1, e.g. `https://api.openai.com/v1` (overrides the llm section of the task).
    #[arg(long, requires = "llm_model")]
    llm_base_url: Option<String>,
    /// Model name for the LLM server.
    #[arg(long, requires = "llm_base_url")]
    llm_model: Option<String>,
    /// Environment variable holding the LLM API key (the key never leaves the host).
    #[arg(long)]
    llm_api_key_env: Option<String>,
    /// Switch parts of the system off to measure what they contribute (comma-separated):
    /// `bad-cases` (no bad-case analysis for the Researcher), `data-tools` (training-recipe
    /// changes only), `memory` (the Researcher sees only the node it expands).
    #[arg(long, value_parser = super::named(&Ablation::NAMES, Ablation::from_name), value_delimiter = ',')]
    ablate: Vec<Ablation>,
    /// Where nodes train: `cpu` or `cuda` (the first NVIDIA GPU).
    #[arg(long, value_parser = super::device(), default_value = "cpu")]
    device: ComputeDevice,
    /// Stop an experiment's training when its loss is clearly worse than its finished
    /// siblings' at the same steps (25%, 0.1 nats and two standard errors above the best of
    /// them, over the last half of its steps, after a quarter of them); it saves the rest of its
    /// training and its evaluation, and the node fails as `stopped`.
    #[arg(long)]
    early_stop: bool,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    slurm: SlurmArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// When the search ends, serve its best adapter over the OpenAI chat-completions protocol
    /// (as `trex-host serve RUN_DIR` does), on 127.0.0.1:8000, or on the address given as
    /// `--serve=HOST:PORT` (with `=`, so that `--serve TASK` still reads TASK as the task).
    #[arg(
        long,
        value_name = "HOST:PORT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = super::serve::DEFAULT_BIND
    )]
    serve: Option<String>,
}

/// Where nodes run, and how Slurm jobs are asked for (over the task's `[slurm]` section).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Running nodes as Slurm jobs")]
pub struct SlurmArgs {
    /// Where nodes run: `local` (this process) or `slurm` (one `sbatch` job per node, at most
    /// `--workers` in flight; the run folder, the plugins, the model and this program must be
    /// on storage the compute nodes share).
    #[arg(long, value_parser = ["local", "slurm"], default_value = "local")]
    executor: String,
    /// sbatch --partition.
    #[arg(long, value_name = "NAME")]
    slurm_partition: Option<String>,
    /// sbatch --account.
    #[arg(long, value_name = "NAME")]
    slurm_account: Option<String>,
    /// sbatch --time: each job's time limit (`MINUTES`, `HH:MM:SS`, `D-HH:MM`).
    #[arg(long, value_name = "TIME")]
    slurm_time: Option<String>,
    /// sbatch --cpus-per-task.
    #[arg(long, value_name = "N")]
    slurm_cpus: Option<u32>,
    /// sbatch --mem, e.g. `16G`.
    #[arg(long, value_name = "SIZE")]
    slurm_mem: Option<String>,
    /// GPUs per job (sbatch --gres=gpu:N); nodes then train with `--device cuda`.
    #[arg(long, value_name = "N")]
    slurm_gpus: Option<u32>,
    /// A further sbatch flag, as given (repeatable), e.g. `--slurm-arg=--qos=short`.
    #[arg(long = "slurm-arg", value_name = "FLAG", allow_hyphen_values = true)]
    slurm_args: Vec<String>,
    /// Seconds between two looks at a job's state [default: the task's, else 2].
    #[arg(long, value_name = "SECONDS")]
    slurm_poll: Option<f64>,
}

impl SlurmArgs {
    /// The executor these options choose, over the task's `[slurm]` section.
    pub fn executor(&self, task: Option<&SlurmOptions>) -> Result<ExecutorKind> {
        let given = [
            ("--slurm-partition", self.slurm_partition.is_some()),
            ("--slurm-account", self.slurm_account.is_some()),
            ("--slurm-time", self.slurm_time.is_some()),
            ("--slurm-cpus", self.slurm_cpus.is_some()),
            ("--slurm-mem", self.slurm_mem.is_some()),
            ("--slurm-gpus", self.slurm_gpus.is_some()),
            ("--slurm-arg", !self.slurm_args.is_empty()),
            ("--slurm-poll", self.slurm_poll.is_some()),
        ];
        if self.executor != "slurm" {
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                bail!("{flag} applies to Slurm jobs: add --executor slurm");
            }
            return Ok(ExecutorKind::Local);
        }
        let cli = SlurmOptions {
            partition: self.slurm_partition.clone(),
            account: self.slurm_account.clone(),
            time: self.slurm_time.clone(),
            cpus: self.slurm_cpus,
            mem: self.slurm_mem.clone(),
            gpus: self.slurm_gpus,
            sbatch_args: self.slurm_args.clone(),
            ..SlurmOptions::default()
        };
        let mut options = task.cloned().unwrap_or_default().overridden_by(&cli);
        if let Some(p) = self.slurm_poll {
            options.poll_seconds = p;
        }
        options.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(ExecutorKind::Slurm(options))
    }
}

/// Where finished experiments are kept, so that no search pays twice for one.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    /// The experiment cache: every finished experiment (result, per-example verdicts, adapter),
    /// keyed by the content of everything that determines it, shared by every run
    /// [default: $TREX_CACHE_DIR/experiments, else ~/.cache/trex/experiments].
    #[arg(long, value_name = "DIR")]
    experiment_cache: Option<PathBuf>,
    /// Run every experiment, even one the cache holds (and keep nothing in it).
    #[arg(long, conflicts_with = "experiment_cache")]
    no_experiment_cache: bool,
}

impl CacheArgs {
    /// The cache in `dir` (the default folder when `None`).
    pub fn at(dir: Option<PathBuf>) -> CacheArgs {
        CacheArgs { experiment_cache: dir, no_experiment_cache: false }
    }

    /// The cache folder to use, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        if self.no_experiment_cache {
            return None;
        }
        Some(self.experiment_cache.clone().unwrap_or_else(|| trex_assets::cache_dir().join("experiments")))
    }
}

impl SearchCommand {
    /// The search settings these options describe.
    fn settings(&self) -> Settings {
        Settings {
            strategy: self.strategy,
            seed: self.seed,
            workers: self.workers.max(1),
            budget: Budget {
                nodes: self.nodes,
                wall_minutes: self.minutes,
                train_tokens: self.train_tokens,
                llm_tokens: self.llm_tokens,
            },
            mcts: MctsParams {
                exploration: self.exploration,
                widening_k: self.widening_k,
                widening_alpha: self.widening_alpha,
                failure_reward: self.failure_reward,
                drafts: self.drafts,
                backup: self.backup,
                ..MctsParams::default()
            },
            memory: MemoryParams { token_budget: self.context_tokens, ..Default::default() },
            ablations: self.ablate.clone(),
            device: self.device,
            early_stop: self.early_stop,
            ..Default::default()
        }
    }

    /// Run it.
    pub async fn execute(self, global: &Global) -> Result<ExitCode> {
        let (mut task, task_file) = crate::assets::load_task(&self.task)?;
        if let Some(r) = &self.researcher {
            task.set_researcher(r);
        }
        if let Some(m) = &self.model {
            task.set_base_model(m, &crate::assets::Registry)?;
        }
        if let (Some(base_url), Some(model)) = (&self.llm_base_url, &self.llm_model) {
            task.llm = Some(OpenAiConfig {
                base_url: base_url.clone(),
                model: model.clone(),
                api_key_env: self.llm_api_key_env.clone(),
                ..OpenAiConfig::default()
            });
        }
        let mut settings = self.settings();
        settings.executor = self.slurm.executor(task.slurm.as_ref())?;
        if let ExecutorKind::Slurm(SlurmOptions { gpus: Some(_), .. }) = settings.executor {
            settings.device = ComputeDevice::Cuda;
        }
        let req = SearchRequest {
            task,
            task_file,
            plugins: global.plugins.clone(),
            host: host_config(global)?,
            settings,
            run_dir: self.run_dir.clone(),
            observer: Arc::new(Bars::new()),
            experiment_cache: self.cache.dir(),
        };
        let (run_dir, summary) = trex_lab::run::search(req).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", render_tree(&trex_lab::run::view(&run_dir)?));
            print!("{}", render_summary(&run_dir, &summary));
        }
        if let Some(bind) = self.serve {
            return super::serve::ServeCommand::run_folder(run_dir, bind).execute();
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Continue a stopped or killed search.
#[derive(clap::Args, Debug)]
pub struct ResumeCommand {
    /// The run folder (printed when the search started).
    run_dir: PathBuf,
    /// Nodes run at once (default: as the run began).
    #[arg(long)]
    workers: Option<usize>,
    /// Where nodes train from now on (default: as the run began).
    #[arg(long, value_parser = super::device())]
    device: Option<ComputeDevice>,
    #[command(flatten)]
    cache: CacheArgs,
}

impl ResumeCommand {
    /// Run it.
    pub async fn execute(self, global: &Global) -> Result<ExitCode> {
        let overrides =
            ResumeOverrides { workers: self.workers, device: self.device, experiment_cache: self.cache.dir() };
        let observer = Arc::new(Bars::new());
        let summary =
            trex_lab::run::resume(&self.run_dir, &global.plugins, host_config(global)?, overrides, observer).await?;
        print!("{}", render_tree(&trex_lab::run::view(&self.run_dir)?));
        print!("{}", render_summary(&self.run_dir, &summary));
        Ok(ExitCode::SUCCESS)
    }
}

/// Run one experiment from a node spec and write its outcome: what each Slurm job of a search
/// with `--executor slurm` runs, and a way to rerun one node by hand to debug it.
///
/// The spec (`RUN/nodes/N/spec.json`, written by the search) names everything the node needs:
/// the recipe, the parent adapter, the task, the model and the plugins. The outcome goes to
/// `RUN/nodes/N/outcome.json`, written whole or not at all. The global `--plugins` and
/// `--cache-dir` are not used: the spec's are.
#[derive(clap::Args, Debug)]
pub struct WorkerCommand {
    /// The node spec file.
    spec: PathBuf,
}

impl WorkerCommand {
    /// Run it. Exits 0 once an outcome is written, also a failed node's.
    pub async fn execute(self) -> Result<ExitCode> {
        let spec = trex_lab::worker::read_spec(&self.spec)?;
        eprintln!("trex worker: node {} of {}", spec.node, spec.run_dir.display());
        let outcome = trex_lab::worker::run(&spec, Arc::new(Bars::new())).await?;
        match (&outcome.result, &outcome.failure) {
            (Some(r), _) => println!(
                "node {} done: score {:.3} ({}/{}), {:.0} s",
                spec.node, r.score, r.passed, r.total, r.cost.seconds
            ),
            (_, Some(f)) => println!("node {} failed: {}", spec.node, f.error),
            _ => {}
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Print a run's experiment tree with scores (also while it runs).
#[derive(clap::Args, Debug)]
pub struct ShowCommand {
    /// The run folder.
    run_dir: PathBuf,
    /// Print the whole run (task, settings, every node with its result) as JSON.
    #[arg(long)]
    json: bool,
}

impl ShowCommand {
    /// Run it.
    pub fn execute(self) -> Result<ExitCode> {
        let view = trex_lab::run::view(&self.run_dir)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            print!("{}", render_tree(&view));
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    fn parsed(args: &[&str]) -> super::SearchCommand {
        match Cli::try_parse_from(args).expect("the arguments parse").command {
            Command::Search(s) => *s,
            other => panic!("not a search: {other:?}"),
        }
    }

    #[test]
    fn serve_before_the_task_leaves_the_task_alone_and_an_address_needs_an_equals_sign() {
        let s = parsed(&["trex-host", "search", "--serve", "examples/tasks/x"]);
        assert_eq!(s.task, std::path::Path::new("examples/tasks/x"));
        assert_eq!(s.serve.as_deref(), Some(super::super::serve::DEFAULT_BIND));
        let s = parsed(&["trex-host", "search", "examples/tasks/x", "--serve=0.0.0.0:9000"]);
        assert_eq!(s.serve.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(parsed(&["trex-host", "search", "examples/tasks/x"]).serve, None);
    }
}
