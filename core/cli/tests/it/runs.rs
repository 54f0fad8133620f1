//! Checks shared by the tests that interrupt a search (killed, or stopped by a full disk) and
//! resume it: journal counts, written adapters, and the resumed tree against an uninterrupted
//! run's.

use std::path::Path;

use trex_lab::journal::{Event, Journal};
use trex_lab::run::view;
use trex_model::LlamaConfig;

use crate::search::events;

/// Journal events that match `f` (0 before the journal's first line).
pub fn count(run_dir: &Path, f: impl Fn(&Event) -> bool) -> usize {
    if !Journal::path_in(run_dir).is_file() {
        return 0;
    }
    Journal::read(run_dir).map_or(0, |e| e.iter().filter(|e| f(&e.event)).count())
}

/// Node folders holding a written adapter.
pub fn adapters(run_dir: &Path) -> usize {
    std::fs::read_dir(run_dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("adapter/adapter_model.safetensors").is_file())
        .count()
}

/// Every adapter folder in the run's node folders loads, finished node or not: none is half
/// written.
pub fn assert_every_adapter_loads(run_dir: &Path, config: &LlamaConfig, when: &str) {
    for e in std::fs::read_dir(run_dir.join("nodes")).into_iter().flatten().flatten() {
        let adapter = e.path().join("adapter");
        if adapter.exists() {
            trex_model::train::peft::load_adapter(&adapter, config)
                .unwrap_or_else(|err| panic!("{when}: {} does not load: {err}", adapter.display()));
        }
    }
}

/// The run folder reads as a run, and no node in it finished twice.
pub fn assert_finished_at_most_once(run_dir: &Path, when: &str) {
    let v = view(run_dir).unwrap_or_else(|e| panic!("{when}: {e}"));
    let ev = events(run_dir);
    for n in &v.nodes {
        let ends = ev
            .iter()
            .filter(|e| matches!(e, Event::Done { node, .. } | Event::Failed { node, .. } if *node == n.id))
            .count();
        assert!(ends <= 1, "{when}: node {} finished {ends} times", n.id);
    }
}

/// `run_dir` grew the tree `reference` grew: the same nodes, parents, recipes and scores and
/// the same final choice, each node finished exactly once, and every adapter loads.
pub fn assert_same_tree(reference: &Path, run_dir: &Path, config: &LlamaConfig) {
    let (a, b) = (view(reference).unwrap(), view(run_dir).unwrap());
    assert_eq!(a.nodes.len(), b.nodes.len(), "{:?}", b.nodes);
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!((x.id, x.parent, x.status()), (y.id, y.parent, y.status()), "node {}", x.id);
        assert_eq!(x.proposal, y.proposal, "node {}", x.id);
        let (rx, ry) = (x.result().unwrap(), y.result().unwrap());
        assert_eq!((rx.score, rx.passed, rx.total), (ry.score, ry.passed, ry.total), "node {}", x.id);
    }
    let (fa, fb) = (a.final_result.unwrap(), b.final_result.unwrap());
    assert_eq!((fa.best, fa.base_test, fa.best_test), (fb.best, fb.base_test, fb.best_test));
    let ev = events(run_dir);
    for n in &b.nodes {
        let ends = ev.iter().filter(|e| matches!(e, Event::Done { node, .. } if *node == n.id)).count();
        assert_eq!(ends, 1, "node {}", n.id);
        if n.id != 0 {
            let adapter = run_dir.join(n.result().unwrap().adapter.as_ref().unwrap());
            trex_model::train::peft::load_adapter(&adapter, config)
                .unwrap_or_else(|e| panic!("node {}: its adapter does not load: {e}", n.id));
        }
    }
}
