//! Memory compression: what a Researcher sees when it is asked to expand a node.
//!
//! The context holds the node, its parent path, its siblings and children, the global best and
//! worst results with their one-line lessons, and the node's bad-case clusters. When the JSON
//! exceeds the token budget, detail is dropped in a fixed order (example texts first, then
//! rationales, far relatives, the tails of the best/worst lists, proposals of other nodes, and
//! finally long lessons), so the same tree always gives the same context.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trex_sdk::types::{NodeSummary, ResearchContext};

use crate::tree::{NodeStatus, Tree};

/// Size limits of the Researcher's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryParams {
    /// Approximate tokens (JSON characters / 4) the context may take.
    pub token_budget: usize,
    /// Entries in the best and worst lists.
    pub top_k: usize,
    /// Examples kept per bad-case cluster.
    pub examples_per_cluster: usize,
}

impl Default for MemoryParams {
    fn default() -> Self {
        Self { token_budget: 3000, top_k: 3, examples_per_cluster: 2 }
    }
}

/// The approximate token count of a context (JSON characters / 4, rounded up).
pub fn estimate_tokens(context: &ResearchContext) -> usize {
    serde_json::to_string(context).map(|s| s.len().div_ceil(4)).unwrap_or(usize::MAX)
}

/// Build the context for expanding node `id`.
pub fn context(tree: &Tree, id: u64, notes: BTreeMap<String, f64>, params: &MemoryParams) -> ResearchContext {
    let node = &tree.nodes[id as usize];
    let parent_path: Vec<NodeSummary> = tree.ancestors(id).into_iter().map(|n| n.summary()).collect();
    let mut siblings: Vec<NodeSummary> = tree.children(id).map(|n| n.summary()).collect();
    if let Some(p) = node.parent {
        siblings.extend(tree.children(p).filter(|n| n.id != id).map(|n| n.summary()));
    }
    siblings.sort_by_key(|s| s.id);
    let mut done: Vec<_> = tree.nodes.iter().filter(|n| n.status() == NodeStatus::Done && n.id != 0).collect();
    done.sort_by(|a, b| {
        let (ra, rb) = (a.result().map_or(0.0, |r| r.reward), b.result().map_or(0.0, |r| r.reward));
        rb.total_cmp(&ra).then(a.id.cmp(&b.id))
    });
    let best: Vec<NodeSummary> = done.iter().take(params.top_k).map(|n| n.summary()).collect();
    let mut worst: Vec<NodeSummary> =
        tree.nodes.iter().rev().filter(|n| n.status() == NodeStatus::Failed).map(|n| n.summary()).collect();
    for n in done.iter().rev() {
        if !best.iter().any(|b| b.id == n.id) {
            worst.push(n.summary());
        }
    }
    worst.truncate(params.top_k);
    let mut bad_cases = node.result().map(|r| r.bad_cases.clone()).unwrap_or_default();
    for c in &mut bad_cases {
        c.examples.truncate(params.examples_per_cluster);
    }
    let mut ctx = ResearchContext {
        node: node.summary(),
        parent_path,
        siblings,
        best,
        worst,
        bad_cases,
        notes,
        tried: Vec::new(),
    };
    compress(&mut ctx, params.token_budget);
    ctx
}

/// `text` cut to `n` characters (with an ellipsis when cut).
fn short(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        text.chars().take(n.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn others(ctx: &mut ResearchContext) -> impl Iterator<Item = &mut NodeSummary> {
    ctx.parent_path.iter_mut().chain(ctx.siblings.iter_mut()).chain(ctx.best.iter_mut()).chain(ctx.worst.iter_mut())
}

/// Drop detail, in a fixed order, until `ctx` fits `budget` tokens (or nothing more can go).
pub fn compress(ctx: &mut ResearchContext, budget: usize) {
    type Step = fn(&mut ResearchContext);
    let steps: [Step; 15] = [
        |c| c.bad_cases.iter_mut().for_each(|b| b.examples.truncate(1)),
        |c| others(c).filter_map(|n| n.proposal.as_mut()).for_each(|p| p.rationale.clear()),
        |c| c.bad_cases.truncate(3),
        |c| {
            let n = c.siblings.len();
            c.siblings.drain(..n.saturating_sub(4));
        },
        |c| {
            c.best.truncate(2);
            c.worst.truncate(2);
        },
        |c| {
            // Keep the root and the two nearest ancestors.
            if c.parent_path.len() > 3 {
                let n = c.parent_path.len();
                c.parent_path.drain(1..n - 2);
            }
        },
        |c| {
            let n = c.siblings.len();
            c.siblings.drain(..n.saturating_sub(2));
        },
        |c| c.bad_cases.iter_mut().for_each(|b| b.examples.clear()),
        |c| others(c).for_each(|n| n.proposal = None),
        |c| {
            c.best.truncate(1);
            c.worst.truncate(1);
            c.siblings.clear();
        },
        |c| {
            others(c).for_each(|n| n.lesson = short(&n.lesson, 60));
        },
        |c| {
            c.parent_path.drain(..c.parent_path.len().saturating_sub(1));
            others(c).for_each(|n| n.metrics.clear());
        },
        // What is left is whatever plugins wrote at length: cut every text short.
        |c| {
            for b in &mut c.bad_cases {
                b.label = short(&b.label, 40);
                b.examples.clear();
            }
            c.node.lesson = short(&c.node.lesson, 120);
            if let Some(p) = c.node.proposal.as_mut() {
                p.rationale = short(&p.rationale, 80);
            }
            others(c).for_each(|n| n.lesson = short(&n.lesson, 40));
        },
        |c| {
            c.bad_cases.truncate(1);
            c.best.clear();
            c.worst.clear();
            c.siblings.clear();
            c.parent_path.clear();
        },
        |c| {
            c.bad_cases.clear();
            c.notes.retain(|k, _| k == "nodes_left" || k == "base_score" || k == "best_score");
            if let Some(p) = c.node.proposal.as_mut() {
                p.rationale.clear();
            }
        },
    ];
    for step in steps {
        if estimate_tokens(ctx) <= budget {
            return;
        }
        step(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Cost, Node, NodeResult, NodeState};
    use trex_sdk::types::{BadCaseCluster, DataRecipe, DataStep, Proposal, TrainRecipe};

    /// A fixed tree: a root, a chain of four improvements, two siblings, a failure.
    fn tree() -> Tree {
        let mut nodes = Vec::new();
        let parents = [None, Some(0), Some(1), Some(2), Some(3), Some(1), Some(1), Some(3)];
        for (id, parent) in parents.into_iter().enumerate() {
            let id = id as u64;
            let failed = id == 6;
            let proposal = parent.map(|_| Proposal {
                data_recipe: DataRecipe {
                    steps: vec![DataStep {
                        plugin: "chat-format".into(),
                        config: serde_json::json!({"system": "Be brief."}),
                    }],
                },
                train_recipe: TrainRecipe { learning_rate: 1e-4 * (id + 1) as f64, seed: id, ..TrainRecipe::default() },
                rationale: format!(
                    "try learning rate {:.0e} because the loss of the parent plateaued",
                    1e-4 * (id + 1) as f64
                ),
            });
            let bad_cases = (0..4)
                .map(|c| BadCaseCluster {
                    label: format!("tag:failure-{c}"),
                    count: 10 - c,
                    examples: (0..3)
                        .map(|e| format!("input: question {e} of cluster {c} | expected: a | got: b"))
                        .collect(),
                })
                .collect();
            nodes.push(Node {
                id,
                parent,
                proposal,
                state: if failed {
                    NodeState::Failed { error: "the loss diverged".into(), kind: None, cost: Cost::default() }
                } else {
                    NodeState::Done(Box::new(NodeResult {
                        score: 0.1 * id as f64,
                        reward: 0.15 * id as f64,
                        passed: id,
                        total: 10,
                        metrics: BTreeMap::new(),
                        bad_cases,
                        data: vec![],
                        train: None,
                        cost: Cost { train_tokens: 1000 * id, seconds: 12.5, ..Cost::default() },
                        adapter: None,
                        key: None,
                    }))
                },
                lesson: if failed {
                    "failed: the loss diverged (became NaN) at step 3: lower the learning rate".into()
                } else {
                    format!(
                        "lr {:.0e}: score {:.2}, a steady improvement on the validation split over its parent",
                        1e-4 * (id + 1) as f64,
                        0.1 * id as f64
                    )
                },
                proposal_llm_tokens: 0,
                job: None,
            });
        }
        Tree { nodes }
    }

    fn snapshot(name: &str, value: &ResearchContext) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/snapshots").join(name);
        let text = serde_json::to_string_pretty(value).unwrap() + "\n";
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_SNAPSHOTS=1 to write it)", path.display()));
        assert_eq!(text, want, "{} changed (UPDATE_SNAPSHOTS=1 rewrites it after review)", path.display());
    }

    #[test]
    fn full_context_matches_its_snapshot() {
        let notes = BTreeMap::from([("nodes_left".to_string(), 3.0)]);
        let ctx = context(&tree(), 4, notes.clone(), &MemoryParams { token_budget: 100_000, ..Default::default() });
        assert_eq!(ctx.parent_path.iter().map(|n| n.id).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(ctx.siblings.iter().map(|n| n.id).collect::<Vec<_>>(), vec![7]);
        assert_eq!(ctx.best.iter().map(|n| n.id).collect::<Vec<_>>(), vec![7, 5, 4]);
        assert_eq!(ctx.worst.iter().map(|n| n.id).collect::<Vec<_>>(), vec![6, 1, 2]);
        snapshot("context-full.json", &ctx);
        // Deterministic: the same tree gives the same context.
        assert_eq!(ctx, context(&tree(), 4, notes, &MemoryParams { token_budget: 100_000, ..Default::default() }));
    }

    #[test]
    fn the_budget_holds_whatever_the_plugins_wrote() {
        let mut t = tree();
        for n in &mut t.nodes {
            n.lesson = "L".repeat(50_000);
            if let NodeState::Done(r) = &mut n.state {
                r.bad_cases = (0..200)
                    .map(|i| BadCaseCluster {
                        label: format!("tag:{i}{}", "x".repeat(80)),
                        count: 1,
                        examples: vec!["e".repeat(4000); 3],
                    })
                    .collect();
            }
            if let Some(p) = n.proposal.as_mut() {
                p.rationale = "R".repeat(1000);
            }
        }
        for budget in [3000, 900, 400] {
            let ctx = context(&t, 4, BTreeMap::new(), &MemoryParams { token_budget: budget, ..Default::default() });
            assert!(estimate_tokens(&ctx) <= budget, "{budget}: {} tokens", estimate_tokens(&ctx));
            assert_eq!(ctx.node.id, 4, "the node being expanded is always there");
        }
    }

    #[test]
    fn compressed_context_fits_its_budget_and_matches_its_snapshot() {
        let full = context(&tree(), 4, BTreeMap::new(), &MemoryParams { token_budget: 100_000, ..Default::default() });
        let params = MemoryParams { token_budget: 900, ..Default::default() };
        let small = context(&tree(), 4, BTreeMap::new(), &params);
        assert!(estimate_tokens(&full) > 900, "the fixture must need compressing");
        assert!(estimate_tokens(&small) <= 900, "{} tokens", estimate_tokens(&small));
        // The node itself and its own bad cases survive compression.
        assert_eq!(small.node, full.node);
        assert_eq!(small.bad_cases[0].label, "tag:failure-0");
        snapshot("context-900-tokens.json", &small);
    }
}
