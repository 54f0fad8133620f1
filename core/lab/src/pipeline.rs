//! Data pipelines outside a search: a data recipe over a dataset file, then an evaluator.
//!
//! A pipeline file (TOML) names an input file, the recipe steps, and optionally an evaluation:
//!
//! ```toml
//! name = "support-faq"
//! dataset_dir = "data"                 # relative to this file; mounted read-only at /data
//! input = "train.jsonl"                # JSON lines, relative to dataset_dir
//!
//! [[steps]]
//! plugin = "chat-format"
//! config = { template = "chatml" }
//!
//! [evaluate]
//! plugin = "exact-match"
//! data = "validation.jsonl"
//! predictor = "majority"               # see `Predictor`
//! ```
//!
//! Every step's config is validated by its plugin before any step runs, so a misspelled field
//! fails in a second, naming the step and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trex_sdk::types::{DataStep, PluginKind};

use trex_plugin_host::{CallEnv, DataToolRun, EvalItem, EvalReport, PluginError, PluginHost};

/// Failure tags a report lists one by one.
pub const TAGS_REPORTED: usize = 50;

/// A pipeline definition (what `trex-host schema Pipeline` describes).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Name, for reports.
    pub name: String,
    /// Folder of the data files (relative to the pipeline file).
    pub dataset_dir: PathBuf,
    /// Input records (JSON lines), relative to `dataset_dir`.
    pub input: PathBuf,
    /// The model whose tokenizer measures text in tokens (a model name such as
    /// `smollm2-135m-instruct`, a `.gguf` file or a Hugging Face folder); needed by steps that
    /// count tokens, such as `filter-length` with `unit = "tokens"`.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Recipe steps, applied in order.
    #[serde(default)]
    pub steps: Vec<DataStep>,
    /// Optional evaluation after the recipe.
    #[serde(default)]
    pub evaluate: Option<Evaluation>,
    /// The file this definition was read from and its text, to point errors at its lines.
    #[serde(skip)]
    origin: Option<(PathBuf, String)>,
}

/// How to evaluate.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// Evaluator plugin.
    pub plugin: String,
    /// Its config.
    #[serde(default)]
    #[schemars(schema_with = "crate::task::object_schema")]
    pub config: serde_json::Value,
    /// Held-out records (JSON lines), relative to `dataset_dir`.
    pub data: PathBuf,
    /// Where outputs come from.
    #[serde(default)]
    pub predictor: Predictor,
    /// Examples per evaluator call.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_batch() -> usize {
    64
}

/// Where the outputs being evaluated come from, until a trained model produces them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Predictor {
    /// The most frequent completion of the prepared training data, for every example: the
    /// classic floor that any fine-tuned model must beat.
    #[default]
    Majority,
    /// The reference answer itself: checks the evaluator's wiring (should score 1).
    Oracle,
}

/// What one pipeline run did.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// Pipeline name.
    pub name: String,
    /// Records read from the input file.
    pub input_records: u64,
    /// One entry per step.
    pub steps: Vec<StepReport>,
    /// Where the prepared records were written.
    pub output: PathBuf,
    /// Evaluation, when configured.
    pub evaluation: Option<EvaluationReport>,
}

/// One step's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Plugin name.
    pub plugin: String,
    /// The step's statistics.
    #[serde(flatten)]
    pub run: DataToolRun,
}

/// An evaluation's outcome and its bad-case summary.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationReport {
    /// Evaluator.
    pub plugin: String,
    /// Predictor used.
    pub predictor: Predictor,
    /// Full report.
    pub report: EvalReport,
    /// Failures by tag, most frequent first.
    pub failure_tags: Vec<(String, u64)>,
}

/// Why a pipeline could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The pipeline file is unreadable or invalid.
    #[error("{}: {message}", path.display())]
    Definition {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A data file is unreadable or malformed.
    #[error("{}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A step's config was refused before anything ran.
    #[error("{at}step {index} (`{plugin}`): {error}")]
    InvalidStep {
        /// `FILE:LINE: ` of the step (or of the refused field) in the pipeline file, when known.
        at: String,
        /// 1-based step number.
        index: usize,
        /// Plugin.
        plugin: String,
        /// The plugin's complaint.
        error: Box<PluginError>,
    },
    /// A plugin failed while running.
    #[error(transparent)]
    Plugin(#[from] Box<PluginError>),
    /// Writing results failed.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// The 1-based line of a pipeline file's section `section` (the n-th `[[steps]]`, or `[evaluate]`
/// after the last step) where `field` (a config path such as `max` or `units[0].from`) is set,
/// else where the section's `config` is, else the section's header.
fn locate(text: &str, section: usize, field: Option<&str>) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let headers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.starts_with("[[steps]]") || l.starts_with("[evaluate]")
        })
        .map(|(i, _)| i)
        .collect();
    let start = *headers.get(section)?;
    let end = headers.get(section + 1).copied().unwrap_or(lines.len());
    let key = |l: &str, k: &str| {
        l.match_indices(k).any(|(i, _)| {
            let before = l[..i].chars().next_back();
            let after = l[i + k.len()..].trim_start();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-') && after.starts_with('=')
        })
    };
    // The innermost named key of the path first (`from` of `units[0].from`), then the outermost.
    let parts: Vec<&str> =
        field.map(|f| f.split(['.', '[']).filter(|s| !s.is_empty() && !s.ends_with(']')).collect()).unwrap_or_default();
    let keys = parts.last().into_iter().chain(parts.first()).copied().chain(["config"]);
    keys.into_iter().find_map(|k| (start..end).find(|&i| key(lines[i], k)).map(|i| i + 1)).or(Some(start + 1))
}

impl Pipeline {
    /// Read a pipeline file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let def = |message: String| PipelineError::Definition { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| def(format!("cannot read it: {e}")))?;
        let (mut p, old): (Pipeline, _) = trex_plugin_host::toml_file::parse(&text).map_err(|e| def(e.0))?;
        if let Some(w) = trex_plugin_host::toml_file::deprecation(path, &old) {
            tracing::warn!("{w}");
        }
        p.origin = Some((path.to_path_buf(), text.clone()));
        let base = path.parent().unwrap_or(Path::new("."));
        p.dataset_dir = base.join(&p.dataset_dir);
        if let Some(t) = &mut p.tokenizer {
            // A file or folder named relative to the pipeline file; a model name stays as it is.
            let local = base.join(&*t);
            if local.exists() {
                *t = local.display().to_string();
            }
        }
        Ok(p)
    }

    /// Check every step (and the evaluator) with its plugin before any work starts.
    pub async fn validate(&mut self, host: &PluginHost) -> Result<(), PipelineError> {
        let origin = self.origin.clone();
        let at = |section: usize, error: &PluginError| -> String {
            let Some((path, text)) = &origin else { return String::new() };
            let field = match error {
                PluginError::Reported { field: Some(f), .. } => Some(f.as_str()),
                _ => None,
            };
            match locate(text, section, field) {
                Some(line) => format!("{}:{line}: ", path.display()),
                None => format!("{}: ", path.display()),
            }
        };
        for (i, step) in self.steps.iter_mut().enumerate() {
            let invalid = |error: PluginError| PipelineError::InvalidStep {
                at: at(i, &error),
                index: i + 1,
                plugin: step.plugin.clone(),
                error: Box::new(error),
            };
            step.config = host.check_config(&step.plugin, PluginKind::DataTool, &step.config).await.map_err(invalid)?;
        }
        let steps = self.steps.len();
        if let Some(eval) = &mut self.evaluate {
            let invalid = |error: PluginError| PipelineError::InvalidStep {
                at: at(steps, &error),
                index: steps + 1,
                plugin: eval.plugin.clone(),
                error: Box::new(error),
            };
            eval.config =
                host.check_config(&eval.plugin, PluginKind::Evaluator, &eval.config).await.map_err(invalid)?;
        }
        Ok(())
    }

    /// Run the recipe, write the prepared records to `out_dir`, and evaluate.
    pub async fn run(
        mut self,
        host: &PluginHost,
        out_dir: &Path,
        mut on_step: impl FnMut(usize, &str, &DataToolRun),
    ) -> Result<PipelineReport, PipelineError> {
        self.validate(host).await?;
        let input_path = self.dataset_dir.join(&self.input);
        let mut records = read_jsonl(&input_path)?;
        let input_records = records.len() as u64;
        let env = CallEnv { dataset_dir: Some(self.dataset_dir.clone()), ..CallEnv::default() };
        let mut steps = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let mut run = host.run_data_tool(&step.plugin, &step.config, records, &env).await.map_err(Box::new)?;
            records = std::mem::take(&mut run.records);
            on_step(i + 1, &step.plugin, &run);
            steps.push(StepReport { plugin: step.plugin.clone(), run });
        }
        std::fs::create_dir_all(out_dir)
            .map_err(|error| PipelineError::Write { path: out_dir.to_path_buf(), error })?;
        let output = out_dir.join(format!("{}.prepared.jsonl", self.name));
        let mut text = records.join("\n");
        text.push('\n');
        std::fs::write(&output, text).map_err(|error| PipelineError::Write { path: output.clone(), error })?;

        let evaluation = match &self.evaluate {
            None => None,
            Some(eval) => Some(evaluate(host, eval, &self.dataset_dir, &records, &env).await?),
        };
        let report = PipelineReport { name: self.name.clone(), input_records, steps, output, evaluation };
        let report_path = out_dir.join(format!("{}.report.json", self.name));
        let json = serde_json::to_string_pretty(&report).expect("reports always serialize");
        std::fs::write(&report_path, json).map_err(|error| PipelineError::Write { path: report_path, error })?;
        Ok(report)
    }
}

async fn evaluate(
    host: &PluginHost,
    eval: &Evaluation,
    dataset_dir: &Path,
    prepared: &[String],
    env: &CallEnv,
) -> Result<EvaluationReport, PipelineError> {
    let path = dataset_dir.join(&eval.data);
    let examples = read_jsonl(&path)?;
    let majority = most_frequent_completion(prepared);
    let mut items = Vec::with_capacity(examples.len());
    for (i, text) in examples.iter().enumerate() {
        let example: serde_json::Value = serde_json::from_str(text).expect("read_jsonl checked every line");
        let id = match example.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v @ serde_json::Value::Number(_)) => v.to_string(),
            _ => format!("{}:{}", eval.data.display(), i + 1),
        };
        let output = match eval.predictor {
            Predictor::Majority => majority.clone(),
            Predictor::Oracle => ["answer", "completion", "response"]
                .iter()
                .find_map(|f| example.get(*f).and_then(|v| v.as_str()).map(String::from))
                .unwrap_or_default(),
        };
        items.push(EvalItem { id, example, output });
    }
    let report = host.evaluate(&eval.plugin, &eval.config, &items, eval.batch_size, env).await.map_err(Box::new)?;
    let mut tags: BTreeMap<String, u64> = BTreeMap::new();
    for r in report.results.iter().filter(|r| !r.passed) {
        for t in &r.tags {
            *tags.entry(t.clone()).or_default() += 1;
        }
    }
    let mut failure_tags: Vec<(String, u64)> = tags.into_iter().collect();
    failure_tags.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    // The most frequent tags, and the rest counted together: an evaluator that invents a tag
    // per example cannot make the report as large as the data.
    if failure_tags.len() > TAGS_REPORTED {
        let rest: u64 = failure_tags[TAGS_REPORTED..].iter().map(|t| t.1).sum();
        let others = failure_tags.len() - TAGS_REPORTED;
        failure_tags.truncate(TAGS_REPORTED);
        failure_tags.push((format!("({others} other tags)"), rest));
    }
    Ok(EvaluationReport { plugin: eval.plugin.clone(), predictor: eval.predictor, report, failure_tags })
}

/// The most frequent `completion` (ties broken by text order, so the choice is deterministic).
fn most_frequent_completion(records: &[String]) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(r)
            && let Some(c) =
                ["completion", "response", "answer"].iter().find_map(|f| v.get(*f).and_then(|x| x.as_str()))
        {
            *counts.entry(c.to_string()).or_default() += 1;
        }
    }
    counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).map(|(c, _)| c).unwrap_or_default()
}

/// Read a JSON-lines file of objects; blank lines are skipped, anything else must be an object.
pub fn read_jsonl(path: &Path) -> Result<Vec<String>, PipelineError> {
    let data = |message: String| PipelineError::Data { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| data(format!("cannot read it: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => out.push(line.to_string()),
            Ok(_) => return Err(data(format!("line {}: expected a JSON object", i + 1))),
            // serde_json counts within the line, which is always line 1: say the column only.
            Err(e) => {
                let what = e.to_string();
                let what = what.split(" at line ").next().unwrap_or(&what).to_string();
                return Err(data(format!("line {}, column {}: not valid JSON: {what}", i + 1, e.column())));
            }
        }
    }
    if out.is_empty() {
        return Err(data("no records: the file is empty".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_is_deterministic_on_ties() {
        let recs = vec![r#"{"completion":"b"}"#.to_string(), r#"{"completion":"a"}"#.to_string()];
        assert_eq!(most_frequent_completion(&recs), "a");
        let recs =
            vec![r#"{"completion":"b"}"#.into(), r#"{"completion":"b"}"#.into(), r#"{"completion":"a"}"#.to_string()];
        assert_eq!(most_frequent_completion(&recs), "b");
    }

    #[test]
    fn config_errors_point_at_the_field_in_the_section() {
        let text = "name = \"x\"\n[[steps]]\nplugin = \"a\"\nconfig = { max = 1 }\n\n[[steps]]\nplugin = \"b\"\n\
                    [steps.config]\nunits = []\nmax_len = 3\n[evaluate]\nplugin = \"e\"\n";
        assert_eq!(locate(text, 0, Some("max")), Some(4));
        assert_eq!(locate(text, 1, Some("max")), Some(6), "`max_len` is not `max`: the section's header");
        assert_eq!(locate(text, 1, Some("units[0].from")), Some(9));
        assert_eq!(locate(text, 1, Some("max_len")), Some(10));
        assert_eq!(locate(text, 0, Some("typo")), Some(4), "an unknown field: the section's config line");
        assert_eq!(locate(text, 2, None), Some(11));
        assert_eq!(locate(text, 3, None), None);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"a\":1}\n\n[1]\n").unwrap();
        let err = read_jsonl(&p).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("d.jsonl"), "{err}");
        std::fs::write(&p, "{\"a\":1}\n{\"a\": 2,, }\n").unwrap();
        let err = read_jsonl(&p).unwrap_err().to_string();
        assert!(err.ends_with("d.jsonl: line 2, column 9: not valid JSON: key must be a string"), "{err}");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_jsonl(&p).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn pipeline_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipeline.toml");
        std::fs::write(&p, "name='x'\ndataset_dir='.'\ninput='a.jsonl'\nstepz=[]\n").unwrap();
        let err = Pipeline::load(&p).unwrap_err().to_string();
        assert!(err.contains("stepz") && err.contains("pipeline.toml"), "{err}");
    }
}
