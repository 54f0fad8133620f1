//! Text renderings of runs: the tree `show` prints and the closing lines of a search.

use std::path::Path;

use trex_lab::SearchSummary;
use trex_lab::executor::describe;
use trex_lab::run::RunView;
use trex_lab::tree::{NodeStatus, Tree};

/// The tree as indented text, one node per line (and an error line under failed nodes).
pub fn render_tree(view: &RunView) -> String {
    let tree = Tree { nodes: view.nodes.clone() };
    // The node the search chose once it has, else the best so far.
    let best = view.final_result.as_ref().map(|f| f.best).or_else(|| tree.best().map(|n| n.id));
    let mut out = format!(
        "task {} · strategy {}{} · seed {} · {} experiments, {} failed, {} proposals refused · {:.0} s\n",
        view.task.name,
        view.settings.strategy.as_str(),
        if view.settings.executor.is_local() { "" } else { " · nodes as Slurm jobs" },
        view.settings.seed,
        view.nodes.len().saturating_sub(1),
        view.nodes.iter().filter(|n| n.status() == NodeStatus::Failed).count(),
        view.rejected,
        view.seconds
    );
    fn walk(tree: &Tree, id: u64, depth: usize, best: Option<u64>, out: &mut String) {
        let n = &tree.nodes[id as usize];
        let indent = "  ".repeat(depth);
        let what = match &n.proposal {
            Some(p) => describe(p),
            None => "base model".into(),
        };
        let score = match n.result() {
            Some(r) => format!("score {:.3} gain {:+.3} {:>4.0} s", r.score, r.reward, r.cost.seconds),
            None => n.status().as_str().to_string(),
        };
        let star = if Some(id) == best { " ★" } else { "" };
        let job = n.job.as_ref().map(|j| format!(" · slurm job {j}")).unwrap_or_default();
        out.push_str(&format!("{indent}#{id} {score}  {what}{star}{job}\n"));
        if let Some(r) = n.result()
            && r.cost.stages.is_recorded()
        {
            out.push_str(&format!("{indent}   {}\n", r.cost.stages.describe()));
        }
        if let Some(j) = n.cost().job {
            out.push_str(&format!("{indent}   slurm: {}\n", j.describe()));
        }
        if let Some(e) = n.error() {
            let first: String = e.lines().next().unwrap_or("").chars().take(160).collect();
            out.push_str(&format!("{indent}   error: {first}\n"));
        }
        let kids: Vec<u64> = tree.children(id).map(|c| c.id).collect();
        for c in kids {
            walk(tree, c, depth + 1, best, out);
        }
    }
    if !tree.nodes.is_empty() {
        walk(&tree, 0, 0, best, &mut out);
    }
    if let Some(f) = &view.final_result
        && !f.rescored.is_empty()
    {
        let scores: Vec<String> = f.rescored.iter().map(|(id, s)| format!("#{id} {s:.3}")).collect();
        out.push_str(&format!("whole validation split, the best nodes: {} → chose #{}\n", scores.join(", "), f.best));
    }
    if let Some(f) = &view.final_result {
        out.push_str(&format!(
            "test split: base {:.3}, best node #{} {:.3} (normalized gain {:+.3})\n",
            f.base_test, f.best, f.best_test, f.test_gain
        ));
        if let Some(b) = &f.baselines {
            out.push_str(&baselines_line(b, f.best_test));
        }
    }
    if let Some(r) = &view.finished {
        out.push_str(&format!("stopped: {r}\n"));
    }
    out
}

/// The closing lines of a search.
pub fn render_summary(run_dir: &Path, s: &SearchSummary) -> String {
    let mut out = format!(
        "\nsearch finished ({}) after {} experiments ({} failed, {} proposals refused) in {:.0} s; {} training tokens, {} LLM tokens\n",
        s.reason, s.nodes, s.failed, s.rejected, s.seconds, s.train_tokens, s.llm_tokens
    );
    out.push_str(&format!(
        "validation: base {:.3} → best node #{} {:.3}\n",
        s.base_validation, s.best, s.best_validation
    ));
    out.push_str(&format!(
        "test (held out): base {:.3} → {:.3}, normalized gain {:+.3}\n",
        s.base_test, s.best_test, s.test_gain
    ));
    if let Some(b) = &s.baselines {
        out.push_str(&baselines_line(b, s.best_test));
    }
    match &s.adapter {
        Some(a) => out.push_str(&format!("best adapter: {}\n", a.display())),
        None => out.push_str("no experiment beat the base model on validation; no adapter to use\n"),
    }
    out.push_str(&format!("tree: trex-host show {}\n", run_dir.display()));
    out
}

/// The no-model baselines, and whether the chosen node's test score beats them.
fn baselines_line(b: &trex_lab::baseline::Baselines, best_test: f64) -> String {
    let verdict = if best_test > b.majority_test.max(b.format_only_test) {
        "the chosen node beats both on test"
    } else {
        "the chosen node does NOT beat them on test"
    };
    let answer: String = b.majority_answer.chars().take(40).collect();
    format!(
        "no-model baselines (validation / test): majority answer {answer:?} {:.3} / {:.3}, format only (a random training answer) {:.3} / {:.3}; {verdict}\n",
        b.majority_validation, b.majority_test, b.format_only_validation, b.format_only_test
    )
}
