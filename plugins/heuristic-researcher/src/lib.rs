//! `heuristic`: the offline default Researcher. It reads the node being expanded (its training
//! curve, its bad-case clusters) and the lessons of failed nodes, and proposes the mutation a
//! practitioner would try next:
//!
//! - from the root: the task's starting experiment, then variations of it;
//! - loss still high (underfitting): more epochs, a higher learning rate, a larger rank, more
//!   target modules, or a cheap continuation of the parent's adapter;
//! - loss that did not fall: a lower learning rate;
//! - near-zero loss (overfitting risk): fewer epochs, dropout;
//! - failures that cluster: the data step a rule maps the cluster to, or the next declared data
//!   step the recipe does not use yet;
//! - learning rates at or above one that diverged are avoided.
//!
//! Every proposal carries its reason. An experiment already tried under the same parent is never
//! proposed twice. Deterministic for a given context.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{PluginError, Researcher};
use trex_sdk::types::{
    DataStep, FailureKind, NodeSummary, Outcome, Proposal, ResearchContext, SearchSpace, TaskBrief, TrainRecipe,
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
    /// Factor by which the learning rate is raised or lowered.
    lr_factor: f64,
    /// Share of the failures a cluster needs before a data step is added for it.
    cluster_share: f64,
    /// Cluster-to-data-step rules, tried before the generic "next unused data step".
    rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        Self { underfit_loss: 0.8, overfit_loss: 0.05, lr_factor: 2.0, cluster_share: 0.3, rules: Vec::new() }
    }
}

struct Heuristic {
    config: Config,
    space: SearchSpace,
    start: Proposal,
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
    fn with_lr(&self, base: &Proposal, factor: f64, max_safe: f64) -> Option<TrainRecipe> {
        let lr = &self.space.learning_rate;
        let new = (base.train_recipe.learning_rate * factor).clamp(lr.min, lr.max.min(max_safe));
        ((new - base.train_recipe.learning_rate).abs() > 1e-12).then(|| TrainRecipe {
            learning_rate: new,
            continue_from_parent: false,
            ..base.train_recipe.clone()
        })
    }

    fn candidates(&self, ctx: &ResearchContext) -> Vec<Proposal> {
        let c = &self.config;
        let node = &ctx.node;
        let is_root = node.proposal.is_none();
        let base = node.proposal.clone().unwrap_or_else(|| self.start.clone());
        let r = &base.train_recipe;
        // Lessons of diverged nodes: stay below their learning rate.
        let max_safe = ctx
            .worst
            .iter()
            .chain(&ctx.siblings)
            .filter(|n| n.failure == Some(FailureKind::Diverged))
            .filter_map(|n| n.proposal.as_ref().map(|p| p.train_recipe.learning_rate * 0.7))
            .fold(f64::INFINITY, f64::min);
        let mut out = Vec::new();
        let mut push = |train: TrainRecipe, data: Option<Vec<DataStep>>, why: String| {
            let mut p = base.clone();
            p.train_recipe = train;
            if let Some(steps) = data {
                p.data_recipe.steps = steps;
            }
            p.rationale = why;
            out.push(p);
        };
        if is_root {
            push(r.clone(), None, "the task's starting experiment, to learn how far one plain run gets".into());
        }
        let metric = |k: &str| node.metrics.get(k).copied();
        let (first, last) = (metric("first_loss"), metric("final_loss"));
        if let (Some(first), Some(last)) = (first, last) {
            if last > first * 0.9 {
                if let Some(t) = self.with_lr(&base, 1.0 / (c.lr_factor * 1.5), max_safe) {
                    push(t, None, format!("the loss barely moved ({first:.2}→{last:.2}): lower the learning rate"));
                }
            } else if last > c.underfit_loss {
                let why =
                    |what: &str| format!("still underfitting (final loss {last:.2} > {}): {what}", c.underfit_loss);
                if let Some(e) = next_up(&self.space.epochs, r.epochs) {
                    push(TrainRecipe { epochs: e, ..r.clone() }, None, why(&format!("train {e} epochs")));
                }
                if let Some(t) = self.with_lr(&base, c.lr_factor, max_safe) {
                    let lr = t.learning_rate;
                    push(t, None, why(&format!("raise the learning rate to {lr:.1e}")));
                }
                if let Some(rank) = next_up(&self.space.lora_rank, r.lora_rank) {
                    let t = TrainRecipe { lora_rank: rank, lora_alpha: 2.0 * rank as f32, ..r.clone() };
                    push(t, None, why(&format!("raise the LoRA rank to {rank}")));
                }
                let smallest = self.space.epochs.iter().copied().fold(r.epochs, f32::min);
                push(
                    TrainRecipe { continue_from_parent: true, epochs: smallest, ..r.clone() },
                    None,
                    why(&format!("continue this adapter for {smallest} more epoch(s), cheaper than starting over")),
                );
            } else if last < c.overfit_loss {
                let why = |what: &str| format!("training loss {last:.3} is near zero (overfitting risk): {what}");
                if let Some(e) = next_down(&self.space.epochs, r.epochs) {
                    push(TrainRecipe { epochs: e, ..r.clone() }, None, why(&format!("train {e} epochs")));
                }
                if r.lora_dropout < 0.1 {
                    push(TrainRecipe { lora_dropout: 0.1, ..r.clone() }, None, why("add LoRA dropout 0.1"));
                }
            }
        }
        // Failures that cluster: a targeted data step.
        let failures: u64 = ctx.bad_cases.iter().filter(|b| b.label.starts_with("tag:")).map(|b| b.count).sum();
        let used: Vec<&str> = base.data_recipe.steps.iter().map(|s| s.plugin.as_str()).collect();
        if let Some(top) = ctx.bad_cases.first()
            && failures > 0
            && top.count as f64 >= c.cluster_share * failures as f64
        {
            let by_rule = c
                .rules
                .iter()
                .filter(|rule| top.label.contains(&rule.when))
                .find_map(|rule| self.space.data_steps.iter().find(|s| s.plugin == rule.add_step));
            let next_unused = self.space.data_steps.iter().find(|s| !used.contains(&s.plugin.as_str()));
            if let Some(step) = by_rule.or(next_unused).filter(|s| !used.contains(&s.plugin.as_str())) {
                let mut steps = base.data_recipe.steps.clone();
                steps.push(step.clone());
                push(
                    TrainRecipe { continue_from_parent: false, ..r.clone() },
                    Some(steps),
                    format!(
                        "{} of {failures} failures are `{}`: add the data step `{}`",
                        top.count, top.label, step.plugin
                    ),
                );
            }
        }
        // Generic moves, so a node always has somewhere to go.
        if let Some(t) = self.with_lr(&base, c.lr_factor, max_safe) {
            let lr = t.learning_rate;
            push(t, None, format!("explore a higher learning rate ({lr:.1e})"));
        }
        if let Some(e) = next_up(&self.space.epochs, r.epochs) {
            push(TrainRecipe { epochs: e, ..r.clone() }, None, format!("explore longer training ({e} epochs)"));
        }
        if let Some(targets) = self.space.targets.iter().find(|t| t.len() > r.targets.len()) {
            push(
                TrainRecipe { targets: targets.clone(), ..r.clone() },
                None,
                format!("adapt more modules ({} instead of {})", targets.len(), r.targets.len()),
            );
        }
        if let Some(rank) = next_up(&self.space.lora_rank, r.lora_rank) {
            let t = TrainRecipe { lora_rank: rank, lora_alpha: 2.0 * rank as f32, ..r.clone() };
            push(t, None, format!("explore a larger rank ({rank})"));
        }
        if let Some(t) = self.with_lr(&base, 1.0 / c.lr_factor, max_safe) {
            let lr = t.learning_rate;
            push(t, None, format!("explore a lower learning rate ({lr:.1e})"));
        }
        out
    }
}

fn same_experiment(a: &Proposal, b: &Proposal) -> bool {
    a.data_recipe == b.data_recipe && a.train_recipe == b.train_recipe
}

impl Researcher for Heuristic {
    type Config = Config;
    const NAME: &'static str = "heuristic";
    const DESCRIPTION: &'static str = "Mutate the expanded node's recipes from its training curve (underfitting, divergence, overfitting), its bad-case clusters and the lessons of failed nodes. Deterministic; needs no LLM.";

    fn open(config: Config, task: TaskBrief) -> Result<Self, PluginError> {
        if config.lr_factor.is_nan() || config.lr_factor <= 1.0 {
            return Err(PluginError::field("lr_factor", format!("must be above 1, got {}", config.lr_factor)));
        }
        if !(0.0..=1.0).contains(&config.cluster_share) {
            return Err(PluginError::field("cluster_share", "must be within [0, 1]"));
        }
        for (i, rule) in config.rules.iter().enumerate() {
            if !task.search_space.data_steps.iter().any(|s| s.plugin == rule.add_step) {
                return Err(PluginError::field(
                    format!("rules[{i}].add_step"),
                    format!("`{}` is not among the task's search_space.data_steps", rule.add_step),
                ));
            }
        }
        let mut start = task.start.clone().unwrap_or_else(|| Proposal {
            data_recipe: Default::default(),
            train_recipe: TrainRecipe::default(),
            rationale: String::new(),
        });
        // The search seed varies initialization and data order of every experiment.
        start.train_recipe.seed = start.train_recipe.seed.wrapping_add(task.seed);
        Ok(Self { config, space: task.search_space, start })
    }

    fn propose(&mut self, context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError> {
        let id = context.node.id;
        let tried: Vec<&Proposal> = context
            .siblings
            .iter()
            .filter(|n: &&NodeSummary| n.parent == Some(id))
            .filter_map(|n| n.proposal.as_ref())
            .collect();
        let mut out: Vec<Proposal> = Vec::new();
        for p in self.candidates(&context) {
            let repeat_of_node = context.node.proposal.as_ref().is_some_and(|n| same_experiment(n, &p));
            if repeat_of_node
                || tried.iter().any(|t| same_experiment(t, &p))
                || out.iter().any(|o| same_experiment(o, &p))
            {
                continue;
            }
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
