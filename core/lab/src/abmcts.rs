//! AB-MCTS (adaptive branching MCTS, Inoue et al. 2025, arXiv 2503.04412), the node-aggregation
//! variant with Gaussian posteriors: at each node, Thompson sampling decides whether to
//! generate a new child there (GEN) or to continue into an existing child (CONT), and which one.
//!
//! The posteriors are recomputed from the tree on every call (no state besides the tree and the
//! seeded random stream), so a resumed search and a replayed one decide exactly as the original.
//! Scores are min–max normalized over the finished nodes (a failed node counts as the worst), so
//! that the prior, made for scores in [0, 1], sees the spread the search actually finds. A
//! node's observations:
//! - GEN at `v`: the scores of `v`'s children;
//! - CONT at `v`: the scores of every node two or more levels below `v`;
//! - child `c` of `v`: `c`'s own score and those of its whole subtree.

use std::collections::BTreeSet;

use trex_sdk::rng::SplitMix64;

use crate::tree::{Node, NodeState, NodeStatus, Tree};

/// The normal-inverse-gamma prior of every posterior (treequest's default Gaussian prior).
const PRIOR_M: f64 = 0.0;
const PRIOR_KAPPA: f64 = 1.0;
const PRIOR_NU: f64 = 1.0;
const PRIOR_TAU2: f64 = 0.1;

/// A draw of the mean from the posterior given `obs` (Murphy, PML2 §3.4.3.3).
fn draw(obs: &[f64], rng: &mut SplitMix64) -> f64 {
    let n = obs.len() as f64;
    let (kappa, nu, m, tau2) = if obs.is_empty() {
        (PRIOR_KAPPA, PRIOR_NU, PRIOR_M, PRIOR_TAU2)
    } else {
        let mean = obs.iter().sum::<f64>() / n;
        let ss = obs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
        let kappa = PRIOR_KAPPA + n;
        let nu = PRIOR_NU + n;
        let m = (PRIOR_KAPPA * PRIOR_M + n * mean) / kappa;
        let tau2 = (PRIOR_NU * PRIOR_TAU2 + ss + n * PRIOR_KAPPA * (PRIOR_M - mean).powi(2) / kappa) / nu;
        (kappa, nu, m, tau2)
    };
    // sigma² ~ InvGamma(nu/2, nu·tau²/2), mu ~ N(m, sigma²/kappa).
    let sigma2 = (nu * tau2 / 2.0) / gamma(nu / 2.0, rng).max(1e-300);
    m + (sigma2 / kappa).sqrt() * normal(rng)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = rng.unit().max(1e-300);
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A Gamma(shape, 1) draw (Marsaglia–Tsang; boosted for shape < 1).
fn gamma(shape: f64, rng: &mut SplitMix64) -> f64 {
    if shape < 1.0 {
        let u = rng.unit().max(1e-300);
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.unit().max(1e-300);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Every node's score as AB-MCTS sees it: the validation score min–max normalized over the
/// finished nodes, the worst for a failed node, none while it runs.
fn scores(tree: &Tree) -> Vec<Option<f64>> {
    let done: Vec<f64> = tree.nodes.iter().filter_map(Node::score).collect();
    let (lo, hi) = done.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| (a.min(r), b.max(r)));
    let span = if hi - lo > 1e-12 { hi - lo } else { 1.0 };
    tree.nodes
        .iter()
        .map(|n| match &n.state {
            NodeState::Done(r) if done.len() > 1 => Some((r.score - lo) / span),
            NodeState::Done(_) => Some(0.5),
            NodeState::Failed { .. } => Some(0.0),
            NodeState::Pending | NodeState::Running => None,
        })
        .collect()
}

/// The scores of `id`'s subtree, itself included.
fn subtree_scores(tree: &Tree, scores: &[Option<f64>], id: u64, out: &mut Vec<f64>) {
    out.extend(scores[id as usize]);
    for c in tree.children(id) {
        subtree_scores(tree, scores, c.id, out);
    }
}

/// The node to generate a new child from.
pub fn select(tree: &Tree, exhausted: &BTreeSet<u64>, rng: &mut SplitMix64) -> Option<u64> {
    let expandable = |id: u64| tree.nodes[id as usize].status() == NodeStatus::Done && !exhausted.contains(&id);
    let scores = scores(tree);
    let mut v = 0u64;
    loop {
        // Only done children can be continued into; a node whose children are all still
        // running is expanded again.
        let kids: Vec<u64> = tree.children(v).filter(|c| c.status() == NodeStatus::Done).map(|c| c.id).collect();
        if kids.is_empty() {
            return expandable(v).then_some(v).or_else(|| fallback(tree, &expandable));
        }
        let gen_obs: Vec<f64> = tree.children(v).filter_map(|c| scores[c.id as usize]).collect();
        let mut cont_obs = Vec::new();
        for c in tree.children(v) {
            for g in tree.children(c.id) {
                subtree_scores(tree, &scores, g.id, &mut cont_obs);
            }
        }
        let gen_draw = draw(&gen_obs, rng);
        let cont_draw = draw(&cont_obs, rng);
        if expandable(v) && gen_draw >= cont_draw {
            return Some(v);
        }
        // CONT: the child whose posterior draws highest.
        let mut best: Option<(f64, u64)> = None;
        for &k in &kids {
            let mut obs = Vec::new();
            subtree_scores(tree, &scores, k, &mut obs);
            let d = draw(&obs, rng);
            if best.is_none_or(|(b, _)| d > b) {
                best = Some((d, k));
            }
        }
        v = best.expect("kids is not empty").1;
    }
}

/// The best-scoring node that can still be expanded.
fn fallback(tree: &Tree, expandable: &dyn Fn(u64) -> bool) -> Option<u64> {
    tree.nodes
        .iter()
        .filter(|n| expandable(n.id))
        .max_by(|a, b| a.score().unwrap_or(0.0).total_cmp(&b.score().unwrap_or(0.0)).then(b.id.cmp(&a.id)))
        .map(|n| n.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posterior_draws_follow_the_observations() {
        let mut rng = SplitMix64(3);
        let high: f64 = (0..2000).map(|_| draw(&[0.8, 0.82, 0.79, 0.81], &mut rng)).sum::<f64>() / 2000.0;
        let low: f64 = (0..2000).map(|_| draw(&[0.1, 0.12, 0.09], &mut rng)).sum::<f64>() / 2000.0;
        assert!((high - 0.64).abs() < 0.05, "shrunk toward the prior mean 0 by kappa: {high}");
        assert!(high > low + 0.4, "{high} {low}");
        // Gamma draws have the right mean.
        let g: f64 = (0..5000).map(|_| gamma(2.5, &mut rng)).sum::<f64>() / 5000.0;
        assert!((g - 2.5).abs() < 0.15, "{g}");
        let g: f64 = (0..5000).map(|_| gamma(0.5, &mut rng)).sum::<f64>() / 5000.0;
        assert!((g - 0.5).abs() < 0.05, "{g}");
    }
}
