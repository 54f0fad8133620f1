//! `trex-host new data-tool|evaluator|researcher NAME`: a plugin crate that builds, with its
//! manifest, a unit test and a README, ready for `trex-host plugins build`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

/// The kinds of plugin a crate can be made for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Streams training records: filters, rewrites, generates.
    DataTool,
    /// Scores model outputs against examples.
    Evaluator,
    /// Proposes the next experiments of a search.
    Researcher,
}

impl Kind {
    fn manifest_kind(self) -> &'static str {
        match self {
            Kind::DataTool => "data-tool",
            Kind::Evaluator => "evaluator",
            Kind::Researcher => "researcher",
        }
    }
}

/// Make a new plugin crate.
///
/// The crate depends on `trex-sdk` from this trex checkout when `trex-host` was built from one
/// (or from `--sdk-path`), else from the git repository `--sdk-git`. Then:
///
///   trex-host plugins build NAME        # builds NAME/NAME.wasm and validates it
///
///   trex-host --plugins . plugins list  # from NAME's parent folder
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct NewCommand {
    /// What the plugin is.
    #[arg(value_enum)]
    kind: Kind,
    /// Its name (lower case, digits and `-`): the plugin's name and the crate's.
    name: String,
    /// The folder to create [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Depend on the SDK at this path (a trex checkout's `sdk` folder).
    #[arg(long, conflicts_with = "sdk_git")]
    sdk_path: Option<PathBuf>,
    /// Depend on the SDK from this git repository (trex's), e.g. `https://example.org/trex.git`.
    #[arg(long)]
    sdk_git: Option<String>,
}

/// The `sdk` folder of the checkout this binary was built from, when it is still there.
fn checkout_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk");
    sdk.join("Cargo.toml").is_file().then(|| sdk.canonicalize().ok()).flatten()
}

impl NewCommand {
    /// Run it.
    pub fn execute(self) -> Result<ExitCode> {
        let name = &self.name;
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-');
        if !valid {
            bail!("`{name}` is not a plugin name: use lower-case letters, digits and `-`, starting with a letter");
        }
        let dir = self.dir.clone().unwrap_or_else(|| PathBuf::from(name));
        if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("{} already exists and is not empty: pick another --dir", dir.display());
        }
        let sdk = match (&self.sdk_path, &self.sdk_git) {
            (Some(p), _) => {
                let p = p.canonicalize().with_context(|| format!("--sdk-path {}", p.display()))?;
                if !p.join("Cargo.toml").is_file() {
                    bail!("--sdk-path {}: no Cargo.toml there (give the `sdk` folder of a trex checkout)", p.display());
                }
                format!("{{ path = {:?} }}", p.display().to_string())
            }
            (None, Some(url)) => format!("{{ git = {url:?} }}"),
            (None, None) => match checkout_sdk() {
                Some(p) => format!("{{ path = {:?} }}", p.display().to_string()),
                None => bail!(
                    "this trex-host was not built from a trex checkout: say where the SDK is, with --sdk-git URL (trex's repository) or --sdk-path DIR"
                ),
            },
        };
        let krate = name.replace('-', "_");
        let files = [
            ("Cargo.toml", cargo_toml(name, &sdk)),
            ("plugin.toml", manifest(self.kind, name, &krate)),
            ("src/lib.rs", source(self.kind, name)),
            ("README.md", readme(self.kind, name, &krate)),
            (".gitignore", "/target\n/*.wasm\n/Cargo.lock\n".to_string()),
        ];
        for (file, text) in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().expect("files are inside the folder"))
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
        println!("created the {} plugin `{name}` in {}", self.kind.manifest_kind(), dir.display());
        println!(
            "next:\n  trex-host plugins build {}\n  cargo test --lib --manifest-path {}/Cargo.toml",
            dir.display(),
            dir.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A component for the host, built for wasm32-wasip2 (`trex-host plugins build`); the unit
# tests run natively with `cargo test --lib`.
[lib]
crate-type = ["cdylib"]

[dependencies]
trex-sdk = {sdk}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
schemars = "1"

# A workspace of its own, wherever the folder lives.
[workspace]
"#
    )
}

fn manifest(kind: Kind, name: &str, krate: &str) -> String {
    let (description, extra) = match kind {
        Kind::DataTool => ("Keep records whose text is at most max_chars characters long", ""),
        Kind::Evaluator => ("Passes when the output contains the expected answer", ""),
        Kind::Researcher => ("Tries the expanded node's recipe at a higher and a lower learning rate", ""),
    };
    format!(
        r#"# The plugin's manifest: trex-host reads it before it loads the component.
name = "{name}"                 # must equal the component's NAME
kind = "{kind}"
version = "0.1.0"
api_version = "0.1.1"           # the plugin contract (WIT package trex:plugin) it was built against
wasm = "{krate}.wasm"           # `trex-host plugins build` puts it here
description = "{description}"

# What the host allows it (each defaults to the value shown; see docs/plugins.md):
# [limits]
# timeout_ms = 60000            # per call
# memory_mib = 256              # linear memory
# output_mib = 1024             # a data tool's output per run
# scratch_mib = 256             # what it may keep in /scratch during a call
# scratch_files = 10000
# [capabilities]
# dataset = false               # read the task's dataset folder at /data
# scratch = false               # a private read-write folder at /scratch
# llm = false                   # the host's LLM (llm.complete)
{extra}"#,
        kind = kind.manifest_kind()
    )
}

fn source(kind: Kind, name: &str) -> String {
    match kind {
        Kind::DataTool => DATA_TOOL.replace("{name}", name),
        Kind::Evaluator => EVALUATOR.replace("{name}", name),
        Kind::Researcher => RESEARCHER.replace("{name}", name),
    }
}

const DATA_TOOL: &str = r##"//! `{name}`: keeps records whose `text` field (or the one named by `field`) is at most
//! `max_chars` characters long. A starting point: change `keep` and the config.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, RecordReader, RecordWriter, RunStats};
use trex_sdk::types::OnBadRecord;

/// The config a recipe step gives (its JSON Schema is published; unknown fields are refused).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The longest text kept, in characters.
    pub max_chars: usize,
    /// The field holding the text.
    pub field: String,
    /// What to do with a record that has no such string field.
    pub on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_chars: 200, field: "text".into(), on_bad_record: OnBadRecord::default() }
    }
}

/// Whether a text is kept.
pub fn keep(config: &Config, text: &str) -> bool {
    text.chars().count() <= config.max_chars
}

struct Plugin;

impl DataTool for Plugin {
    type Config = Config;
    const NAME: &'static str = "{name}";
    const DESCRIPTION: &'static str = "Keep records whose text is at most max_chars characters long.";

    fn check(config: &Config) -> Result<(), PluginError> {
        if config.max_chars == 0 {
            return Err(PluginError::field("max_chars", "must be at least 1"));
        }
        Ok(())
    }

    fn run(config: Config, input: &mut RecordReader<'_>, output: &mut RecordWriter<'_>) -> Result<RunStats, PluginError> {
        let mut stats = RunStats::default();
        while let Some(record) = input.next_record()? {
            match record.get(&config.field).and_then(|t| t.as_str()) {
                // Kept as it came: passed on by position, nothing crosses back.
                Some(text) if keep(&config, text) => output.pass(input.position())?,
                Some(_) => stats.drop_record("too-long"),
                None => {
                    let problem = format!("missing string field `{}`", config.field);
                    stats.bad_record(config.on_bad_record, input.records_read(), &problem)?
                }
            }
        }
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_short_texts_only() {
        let config = Config { max_chars: 5, ..Config::default() };
        assert!(keep(&config, "short"));
        assert!(!keep(&config, "too long"));
    }

    #[test]
    fn a_misspelled_config_field_is_refused() {
        assert!(serde_json::from_str::<Config>(r#"{"max_char": 5}"#).is_err());
    }
}
"##;

const EVALUATOR: &str = r##"//! `{name}`: passes an output when it contains the example's expected answer (the field
//! `answer_field`, `response` by default). A starting point: change `judge` and the config.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{EvalItem, Evaluator, ExampleResult, PluginError};

/// The config a task gives its evaluator.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The example's field holding the expected answer.
    pub answer_field: String,
    /// Compare with case.
    pub case_sensitive: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { answer_field: "response".into(), case_sensitive: false }
    }
}

/// The verdict on one output; failures carry a tag, which the search groups bad cases by.
pub fn judge(config: &Config, id: String, expected: &str, output: &str) -> ExampleResult {
    let (out, want) = if config.case_sensitive {
        (output.to_string(), expected.to_string())
    } else {
        (output.to_lowercase(), expected.to_lowercase())
    };
    let passed = !want.is_empty() && out.contains(&want);
    let tags = if passed { vec![] } else if output.trim().is_empty() { vec!["empty-output".into()] } else { vec!["missing-answer".into()] };
    ExampleResult { id, score: if passed { 1.0 } else { 0.0 }, passed, tags, explanation: String::new() }
}

struct Plugin;

impl Evaluator for Plugin {
    type Config = Config;
    const NAME: &'static str = "{name}";
    const DESCRIPTION: &'static str = "Passes when the output contains the expected answer.";

    fn evaluate(config: &Config, items: Vec<EvalItem>) -> Result<Vec<ExampleResult>, PluginError> {
        items
            .into_iter()
            .map(|item| {
                let expected = item.example.get(&config.answer_field).and_then(|a| a.as_str()).ok_or_else(|| {
                    PluginError::field("answer_field", format!("example `{}` has no string field `{}`", item.id, config.answer_field))
                })?;
                Ok(judge(config, item.id.clone(), expected, &item.output))
            })
            .collect()
    }
}

trex_sdk::export_evaluator!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_an_output_that_contains_the_answer() {
        let config = Config::default();
        assert!(judge(&config, "a".into(), "Paris", "It is paris.").passed);
        let miss = judge(&config, "b".into(), "Paris", "Lyon");
        assert!(!miss.passed && miss.tags == ["missing-answer"]);
    }
}
"##;

const RESEARCHER: &str = r##"//! `{name}`: proposes the expanded node's recipe (the task's start at the root) at a higher and
//! a lower learning rate, inside the task's search space, skipping what the search has tried.
//! A starting point: change `candidates`.
//!
//! The contract, in short: `propose` gets the node being expanded and a compressed memory of
//! the tree (`ResearchContext`: the path to it, its siblings, the best and worst nodes, bad
//! cases, and `tried`, the key of every experiment in the tree). The host checks each proposal
//! against the search space and runs the first valid one that is not a repeat; a node whose
//! proposals are refused three rounds in a row is no longer expanded. `observe` receives each
//! finished experiment.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{PluginError, Researcher};
use trex_sdk::types::{Outcome, Proposal, ResearchContext, SearchSpace, TaskBrief, experiment_key};

/// The config a task gives its Researcher.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The factor the learning rate moves by.
    pub factor: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { factor: 2.0 }
    }
}

/// The proposals for `node` (its recipe, or the start's at the root).
pub fn candidates(config: &Config, space: &SearchSpace, node: &Proposal) -> Vec<Proposal> {
    let lr = &space.learning_rate;
    [config.factor, 1.0 / config.factor]
        .into_iter()
        .filter_map(|f| {
            let mut p = node.clone();
            let new = (p.train_recipe.learning_rate * f).clamp(lr.min, lr.max);
            if (new - p.train_recipe.learning_rate).abs() < 1e-12 {
                return None;
            }
            p.train_recipe.learning_rate = new;
            p.train_recipe.continue_from_parent = false;
            p.rationale = format!("the same recipe at learning rate {new:.1e}");
            Some(p)
        })
        .collect()
}

struct Plugin {
    config: Config,
    task: TaskBrief,
}

impl Researcher for Plugin {
    type Config = Config;
    const NAME: &'static str = "{name}";
    const DESCRIPTION: &'static str = "Tries the expanded node's recipe at a higher and a lower learning rate.";

    fn open(config: Config, task: TaskBrief) -> Result<Self, PluginError> {
        if config.factor.is_nan() || config.factor <= 1.0 {
            return Err(PluginError::field("factor", format!("must be above 1, got {}", config.factor)));
        }
        Ok(Self { config, task })
    }

    fn propose(&mut self, context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError> {
        let Some(node) = context.node.proposal.clone().or_else(|| self.task.start.clone()) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Proposal> = Vec::new();
        // At the root, the start recipe itself first.
        if context.node.proposal.is_none() && !context.tried.contains(&experiment_key(&node)) {
            out.push(Proposal { rationale: "the task's starting experiment".into(), ..node.clone() });
        }
        for p in candidates(&self.config, &self.task.search_space, &node) {
            if !context.tried.contains(&experiment_key(&p)) {
                out.push(p);
            }
        }
        out.truncate(max as usize);
        Ok(out)
    }

    fn observe(&mut self, _outcome: Outcome) -> Result<(), PluginError> {
        Ok(())
    }
}

trex_sdk::export_researcher!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_the_learning_rate_within_the_space() {
        let space = SearchSpace::default();
        let node = Proposal {
            data_recipe: Default::default(),
            train_recipe: trex_sdk::types::TrainRecipe { learning_rate: 8e-4, ..Default::default() },
            rationale: String::new(),
        };
        let lrs: Vec<f64> = candidates(&Config::default(), &space, &node).iter().map(|p| p.train_recipe.learning_rate).collect();
        assert_eq!(lrs, vec![space.learning_rate.max, 4e-4]);
    }
}
"##;

fn readme(kind: Kind, name: &str, krate: &str) -> String {
    let use_it = match kind {
        Kind::DataTool => format!(
            "Use it as a step of a pipeline (`trex-host pipeline FILE`) or of a task's data recipe:\n\n```toml\n[[steps]]\nplugin = \"{name}\"\nconfig = {{ max_chars = 200, field = \"text\" }}\n```"
        ),
        Kind::Evaluator => format!(
            "Use it as a task's or a pipeline's evaluator:\n\n```toml\n[evaluator]\nplugin = \"{name}\"\nconfig = {{ answer_field = \"response\" }}\n```"
        ),
        Kind::Researcher => format!(
            "Use it in a search: `trex-host --plugins PLUGINS search TASK --researcher {name}`, or in a task:\n\n```toml\n[researcher]\nplugin = \"{name}\"\nconfig = {{ factor = 2.0 }}\n```"
        ),
    };
    format!(
        "# {name}\n\nA trex {kind} plugin: a WebAssembly component (WIT package `trex:plugin`, contract 0.1.1) that\n`trex-host` loads in a sandbox.\n\n```sh\ntrex-host plugins build .        # cargo build --release --target wasm32-wasip2, copy {krate}.wasm here, validate\ncargo test --lib                 # the unit tests, natively\n```\n\nThen put this folder (or a link to it) in the plugin folder `trex-host --plugins DIR` reads;\n`trex-host --plugins DIR plugins inspect {name}` shows its config schema and limits.\n\n{use_it}\n\nThe guide to writing plugins is `docs/plugins.md` in the trex repository.\n",
        kind = kind.manifest_kind()
    )
}
