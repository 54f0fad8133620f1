//! `heuristic`: the offline default Researcher. It reads the node being expanded (its training
//! curve, its optimizer steps and truncated examples, its bad-case clusters) and the lessons of
//! failed nodes, and proposes the moves a practitioner would consider next, each with a
//! priority:
//!
//! - from the root: the task's starting experiment first, then distinct drafts (another
//!   learning rate, longer training, more modules, a declared data step);
//! - no valid answer at all: underfitting, escaped fast (a higher learning rate and more
//!   epochs together);
//! - too few optimizer steps: more epochs or a smaller batch (more steps for the same tokens);
//! - many truncated examples: a longer `max_seq_len` where the task allows one, or a length
//!   filter;
//! - loss still high (underfitting): more epochs, a higher learning rate, a larger rank, or a
//!   cheap continuation of the parent's adapter (it trains on the examples that come next);
//! - loss that did not fall: a lower learning rate;
//! - near-zero loss (overfitting risk): fewer epochs, dropout;
//! - failures that cluster: the data step a rule maps the cluster to, or the next declared data
//!   step the recipe does not use yet;
//! - small local perturbations of the learning rate;
//! - learning rates at or above one that diverged are avoided.
//!
//! The moves are ordered by a seeded softmax over their priorities (`temperature`; 0 keeps the
//! priority order), so a tree search has several distinct children to choose from. Nothing the
//! search has already tried anywhere in the tree (`ResearchContext::tried`) is proposed again.
//! Every proposal carries its reason. Deterministic for a given search seed and context.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{PluginError, Researcher};
use trex_sdk::rng::SplitMix64;
use trex_sdk::types::{
    DataStep, FailureKind, NodeSummary, Outcome, Proposal, ResearchContext, SearchSpace, TaskBrief, TrainRecipe,
    experiment_key,
};

/// Maps a bad-case cluster to a data step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// A substring of the cluster label, e.g. `tag:case-or-spacing`.
    when: String,
    /// A data-tool plugin declared in the task's `search_space.data_steps`.
    add_step: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// A final training loss above this counts as underfitting.
    underfit_loss: f64,
    /// A final training loss below this counts as an overfitting risk.
    overfit_loss: f64,
    /// Factor by which the learning rate is raised or lowered (on a task with a learning-rate
    /// grid, one grid step instead).
    lr_factor: f64,
    /// Share of the failures a cluster needs before a data step is added for it.
    cluster_share: f64,
    /// Fewer optimizer steps than this count as too few to learn from.
    min_steps: u32,
    /// A share of truncated training examples above this asks for a longer sequence or a
    /// length filter.
    truncated_share: f64,
    /// Softmax temperature over the moves' priorities (0: always the priority order).
    temperature: f64,
    /// Cluster-to-data-step rules, tried before the generic "next unused data step".
    rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            underfit_loss: 0.8,
            overfit_loss: 0.05,
            lr_factor: 2.0,
            cluster_share: 0.3,
            min_steps: 30,
            truncated_share: 0.05,
            temperature: 1.0,
            rules: Vec::new(),
        }
    }
}

struct Heuristic {
    config: Config,
    space: SearchSpace,
    start: Proposal,
    seed: u64,
}

/// A candidate move: the proposal and how strongly the evidence asks for it.
struct Move {
    proposal: Proposal,
    priority: f64,
}

fn next_up<T: Copy + PartialOrd>(list: &[T], current: T) -> Option<T> {
    let mut up: Vec<T> = list.iter().copied().filter(|v| *v > current).collect();
    up.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    up.first().copied()
}

fn next_down<T: Copy + PartialOrd>(list: &[T], current: T) -> Option<T> {
    let mut down: Vec<T> = list.iter().copied().filter(|v| *v < current).collect();
    down.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    down.first().copied()
}

impl Heuristic {
    /// The learning rate `factor` times `current` (more than 1: up), within the space and below
    /// `max_safe`; on a grid, the neighbouring grid value in that direction (`factor` beyond
    /// `lr_factor` squared: two steps).
    fn scaled_lr(&self, current: f64, factor: f64, max_safe: f64) -> Option<f64> {
        let lr = &self.space.learning_rate;
        let new = if lr.values.is_empty() {
            (current * factor).clamp(lr.min, lr.max.min(max_safe))
        } else {
            let steps = if factor.ln().abs() > 1.5 * self.config.lr_factor.ln() { 2 } else { 1 };
            let mut v = current;
            for _ in 0..steps {
                let next = if factor > 1.0 { next_up(&lr.values, v) } else { next_down(&lr.values, v) };
                match next.filter(|n| *n <= max_safe) {
                    Some(n) => v = n,
                    None => break,
                }
            }
            v
        };
        ((new - current).abs() > current * 1e-6).then_some(new)
    }

    fn with_lr(&self, base: &TrainRecipe, factor: f64, max_safe: f64) -> Option<TrainRecipe> {
        self.scaled_lr(base.learning_rate, factor, max_safe).map(|learning_rate| TrainRecipe {
            learning_rate,
            continue_from_parent: false,
            ..base.clone()
        })
    }

    fn candidates(&self, ctx: &ResearchContext, rng: &mut SplitMix64) -> Vec<Move> {
        let c = &self.config;
        let node = &ctx.node;
        let is_root = node.proposal.is_none();
        let base = node.proposal.clone().unwrap_or_else(|| self.start.clone());
        let r = base.train_recipe.clone();
        let r = TrainRecipe { continue_from_parent: false, ..r };
        // Lessons of diverged nodes: stay below their learning rate.
        let max_safe = ctx
            .worst
            .iter()
            .chain(&ctx.siblings)
            .chain(&ctx.parent_path)
            .filter(|n| n.failure == Some(FailureKind::Diverged))
            .filter_map(|n| n.proposal.as_ref().map(|p| p.train_recipe.learning_rate * 0.7))
            .fold(f64::INFINITY, f64::min);
        let mut out: Vec<Move> = Vec::new();
        let mut push = |train: TrainRecipe, data: Option<Vec<DataStep>>, priority: f64, why: String| {
            let mut p = base.clone();
            p.train_recipe = train;
            if let Some(steps) = data {
                p.data_recipe.steps = steps;
            }
            p.rationale = why;
            out.push(Move { proposal: p, priority });
        };
        let used: Vec<&str> = base.data_recipe.steps.iter().map(|s| s.plugin.as_str()).collect();
        let unused: Vec<&DataStep> =
            self.space.data_steps.iter().filter(|s| !used.contains(&s.plugin.as_str())).collect();
        if is_root {
            push(
                r.clone(),
                None,
                f64::INFINITY,
                "the task's starting experiment, to learn how far one plain run gets".into(),
            );
            // Drafts: distinct alternatives to the start, not mutations of its first child.
            if let Some(t) = self.with_lr(&r, c.lr_factor * c.lr_factor, max_safe) {
                let lr = t.learning_rate;
                push(t, None, 2.0, format!("draft: the start recipe at a much higher learning rate ({lr:.1e})"));
            }
            if let Some(t) = self.with_lr(&r, 1.0 / c.lr_factor, max_safe) {
                let lr = t.learning_rate;
                push(t, None, 1.0, format!("draft: the start recipe at a lower learning rate ({lr:.1e})"));
            }
            if let Some(e) = next_up(&self.space.epochs, r.epochs) {
                push(TrainRecipe { epochs: e, ..r.clone() }, None, 2.0, format!("draft: train longer ({e} epochs)"));
            }
            if let Some(targets) = self.space.targets.iter().find(|t| t.len() > r.targets.len()) {
                let why = format!("draft: adapt {} modules instead of {}", targets.len(), r.targets.len());
                push(TrainRecipe { targets: targets.clone(), ..r.clone() }, None, 1.5, why);
            }
            for step in &unused {
                let mut steps = base.data_recipe.steps.clone();
                steps.push((*step).clone());
                push(
                    r.clone(),
                    Some(steps),
                    1.5,
                    format!("draft: the start recipe plus the data step `{}`", step.plugin),
                );
            }
            return out;
        }
        let metric = |k: &str| node.metrics.get(k).copied();
        let steps = metric("train_steps");
        let examples = metric("train_examples").unwrap_or(0.0);
        let truncated = metric("truncated_examples").unwrap_or(0.0);
        // No valid answer at all: the model has not learnt the format yet; escape fast.
        if node.score == Some(0.0) {
            let mut t = self.with_lr(&r, c.lr_factor * c.lr_factor, max_safe).unwrap_or_else(|| r.clone());
            if let Some(e) = next_up(&self.space.epochs, r.epochs) {
                t.epochs = e;
            }
            if t != r {
                let why = format!(
                    "no valid answer at all: underfitting, so a higher learning rate ({:.1e}) and {} epochs together",
                    t.learning_rate, t.epochs
                );
                push(t, None, 5.0, why);
            }
        }
        // Too few optimizer steps to learn from.
        if let Some(n) = steps
            && n < c.min_steps as f64
        {
            let why = |what: &str| format!("only {n:.0} optimizer steps on {examples:.0} examples: {what}");
            if let Some(e) = next_up(&self.space.epochs, r.epochs) {
                push(TrainRecipe { epochs: e, ..r.clone() }, None, 3.0, why(&format!("train {e} epochs")));
            }
            if r.batch_size >= 2 {
                let b = r.batch_size / 2;
                push(
                    TrainRecipe { batch_size: b, ..r.clone() },
                    None,
                    2.5,
                    why(&format!("halve the batch to {b}, twice the steps for the same tokens")),
                );
            }
        }
        // Truncated examples lose their answers.
        if examples > 0.0 && truncated / examples > c.truncated_share {
            let share = 100.0 * truncated / examples;
            if let Some(len) = next_up(&self.space.max_seq_len, r.max_seq_len) {
                let why = format!(
                    "{share:.0}% of the examples were truncated at {}: raise max_seq_len to {len}",
                    r.max_seq_len
                );
                push(TrainRecipe { max_seq_len: len, ..r.clone() }, None, 3.5, why);
            }
            if let Some(step) = unused.iter().find(|s| s.plugin.contains("length")) {
                let mut steps = base.data_recipe.steps.clone();
                steps.push((*step).clone());
                let why = format!("{share:.0}% of the examples were truncated: filter by length (`{}`)", step.plugin);
                push(r.clone(), Some(steps), 2.5, why);
            }
        }
        let (first, last) = (metric("first_loss"), metric("final_loss"));
        if let (Some(first), Some(last)) = (first, last) {
            if last > first * 0.9 {
                if let Some(t) = self.with_lr(&r, 1.0 / (c.lr_factor * 1.5), max_safe) {
                    push(
                        t,
                        None,
                        3.0,
                        format!("the loss barely moved ({first:.2}→{last:.2}): lower the learning rate"),
                    );
                }
            } else if last > c.underfit_loss {
                let why =
                    |what: &str| format!("still underfitting (final loss {last:.2} > {}): {what}", c.underfit_loss);
                if let Some(e) = next_up(&self.space.epochs, r.epochs) {
                    push(TrainRecipe { epochs: e, ..r.clone() }, None, 2.5, why(&format!("train {e} epochs")));
                }
                if let Some(t) = self.with_lr(&r, c.lr_factor, max_safe) {
                    let lr = t.learning_rate;
                    push(t, None, 2.5, why(&format!("raise the learning rate to {lr:.1e}")));
                }
                if let Some(rank) = next_up(&self.space.lora_rank, r.lora_rank) {
                    let t = TrainRecipe { lora_rank: rank, lora_alpha: 2.0 * rank as f32, ..r.clone() };
                    push(t, None, 1.5, why(&format!("raise the LoRA rank to {rank}")));
                }
                let smallest = self.space.epochs.iter().copied().fold(r.epochs, f32::min);
                push(
                    TrainRecipe { continue_from_parent: true, epochs: smallest, ..r.clone() },
                    None,
                    2.0,
                    why(&format!(
                        "continue this adapter on the next {smallest} epoch(s) of data, cheaper than starting over"
                    )),
                );
            } else if last < c.overfit_loss {
                let why = |what: &str| format!("training loss {last:.3} is near zero (overfitting risk): {what}");
                if let Some(e) = next_down(&self.space.epochs, r.epochs) {
                    push(TrainRecipe { epochs: e, ..r.clone() }, None, 2.5, why(&format!("train {e} epochs")));
                }
                if r.lora_dropout < 0.1 {
                    push(TrainRecipe { lora_dropout: 0.1, ..r.clone() }, None, 2.0, why("add LoRA dropout 0.1"));
                }
            }
        }
        // Failures that cluster: a targeted data step.
        let failures: u64 = ctx.bad_cases.iter().filter(|b| b.label.starts_with("tag:")).map(|b| b.count).sum();
        if node.score != Some(0.0)
            && let Some(top) = ctx.bad_cases.first()
            && failures > 0
            && top.count as f64 >= c.cluster_share * failures as f64
        {
            let by_rule = c
                .rules
                .iter()
                .filter(|rule| top.label.contains(&rule.when))
                .find_map(|rule| self.space.data_steps.iter().find(|s| s.plugin == rule.add_step));
            let next_unused = unused.first().copied();
            if let Some(step) = by_rule.or(next_unused).filter(|s| !used.contains(&s.plugin.as_str())) {
                let mut steps = base.data_recipe.steps.clone();
                steps.push(step.clone());
                push(
                    r.clone(),
                    Some(steps),
                    3.0,
                    format!(
                        "{} of {failures} failures are `{}`: add the data step `{}`",
                        top.count, top.label, step.plugin
                    ),
                );
            }
        }
        // Generic moves, so a node always has somewhere to go.
        if let Some(t) = self.with_lr(&r, c.lr_factor, max_safe) {
            let lr = t.learning_rate;
            push(t, None, 1.0, format!("explore a higher learning rate ({lr:.1e})"));
        }
        if let Some(e) = next_up(&self.space.epochs, r.epochs) {
            push(TrainRecipe { epochs: e, ..r.clone() }, None, 1.0, format!("explore longer training ({e} epochs)"));
        }
        if let Some(targets) = self.space.targets.iter().find(|t| t.len() > r.targets.len()) {
            let why = format!("adapt more modules ({} instead of {})", targets.len(), r.targets.len());
            push(TrainRecipe { targets: targets.clone(), ..r.clone() }, None, 1.0, why);
        }
        if let Some(rank) = next_up(&self.space.lora_rank, r.lora_rank) {
            let t = TrainRecipe { lora_rank: rank, lora_alpha: 2.0 * rank as f32, ..r.clone() };
            push(t, None, 0.8, format!("explore a larger rank ({rank})"));
        }
        if let Some(t) = self.with_lr(&r, 1.0 / c.lr_factor, max_safe) {
            let lr = t.learning_rate;
            push(t, None, 0.8, format!("explore a lower learning rate ({lr:.1e})"));
        }
        for step in unused.iter().take(2) {
            let mut steps = base.data_recipe.steps.clone();
            steps.push((*step).clone());
            push(r.clone(), Some(steps), 0.8, format!("explore the data step `{}`", step.plugin));
        }
        // A small local perturbation of the learning rate (a grid task has its neighbours above).
        if self.space.learning_rate.values.is_empty() {
            let factor = (rng.unit() * 2.0 - 1.0) * 0.5;
            if let Some(t) = self.with_lr(&r, factor.exp(), max_safe) {
                let lr = t.learning_rate;
                push(t, None, 0.5, format!("perturb the learning rate locally ({lr:.2e})"));
            }
        }
        out
    }
}

/// `moves` in a seeded softmax order over their priorities (a priority of infinity comes
/// first; temperature 0 keeps the priority order).
fn softmax_order(mut moves: Vec<Move>, temperature: f64, rng: &mut SplitMix64) -> Vec<Proposal> {
    let mut order = Vec::with_capacity(moves.len());
    while !moves.is_empty() {
        let i = if let Some(i) = moves.iter().position(|m| m.priority.is_infinite()) {
            i
        } else if temperature <= 0.0 {
            // The first of the highest priority.
            let best = moves.iter().map(|m| m.priority).fold(f64::NEG_INFINITY, f64::max);
            moves.iter().position(|m| m.priority == best).unwrap_or(0)
        } else {
            let top = moves.iter().map(|m| m.priority).fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = moves.iter().map(|m| ((m.priority - top) / temperature).exp()).collect();
            let mut u = rng.unit() * weights.iter().sum::<f64>();
            let mut pick = weights.len() - 1;
            for (j, w) in weights.iter().enumerate() {
                if u < *w {
                    pick = j;
                    break;
                }
                u -= w;
            }
            pick
        };
        order.push(moves.remove(i).proposal);
    }
    order
}

impl Researcher for Heuristic {
    type Config = Config;
    const NAME: &'static str = "heuristic";
    const DESCRIPTION: &'static str = "Propose the moves a practitioner would try from the expanded node's training curve (underfitting, divergence, overfitting, too few steps, truncation), its bad-case clusters and the lessons of failed nodes, in a seeded softmax order over their priorities; never an experiment already tried. Needs no LLM.";

    fn open(config: Config, task: TaskBrief) -> Result<Self, PluginError> {
        if config.lr_factor.is_nan() || config.lr_factor <= 1.0 {
            return Err(PluginError::field("lr_factor", format!("must be above 1, got {}", config.lr_factor)));
        }
        if !(0.0..=1.0).contains(&config.cluster_share) {
            return Err(PluginError::field("cluster_share", "must be within [0, 1]"));
        }
        if !(0.0..=1.0).contains(&config.truncated_share) {
            return Err(PluginError::field("truncated_share", "must be within [0, 1]"));
        }
        if !(config.temperature >= 0.0 && config.temperature.is_finite()) {
            return Err(PluginError::field("temperature", format!("must be 0 or more, got {}", config.temperature)));
        }
        for (i, rule) in config.rules.iter().enumerate() {
            if !task.search_space.data_steps.iter().any(|s| s.plugin == rule.add_step) {
                return Err(PluginError::field(
                    format!("rules[{i}].add_step"),
                    format!("`{}` is not among the task's search_space.data_steps", rule.add_step),
                ));
            }
        }
        let start = task.start.clone().unwrap_or_else(|| Proposal {
            data_recipe: Default::default(),
            train_recipe: TrainRecipe::default(),
            rationale: String::new(),
        });
        Ok(Self { config, space: task.search_space, start, seed: task.seed })
    }

    fn propose(&mut self, context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError> {
        // Seeded by the search seed and the context, so a resumed search proposes what the
        // interrupted one would have.
        let mut rng = SplitMix64(
            self.seed
                ^ context.node.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (context.tried.len() as u64).rotate_left(32),
        );
        let id = context.node.id;
        let siblings: Vec<String> = context
            .siblings
            .iter()
            .filter(|n: &&NodeSummary| n.parent == Some(id))
            .filter_map(|n| n.proposal.as_ref())
            .map(experiment_key)
            .collect();
        let own = context.node.proposal.as_ref().map(experiment_key);
        let moves = self.candidates(&context, &mut rng);
        let mut out: Vec<Proposal> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for p in softmax_order(moves, self.config.temperature, &mut rng) {
            let key = experiment_key(&p);
            // A continued adapter is a new experiment under every parent.
            let elsewhere = !p.train_recipe.continue_from_parent && context.tried.contains(&key);
            if own.as_ref() == Some(&key) || siblings.contains(&key) || elsewhere || keys.contains(&key) {
                continue;
            }
            keys.push(key);
            out.push(p);
            if out.len() >= max as usize {
                break;
            }
        }
        Ok(out)
    }

    fn observe(&mut self, _outcome: Outcome) -> Result<(), PluginError> {
        Ok(())
    }
}

trex_sdk::export_researcher!(Heuristic);
