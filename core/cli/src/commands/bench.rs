//! `trex-host bench ...`: benchmarks that print tables (see BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Subcommand;
use trex_lab::observer::Silent;
use trex_lab::run::SearchRequest;
use trex_lab::task::Budget;
use trex_lab::tree::Strategy;
use trex_lab::{Ablation, Settings};
use trex_model::train::ComputeDevice;

use super::search::CacheArgs;
use super::{Global, host_config};
use crate::bench;

/// Benchmarks that print tables (see BENCHMARKS.md).
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// FT-Bench-lite: a search per task, strategy, ablation and seed at equal budget, then one
    /// table across tasks (base and best scores on validation and test, normalized gains, cost;
    /// mean ± spread over seeds) and an SVG plot of the best validation score against experiments.
    /// Writes `OUT/<task>/<strategy>-s<seed>/` per run (finished runs are reused, interrupted ones
    /// resumed), and OUT/results.json, OUT/table.md and OUT/plot.svg after each task.
    Tasks {
        /// Comma-separated task folders (default: every folder of examples/tasks holding a task.toml).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<PathBuf>,
        /// Comma-separated strategies.
        #[arg(long, value_parser = super::named(&Strategy::NAMES, Strategy::from_name), value_delimiter = ',', default_value = "mcts,greedy")]
        strategies: Vec<Strategy>,
        /// Ablations to compare with the full system, each on its own at the same budget
        /// (comma-separated: bad-cases, data-tools, memory).
        #[arg(long, value_parser = super::named(&Ablation::NAMES, Ablation::from_name), value_delimiter = ',')]
        ablate: Vec<Ablation>,
        /// Comma-separated seeds.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        seeds: Vec<u64>,
        /// Experiments per search (default: each task's own `budget.nodes`).
        #[arg(long)]
        budget: Option<u64>,
        /// Folder of the runs and the results.
        #[arg(long, default_value = "runs/ftbench")]
        out: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Search efficiency: one search per strategy and seed on a task at equal budget; prints the
    /// mean normalized gain (validation and test) per strategy. Finished runs are reused and
    /// interrupted ones resumed, so the command can be re-run after a stop.
    Search {
        /// The task (task.toml or its folder).
        #[arg(default_value = "examples/tasks/unit-conversion")]
        task: PathBuf,
        /// Comma-separated strategies.
        #[arg(long, value_parser = super::named(&Strategy::NAMES, Strategy::from_name), value_delimiter = ',', default_value = "mcts,greedy,sequential,random")]
        strategies: Vec<Strategy>,
        /// Ablations to compare with the full system, each on its own at the same budget
        /// (comma-separated: bad-cases, data-tools, memory).
        #[arg(long, value_parser = super::named(&Ablation::NAMES, Ablation::from_name), value_delimiter = ',')]
        ablate: Vec<Ablation>,
        /// Comma-separated seeds.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        seeds: Vec<u64>,
        /// Experiments per search.
        #[arg(long, default_value_t = 4)]
        nodes: u64,
        /// Folder of the runs, results.json, table.md and report.html (the runs side by side).
        #[arg(long, default_value = "runs/bench-search")]
        out: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Fill the experiment table a replay runs on: real searches (each strategy at each
    /// training seed, with the experiment cache on, so nothing already run is paid for twice),
    /// then a test-split score for every cached experiment of the task. Finished runs are
    /// reused and interrupted ones resumed.
    Table {
        /// The task (task.toml or its folder).
        #[arg(default_value = "examples/tasks/unit-conversion")]
        task: PathBuf,
        /// Comma-separated strategies whose searches fill the table.
        #[arg(long, value_parser = super::named(&Strategy::NAMES, Strategy::from_name), value_delimiter = ',', default_value = "mcts,greedy,random")]
        strategies: Vec<Strategy>,
        /// Comma-separated training seeds (each the search seed of one search per strategy).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        train_seeds: Vec<u64>,
        /// Experiments per search.
        #[arg(long, default_value_t = 8)]
        nodes: u64,
        /// Folder of the runs.
        #[arg(long, default_value = "runs/bench-table")]
        out: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Compare strategies over many seeds on the experiment table (`bench table`), each search
    /// run by the real search loop against cached results only (milliseconds per search). Each
    /// seed resamples the validation examples and picks one of the table's training seeds, the
    /// same for every strategy. Prints the mean test regret (the table's best test score minus
    /// the chosen node's) per budget and strategy, with the paired bootstrap 95% interval of
    /// its difference from the first strategy, wins/ties/losses, and the compute spent.
    /// Proposals the table does not hold are refused, so strategies are compared on the part
    /// of the landscape the table covers. Writes OUT/results.json and OUT/table.md.
    Replay {
        /// The task (task.toml or its folder).
        #[arg(default_value = "examples/tasks/unit-conversion")]
        task: PathBuf,
        /// Comma-separated strategies; the first is compared with the others.
        /// `random-researcher` is random selection with the `random` Researcher.
        #[arg(long, value_parser = super::named(&crate::bench::replay::Arm::NAMES, crate::bench::replay::Arm::from_name), value_delimiter = ',', default_value = "mcts,ab-mcts,greedy,sequential,random,random-researcher")]
        strategies: Vec<crate::bench::replay::Arm>,
        /// Replay seeds (0..N).
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// Comma-separated budgets, in experiments.
        #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
        budgets: Vec<u64>,
        /// Share of the validation examples each seed keeps.
        #[arg(long, default_value_t = 0.7)]
        fraction: f64,
        /// Comma-separated training seeds the table was filled with (`bench table --train-seeds`).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        train_seeds: Vec<u64>,
        /// Folder of results.json and table.md.
        #[arg(long, default_value = "runs/bench-replay")]
        out: PathBuf,
        /// The experiment table [default: $TREX_CACHE_DIR/experiments, else ~/.cache/trex/experiments].
        #[arg(long, value_name = "DIR")]
        experiment_cache: Option<PathBuf>,
    },
    /// Data-pipeline throughput: normalize → length filter → exact dedup → near dedup over
    /// synthetic records through the plugins, against the same pipeline written with Hugging Face
    /// `datasets` (`core/reference/bench_pipeline_datasets.py`) on the same file.
    Pipeline {
        /// Records to generate.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Folder for the input, the outputs and the datasets cache.
        #[arg(long, default_value = "runs/bench-pipeline")]
        work: PathBuf,
        /// Python with `datasets` and `datasketch` for the baseline (`none` skips it).
        #[arg(long, default_value = "python3")]
        python: String,
        /// The baseline script.
        #[arg(long, default_value = "core/reference/bench_pipeline_datasets.py")]
        script: PathBuf,
    },
    /// Plugin call overhead against native Rust, and cold versus cached loading.
    Plugins {
        /// Repetitions per measurement.
        #[arg(long, default_value_t = 7)]
        repeat: usize,
    },
    /// Greedy generation tokens/s with SmolLM2-135M-Instruct, unbatched and batched.
    /// Compare with `python core/reference/bench_generate.py` on the same machine.
    Generate {
        /// Prompts.
        #[arg(long, default_value_t = 8)]
        prompts: usize,
        /// New tokens per prompt.
        #[arg(long, default_value_t = 32)]
        new: usize,
    },
    /// Evaluation cost: the wall time to answer and score a task's validation split with the
    /// base model, under several batch sizes, with and without the shared-prefix cache. Every
    /// configuration must give the same answers as the first (checked, and shown).
    ///
    /// Example: trex-host --plugins ./plugins bench eval examples/tasks/unit-conversion --batch-sizes 8,32
    Eval {
        /// The task folder (or its task.toml).
        task: PathBuf,
        /// Comma-separated batch sizes (sequences decoded together).
        #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
        batch_sizes: Vec<usize>,
        /// Score at most this many validation records (default: the task's validation_limit).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Load on an OpenAI-compatible server (`trex-host serve`, llama.cpp's server, vLLM, ...): at
    /// each concurrency, that many clients send greedy chat requests back to back, cycling
    /// through the model names (several names: adapters mixed in one batch). Prints requests/s,
    /// generated tokens/s (from the replies' `usage`) and latency percentiles.
    ///
    /// Example: trex-host serve --adapter a=A --adapter b=B &  trex-host bench serve --models a,b
    Serve {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000/v1")]
        url: String,
        /// Comma-separated model names, cycled through request by request.
        #[arg(long, value_delimiter = ',', default_value = "smollm2")]
        models: Vec<String>,
        /// Comma-separated client counts, one round each.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<usize>,
        /// Requests per round [default: 4 per client, at least 8].
        #[arg(long)]
        requests: Option<usize>,
        /// New tokens at most per request.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// The server's name in the table.
        #[arg(long, default_value = "server")]
        label: String,
    },
    /// LoRA training tokens/s on the SmolLM2-135M shape (random weights), all seven targets.
    /// Compare with `python core/reference/bench_lora_train.py` on the same machine.
    Train {
        /// Sequence length.
        #[arg(long, default_value_t = 512)]
        seq: usize,
        /// Sequences per step.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// LoRA rank.
        #[arg(long, default_value_t = 16)]
        rank: usize,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Fraction of positions with a loss (1: every position, as in pre-training).
        #[arg(long, default_value_t = 1.0)]
        completion_fraction: f64,
        /// Adapt only the top this many blocks, as a recipe's `lora_layers` does (0: every block).
        #[arg(long, default_value_t = 0)]
        lora_layers: usize,
        /// Where to train: `cpu`, or `cuda` (also prints MFU against the GPU's bf16 peak).
        #[arg(long, value_parser = super::device(), default_value = "cpu")]
        device: ComputeDevice,
    },
}

/// The search request a benchmark starts from: the task's own settings, a budget of `nodes`
/// experiments (the task's when `None`) and no wall-clock cut-off, so budgets are equal in
/// experiments.
fn bench_request(
    global: &Global,
    task: &std::path::Path,
    nodes: Option<u64>,
    cache: &CacheArgs,
) -> Result<SearchRequest> {
    let (task, task_file) = crate::assets::load_task(task)?;
    Ok(SearchRequest {
        task,
        task_file,
        plugins: global.plugins.clone(),
        host: host_config(global)?,
        settings: Settings {
            budget: Budget { nodes, wall_minutes: Some(1e9), ..Default::default() },
            ..Default::default()
        },
        run_dir: None,
        observer: Arc::new(Silent),
        experiment_cache: cache.dir(),
    })
}

impl BenchCommand {
    /// Run it.
    pub async fn execute(self, global: &Global) -> Result<ExitCode> {
        match self {
            BenchCommand::Tasks { tasks, strategies, ablate, seeds, budget, out, cache } => {
                let tasks = if tasks.is_empty() {
                    trex_lab::task::Task::folders(std::path::Path::new("examples/tasks"))?
                } else {
                    tasks
                };
                if tasks.is_empty() {
                    bail!("no tasks: pass --tasks, or run from the repository root (examples/tasks)");
                }
                let req = bench_request(global, &tasks[0], budget, &cache)?;
                std::fs::create_dir_all(&out)?;
                let runs = bench::tasks::bench_tasks(req, &tasks, &strategies, &ablate, &seeds, &out, |task, r| {
                    eprintln!(
                        "{task} · {} seed {}: validation gain {:+.3}, test gain {:+.3} ({} experiments, {:.0} s)",
                        r.strategy, r.seed, r.validation_gain, r.test_gain, r.nodes, r.seconds
                    );
                })
                .await?;
                print!("{}", bench::tasks::table(&runs));
                eprintln!("results: {0}/results.json, {0}/table.md, {0}/plot.svg", out.display());
            }
            BenchCommand::Search { task, strategies, ablate, seeds, nodes, out, cache } => {
                let req = bench_request(global, &task, Some(nodes), &cache)?;
                std::fs::create_dir_all(&out)?;
                let runs = bench::search::bench_search(req, &strategies, &ablate, &seeds, &out, |r| {
                    eprintln!(
                        "{} seed {}: validation gain {:+.3}, test gain {:+.3} ({} experiments, {:.0} s)",
                        r.strategy, r.seed, r.validation_gain, r.test_gain, r.nodes, r.seconds
                    );
                })
                .await?;
                print!("{}", bench::search::bench_table(&runs));
                eprintln!("results: {0}/results.json, {0}/table.md, {0}/report.html", out.display());
            }
            BenchCommand::Table { task, strategies, train_seeds, nodes, out, cache } => {
                let Some(dir) = cache.dir() else {
                    bail!("bench table fills the experiment cache: drop --no-experiment-cache");
                };
                let req = bench_request(global, &task, Some(nodes), &cache)?;
                std::fs::create_dir_all(&out)?;
                let runs = bench::search::bench_search(req.clone(), &strategies, &[], &train_seeds, &out, |r| {
                    eprintln!(
                        "{} seed {}: validation gain {:+.3}, test gain {:+.3} ({} experiments, {:.0} s)",
                        r.strategy, r.seed, r.validation_gain, r.test_gain, r.nodes, r.seconds
                    );
                })
                .await?;
                print!("{}", bench::search::bench_table(&runs));
                let scored = bench::replay::score_table(&req, &dir, |i, n| {
                    if n > 0 {
                        eprint!("\rscoring the table on the test split: {i}/{n}");
                    }
                })
                .await?;
                eprintln!("\n{scored} experiment(s) scored on the test split; the table is in {}", dir.display());
            }
            BenchCommand::Replay { task, strategies, seeds, budgets, fraction, train_seeds, out, experiment_cache } => {
                if strategies.is_empty() || budgets.is_empty() || seeds == 0 {
                    bail!("give at least one strategy, one budget and one seed");
                }
                if !(fraction > 0.0 && fraction <= 1.0) {
                    bail!("--fraction must be within (0, 1], got {fraction}");
                }
                let cache = CacheArgs::at(experiment_cache);
                let dir = cache.dir().expect("a folder is always given or defaulted");
                let req = bench_request(global, &task, None, &cache)?;
                std::fs::create_dir_all(&out)?;
                let plan = bench::replay::ReplayPlan { arms: strategies, seeds, budgets, fraction, train_seeds };
                let (stats, runs) = bench::replay::replay(&req, &dir, &plan, &out, |i, n| {
                    if i % 50 == 0 || i == n {
                        eprint!("\rreplaying: {i}/{n} searches");
                    }
                })
                .await?;
                eprintln!();
                let table = bench::replay::replay_table(&stats, &plan, &runs);
                let json = serde_json::json!({ "table": stats, "runs": runs });
                std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
                std::fs::write(out.join("table.md"), &table)?;
                print!("{table}");
                eprintln!("results: {0}/results.json, {0}/table.md", out.display());
            }
            BenchCommand::Train { seq, batch, rank, steps, completion_fraction, lora_layers, device } => {
                println!(
                    "| impl | batch x seq | positions with loss | tokens/s | step time | FLOP/token | achieved | peak RSS |"
                );
                println!("|---|---|---|---|---|---|---|---|");
                bench::train(&bench::TrainBench { seq, batch, rank, steps, completion_fraction, lora_layers, device })?;
            }
            BenchCommand::Eval { task, batch_sizes, limit } => {
                if batch_sizes.is_empty() || batch_sizes.contains(&0) {
                    bail!("--batch-sizes takes positive sizes, e.g. 8,32");
                }
                let mut req = bench_request(global, &task, None, &CacheArgs::at(None))?;
                if limit.is_some() {
                    req.task.prompt.validation_limit = limit;
                }
                bench::eval(&req, &batch_sizes).await?;
            }
            BenchCommand::Generate { prompts, new } => {
                println!("| impl | batch | prompts | new tokens each | generated tokens/s |");
                println!("|---|---|---|---|---|");
                bench::generate(prompts, new)?;
            }
            BenchCommand::Serve { url, models, concurrency, requests, max_tokens, label } => {
                bench::serve::serve(&bench::serve::ServeBench {
                    url,
                    models,
                    concurrency,
                    requests,
                    max_tokens,
                    label,
                })
                .await?;
            }
            BenchCommand::Plugins { repeat } => bench::plugins(&global.plugins, repeat).await?,
            BenchCommand::Pipeline { records, seed, work, python, script } => {
                let opts =
                    bench::PipelineBench { records, seed, work, python: (python != "none").then_some(python), script };
                bench::pipeline(&global.plugins, &opts).await?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
