//! The multi-task benchmark (`trex-host bench tasks`): one [`bench_search`] per task
//! (every strategy, ablation and seed at the same budget, each run in its own folder, finished
//! runs reused and interrupted ones resumed), then one table across tasks and an SVG plot of the
//! best validation score against the number of experiments, per task and strategy.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use trex_lab::Ablation;
use trex_lab::run::{SearchRequest, view};
use trex_lab::tree::Strategy;

use super::search::{BenchRun, bench_search, mean_sd};

/// One finished run of the suite, with what the table and the plot need.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteRun {
    /// The task's name.
    pub task: String,
    /// The run's figures.
    #[serde(flatten)]
    pub run: BenchRun,
    /// The base model's validation score.
    pub base_validation: f64,
    /// The base model's test score.
    pub base_test: f64,
    /// Best validation score so far after the base model (index 0) and each experiment, in the
    /// order they were created.
    pub curve: Vec<f64>,
}

/// Read the extra figures of a finished run.
fn suite_run(task: &str, run: BenchRun) -> Result<SuiteRun> {
    let v = view(&run.run_dir)?;
    let base_test = v.final_result.as_ref().map_or(0.0, |f| f.base_test);
    let mut nodes = v.nodes.clone();
    nodes.sort_by_key(|n| n.id);
    let base_validation = nodes.first().and_then(|n| n.result()).map_or(0.0, |r| r.score);
    let mut best = f64::NEG_INFINITY;
    let mut curve = Vec::with_capacity(nodes.len());
    for n in &nodes {
        if let Some(r) = n.result() {
            best = best.max(r.score);
        }
        curve.push(if best.is_finite() { best } else { 0.0 });
    }
    Ok(SuiteRun { task: task.to_string(), base_validation, base_test, curve, run })
}

/// Run the suite: every task in `tasks` under `base`'s settings, results under `out/<task>/`,
/// then `out/results.json`, `out/table.md` and `out/plot.svg` across tasks.
pub async fn bench_tasks(
    base: SearchRequest,
    tasks: &[PathBuf],
    strategies: &[Strategy],
    ablations: &[Ablation],
    seeds: &[u64],
    out: &Path,
    mut on_run: impl FnMut(&str, &BenchRun),
) -> Result<Vec<SuiteRun>> {
    let mut all = Vec::new();
    for task in tasks {
        let (loaded, task_file) = crate::assets::load_task(task)?;
        let name = loaded.name.clone();
        let dir = out.join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let req = SearchRequest { task: loaded, task_file, ..base.clone() };
        let runs = bench_search(req, strategies, ablations, seeds, &dir, |r| on_run(&name, r)).await?;
        for r in runs {
            all.push(suite_run(&name, r)?);
        }
        // Write what is finished so far: a long suite can be read (and resumed) part way.
        write_outputs(&all, out)?;
    }
    Ok(all)
}

fn write_outputs(runs: &[SuiteRun], out: &Path) -> Result<()> {
    let write = |file: &str, text: String| {
        std::fs::write(out.join(file), text).with_context(|| format!("cannot write {}", out.join(file).display()))
    };
    write("results.json", serde_json::to_string_pretty(runs).expect("suite runs serialize"))?;
    write("table.md", table(runs))?;
    write("plot.svg", plot(runs))
}

/// Groups of runs by (task, strategy label), in first-seen order.
fn groups(runs: &[SuiteRun]) -> Vec<(String, String, Vec<&SuiteRun>)> {
    let mut out: Vec<(String, String, Vec<&SuiteRun>)> = Vec::new();
    for r in runs {
        match out.iter_mut().find(|(t, s, _)| *t == r.task && *s == r.run.strategy) {
            Some(g) => g.2.push(r),
            None => out.push((r.task.clone(), r.run.strategy.clone(), vec![r])),
        }
    }
    out
}

/// The Markdown table: one row per task and strategy, mean ± standard deviation over seeds. The
/// validation score (what the search optimized) sits next to the test score (scored once, for
/// the best node), so overfitting to validation shows.
pub fn table(runs: &[SuiteRun]) -> String {
    let mut t = String::from(
        "| task | strategy | seeds | base val → best val | val gain | base test → best test | test gain | majority / format-only test | experiments (failed) | train tokens | minutes |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (task, strategy, rs) in groups(runs) {
        let col = |f: &dyn Fn(&SuiteRun) -> f64| mean_sd(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let (bv, _) = col(&|r| r.base_validation);
        let (v, _) = col(&|r| r.run.best_validation);
        let (vg, vgs) = col(&|r| r.run.validation_gain);
        let (bt, _) = col(&|r| r.base_test);
        let (te, _) = col(&|r| r.run.best_test);
        let (tg, tgs) = col(&|r| r.run.test_gain);
        let (tok, _) = col(&|r| r.run.train_tokens as f64);
        let (sec, _) = col(&|r| r.run.seconds);
        let nodes: usize = rs.iter().map(|r| r.run.nodes).sum();
        let failed: usize = rs.iter().map(|r| r.run.failed).sum();
        let _ = writeln!(
            t,
            "| {task} | {strategy} | {} | {bv:.3} → {v:.3} | {vg:+.3} ± {vgs:.3} | {bt:.3} → {te:.3} | {tg:+.3} ± {tgs:.3} | {} | {nodes} ({failed}) | {tok:.0} | {:.1} |",
            rs.len(),
            super::search::baselines_cell(&rs.iter().map(|r| &r.run).collect::<Vec<_>>(), te),
            sec / 60.0
        );
    }
    t
}

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG plot: one panel per task, the best validation score (y, 0–1) against experiments run
/// (x), one line per strategy (the mean over seeds).
pub fn plot(runs: &[SuiteRun]) -> String {
    let mut tasks: Vec<&str> = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for r in runs {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
        if !labels.contains(&r.run.strategy.as_str()) {
            labels.push(&r.run.strategy);
        }
    }
    let (pw, ph, margin) = (260.0, 180.0, 44.0);
    let cols = tasks.len().clamp(1, 3);
    let rows = tasks.len().div_ceil(cols).max(1);
    let (w, h) = (cols as f64 * (pw + margin) + margin, rows as f64 * (ph + margin + 18.0) + margin + 24.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, task) in tasks.iter().enumerate() {
        let (x0, y0) = (margin + (i % cols) as f64 * (pw + margin), margin + (i / cols) as f64 * (ph + margin + 18.0));
        let task_runs: Vec<&SuiteRun> = runs.iter().filter(|r| r.task == *task).collect();
        let max_x = task_runs.iter().map(|r| r.curve.len().saturating_sub(1)).max().unwrap_or(1).max(1) as f64;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\n<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>",
            x0,
            y0 - 6.0,
            escape(task)
        );
        for k in 0..=4 {
            let v = k as f64 / 4.0;
            let y = y0 + ph - v * ph;
            let _ = writeln!(
                s,
                "<line x1=\"{x0:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>",
                x0 + pw,
                x0 - 4.0,
                y + 4.0
            );
        }
        for k in 0..=max_x as usize {
            let x = x0 + k as f64 / max_x * pw;
            let _ = writeln!(s, "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{k}</text>", y0 + ph + 14.0);
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">experiments</text>",
            x0 + pw / 2.0,
            y0 + ph + 28.0
        );
        for (li, label) in labels.iter().enumerate() {
            let rs: Vec<&&SuiteRun> = task_runs.iter().filter(|r| r.run.strategy == *label).collect();
            if rs.is_empty() {
                continue;
            }
            let len = rs.iter().map(|r| r.curve.len()).max().unwrap_or(0);
            let points: Vec<String> = (0..len)
                .map(|k| {
                    // A run that stopped early keeps its last best score.
                    let vals: Vec<f64> = rs.iter().filter_map(|r| r.curve.get(k).or(r.curve.last()).copied()).collect();
                    let y = mean_sd(&vals).0.clamp(0.0, 1.0);
                    format!("{:.1},{:.1}", x0 + k as f64 / max_x * pw, y0 + ph - y * ph)
                })
                .collect();
            let color = COLORS[li % COLORS.len()];
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            );
        }
    }
    // Legend.
    let ly = h - 16.0;
    for (li, label) in labels.iter().enumerate() {
        let x = margin + li as f64 * 150.0;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x + 20.0,
            COLORS[li % COLORS.len()],
            x + 26.0,
            ly + 4.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">best validation score so far (mean over seeds)</text>",
        margin, 16.0
    );
    s.push_str("</svg>\n");
    s
}
