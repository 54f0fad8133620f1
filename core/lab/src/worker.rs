//! One experiment outside the search: a node spec (everything the node needs, with paths on
//! storage the search and the worker share) in, the node's outcome out. `trex-host worker SPEC`
//! runs it; a Slurm job is one such call. The spec holds no secret: an API key a data step
//! needs reaches the worker through its environment only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use trex_sdk::types::{FailureKind, Proposal};

use crate::LabError;
use crate::cache::ExperimentCache;
use crate::executor::{Lab, NodeFailure, ParentRef};
use crate::observer::SharedObserver;
use crate::task::Task;
use crate::tree::{Cost, NodeResult};
use trex_plugin_host::Capabilities;
use trex_plugin_host::llm::TokenMeter;

/// The spec format this trex writes.
pub const SPEC_FORMAT: u32 = 1;

/// Everything one node needs, written by the search into `nodes/N/spec.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// [`SPEC_FORMAT`].
    pub format: u32,
    /// The run folder (absolute).
    pub run_dir: PathBuf,
    /// The node.
    pub node: u64,
    /// Its experiment.
    pub proposal: Proposal,
    /// The parent's adapter to continue, where the recipe continues it.
    pub parent: Option<ParentRef>,
    /// The base model's validation score (gains are measured against it).
    pub base_score: f64,
    /// The experiment's cache key, as the search computed it; the worker computes it again and
    /// refuses to run when the two differ (the model, the splits or a plugin changed under it).
    pub key: String,
    /// The task, as validated when the run began.
    pub task: Task,
    /// The task file (for messages).
    pub task_file: PathBuf,
    /// The base model's path.
    pub model: String,
    /// The plugin folder.
    pub plugins: PathBuf,
    /// Where compiled plugins are cached.
    pub component_cache: Option<PathBuf>,
    /// Capabilities the host grants.
    pub grant: Capabilities,
    /// The experiment cache folder, when the search uses one.
    pub experiment_cache: Option<PathBuf>,
    /// Where the node trains.
    pub device: trex_model::train::ComputeDevice,
    /// What its training is measured against, when the search stops clearly worse runs early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<crate::early_stop::EarlyStop>,
}

/// What a worker wrote: the node's result or its failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Outcome {
    /// The node.
    pub node: u64,
    /// The Slurm job that wrote it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The result, when the node finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<NodeResult>>,
    /// The failure, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<WrittenFailure>,
    /// LLM tokens the node's data steps spent.
    #[serde(default)]
    pub llm_tokens: u64,
    /// When the worker started, in seconds since the Unix epoch.
    #[serde(default)]
    pub started_unix: f64,
    /// Seconds the worker took to open its lab, before the node ran.
    #[serde(default)]
    pub setup_seconds: f64,
    /// When it wrote this outcome, in seconds since the Unix epoch.
    #[serde(default)]
    pub finished_unix: f64,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A [`NodeFailure`] as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrittenFailure {
    /// The error.
    pub error: String,
    /// Its kind.
    pub kind: FailureKind,
    /// What the node cost.
    pub cost: Cost,
    /// The disk filled while the node wrote a file (see [`NodeFailure::out_of_space`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub out_of_space: bool,
}

impl Outcome {
    /// The node's outcome as the search takes it.
    pub fn into_result(self) -> Result<NodeResult, NodeFailure> {
        match (self.result, self.failure) {
            (Some(r), None) => Ok(*r),
            (None, Some(f)) => {
                Err(NodeFailure { error: f.error, kind: f.kind, cost: f.cost, out_of_space: f.out_of_space })
            }
            _ => Err(NodeFailure::new(
                FailureKind::Other,
                "the worker's outcome holds neither a result nor a failure",
                Cost::default(),
            )),
        }
    }
}

/// Where a node's worker writes its outcome.
pub fn outcome_path(node_dir: &Path) -> PathBuf {
    node_dir.join("outcome.json")
}

/// Where the search writes a node's spec.
pub fn spec_path(node_dir: &Path) -> PathBuf {
    node_dir.join("spec.json")
}

/// Read an outcome file.
pub fn read_outcome(path: &Path) -> Result<Outcome, LabError> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::Run(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| LabError::Run(format!("{}: not a node outcome: {e}", path.display())))
}

/// Write `spec` into its node's folder; the file's path.
pub fn write_spec(spec: &NodeSpec) -> Result<PathBuf, LabError> {
    let dir = spec.run_dir.join("nodes").join(spec.node.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| LabError::Run(format!("{}: {e}", dir.display())))?;
    let path = spec_path(&dir);
    let text = serde_json::to_string_pretty(spec).expect("specs serialize");
    trex_model::files::write_durably(&path, text.as_bytes())
        .map_err(|e| LabError::Run(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// Read a spec file, with an error naming it.
pub fn read_spec(path: &Path) -> Result<NodeSpec, LabError> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::Run(format!("{}: {e}", path.display())))?;
    let spec: NodeSpec =
        serde_json::from_str(&text).map_err(|e| LabError::Run(format!("{}: not a node spec: {e}", path.display())))?;
    if spec.format > SPEC_FORMAT {
        return Err(LabError::Run(format!(
            "{}: spec format {} is newer than this trex reads ({SPEC_FORMAT}): run the same trex-host as the search",
            path.display(),
            spec.format
        )));
    }
    Ok(spec)
}

/// Run the node `spec` describes and write its outcome (also when the node fails); the outcome.
/// An error means no outcome could be written (the spec's lab could not be opened, or the run
/// folder is not writable).
pub async fn run(spec: &NodeSpec, observer: SharedObserver) -> Result<Outcome, LabError> {
    let started_unix = unix_now();
    let meter = Arc::new(TokenMeter::new(None));
    let base = trex_model::BaseModel::load(Path::new(&spec.model))?;
    let host_config = trex_plugin_host::HostConfig {
        cache_dir: spec.component_cache.clone(),
        grant: spec.grant,
        tokenizer: Some(Arc::new(crate::run::ModelTokens(base.tokenizer.clone()))),
        ..trex_plugin_host::HostConfig::default()
    };
    let (host, _client) = crate::run::open_host(&spec.plugins, host_config, spec.task.llm.as_ref(), &meter).await?;
    let mut task = spec.task.clone();
    task.validate_with(&host, &spec.task_file)
        .await
        .map_err(|e| LabError::Run(format!("the run's task does not validate on this machine: {e}")))?;
    let mut lab = Lab::open(host, task, base, spec.run_dir.clone())?;
    lab.device = spec.device;
    lab.observer = observer;
    lab.cache = spec.experiment_cache.clone().map(ExperimentCache::at);
    let key = lab.experiment_key(&spec.proposal, spec.parent.as_ref().and_then(|p| p.key.as_deref()));
    if key != spec.key {
        return Err(LabError::Run(format!(
            "node {}: the experiment's key here ({key}) differs from the search's ({}): the base model, a split or a plugin differs on this machine",
            spec.node, spec.key
        )));
    }
    let setup_seconds = unix_now() - started_unix;
    let outcome =
        lab.run_node(spec.node, &spec.proposal, spec.parent.clone(), spec.base_score, spec.early_stop.clone()).await;
    let (result, failure) = match outcome {
        Ok(r) => (Some(Box::new(r)), None),
        Err(f) => {
            let failure = WrittenFailure { error: f.error, kind: f.kind, cost: f.cost, out_of_space: f.out_of_space };
            (None, Some(failure))
        }
    };
    let outcome = Outcome {
        node: spec.node,
        job: std::env::var("SLURM_JOB_ID").ok(),
        result,
        failure,
        llm_tokens: meter.spent(),
        started_unix,
        setup_seconds,
        finished_unix: unix_now(),
    };
    let path = outcome_path(&lab.node_dir(spec.node));
    let text = serde_json::to_string_pretty(&outcome).expect("outcomes serialize");
    trex_model::files::write_durably(&path, text.as_bytes())
        .map_err(|e| LabError::Run(format!("{}: {e}", path.display())))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn back_again(path: &Path, o: &Outcome) -> Outcome {
        trex_model::files::write_durably(path, serde_json::to_string(o).unwrap().as_bytes()).unwrap();
        read_outcome(path).unwrap()
    }

    #[test]
    fn an_outcome_reads_back_as_the_node_result_or_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = outcome_path(dir.path());
        let failed = Outcome {
            node: 2,
            job: Some("41".into()),
            result: None,
            failure: Some(WrittenFailure {
                error: "training: diverged".into(),
                kind: FailureKind::Diverged,
                cost: Cost { seconds: 3.5, ..Cost::default() },
                out_of_space: false,
            }),
            llm_tokens: 0,
            started_unix: 1.0,
            setup_seconds: 0.5,
            finished_unix: 2.0,
        };
        trex_model::files::write_durably(&path, serde_json::to_string(&failed).unwrap().as_bytes()).unwrap();
        let back = read_outcome(&path).unwrap();
        assert_eq!(back, failed);
        let f = back.into_result().unwrap_err();
        assert_eq!((f.kind, f.cost.seconds), (FailureKind::Diverged, 3.5));
        std::fs::write(&path, "{\"node\": 2").unwrap();
        assert!(read_outcome(&path).unwrap_err().to_string().contains("outcome.json"));
        let empty = Outcome { result: None, failure: None, ..back_again(&path, &failed) };
        assert!(empty.into_result().unwrap_err().error.contains("neither"));
    }
}
