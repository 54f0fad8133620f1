//! The experiment tree and the strategies that pick which node to expand next.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trex_sdk::rng::SplitMix64;
pub use trex_sdk::types::NodeStatus;
use trex_sdk::types::{BadCaseCluster, FailureKind, NodeSummary, Proposal};

/// One data-recipe step's statistics inside a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Data-tool plugin.
    pub plugin: String,
    /// Records in.
    pub records_in: u64,
    /// Records out.
    pub records_out: u64,
    /// Records dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// What training did inside a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Training examples.
    pub examples: u64,
    /// Optimizer steps.
    pub steps: u64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Tokens processed.
    pub tokens: u64,
    /// Examples truncated to `max_seq_len`.
    pub truncated: u64,
    /// Seconds of training.
    pub seconds: f64,
    /// Whether the adapter continued from the parent's.
    pub continued: bool,
}

/// What a node cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Tokens trained on.
    pub train_tokens: u64,
    /// Wall seconds of the node (data, training, evaluation).
    pub seconds: f64,
    /// LLM tokens spent proposing it.
    pub llm_tokens: u64,
}

/// A finished node's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeResult {
    /// Validation score (the evaluator's metric).
    pub score: f64,
    /// Normalized gain over the base model.
    pub reward: f64,
    /// Validation examples passed.
    pub passed: u64,
    /// Validation examples scored.
    pub total: u64,
    /// The evaluator's further metrics.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Failure clusters (bad-case analysis).
    #[serde(default)]
    pub bad_cases: Vec<BadCaseCluster>,
    /// Data-recipe statistics.
    #[serde(default)]
    pub data: Vec<StepStats>,
    /// Training statistics (none for the base model).
    #[serde(default)]
    pub train: Option<TrainSummary>,
    /// Cost.
    #[serde(default)]
    pub cost: Cost,
    /// The adapter folder, relative to the run folder.
    #[serde(default)]
    pub adapter: Option<String>,
}

/// Where a node is in its life, with what each stage holds: only a done node has a result, only
/// a failed one an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum NodeState {
    /// Proposed, not started.
    Pending,
    /// Being built, trained or evaluated.
    Running,
    /// Finished with a score.
    Done(Box<NodeResult>),
    /// Failed; its error is kept as a lesson.
    Failed {
        /// The error.
        error: String,
        /// Why, when the host can tell.
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<FailureKind>,
        /// What it cost before failing.
        cost: Cost,
    },
}

/// One experiment in the tree. Node 0 is the root: the untouched base model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Id, in creation order.
    pub id: u64,
    /// Parent id (`None` for the root).
    pub parent: Option<u64>,
    /// The experiment (`None` for the root).
    pub proposal: Option<Proposal>,
    /// Where it is in its life.
    #[serde(flatten)]
    pub state: NodeState,
    /// One-line lesson (empty until it finished).
    pub lesson: String,
    /// LLM tokens spent proposing it.
    pub proposal_llm_tokens: u64,
}

impl Node {
    /// A node just created.
    pub fn pending(id: u64, parent: Option<u64>, proposal: Option<Proposal>, proposal_llm_tokens: u64) -> Node {
        Node { id, parent, proposal, state: NodeState::Pending, lesson: String::new(), proposal_llm_tokens }
    }

    /// Its status, without what the state holds.
    pub fn status(&self) -> NodeStatus {
        match self.state {
            NodeState::Pending => NodeStatus::Pending,
            NodeState::Running => NodeStatus::Running,
            NodeState::Done(_) => NodeStatus::Done,
            NodeState::Failed { .. } => NodeStatus::Failed,
        }
    }

    /// The result, when done.
    pub fn result(&self) -> Option<&NodeResult> {
        match &self.state {
            NodeState::Done(r) => Some(r),
            _ => None,
        }
    }

    /// The error, when failed.
    pub fn error(&self) -> Option<&str> {
        match &self.state {
            NodeState::Failed { error, .. } => Some(error),
            _ => None,
        }
    }

    /// What it cost so far: its result's cost when done, the cost before failing when failed.
    pub fn cost(&self) -> Cost {
        match &self.state {
            NodeState::Done(r) => r.cost.clone(),
            NodeState::Failed { cost, .. } => cost.clone(),
            NodeState::Pending | NodeState::Running => Cost { llm_tokens: self.proposal_llm_tokens, ..Cost::default() },
        }
    }

    /// The validation score, when done.
    pub fn score(&self) -> Option<f64> {
        self.result().map(|r| r.score)
    }

    /// Whether it finished, one way or the other.
    pub fn finished(&self) -> bool {
        matches!(self.state, NodeState::Done(_) | NodeState::Failed { .. })
    }

    /// What a Researcher sees of this node.
    pub fn summary(&self) -> NodeSummary {
        let mut metrics = BTreeMap::new();
        if let Some(r) = self.result() {
            if let Some(t) = &r.train {
                metrics.insert("first_loss".into(), t.first_loss);
                metrics.insert("final_loss".into(), t.final_loss);
                metrics.insert("train_examples".into(), t.examples as f64);
                metrics.insert("train_steps".into(), t.steps as f64);
                metrics.insert("truncated_examples".into(), t.truncated as f64);
            }
            metrics.insert("train_tokens".into(), r.cost.train_tokens as f64);
            metrics.insert("seconds".into(), (r.cost.seconds * 10.0).round() / 10.0);
            let dropped: u64 = r.data.iter().flat_map(|s| s.dropped.values()).sum();
            if !r.data.is_empty() {
                metrics.insert("dropped_records".into(), dropped as f64);
            }
        }
        NodeSummary {
            id: self.id,
            parent: self.parent,
            proposal: self.proposal.clone(),
            status: self.status(),
            failure: match &self.state {
                NodeState::Failed { kind, .. } => *kind,
                _ => None,
            },
            score: self.score(),
            reward: self.result().map(|r| r.reward),
            lesson: self.lesson.clone(),
            metrics,
        }
    }
}

/// How the next node to expand is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// UCT with progressive widening.
    Mcts,
    /// Always expand the best-scoring node.
    Greedy,
    /// Always expand the latest finished node.
    Sequential,
    /// Expand a uniformly random finished node.
    Random,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 4] = [Strategy::Mcts, Strategy::Greedy, Strategy::Sequential, Strategy::Random];

    /// Their names, in the same order.
    pub const NAMES: [&'static str; 4] = ["mcts", "greedy", "sequential", "random"];

    /// The strategy of that name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mcts => "mcts",
            Self::Greedy => "greedy",
            Self::Sequential => "sequential",
            Self::Random => "random",
        }
    }
}

/// MCTS constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MctsParams {
    /// UCT exploration constant `c` in `Q/N + c·sqrt(ln N_parent / N)`.
    pub exploration: f64,
    /// Progressive widening: a node may have `ceil(k · N^alpha)` children.
    pub widening_k: f64,
    /// Progressive widening exponent.
    pub widening_alpha: f64,
    /// Reward of a failed node.
    pub failure_reward: f64,
}

impl Default for MctsParams {
    fn default() -> Self {
        Self { exploration: 1.0, widening_k: 1.0, widening_alpha: 0.5, failure_reward: -0.5 }
    }
}

/// The tree, indexed by node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    /// Nodes, `nodes[i].id == i`.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Children of `id`, in creation order.
    pub fn children(&self, id: u64) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.parent == Some(id))
    }

    /// Ancestors of `id`, root first (without `id`).
    pub fn ancestors(&self, id: u64) -> Vec<&Node> {
        let mut out = Vec::new();
        let mut cur = self.nodes[id as usize].parent;
        while let Some(p) = cur {
            out.push(&self.nodes[p as usize]);
            cur = self.nodes[p as usize].parent;
        }
        out.reverse();
        out
    }

    /// The best done node by validation score (earliest on ties).
    pub fn best(&self) -> Option<&Node> {
        let mut best: Option<&Node> = None;
        for n in &self.nodes {
            if let Some(s) = n.score()
                && best.and_then(Node::score).is_none_or(|b| s > b)
            {
                best = Some(n);
            }
        }
        best
    }

    /// (visits, total reward) of the subtree under `id`; pending and running nodes count as
    /// visits with zero reward, so parallel workers spread out.
    fn stats(&self, id: u64, params: &MctsParams, memo: &mut BTreeMap<u64, (f64, f64)>) -> (f64, f64) {
        if let Some(&s) = memo.get(&id) {
            return s;
        }
        let n = &self.nodes[id as usize];
        let own = match &n.state {
            NodeState::Done(r) => r.reward,
            NodeState::Failed { .. } => params.failure_reward,
            NodeState::Pending | NodeState::Running => 0.0,
        };
        let (mut visits, mut total) = (1.0, own);
        let kids: Vec<u64> = self.children(id).map(|c| c.id).collect();
        for c in kids {
            let (v, t) = self.stats(c, params, memo);
            visits += v;
            total += t;
        }
        memo.insert(id, (visits, total));
        (visits, total)
    }

    /// The node to expand next, or `None` when no done node is left to expand.
    /// `exhausted` nodes (the Researcher had nothing more for them) are never expanded.
    pub fn select(
        &self,
        strategy: Strategy,
        params: &MctsParams,
        exhausted: &std::collections::BTreeSet<u64>,
        rng: &mut SplitMix64,
    ) -> Option<u64> {
        let open: Vec<&Node> =
            self.nodes.iter().filter(|n| n.status() == NodeStatus::Done && !exhausted.contains(&n.id)).collect();
        if open.is_empty() {
            return None;
        }
        match strategy {
            Strategy::Greedy => {
                let mut best = open[0];
                for n in &open[1..] {
                    if n.score() > best.score() {
                        best = n;
                    }
                }
                Some(best.id)
            }
            Strategy::Sequential => open.last().map(|n| n.id),
            Strategy::Random => Some(open[rng.below(open.len() as u64) as usize].id),
            Strategy::Mcts => self.select_mcts(params, exhausted),
        }
    }

    fn select_mcts(&self, params: &MctsParams, exhausted: &std::collections::BTreeSet<u64>) -> Option<u64> {
        let mut memo = BTreeMap::new();
        // Descend from the root; the first node whose widening allows another child, or that
        // has no done child to descend into, is expanded.
        let mut v = 0u64;
        let mut fallback = None;
        loop {
            let (visits, _) = self.stats(v, params, &mut memo);
            let kids: Vec<&Node> = self.children(v).collect();
            let allowed = (params.widening_k * visits.powf(params.widening_alpha)).ceil().max(1.0) as usize;
            let expandable = !exhausted.contains(&v);
            if expandable && kids.len() < allowed {
                return Some(v);
            }
            if expandable {
                fallback = Some(v);
            }
            let mut best: Option<(f64, u64)> = None;
            for c in kids.iter().filter(|c| c.status() == NodeStatus::Done) {
                let (n, w) = self.stats(c.id, params, &mut memo);
                let uct = w / n + params.exploration * (visits.ln().max(0.0) / n).sqrt();
                if best.is_none_or(|(b, _)| uct > b) {
                    best = Some((uct, c.id));
                }
            }
            match best {
                Some((_, c)) => v = c,
                None => return fallback.or_else(|| self.any_open(exhausted)),
            }
        }
    }

    fn any_open(&self, exhausted: &std::collections::BTreeSet<u64>) -> Option<u64> {
        self.nodes.iter().find(|n| n.status() == NodeStatus::Done && !exhausted.contains(&n.id)).map(|n| n.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, parent: Option<u64>, status: NodeStatus, reward: f64) -> Node {
        let result = NodeResult {
            score: reward,
            reward,
            passed: 0,
            total: 0,
            metrics: BTreeMap::new(),
            bad_cases: vec![],
            data: vec![],
            train: None,
            cost: Cost::default(),
            adapter: None,
        };
        let state = match status {
            NodeStatus::Done => NodeState::Done(Box::new(result)),
            NodeStatus::Failed => NodeState::Failed { error: "failed".into(), kind: None, cost: Cost::default() },
            NodeStatus::Pending => NodeState::Pending,
            NodeStatus::Running => NodeState::Running,
        };
        Node { state, ..Node::pending(id, parent, None, 0) }
    }

    #[test]
    fn strategies_pick_as_documented() {
        let tree = Tree {
            nodes: vec![
                node(0, None, NodeStatus::Done, 0.0),
                node(1, Some(0), NodeStatus::Done, 0.8),
                node(2, Some(0), NodeStatus::Done, 0.2),
                node(3, Some(1), NodeStatus::Failed, 0.0),
            ],
        };
        let p = MctsParams::default();
        let none = Default::default();
        let mut rng = SplitMix64(1);
        assert_eq!(tree.select(Strategy::Greedy, &p, &none, &mut rng), Some(1));
        assert_eq!(tree.select(Strategy::Sequential, &p, &none, &mut rng), Some(2));
        let exhausted = [1].into_iter().collect();
        assert_eq!(tree.select(Strategy::Greedy, &p, &exhausted, &mut rng), Some(2));
        for _ in 0..20 {
            let r = tree.select(Strategy::Random, &p, &none, &mut rng).unwrap();
            assert!([0, 1, 2].contains(&r), "a failed node is never expanded");
        }
    }

    #[test]
    fn mcts_widens_with_visits_and_follows_uct() {
        let p = MctsParams { exploration: 0.0, ..MctsParams::default() };
        let none = Default::default();
        let mut rng = SplitMix64(1);
        // A lone root expands itself.
        let mut tree = Tree { nodes: vec![node(0, None, NodeStatus::Done, 0.0)] };
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng), Some(0));
        // Root with one child: 2 visits allow ceil(sqrt 2) = 2 children.
        tree.nodes.push(node(1, Some(0), NodeStatus::Done, 0.5));
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng), Some(0));
        // Two children, 3 visits: ceil(sqrt 3) = 2, so descend into the better child.
        tree.nodes.push(node(2, Some(0), NodeStatus::Done, 0.1));
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng), Some(1));
        // A failed grandchild drags node 1's mean below node 2's.
        tree.nodes.push(node(3, Some(1), NodeStatus::Failed, 0.0));
        tree.nodes.push(node(4, Some(1), NodeStatus::Failed, 0.0));
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng), Some(0), "5+ visits widen the root");
        tree.nodes.push(node(5, Some(0), NodeStatus::Done, 0.0));
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng), Some(2));
    }
}
