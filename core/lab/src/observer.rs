//! How the lab reports what it does without printing: a search calls an [`Observer`] with
//! messages and per-node progress, and the caller decides how to show them (the command line
//! draws progress bars; tests and benchmarks may stay silent or record).

use std::sync::Arc;

/// What a node is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Running the data recipe.
    Data,
    /// Training: `done` of `total` optimizer steps.
    Train,
    /// Answering a held-out split: `done` of `total` prompts.
    Generate,
    /// Scoring the answers with the evaluator.
    Evaluate,
}

impl Stage {
    /// Lower-case name, for progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::Train => "train",
            Stage::Generate => "answers",
            Stage::Evaluate => "evaluate",
        }
    }
}

/// Progress of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeProgress {
    /// The stage.
    pub stage: Stage,
    /// Units done in this stage.
    pub done: u64,
    /// Units in this stage (0 when unknown).
    pub total: u64,
    /// A short detail, such as the training loss.
    pub detail: String,
}

/// Receives what a search has to say. Every method has a silent default.
pub trait Observer: Send + Sync {
    /// A line for the person running the search (node started, finished, refused, ...).
    fn message(&self, _line: &str) {}
    /// Node `node` made progress.
    fn progress(&self, _node: u64, _progress: &NodeProgress) {}
    /// Node `node` stopped running (finished or failed); its progress display can go.
    fn node_ended(&self, _node: u64) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {}

/// A shared observer.
pub type SharedObserver = Arc<dyn Observer>;

/// Reports one node's progress to an observer, and that it ended when dropped (on every path,
/// failures included).
pub(crate) struct NodeReporter {
    observer: SharedObserver,
    node: u64,
}

impl NodeReporter {
    pub(crate) fn new(observer: SharedObserver, node: u64) -> Self {
        Self { observer, node }
    }

    pub(crate) fn report(&self, stage: Stage, done: u64, total: u64, detail: impl Into<String>) {
        self.observer.progress(self.node, &NodeProgress { stage, done, total, detail: detail.into() });
    }

    /// A handle that can report from another thread (training and generation run on blocking
    /// threads).
    pub(crate) fn handle(&self) -> (SharedObserver, u64) {
        (self.observer.clone(), self.node)
    }
}

impl Drop for NodeReporter {
    fn drop(&mut self) {
        self.observer.node_ended(self.node);
    }
}
