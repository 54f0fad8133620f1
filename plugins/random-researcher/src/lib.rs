//! `random`: a Researcher that knows nothing about training. From the root it samples training
//! recipes uniformly from the task's search space (log-uniform learning rates); from any other
//! node it resamples one or two fields of that node's recipe (`mode = "mutate"`, the default),
//! so the tree a strategy grows decides where it searches. With some probability it adds one
//! of the declared data steps. It never proposes an experiment the search has already tried.
//! Deterministic for a given task seed, config seed and context; the baseline every smarter
//! policy has to beat.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{PluginError, Researcher};
use trex_sdk::rng::SplitMix64;
use trex_sdk::types::{
    DataRecipe, Outcome, Proposal, ResearchContext, SearchSpace, TaskBrief, TrainRecipe, experiment_key,
};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Mixed with the task seed.
    seed: u64,
    /// Probability of adding one declared data step to a proposal.
    data_step_probability: f64,
    /// Probability that a proposal continues from its parent's adapter.
    continue_probability: f64,
    /// `mutate`: resample one or two fields of the expanded node's recipe; `global`: sample
    /// every field from the whole space, wherever the node is.
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Mutate,
    Global,
}

impl Default for Config {
    fn default() -> Self {
        Self { seed: 0, data_step_probability: 0.3, continue_probability: 0.0, mode: Mode::Mutate }
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
    fn learning_rate(&mut self) -> f64 {
        let lr = &self.space.learning_rate;
        if !lr.values.is_empty() {
            return *pick(&mut self.rng, &lr.values).expect("not empty");
        }
        let u = self.rng.unit();
        if lr.log && lr.min > 0.0 {
            (lr.min.ln() + u * (lr.max.ln() - lr.min.ln())).exp()
        } else {
            lr.min + u * (lr.max - lr.min)
        }
    }

    /// Every field sampled from the whole space.
    fn sample(&mut self) -> Proposal {
        let learning_rate = self.learning_rate();
        let s = self.space.clone();
        let defaults = self.base_train.clone();
        let lora_rank = pick(&mut self.rng, &s.lora_rank).copied().unwrap_or(defaults.lora_rank);
        let train_recipe = TrainRecipe {
            learning_rate,
            lora_rank,
            lora_alpha: 2.0 * lora_rank as f32,
            epochs: pick(&mut self.rng, &s.epochs).copied().unwrap_or(defaults.epochs),
            targets: pick(&mut self.rng, &s.targets).cloned().unwrap_or(defaults.targets.clone()),
            max_seq_len: pick(&mut self.rng, &s.max_seq_len).copied().unwrap_or(defaults.max_seq_len),
            continue_from_parent: false,
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

    /// One or two fields of `node` resampled.
    fn mutate(&mut self, node: &Proposal) -> Proposal {
        let s = self.space.clone();
        let mut p = node.clone();
        p.train_recipe.continue_from_parent = false;
        let fields = 1 + self.rng.below(2);
        let mut changed = Vec::new();
        for _ in 0..fields {
            match self.rng.below(6) {
                0 => {
                    p.train_recipe.learning_rate = self.learning_rate();
                    changed.push(format!("lr {:.2e}", p.train_recipe.learning_rate));
                }
                1 => {
                    if let Some(r) = pick(&mut self.rng, &s.lora_rank).copied() {
                        p.train_recipe.lora_rank = r;
                        p.train_recipe.lora_alpha = 2.0 * r as f32;
                        changed.push(format!("rank {r}"));
                    }
                }
                2 => {
                    if let Some(e) = pick(&mut self.rng, &s.epochs).copied() {
                        p.train_recipe.epochs = e;
                        changed.push(format!("{e} epoch(s)"));
                    }
                }
                3 => {
                    if let Some(t) = pick(&mut self.rng, &s.targets).cloned() {
                        changed.push(format!("{} modules", t.len()));
                        p.train_recipe.targets = t;
                    }
                }
                4 => {
                    if let Some(len) = pick(&mut self.rng, &s.max_seq_len).copied() {
                        p.train_recipe.max_seq_len = len;
                        changed.push(format!("max_seq_len {len}"));
                    }
                }
                _ => {
                    if self.rng.unit() < self.config.data_step_probability
                        && let Some(step) = pick(&mut self.rng, &s.data_steps).cloned()
                        && !p.data_recipe.steps.iter().any(|d| d.plugin == step.plugin)
                    {
                        changed.push(format!("data step `{}`", step.plugin));
                        p.data_recipe.steps.push(step);
                    }
                }
            }
        }
        if self.rng.unit() < self.config.continue_probability {
            p.train_recipe.continue_from_parent = true;
            changed.push("continued".into());
        }
        p.rationale = format!("random mutation of the node: {}", changed.join(", "));
        p
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

    fn propose(&mut self, context: ResearchContext, max: u32) -> Result<Vec<Proposal>, PluginError> {
        let mut out: Vec<Proposal> = Vec::new();
        // A bounded number of draws: a small space may have fewer untried experiments than asked.
        for _ in 0..max.saturating_mul(8) {
            let p = match (&context.node.proposal, self.config.mode) {
                (Some(node), Mode::Mutate) => self.mutate(node),
                _ => self.sample(),
            };
            let key = experiment_key(&p);
            let repeat = !p.train_recipe.continue_from_parent && context.tried.contains(&key);
            if repeat || out.iter().any(|o| experiment_key(o) == key) {
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
        self.observed += 1;
        Ok(())
    }
}

trex_sdk::export_researcher!(RandomResearcher);
