//! `trex-host bench search`: one search per strategy, ablation and seed on a task at equal budget,
//! each in its own run folder (finished runs reused, interrupted ones resumed), then a table of
//! the mean normalized gains.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use trex_lab::Ablation;
use trex_lab::journal::Journal;
use trex_lab::run::{ResumeOverrides, SearchRequest, resume, search, view};
use trex_lab::tree::{NodeStatus, Strategy};

/// One (strategy, seed) search of a benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRun {
    /// Strategy.
    pub strategy: String,
    /// Seed.
    pub seed: u64,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The best node's normalized gain on validation.
    pub validation_gain: f64,
    /// Normalized gain on the test split.
    pub test_gain: f64,
    /// Best validation score.
    pub best_validation: f64,
    /// Best node's test score.
    pub best_test: f64,
    /// Experiments run.
    pub nodes: usize,
    /// Experiments failed.
    pub failed: usize,
    /// Search seconds.
    pub seconds: f64,
    /// Tokens trained on, all experiments together (what they cost when first run, even if
    /// this run found them in the experiment cache).
    pub train_tokens: u64,
    /// The majority answer's test score (absent for runs finished before baselines were scored).
    pub majority_test: Option<f64>,
    /// The format-only answer's test score.
    pub format_only_test: Option<f64>,
}

/// Run (or resume, or reuse) one search per strategy and seed under `out`, each in its own run
/// folder, and report every run as it finishes.
pub async fn bench_search(
    base: SearchRequest,
    strategies: &[Strategy],
    ablations: &[Ablation],
    seeds: &[u64],
    out: &Path,
    mut on_run: impl FnMut(&BenchRun),
) -> Result<Vec<BenchRun>> {
    let mut runs = Vec::new();
    // The full system, then each ablation on its own, at the same budget.
    let variants: Vec<Option<Ablation>> = std::iter::once(None).chain(ablations.iter().copied().map(Some)).collect();
    for &strategy in strategies {
        for &variant in &variants {
            let label = match variant {
                None => strategy.as_str().to_string(),
                Some(a) => format!("{} without {}", strategy.as_str(), a.as_str()),
            };
            for &seed in seeds {
                let folder = match variant {
                    None => format!("{}-s{seed}", strategy.as_str()),
                    Some(a) => format!("{}-no-{}-s{seed}", strategy.as_str(), a.as_str()),
                };
                let run_dir = out.join(folder);
                let mut want = base.settings.clone();
                want.strategy = strategy;
                want.seed = seed;
                want.ablations = variant.into_iter().collect();
                want.budget = base.task.budget.overridden_by(&want.budget);
                if let Ok(v) = view(&run_dir)
                    && let Some(why) = settings_differ(&v.settings, &want)
                {
                    anyhow::bail!(
                        "{} was run with other settings ({why}): pass another --out, or remove the folder to run it again",
                        run_dir.display()
                    );
                }
                let done = view(&run_dir).ok().filter(|v| v.final_result.is_some());
                if done.is_none() {
                    if Journal::path_in(&run_dir).is_file() {
                        resume(
                            &run_dir,
                            &base.plugins,
                            base.host.clone(),
                            ResumeOverrides::default(),
                            base.observer.clone(),
                        )
                        .await?;
                    } else {
                        let mut req = base.clone();
                        req.settings.strategy = strategy;
                        req.settings.seed = seed;
                        req.settings.ablations = variant.into_iter().collect();
                        req.run_dir = Some(run_dir.clone());
                        search(req).await?;
                    }
                }
                let run = bench_run(&run_dir, &label, seed)?;
                on_run(&run);
                runs.push(run);
            }
        }
    }
    let json = serde_json::to_string_pretty(&runs).expect("bench runs serialize");
    std::fs::write(out.join("results.json"), json).with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::write(out.join("table.md"), bench_table(&runs))
        .with_context(|| format!("cannot write {}", out.display()))?;
    // The runs side by side, as one page (best-so-far curves, then each tree).
    let dirs: Vec<PathBuf> = runs.iter().map(|r| r.run_dir.clone()).collect();
    let page = crate::html::render(&crate::commands::report::load_runs(&dirs)?);
    std::fs::write(out.join("report.html"), page).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(runs)
}

/// What differs between the settings a run was made with and those a benchmark asks for (the
/// number of workers and the device may differ: they change the speed, not the tree).
fn settings_differ(had: &trex_lab::Settings, want: &trex_lab::Settings) -> Option<String> {
    let checks = [
        ("strategy", had.strategy != want.strategy),
        ("seed", had.seed != want.seed),
        ("ablations", had.ablations != want.ablations),
        ("budget", had.budget != want.budget),
        ("MCTS constants", had.mcts != want.mcts),
        ("memory", had.memory != want.memory),
        ("proposals per round", had.proposals_per_round != want.proposals_per_round),
        ("training seed", had.training_seed != want.training_seed),
    ];
    let differ: Vec<&str> = checks.iter().filter(|(_, d)| *d).map(|(n, _)| *n).collect();
    (!differ.is_empty()).then(|| differ.join(", "))
}

/// One finished benchmark run, read back from its folder.
fn bench_run(run_dir: &Path, label: &str, seed: u64) -> Result<BenchRun> {
    let v = view(run_dir)?;
    let f = v.final_result.clone().with_context(|| format!("{}: the run has no final result", run_dir.display()))?;
    let best = v.nodes.get(f.best as usize).and_then(|n| n.result().cloned());
    Ok(BenchRun {
        strategy: label.into(),
        seed,
        run_dir: run_dir.to_path_buf(),
        validation_gain: best.as_ref().map_or(0.0, |r| r.reward),
        test_gain: f.test_gain,
        best_validation: best.as_ref().map_or(0.0, |r| r.score),
        best_test: f.best_test,
        nodes: v.nodes.len().saturating_sub(1),
        failed: v.nodes.iter().filter(|n| n.status() == NodeStatus::Failed).count(),
        seconds: v.seconds,
        train_tokens: v
            .nodes
            .iter()
            .filter_map(|n| n.result())
            .map(|r| r.train.as_ref().map_or(r.cost.train_tokens, |t| t.tokens))
            .sum(),
        majority_test: f.baselines.as_ref().map(|b| b.majority_test),
        format_only_test: f.baselines.as_ref().map(|b| b.format_only_test),
    })
}

/// The mean majority and format-only test scores of `runs` (the runs that have them), as a
/// table cell, with `below` marked when `best_test` does not beat the higher of the two.
pub fn baselines_cell(runs: &[&BenchRun], best_test: f64) -> String {
    let mean = |f: fn(&BenchRun) -> Option<f64>| {
        let xs: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
        (!xs.is_empty()).then(|| mean_sd(&xs).0)
    };
    match (mean(|r| r.majority_test), mean(|r| r.format_only_test)) {
        (Some(m), Some(f)) if best_test > m.max(f) => format!("{m:.3} / {f:.3}"),
        (Some(m), Some(f)) => format!("{m:.3} / {f:.3} **(not beaten)**"),
        _ => "not scored".into(),
    }
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

/// The Markdown table of a benchmark: one row per strategy, mean ± standard deviation over seeds.
pub fn bench_table(runs: &[BenchRun]) -> String {
    let mut out = String::from(
        "| strategy | seeds | validation gain | test gain | best validation score | best test score | majority / format-only test | experiments (failed) | train tokens | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut strategies: Vec<&str> = runs.iter().map(|r| r.strategy.as_str()).collect();
    strategies.dedup();
    for s in strategies {
        let rs: Vec<&BenchRun> = runs.iter().filter(|r| r.strategy == s).collect();
        let col = |f: fn(&BenchRun) -> f64| mean_sd(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let (vg, vs) = col(|r| r.validation_gain);
        let (tg, ts) = col(|r| r.test_gain);
        let (bv, _) = col(|r| r.best_validation);
        let (bt, _) = col(|r| r.best_test);
        let (sec, _) = col(|r| r.seconds);
        let (tok, _) = col(|r| r.train_tokens as f64);
        let nodes: usize = rs.iter().map(|r| r.nodes).sum();
        let failed: usize = rs.iter().map(|r| r.failed).sum();
        out.push_str(&format!(
            "| {s} | {} | {vg:+.3} ± {vs:.3} | {tg:+.3} ± {ts:.3} | {bv:.3} | {bt:.3} | {} | {nodes} ({failed}) | {tok:.0} | {sec:.0} |\n",
            rs.len(),
            baselines_cell(&rs, bt)
        ));
    }
    out
}
