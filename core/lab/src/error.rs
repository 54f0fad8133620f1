//! The lab's errors: each names the file, plugin or node it is about and says what to do next.

use trex_model::ModelError;
use trex_model::train::TrainError;
use trex_plugin_host::PluginError;

use crate::journal::JournalError;
use crate::pipeline::PipelineError;
use crate::task::TaskError;

/// Why a search, a resume or a pipeline could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The task file is unusable.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The run's journal cannot be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A plugin could not be loaded or called.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The base model cannot be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training could not run outside a node (a node's training failure is a failed node).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A data pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The search cannot go on (no budget, the base model cannot be scored, ...).
    #[error("{0}")]
    Run(String),
}
