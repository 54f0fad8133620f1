//! `trex-host bench table` and `bench replay`: strategies compared over many seeds on a table
//! of real experiment results.
//!
//! `bench table` fills the experiment cache by running real searches (every strategy asked
//! for, at each training seed), then scores every cached experiment of the task on the test
//! split. `bench replay` then runs the real search loop against that table alone: each search
//! costs milliseconds, each replay seed resamples the validation examples and picks one of the
//! table's training seeds, and every strategy sees the same sample for the same seed (common
//! random numbers). It reports test regret (the table's best test score minus the chosen
//! node's) at each budget, with paired bootstrap intervals against the default strategy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use trex_lab::cache::{ExperimentCache, Subset};
use trex_lab::run::{SearchRequest, open_lab};
use trex_lab::task::Budget;
use trex_lab::tree::Strategy;
use trex_sdk::rng::SplitMix64;

/// A strategy as a replay runs it: the selection strategy and the Researcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arm {
    /// Its label in the tables (`mcts`, `random-researcher`, ...).
    pub label: String,
    /// The selection strategy.
    #[serde(skip)]
    pub strategy: Strategy,
    /// The Researcher (`None`: the task's).
    pub researcher: Option<String>,
}

impl Arm {
    /// The arm called `name`: a strategy name, or `random-researcher` (random selection with
    /// the `random` Researcher, which knows nothing about training).
    pub fn from_name(name: &str) -> Option<Arm> {
        if name == "random-researcher" {
            return Some(Arm { label: name.into(), strategy: Strategy::Random, researcher: Some("random".into()) });
        }
        Strategy::from_name(name).map(|strategy| Arm { label: name.into(), strategy, researcher: None })
    }

    /// Every name [`Arm::from_name`] takes.
    pub const NAMES: [&'static str; 6] = ["mcts", "ab-mcts", "greedy", "sequential", "random", "random-researcher"];
}

/// What a replay is asked for.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The arms, the first being the one the others are compared with.
    pub arms: Vec<Arm>,
    /// Replay seeds.
    pub seeds: u64,
    /// Budgets, in experiments.
    pub budgets: Vec<u64>,
    /// Share of the validation examples each seed keeps.
    pub fraction: f64,
    /// The training seeds the table was filled with.
    pub train_seeds: Vec<u64>,
}

/// One replayed search.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRun {
    /// The arm.
    pub arm: String,
    /// The replay seed.
    pub seed: u64,
    /// The budget.
    pub budget: u64,
    /// Test regret: the table's best test score minus the chosen node's.
    pub regret: f64,
    /// The chosen node's test score.
    pub best_test: f64,
    /// Experiments the search ran.
    pub nodes: usize,
    /// Proposals refused (including those the table does not hold).
    pub rejected: usize,
    /// Training tokens the experiments it ran cost when they were first run.
    pub train_tokens: u64,
    /// Tokens generated scoring them on validation when they were first run.
    pub generated_tokens: u64,
}

/// What the table holds for the task.
#[derive(Debug, Clone, Serialize)]
pub struct TableStats {
    /// Cached experiments with a result.
    pub experiments: usize,
    /// Cached failures.
    pub failures: usize,
    /// The best test score in the table.
    pub best_test: f64,
    /// The base model's test score.
    pub base_test: Option<f64>,
    /// Experiments without a test score (left out of the best).
    pub unscored: usize,
}

/// Replay every arm at every budget and seed; returns the table's figures and every run.
pub async fn replay(
    req: &SearchRequest,
    cache_dir: &Path,
    plan: &ReplayPlan,
    out: &Path,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<(TableStats, Vec<ReplayRun>)> {
    if plan.train_seeds.is_empty() {
        bail!("--train-seeds: give at least one of the seeds the table was filled with");
    }
    let work = out.join("searches");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let (mut lab, _, settings, _) = open_lab(req, out.to_path_buf()).await?;
    lab.cache = Some(ExperimentCache { dir: cache_dir.to_path_buf(), only: true, subset: None });
    let entries = lab.cached_entries();
    let scored: Vec<f64> = entries.iter().filter_map(|(_, e)| e.result.as_ref().and(e.test_score)).collect();
    let stats = TableStats {
        experiments: entries.iter().filter(|(_, e)| e.result.is_some()).count(),
        failures: entries.iter().filter(|(_, e)| e.failure.is_some()).count(),
        best_test: scored.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        base_test: entries
            .iter()
            .find(|(_, e)| e.result.as_ref().is_some_and(|r| r.adapter.is_none()))
            .and_then(|(_, e)| e.test_score),
        unscored: entries.iter().filter(|(_, e)| e.result.is_some() && e.test_score.is_none()).count(),
    };
    if stats.experiments < 2 || stats.base_test.is_none() {
        bail!(
            "the experiment table in {} holds {} experiment(s) of this task{}: fill it with `trex-host bench table` first",
            cache_dir.display(),
            stats.experiments,
            if stats.base_test.is_none() { " and no test score of the base model" } else { "" }
        );
    }
    // The compute each experiment cost when it first ran.
    let compute: BTreeMap<String, (u64, u64)> = entries
        .iter()
        .filter_map(|(k, e)| e.result.as_ref().map(|r| (k.clone(), (r.cost.train_tokens, r.cost.generated_tokens))))
        .collect();
    let mut lab = Arc::new(lab);
    let total = plan.arms.len() * plan.budgets.len() * plan.seeds as usize;
    let mut runs = Vec::with_capacity(total);
    for arm in &plan.arms {
        {
            let l = Arc::get_mut(&mut lab).expect("no search holds the lab between replays");
            match &arm.researcher {
                Some(r) => l.task.set_researcher(r),
                None => l.task.researcher = req.task.researcher.clone(),
            }
        }
        for &budget in &plan.budgets {
            for seed in 0..plan.seeds {
                on_progress(runs.len(), total);
                let mut s = settings.clone();
                s.strategy = arm.strategy;
                s.seed = seed;
                s.training_seed = Some(plan.train_seeds[(seed % plan.train_seeds.len() as u64) as usize]);
                s.budget = Budget { nodes: Some(budget), wall_minutes: None, train_tokens: None, llm_tokens: None };
                s.workers = 1;
                let subset = Subset { seed: seed ^ 0x5EED_CAFE, fraction: plan.fraction };
                let dir = work.join(format!("{}-b{budget}-s{seed}", arm.label));
                let r = trex_lab::replay::replay(&mut lab, s, subset, &dir)
                    .await
                    .with_context(|| format!("replay {} seed {seed} budget {budget}", arm.label))?;
                let (mut train_tokens, mut generated_tokens) = (0, 0);
                for n in r.nodes.iter().skip(1) {
                    if let Some((t, g)) = n.result().and_then(|res| res.key.as_ref()).and_then(|k| compute.get(k)) {
                        train_tokens += t;
                        generated_tokens += g;
                    }
                }
                runs.push(ReplayRun {
                    arm: arm.label.clone(),
                    seed,
                    budget,
                    regret: stats.best_test - r.best_test,
                    best_test: r.best_test,
                    nodes: r.nodes.len().saturating_sub(1),
                    rejected: r.rejected,
                    train_tokens,
                    generated_tokens,
                });
                std::fs::remove_dir_all(&dir).ok();
            }
        }
    }
    on_progress(total, total);
    Ok((stats, runs))
}

/// A paired bootstrap 95% interval of the mean of `diffs` (2000 resamples, seeded).
pub fn bootstrap_ci(diffs: &[f64], seed: u64) -> (f64, f64) {
    if diffs.is_empty() {
        return (0.0, 0.0);
    }
    let mut rng = SplitMix64(seed);
    let n = diffs.len();
    let mut means: Vec<f64> =
        (0..2000).map(|_| (0..n).map(|_| diffs[rng.below(n as u64) as usize]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    (means[(0.025 * 2000.0) as usize], means[(0.975 * 2000.0) as usize - 1])
}

/// The Markdown table of a replay: per budget and arm, the mean test regret, the mean paired
/// difference from the first arm with its bootstrap interval, wins/ties/losses against it, and
/// the compute spent.
pub fn replay_table(stats: &TableStats, plan: &ReplayPlan, runs: &[ReplayRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "table: {} experiments ({} failed, {} without a test score), best test score {:.3}, base model {:.3}; {} seeds, {:.0}% of the validation examples per seed\n",
        stats.experiments,
        stats.failures,
        stats.unscored,
        stats.best_test,
        stats.base_test.unwrap_or(0.0),
        plan.seeds,
        plan.fraction * 100.0
    );
    let first = &plan.arms[0].label;
    out.push_str(&format!(
        "| budget | strategy | mean test regret | Δ regret vs {first} [95% CI] | wins/ties/losses of {first} | experiments run | refused | train tokens | generated tokens |\n|---|---|---|---|---|---|---|---|---|\n"
    ));
    for &budget in &plan.budgets {
        let of = |arm: &str| -> BTreeMap<u64, &ReplayRun> {
            runs.iter().filter(|r| r.arm == arm && r.budget == budget).map(|r| (r.seed, r)).collect()
        };
        let base = of(first);
        for arm in &plan.arms {
            let rs = of(&arm.label);
            let n = rs.len().max(1) as f64;
            let mean = |f: fn(&ReplayRun) -> f64| rs.values().map(|r| f(r)).sum::<f64>() / n;
            let regret = mean(|r| r.regret);
            let diff_cell = if arm.label == *first {
                "—".to_string()
            } else {
                let diffs: Vec<f64> = rs.iter().filter_map(|(s, r)| base.get(s).map(|b| r.regret - b.regret)).collect();
                let d = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
                let (lo, hi) = bootstrap_ci(&diffs, budget);
                let verdict = if lo > 0.0 {
                    format!(" ({first} better)")
                } else if hi < 0.0 {
                    format!(" ({first} worse)")
                } else {
                    " (no clear difference)".to_string()
                };
                format!("{d:+.4} [{lo:+.4}, {hi:+.4}]{verdict}")
            };
            let wtl = if arm.label == *first {
                "—".to_string()
            } else {
                let (mut w, mut t, mut l) = (0, 0, 0);
                for (s, r) in &rs {
                    if let Some(b) = base.get(s) {
                        match b.regret.total_cmp(&r.regret) {
                            std::cmp::Ordering::Less => w += 1,
                            std::cmp::Ordering::Equal => t += 1,
                            std::cmp::Ordering::Greater => l += 1,
                        }
                    }
                }
                format!("{w}/{t}/{l}")
            };
            let _ = writeln!(
                out,
                "| {budget} | {} | {regret:.4} | {diff_cell} | {wtl} | {:.1} | {:.1} | {:.0} | {:.0} |",
                arm.label,
                mean(|r| r.nodes as f64),
                mean(|r| r.rejected as f64),
                mean(|r| r.train_tokens as f64),
                mean(|r| r.generated_tokens as f64),
            );
        }
    }
    out
}

/// Score every cached experiment of the task on the test split (what the regret needs).
pub async fn score_table(
    req: &SearchRequest,
    cache_dir: &Path,
    on_progress: impl FnMut(usize, usize),
) -> Result<usize> {
    let scratch = tempfile::tempdir()?;
    let (mut lab, _, _, _) = open_lab(req, scratch.path().to_path_buf()).await?;
    lab.cache = Some(ExperimentCache::at(cache_dir.to_path_buf()));
    Ok(lab.score_cached_tests(on_progress).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_excludes_zero_for_a_clear_shift() {
        let diffs: Vec<f64> = (0..100).map(|i| 0.1 + 0.01 * ((i % 7) as f64 - 3.0)).collect();
        let (lo, hi) = bootstrap_ci(&diffs, 1);
        let mean = diffs.iter().sum::<f64>() / 100.0;
        assert!(lo <= mean && mean <= hi && lo > 0.0, "[{lo}, {hi}] around {mean}");
        let noise: Vec<f64> = (0..100).map(|i| if i % 2 == 0 { 0.1 } else { -0.1 }).collect();
        let (lo, hi) = bootstrap_ci(&noise, 1);
        assert!(lo < 0.0 && hi > 0.0, "[{lo}, {hi}]");
    }
}
