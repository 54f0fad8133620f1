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
    /// Epochs of the data stream the parents had trained on before this one started.
    #[serde(default)]
    pub epoch_offset: f32,
    /// The training loss along the run: at most [`LOSS_CURVE_POINTS`] points, each the mean
    /// of an equal share of the steps (empty in runs written before it was kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_curve: Vec<f32>,
}

/// How many points of a node's training-loss curve are kept.
pub const LOSS_CURVE_POINTS: usize = 64;

/// `losses` as at most `points` means of consecutive, equal shares of the steps.
pub fn loss_curve(losses: &[f32], points: usize) -> Vec<f32> {
    if losses.len() <= points {
        return losses.to_vec();
    }
    (0..points)
        .map(|i| {
            let (a, b) = (i * losses.len() / points, (i + 1) * losses.len() / points);
            losses[a..b].iter().sum::<f32>() / (b - a) as f32
        })
        .collect()
}

/// What a node cost this run (nothing but its proposal when its result came from the
/// experiment cache).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Tokens trained on.
    pub train_tokens: u64,
    /// Wall seconds of the node (data, training, evaluation).
    pub seconds: f64,
    /// LLM tokens spent proposing it.
    pub llm_tokens: u64,
    /// Tokens generated answering the validation split.
    #[serde(default)]
    pub generated_tokens: u64,
    /// Whether the result came from the experiment cache (or an identical node of this run).
    #[serde(default)]
    pub cached: bool,
    /// Where the seconds went (absent in journals written before it was recorded: all zero).
    #[serde(default)]
    pub stages: StageSeconds,
    /// The seconds around a node that ran as a Slurm job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<JobSeconds>>,
    /// The share of its planned training steps a node ran when it was stopped early (absent:
    /// a whole experiment). A node budget charges a stopped node this share of one experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f32>,
}

impl Cost {
    /// How much of a node budget this node spends: its [`share`](Cost::share), else one. Never
    /// less than a tenth, so that a node budget always runs out.
    pub fn budget_charge(&self) -> f64 {
        self.share.map_or(1.0, |s| if s.is_nan() { 1.0 } else { f64::from(s.clamp(0.1, 1.0)) })
    }
}

/// Where the seconds around a Slurm job went, beyond the node's own stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSeconds {
    /// From `sbatch` to the worker's start (queueing and launch).
    pub queued: f64,
    /// The worker opening its lab: loading the model, the plugins and the splits.
    pub setup: f64,
    /// From the worker's outcome written to the search reading it.
    pub collected: f64,
}

impl JobSeconds {
    /// `queued 0.6 s · worker setup 1.9 s · collected 0.3 s`.
    pub fn describe(&self) -> String {
        format!("queued {:.1} s · worker setup {:.1} s · collected {:.1} s", self.queued, self.setup, self.collected)
    }
}

/// Wall seconds of a node by stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    /// Running the data recipe and tokenizing its records.
    pub data: f64,
    /// Training the adapter (saving it included).
    pub train: f64,
    /// Generating the answers to the validation prompts.
    pub generate: f64,
    /// Scoring the answers with the evaluator plugin.
    pub evaluate: f64,
}

impl StageSeconds {
    /// Whether anything was recorded.
    pub fn is_recorded(&self) -> bool {
        self.data + self.train + self.generate + self.evaluate > 0.0
    }

    /// `data 1 s · training 40 s · answers 20 s · scoring 0.1 s`.
    pub fn describe(&self) -> String {
        format!(
            "data {:.1} s · training {:.1} s · answers {:.1} s · scoring {:.1} s",
            self.data, self.train, self.generate, self.evaluate
        )
    }
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
    /// The adapter folder, relative to the run folder (absolute when it lives in the
    /// experiment cache).
    #[serde(default)]
    pub adapter: Option<String>,
    /// The experiment's key in the cache (see [`crate::cache`]).
    #[serde(default)]
    pub key: Option<String>,
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
    /// The Slurm job that runs (or ran) it, when the search submits nodes to Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl Node {
    /// A node just created.
    pub fn pending(id: u64, parent: Option<u64>, proposal: Option<Proposal>, proposal_llm_tokens: u64) -> Node {
        Node { id, parent, proposal, state: NodeState::Pending, lesson: String::new(), proposal_llm_tokens, job: None }
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
            // What training the result took, even when this run got it from the cache.
            let tokens = r.train.as_ref().map_or(r.cost.train_tokens, |t| t.tokens);
            metrics.insert("train_tokens".into(), tokens as f64);
            if r.cost.cached {
                metrics.insert("cached".into(), 1.0);
            }
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
    /// UCT with progressive widening: normalized values, max backup, budget-aware exploration,
    /// and several drafts under the root.
    Mcts,
    /// AB-MCTS (adaptive branching): at each node, Thompson sampling decides between a new child
    /// (GEN) and going deeper into an existing one (CONT).
    AbMcts,
    /// Always expand the best-scoring node.
    Greedy,
    /// Always expand the latest finished node.
    Sequential,
    /// Expand a uniformly random finished node.
    Random,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 5] =
        [Strategy::Mcts, Strategy::AbMcts, Strategy::Greedy, Strategy::Sequential, Strategy::Random];

    /// Their names, in the same order.
    pub const NAMES: [&'static str; 5] = ["mcts", "ab-mcts", "greedy", "sequential", "random"];

    /// The strategy of that name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mcts => "mcts",
            Self::AbMcts => "ab-mcts",
            Self::Greedy => "greedy",
            Self::Sequential => "sequential",
            Self::Random => "random",
        }
    }
}

/// How a subtree's value is backed up for MCTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backup {
    /// The best reward in the subtree: the search looks for the single best experiment, so a good
    /// node is not dragged down by its worse children.
    Max,
    /// The mean reward of the subtree (classic UCT).
    Mean,
}

impl Backup {
    /// The backup called `name` (`max`, `mean`).
    pub fn from_name(name: &str) -> Option<Backup> {
        match name {
            "max" => Some(Backup::Max),
            "mean" => Some(Backup::Mean),
            _ => None,
        }
    }
}

/// MCTS constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MctsParams {
    /// UCT exploration constant `c` in `Q + c·sqrt(ln N_parent / N)`, with `Q` normalized to
    /// [0, 1] over the finished nodes.
    pub exploration: f64,
    /// Progressive widening: a node may have `max(1, floor(k · N^alpha))` children, `N` the
    /// nodes in its subtree (so a node with one child goes deeper before it widens).
    pub widening_k: f64,
    /// Progressive widening exponent.
    pub widening_alpha: f64,
    /// Reward of a failed node, before normalization.
    pub failure_reward: f64,
    /// Children the root gets before the search goes deeper (the start recipe and distinct
    /// alternatives).
    pub drafts: usize,
    /// How a subtree's value is backed up.
    pub backup: Backup,
    /// Exploration shrinks linearly to zero as the node budget runs out.
    pub budget_aware: bool,
}

impl Default for MctsParams {
    fn default() -> Self {
        Self {
            exploration: 0.25,
            widening_k: 1.0,
            widening_alpha: 0.5,
            failure_reward: -0.5,
            drafts: 3,
            backup: Backup::Max,
            budget_aware: true,
        }
    }
}

/// The tree, indexed by node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    /// Nodes, `nodes[i].id == i`.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The experiments a node budget has been charged: one for every node but the base model,
    /// and for a node stopped early only the share of its training it ran (so that stopping a
    /// bad run early buys part of another). A node still running counts as a whole one.
    pub fn experiments_charged(&self) -> f64 {
        self.nodes.iter().skip(1).map(|n| n.cost().budget_charge()).sum()
    }

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

    /// The node to expand next, or `None` when no done node is left to expand. `exhausted`
    /// nodes (the Researcher had nothing more for them) are never expanded. `progress` is the
    /// share of the budget spent, in [0, 1].
    pub fn select(
        &self,
        strategy: Strategy,
        params: &MctsParams,
        exhausted: &std::collections::BTreeSet<u64>,
        rng: &mut SplitMix64,
        progress: f64,
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
            Strategy::Mcts => self.select_mcts(params, exhausted, progress).or_else(|| open.first().map(|n| n.id)),
            Strategy::AbMcts => crate::abmcts::select(self, exhausted, rng).or_else(|| open.first().map(|n| n.id)),
        }
    }

    /// Each node's subtree size (pending and running nodes count, so parallel workers spread)
    /// and the rewards found in it (done and failed nodes), by id.
    fn subtrees(&self, params: &MctsParams) -> Vec<(f64, Vec<f64>)> {
        let mut out: Vec<(f64, Vec<f64>)> = vec![(0.0, Vec::new()); self.nodes.len()];
        // Children have larger ids than their parents: one pass from the last node up.
        for n in self.nodes.iter().rev() {
            let own = match &n.state {
                NodeState::Done(r) => Some(r.reward),
                NodeState::Failed { .. } => Some(params.failure_reward),
                NodeState::Pending | NodeState::Running => None,
            };
            let i = n.id as usize;
            out[i].0 += 1.0;
            if let Some(r) = own {
                out[i].1.push(r);
            }
            if let Some(p) = n.parent {
                let (size, rewards) = std::mem::take(&mut out[i]);
                out[p as usize].0 += size;
                out[p as usize].1.extend(&rewards);
                out[i] = (size, rewards);
            }
        }
        out
    }

    fn select_mcts(
        &self,
        params: &MctsParams,
        exhausted: &std::collections::BTreeSet<u64>,
        progress: f64,
    ) -> Option<u64> {
        let subtrees = self.subtrees(params);
        // Q in [0, 1]: the backed-up reward, min-max normalized over every finished node.
        let all = &subtrees[0].1;
        let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| (a.min(r), b.max(r)));
        let q = |id: u64| -> f64 {
            let rewards = &subtrees[id as usize].1;
            if rewards.is_empty() || hi - lo < 1e-12 {
                return 0.5;
            }
            let v = match params.backup {
                Backup::Max => rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Backup::Mean => rewards.iter().sum::<f64>() / rewards.len() as f64,
            };
            (v - lo) / (hi - lo)
        };
        let c = if params.budget_aware {
            params.exploration * (1.0 - progress.clamp(0.0, 1.0))
        } else {
            params.exploration
        };
        let expandable = |id: u64| self.nodes[id as usize].status() == NodeStatus::Done && !exhausted.contains(&id);
        let mut v = 0u64;
        loop {
            let n_v = subtrees[v as usize].0;
            let kids: Vec<&Node> = self.children(v).collect();
            let widen = (params.widening_k * n_v.powf(params.widening_alpha)).floor().max(1.0) as usize;
            let allowed = if v == 0 { widen.max(params.drafts) } else { widen };
            if expandable(v) && kids.len() < allowed {
                return Some(v);
            }
            let mut best: Option<(f64, u64)> = None;
            for k in kids.iter().filter(|k| k.status() == NodeStatus::Done) {
                let n_k = subtrees[k.id as usize].0;
                let uct = q(k.id) + c * (n_v.ln().max(0.0) / n_k).sqrt();
                if best.is_none_or(|(b, _)| uct > b) {
                    best = Some((uct, k.id));
                }
            }
            match best {
                Some((_, k)) => v = k,
                // Nothing done below to descend into: expand here if possible, else the best
                // open node anywhere.
                None => {
                    return if expandable(v) {
                        Some(v)
                    } else {
                        self.nodes
                            .iter()
                            .filter(|n| expandable(n.id))
                            .max_by(|a, b| q(a.id).total_cmp(&q(b.id)).then(b.id.cmp(&a.id)))
                            .map(|n| n.id)
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_curve_keeps_short_runs_whole_and_averages_long_ones() {
        assert_eq!(loss_curve(&[3.0, 2.0], 4), vec![3.0, 2.0]);
        assert_eq!(loss_curve(&[4.0, 2.0, 3.0, 1.0, 2.0, 0.0], 3), vec![3.0, 2.0, 1.0]);
        assert_eq!(loss_curve(&[1.0; 1000], LOSS_CURVE_POINTS).len(), LOSS_CURVE_POINTS);
    }

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
            key: None,
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
    fn a_node_budget_charges_a_stopped_node_by_the_share_of_its_training_it_ran() {
        let stopped = |id: u64, share: Option<f32>| Node {
            state: NodeState::Failed {
                error: "stopped early".into(),
                kind: Some(FailureKind::Stopped),
                cost: Cost { share, ..Cost::default() },
            },
            ..Node::pending(id, Some(0), None, 0)
        };
        let tree = Tree {
            nodes: vec![
                node(0, None, NodeStatus::Done, 0.0),
                node(1, Some(0), NodeStatus::Done, 0.8),
                stopped(2, Some(0.25)),
                node(3, Some(1), NodeStatus::Failed, 0.0),
                node(4, Some(1), NodeStatus::Running, 0.0),
                // A share from a damaged journal charges no more than one and no less than a tenth.
                stopped(5, Some(7.0)),
                stopped(6, Some(-1.0)),
            ],
        };
        // The base model is free; a failed or running node is a whole experiment.
        let charged = tree.experiments_charged();
        assert!((charged - (1.0 + 0.25 + 1.0 + 1.0 + 1.0 + 0.1)).abs() < 1e-6, "{charged}");
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
        assert_eq!(tree.select(Strategy::Greedy, &p, &none, &mut rng, 0.0), Some(1));
        assert_eq!(tree.select(Strategy::Sequential, &p, &none, &mut rng, 0.0), Some(2));
        let exhausted = [1].into_iter().collect();
        assert_eq!(tree.select(Strategy::Greedy, &p, &exhausted, &mut rng, 0.0), Some(2));
        for _ in 0..20 {
            let r = tree.select(Strategy::Random, &p, &none, &mut rng, 0.0).unwrap();
            assert!([0, 1, 2].contains(&r), "a failed node is never expanded");
            let r = tree.select(Strategy::AbMcts, &p, &none, &mut rng, 0.0).unwrap();
            assert!([0, 1, 2].contains(&r), "a failed node is never expanded");
        }
    }

    #[test]
    fn mcts_opens_with_drafts_then_goes_deep_and_follows_the_best_subtree() {
        let p = MctsParams { exploration: 0.0, drafts: 2, ..MctsParams::default() };
        let none = Default::default();
        let mut rng = SplitMix64(1);
        // A lone root expands itself; with one child it asks for the second draft.
        let mut tree = Tree { nodes: vec![node(0, None, NodeStatus::Done, 0.0)] };
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng, 0.0), Some(0));
        tree.nodes.push(node(1, Some(0), NodeStatus::Done, 0.5));
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng, 0.0), Some(0));
        // Two drafts, three nodes: floor(sqrt 3) = 1 < 2 drafts, so descend into the better one,
        // which has no child yet.
        tree.nodes.push(node(2, Some(0), NodeStatus::Done, 0.1));
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng, 0.0), Some(1));
        // A node with one child goes deeper before it widens (floor(sqrt 2) = 1).
        tree.nodes.push(node(3, Some(1), NodeStatus::Done, 0.6));
        assert_eq!(tree.select(Strategy::Mcts, &p, &none, &mut rng, 0.0), Some(3));
        // Max backup: worse children do not drag a good subtree down.
        tree.nodes.push(node(4, Some(3), NodeStatus::Failed, 0.0));
        tree.nodes.push(node(5, Some(3), NodeStatus::Done, 0.05));
        let picked = tree.select(Strategy::Mcts, &p, &none, &mut rng, 0.0).unwrap();
        assert!([3, 5, 1].contains(&picked), "stays in the best subtree: {picked}");
    }

    /// Grow a tree for `budget` experiments with `strategy` on a landscape `reward(parent
    /// reward, depth, rng)`; the best reward found and the deepest node's depth.
    fn grow(
        strategy: Strategy,
        budget: usize,
        seed: u64,
        reward: impl Fn(f64, usize, &mut SplitMix64) -> f64,
    ) -> (f64, usize) {
        let p = MctsParams::default();
        let none = std::collections::BTreeSet::new();
        let mut tree = Tree { nodes: vec![node(0, None, NodeStatus::Done, 0.0)] };
        let mut depth = vec![0usize];
        let mut world = SplitMix64(seed ^ 0xABCD);
        for i in 1..=budget {
            let mut rng = SplitMix64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let parent = tree.select(strategy, &p, &none, &mut rng, i as f64 / budget as f64).unwrap();
            let r = reward(tree.nodes[parent as usize].score().unwrap(), depth[parent as usize] + 1, &mut world);
            tree.nodes.push(node(i as u64, Some(parent), NodeStatus::Done, r));
            depth.push(depth[parent as usize] + 1);
        }
        let best = tree.nodes.iter().filter_map(Node::score).fold(f64::NEG_INFINITY, f64::max);
        (best, depth.into_iter().max().unwrap())
    }

    #[test]
    fn on_an_uphill_landscape_the_tree_searches_go_deep() {
        // Every step from a node improves on it a little, with noise: depth pays.
        let uphill = |parent: f64, _d: usize, w: &mut SplitMix64| parent + 0.05 + 0.02 * (w.unit() - 0.5);
        let (_, depth) = grow(Strategy::Mcts, 16, 1, uphill);
        assert!(depth >= 6, "depth {depth} after 16 experiments (the shipped MCTS reached 3)");
        // AB-MCTS opens wide (its prior favours new children until deeper nodes are seen), then
        // continues into the best of them.
        let (_, depth) = grow(Strategy::AbMcts, 16, 1, uphill);
        assert!(depth >= 3, "depth {depth}");
        let (_, greedy) = grow(Strategy::Greedy, 16, 1, uphill);
        assert!(greedy >= 12, "{greedy}");
    }
}
