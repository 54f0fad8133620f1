//! `random`: a Researcher that samples training recipes uniformly from the task's search space
//! (log-uniform learning rates), and with some probability adds one of the declared data steps.
//! Deterministic for a given task seed and config seed; the baseline every smarter policy has to beat.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{PluginError, Researcher};
use trex_sdk::rng::SplitMix64;
use trex_sdk::types::{DataRecipe, Outcome, Proposal, ResearchContext, SearchSpace, TaskBrief, TrainRecipe};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Mixed with the task seed.
    seed: u64,
    /// Probability of adding one declared data step to a proposal.
    data_step_probability: f64,
    /// Probability that a proposal continues from its parent's adapter.
    continue_probability: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { seed: 0, data_step_probability: 0.3, continue_probability: 0.0 }
    }
}

/// Picks one element of a slice.
fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() { None } else { items.get(rng.below(items.len() as u64) as usize) }
}

struct RandomResearcher {
    rng: SplitMix64,
    /// The task's starting data recipe: sampled proposals build on it.
    base_data: DataRecipe,
    /// The task's starting training recipe: fields the space does not cover come from it.
    base_train: TrainRecipe,
    space: SearchSpace,
    config: Config,
    observed: u64,
}

impl RandomResearcher {
    fn sample(&mut self) -> Proposal {
        let s = &self.space;
        let lr = &s.learning_rate;
        let u = self.rng.unit();
        let learning_rate = if lr.log && lr.min > 0.0 {
            (lr.min.ln() + u * (lr.max.ln() - lr.min.ln())).exp()
        } else {
            lr.min + u * (lr.max - lr.min)
        };
        let defaults = self.base_train.clone();
        let lora_rank = pick(&mut self.rng, &s.lora_rank).copied().unwrap_or(defaults.lora_rank);
        let train_recipe = TrainRecipe {
            learning_rate,
            lora_rank,
            lora_alpha: 2.0 * lora_rank as f32,
            epochs: pick(&mut self.rng, &s.epochs).copied().unwrap_or(defaults.epochs),
            targets: pick(&mut self.rng, &s.targets).cloned().unwrap_or(defaults.targets.clone()),
            continue_from_parent: self.rng.unit() < self.config.continue_probability,
            seed: self.rng.next_u64() % 1_000_000,
            ..defaults
        };
        let mut data_recipe = self.base_data.clone();
        if self.rng.unit() < self.config.data_step_probability
            && let Some(step) = pick(&mut self.rng, &s.data_steps).cloned()
        {
            data_recipe.steps.push(step);
        }
        let rationale = format!(
            "random sample: lr {learning_rate:.2e}, rank {lora_rank}, {} epoch(s){}",
            train_recipe.epochs,
            data_recipe
                .steps
                .get(self.base_data.steps.len())
                .map(|s| format!(", plus data step `{}`", s.plugin))
                .unwrap_or_default()
        );
        Proposal { data_recipe, train_recipe, rationale }
    }
}

impl Researcher for RandomResearcher {
    type Config = Config;
    const NAME: &'static str = "random";
    const DESCRIPTION: &'static str = "Sample training recipes uniformly from the task's search space (log-uniform learning rate), sometimes adding a declared data step. Seeded and deterministic; needs no LLM.";

    fn open(config: Config, task: TaskBrief) -> Result<Self, PluginError> {
        for (name, p) in [
            ("data_step_probability", config.data_step_probability),
            ("continue_probability", config.continue_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(PluginError::field(name, format!("must be within [0, 1], got {p}")));
            }
        }
        let lr = &task.search_space.learning_rate;
        if !(lr.min > 0.0 && lr.min <= lr.max) {
            return Err(PluginError::field(
                "search_space.learning_rate",
                format!("needs 0 < min <= max, got [{}, {}]", lr.min, lr.max),
            ));
        }
        let seed = task.seed ^ config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (base_data, base_train) = task.start.map(|p| (p.data_recipe, p.train_recipe)).unwrap_or_default();
        Ok(Self { rng: SplitMix64(seed), base_data, base_train, space: task.search_space, config, observed: 0 })
    }

    fn propose(&mut self, _context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError> {
        Ok((0..max).map(|_| self.sample()).collect())
    }

    fn observe(&mut self, _outcome: Outcome) -> Result<(), PluginError> {
        self.observed += 1;
        Ok(())
    }
}

trex_sdk::export_researcher!(RandomResearcher);
