//! Replays: the real search loop run against the experiment cache alone
//! ([`crate::cache::ExperimentCache::only`]), so that a strategy costs milliseconds per search
//! and can be compared with another over many seeds. Each replay seed resamples the validation
//! examples ([`crate::cache::Subset`]) and picks one of the training seeds the table was filled
//! with; strategies given the same replay seed see the same sample (common random numbers).
//!
//! A proposal the table does not hold is refused like any invalid proposal, so a replay
//! compares strategies on the part of the landscape the table covers.

use std::path::Path;
use std::sync::Arc;

use trex_plugin_host::llm::TokenMeter;

use crate::LabError;
use crate::cache::Subset;
use crate::executor::Lab;
use crate::journal::{Event, FORMAT, Journal};
use crate::search::{RunState, Search, Settings};
use crate::tree::Node;

/// One replayed search.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// Every node of the tree it grew.
    pub nodes: Vec<Node>,
    /// The node it chose (best on the resampled validation split).
    pub best: u64,
    /// The chosen node's test score.
    pub best_test: f64,
    /// Proposals refused (the table's holes among them).
    pub rejected: usize,
    /// Why it stopped.
    pub reason: String,
}

/// Run one search on `lab`'s cache, with its validation split resampled by `subset`, its
/// journal in `dir` (which must not exist yet).
///
/// `lab` must not be shared while this runs (its cache's subset is set here).
pub async fn replay(lab: &mut Arc<Lab>, settings: Settings, subset: Subset, dir: &Path) -> Result<Replayed, LabError> {
    {
        let l = Arc::get_mut(lab).ok_or_else(|| LabError::Run("a replay needs the lab to itself".into()))?;
        let Some(cache) = l.cache.as_mut().filter(|c| c.only) else {
            return Err(LabError::Run("a replay needs a lab that serves from its experiment cache only".into()));
        };
        cache.subset = Some(subset);
    }
    let mut journal = Journal::create_unsynced(dir)?;
    journal.append(
        0.0,
        &Event::Start {
            format: FORMAT,
            task_file: lab.run_dir.join("task.toml"),
            task: Box::new(lab.task.clone()),
            settings: Box::new(settings.clone()),
            model: String::new(),
        },
    )?;
    let meter = Arc::new(TokenMeter::new(None));
    let search = Search::new(lab, settings, journal, RunState::default(), meter, None).await?;
    let summary = search.run().await?;
    let entries = Journal::read(dir)?;
    let state = RunState::replay(&entries).map_err(|e| e.in_run(dir))?;
    Ok(Replayed {
        nodes: state.tree.nodes,
        best: summary.best,
        best_test: summary.best_test,
        rejected: summary.rejected,
        reason: summary.reason,
    })
}
