//! Early stopping: an experiment whose smoothed training loss is clearly worse than its
//! finished siblings' at the same optimizer step stops training there, and the rest of its
//! training and all of its evaluation are saved.
//!
//! Siblings are the other children of the node's parent that trained the same way: fresh
//! against fresh, continued against continued, and with the same examples per optimizer step,
//! so that "the same step" means the same amount of data seen. The yardstick at a step is the
//! lowest sibling loss there, read from the siblings' kept loss curves and averaged over the
//! same window of steps as the running experiment's own loss: the last half of its steps so
//! far. One batch's loss differs from the next by as much as the gap between two recipes, so a
//! gap counts only where it is also twice the standard error of the two means.

use serde::{Deserialize, Serialize};

use crate::tree::{NodeStatus, Tree};

/// No experiment is stopped before this share of its steps.
pub const MIN_SHARE: f64 = 0.25;
/// Nor before this many steps.
pub const MIN_STEPS: usize = 4;
/// "Clearly worse": this much above the yardstick, relatively ...
pub const MARGIN: f32 = 0.25;
/// ... and at least this much in absolute terms (nats per target token) ...
pub const MIN_GAP: f32 = 0.1;
/// ... and this many standard errors of the difference of the two windows' means.
pub const NOISE: f32 = 2.0;

/// A finished sibling's training-loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Yardstick {
    /// The sibling.
    pub node: u64,
    /// Its optimizer steps.
    pub steps: u64,
    /// Its kept loss curve: each point the mean of an equal share of its steps.
    pub curve: Vec<f32>,
}

impl Yardstick {
    /// Its losses at the 1-based steps `from..=to`, as its kept curve holds them (`None` past
    /// its last step).
    fn window(&self, from: usize, to: usize) -> Option<Vec<f32>> {
        if self.curve.is_empty() || self.steps == 0 || to as u64 > self.steps || from == 0 || from > to {
            return None;
        }
        let point = |step: usize| self.curve[((step - 1) as u64 * self.curve.len() as u64 / self.steps) as usize];
        Some((from..=to).map(point).collect())
    }
}

/// Mean and variance of `xs` (not empty).
fn mean_var(xs: &[f32]) -> (f32, f32) {
    let n = xs.len() as f32;
    let mean = xs.iter().sum::<f32>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / (n - 1.0) } else { 0.0 };
    (mean, var)
}

/// What a running experiment is measured against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStop {
    /// The finished siblings.
    pub siblings: Vec<Yardstick>,
}

impl EarlyStop {
    /// The yardsticks for node `id` of `tree`: its finished siblings that trained the way it
    /// will (`None` when it has none, or no proposal).
    pub fn for_node(tree: &Tree, id: u64) -> Option<EarlyStop> {
        let node = tree.nodes.get(id as usize)?;
        let recipe = &node.proposal.as_ref()?.train_recipe;
        let per_step = |r: &trex_sdk::types::TrainRecipe| r.batch_size as u64 * r.grad_accumulation.max(1) as u64;
        let siblings: Vec<Yardstick> = tree
            .nodes
            .iter()
            .filter(|n| n.id != id && n.parent == node.parent && n.status() == NodeStatus::Done)
            .filter_map(|n| {
                let sibling = &n.proposal.as_ref()?.train_recipe;
                let t = n.result()?.train.as_ref()?;
                let same = per_step(sibling) == per_step(recipe) && t.continued == recipe.continue_from_parent;
                (same && !t.loss_curve.is_empty() && t.steps > 0).then(|| Yardstick {
                    node: n.id,
                    steps: t.steps,
                    curve: t.loss_curve.clone(),
                })
            })
            .collect();
        (!siblings.is_empty()).then_some(EarlyStop { siblings })
    }

    /// Why a run should stop now, after `losses` (its per-step losses so far) of `total`
    /// steps; `None` to go on.
    pub fn verdict(&self, losses: &[f32], total: usize) -> Option<String> {
        let step = losses.len();
        let earliest = MIN_STEPS.max((MIN_SHARE * total as f64).ceil() as usize);
        if step < earliest || step >= total {
            return None;
        }
        // Per-step losses swing with each batch's examples: compare the means of the last half
        // of the steps so far (at least 4), and only where the gap is well outside that noise.
        let window = (step / 2).max(4).min(step);
        let from = step + 1 - window;
        let (own, own_var) = mean_var(&losses[from - 1..]);
        if !own.is_finite() {
            return None;
        }
        let (best, best_var, node) = self
            .siblings
            .iter()
            .filter_map(|y| y.window(from, step).map(|w| (mean_var(&w), y.node)))
            .map(|((m, v), node)| (m, v, node))
            .min_by(|a, b| a.0.total_cmp(&b.0))?;
        let noise = NOISE * ((own_var + best_var) / window as f32).sqrt();
        let gap = own - best;
        (own > best * (1.0 + MARGIN) && gap > MIN_GAP && gap > noise).then(|| {
            format!(
                "stopped early at step {step} of {total}: its training loss ({own:.3}, mean of steps {from}-{step}) is clearly worse than sibling #{node}'s at the same steps ({best:.3})"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Cost, Node, NodeResult, NodeState, TrainSummary};
    use trex_sdk::types::{DataRecipe, Proposal, TrainRecipe};

    /// Node `id` under `parent`: batch `batch`, continuing its parent or not, finished with a
    /// loss curve when `curve` is given (else still running).
    fn node(id: u64, parent: Option<u64>, batch: u32, continued: bool, curve: Option<f32>) -> Node {
        let recipe = TrainRecipe { batch_size: batch, continue_from_parent: continued, ..TrainRecipe::default() };
        let proposal =
            Proposal { data_recipe: DataRecipe { steps: vec![] }, train_recipe: recipe, rationale: String::new() };
        let state = match curve {
            Some(loss) => NodeState::Done(Box::new(NodeResult {
                score: 0.0,
                reward: 0.0,
                passed: 0,
                total: 0,
                metrics: Default::default(),
                bad_cases: vec![],
                data: vec![],
                train: Some(TrainSummary {
                    examples: 8,
                    steps: 10,
                    first_loss: loss as f64,
                    final_loss: loss as f64,
                    tokens: 100,
                    truncated: 0,
                    seconds: 1.0,
                    continued,
                    epoch_offset: 0.0,
                    loss_curve: vec![loss; 10],
                }),
                cost: Cost::default(),
                adapter: None,
                key: None,
            })),
            None => NodeState::Running,
        };
        Node { state, ..Node::pending(id, parent, Some(proposal), 0) }
    }

    #[test]
    fn the_yardsticks_are_the_finished_siblings_that_trained_the_same_way() {
        let tree = Tree {
            nodes: vec![
                Node::pending(0, None, None, 0),
                node(1, Some(0), 4, false, Some(1.0)),
                node(2, Some(0), 4, false, Some(2.0)),
                node(3, Some(0), 8, false, Some(3.0)), // other examples per step
                node(4, Some(0), 4, true, Some(4.0)),  // continued
                node(5, Some(1), 4, false, Some(5.0)), // a child, not a sibling
                node(6, Some(0), 4, false, None),      // still running
                node(7, Some(0), 4, false, None),
            ],
        };
        let of = |id| EarlyStop::for_node(&tree, id).map(|e| e.siblings.iter().map(|y| y.node).collect::<Vec<_>>());
        assert_eq!(of(7), Some(vec![1, 2]));
        assert_eq!(of(1), Some(vec![2]));
        assert_eq!(of(4), None, "no other continued sibling");
        assert_eq!(of(5), None, "an only child");
        assert_eq!(of(0), None, "the root has no experiment");
    }

    fn stop(curve: Vec<f32>) -> EarlyStop {
        EarlyStop { siblings: vec![Yardstick { node: 2, steps: curve.len() as u64, curve }] }
    }

    #[test]
    fn a_clearly_worse_run_stops_and_a_close_one_goes_on() {
        let s = stop(vec![1.0; 40]);
        let worse = vec![1.5f32; 12];
        let why = s.verdict(&worse, 40).expect("1.5 against 1.0 is clearly worse");
        assert!(why.contains("step 12 of 40") && why.contains("#2") && why.contains("1.500"), "{why}");
        assert_eq!(s.verdict(&[1.2f32; 12], 40), None, "20% above is within the margin");
        // Small losses: 30% above, but only 0.06 nats.
        assert_eq!(stop(vec![0.2; 40]).verdict(&[0.26f32; 12], 40), None);
    }

    #[test]
    fn nothing_stops_before_a_quarter_of_its_steps_or_at_its_last() {
        let s = stop(vec![1.0; 100]);
        assert_eq!(s.verdict(&[3.0f32; 24], 100), None);
        assert!(s.verdict(&[3.0f32; 25], 100).is_some());
        assert_eq!(stop(vec![1.0; 8]).verdict(&[3.0f32; 3], 8), None, "at least 4 steps");
        assert_eq!(stop(vec![1.0; 8]).verdict(&[3.0f32; 8], 8), None, "the last step is not a saving");
    }

    #[test]
    fn the_yardstick_is_the_best_sibling_at_the_same_steps_and_a_shorter_one_drops_out() {
        // A sibling of 20 steps kept as 10 points: step s reads point (s-1)/2.
        let falling: Vec<f32> = (0..10).map(|i| 2.0 - 0.15 * i as f32).collect();
        let s = EarlyStop {
            siblings: vec![
                Yardstick { node: 1, steps: 20, curve: falling },
                Yardstick { node: 3, steps: 200, curve: vec![1.9; 64] },
            ],
        };
        // Steps 5-8 of sibling #1 read points 2, 2, 3, 3: 1.7, 1.7, 1.55, 1.55 (mean 1.625).
        let why = s.verdict(&[2.5f32; 8], 32).unwrap();
        assert!(why.contains("#1") && why.contains("1.625"), "{why}");
        // Past sibling #1's 20 steps only #3 (1.9) counts.
        assert_eq!(s.verdict(&[2.3f32; 24], 32), None, "2.3 is within 25% of 1.9");
        assert!(s.verdict(&[2.5f32; 24], 32).unwrap().contains("#3"));
        assert_eq!(EarlyStop { siblings: Vec::new() }.verdict(&[9.0f32; 24], 32), None);
    }

    #[test]
    fn a_gap_within_the_noise_of_single_batches_goes_on() {
        // Two runs of the same training recipe on the default task (the second with one more
        // data step that changes almost nothing), seed 0: one batch's loss swings by as much as
        // 1.0 against the next. Their last four steps at step 15 differ by 0.5, which stopped
        // the second run under a 4-step window; they went on to score 0.067 and 0.083.
        let first = vec![
            3.869, 3.168, 3.082, 2.380, 2.317, 1.850, 2.069, 2.024, 2.042, 1.827, 1.874, 1.051, 0.885, 1.480, 0.917,
            0.859, 1.133, 0.904, 1.875, 0.939, 1.163, 1.869,
        ];
        let second =
            [3.587, 3.300, 2.762, 2.978, 2.213, 1.363, 1.691, 1.966, 1.858, 1.050, 1.066, 1.133, 1.961, 1.456, 1.814];
        let s = EarlyStop { siblings: vec![Yardstick { node: 1, steps: 22, curve: first.clone() }] };
        for step in 6..=second.len() {
            assert_eq!(s.verdict(&second[..step], 22), None, "step {step}");
        }
        // The same run a clear 0.8 nats worse at every step is stopped.
        let worse: Vec<f32> = first.iter().map(|x| x + 0.8).collect();
        let why = s.verdict(&worse[..8], 22).expect("0.8 nats worse at every step");
        assert!(why.contains("step 8 of 22") && why.contains("steps 5-8"), "{why}");
    }
}
