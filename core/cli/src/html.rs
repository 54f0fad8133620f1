//! A run (or several) as one HTML page: the tree as inline SVG, a detail panel per node, the run's
//! budget and best-so-far curves. `trex-host report` writes it as a self-contained file and
//! `trex-host ui` serves it live.
//!
//! Everything shown that a plugin, an LLM or a model wrote (rationales, lessons, answers, tags)
//! is made printable and capped by [`trex_plugin_host::text::line`], then HTML-escaped. The page
//! carries no script of its own: a node's detail opens through its `#n…` anchor and CSS
//! `:target`, so the file works offline and under a policy that forbids every script.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use trex_lab::executor::describe;
use trex_lab::run::RunView;
use trex_lab::tree::{Node, NodeStatus, Tree};

/// The Content-Security-Policy of a report: no script, no network, nothing but inline styles and
/// inline images.
pub const REPORT_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// Validation answers shown per node.
const ANSWERS_SHOWN: usize = 8;
/// Characters of untrusted text shown in one field.
const TEXT_MAX: usize = 600;

/// One run to render: its folder (where the per-node answers are) and what its journal says.
#[derive(Debug)]
pub struct RunPage {
    /// The run folder.
    pub dir: PathBuf,
    /// The run as its journal has it.
    pub view: RunView,
}

/// Escape for HTML text and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Untrusted text, printable, capped and escaped.
fn untrusted(text: &str) -> String {
    esc(&trex_plugin_host::text::line(text, TEXT_MAX))
}

/// The whole page, as a self-contained report.
pub fn render(runs: &[RunPage]) -> String {
    render_with(runs, REPORT_POLICY, "")
}

/// The whole page under `policy`, with `head_extra` in `<head>` (the live page's script tag).
pub fn render_with(runs: &[RunPage], policy: &str, head_extra: &str) -> String {
    let title = match runs {
        [one] => format!("trex · {} · {}", one.view.task.name, one.dir.display()),
        _ => format!("trex · {} runs", runs.len()),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style>{head_extra}</head><body>\n<main id=\"page\">",
        policy = esc(policy),
        title = esc(&title),
    );
    out.push_str(&body(runs));
    out.push_str("</main></body></html>\n");
    out
}

/// The page's content (what the live page swaps in when a journal grows).
pub fn body(runs: &[RunPage]) -> String {
    let mut out = String::new();
    if runs.len() > 1 {
        out.push_str("<section class=\"panel\"><h2>Runs side by side</h2>");
        out.push_str(&compare_table(runs));
        out.push_str("<div class=\"charts\">");
        out.push_str(&best_so_far_chart(runs, Axis::Experiments));
        out.push_str(&best_so_far_chart(runs, Axis::Seconds));
        out.push_str("</div></section>");
    }
    for (k, run) in runs.iter().enumerate() {
        out.push_str(&run_section(k, run, runs.len() > 1));
    }
    out
}

fn compare_table(runs: &[RunPage]) -> String {
    let mut out = String::from(
        "<table><tr><th></th><th>run</th><th>strategy</th><th>seed</th><th>experiments</th><th>best validation</th><th>test (base → best)</th><th>seconds</th></tr>",
    );
    for (k, run) in runs.iter().enumerate() {
        let v = &run.view;
        let tree = Tree { nodes: v.nodes.clone() };
        let best = tree.best().and_then(Node::result).map(|r| format!("{:.3}", r.score)).unwrap_or("-".into());
        let test = v
            .final_result
            .as_ref()
            .map(|f| format!("{:.3} → {:.3} ({:+.3})", f.base_test, f.best_test, f.test_gain))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            out,
            "<tr><td><span class=\"swatch\" style=\"background:{color}\"></span></td><td><a href=\"#r{k}\">{dir}</a></td><td>{strategy}</td><td>{seed}</td><td>{n}</td><td>{best}</td><td>{test}</td><td>{secs:.0}</td></tr>",
            color = PALETTE[k % PALETTE.len()],
            dir = esc(&run.dir.display().to_string()),
            strategy = esc(v.settings.strategy.as_str()),
            seed = v.settings.seed,
            n = v.nodes.len().saturating_sub(1),
            secs = v.seconds,
        );
    }
    out.push_str("</table>");
    out
}

/// Colours of the runs in comparisons.
const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

fn run_section(k: usize, run: &RunPage, several: bool) -> String {
    let v = &run.view;
    let tree = Tree { nodes: v.nodes.clone() };
    let best = v.final_result.as_ref().map(|f| f.best).or_else(|| tree.best().map(|n| n.id));
    let mut out = format!("<section class=\"run\" id=\"r{k}\">");
    let _ = write!(
        out,
        "<h1>{task} <small>{strategy} · seed {seed} · {dir}</small></h1><p class=\"goal\">{goal}</p>",
        task = esc(&v.task.name),
        strategy = esc(v.settings.strategy.as_str()),
        seed = v.settings.seed,
        dir = esc(&run.dir.display().to_string()),
        goal = untrusted(&v.task.goal),
    );
    out.push_str("<div class=\"top\">");
    out.push_str(&budget_panel(v));
    out.push_str("<div class=\"panel\"><h2>Tree</h2>");
    out.push_str(&tree_svg(k, &tree, best));
    out.push_str("<p class=\"hint\">Click a node for its detail.</p></div>");
    if !several {
        out.push_str("<div class=\"panel charts\">");
        out.push_str(&best_so_far_chart(std::slice::from_ref(run), Axis::Experiments));
        out.push_str(&best_so_far_chart(std::slice::from_ref(run), Axis::Seconds));
        out.push_str("</div>");
    }
    out.push_str("</div>");
    for n in &tree.nodes {
        out.push_str(&node_detail(k, run, &tree, n, best));
    }
    out.push_str("</section>");
    out
}

fn budget_panel(v: &RunView) -> String {
    let done: Vec<&Node> = v.nodes.iter().skip(1).filter(|n| n.result().is_some()).collect();
    let failed = v.nodes.iter().filter(|n| n.status() == NodeStatus::Failed).count();
    let running = v.nodes.iter().filter(|n| n.status() == NodeStatus::Running).count();
    let train_tokens: u64 = v.nodes.iter().filter_map(|n| n.result()).map(|r| r.cost.train_tokens).sum();
    let llm_tokens: u64 = v.nodes.iter().map(|n| n.proposal_llm_tokens).sum();
    let b = &v.settings.budget;
    let of = |used: String, limit: Option<String>| match limit {
        Some(l) => format!("{used} of {l}"),
        None => used,
    };
    let mut rows = vec![
        ("experiments", of((v.nodes.len().saturating_sub(1)).to_string(), b.nodes.map(|n| n.to_string()))),
        ("finished / failed / running", format!("{} / {failed} / {running}", done.len())),
        ("proposals refused", v.rejected.to_string()),
        ("search time", of(format!("{:.0} s", v.seconds), b.wall_minutes.map(|m| format!("{:.0} s", m * 60.0)))),
        ("training tokens", of(train_tokens.to_string(), b.train_tokens.map(|t| t.to_string()))),
        ("LLM tokens", of(llm_tokens.to_string(), b.llm_tokens.map(|t| t.to_string()))),
        ("workers", v.settings.workers.to_string()),
    ];
    if let Some(f) = &v.final_result {
        rows.push(("chosen node", format!("#{} (validation {:.3})", f.best, f.validation)));
        rows.push((
            "test split",
            format!("base {:.3} → {:.3}, normalized gain {:+.3}", f.base_test, f.best_test, f.test_gain),
        ));
        if let Some(bl) = &f.baselines {
            rows.push((
                "no-model baselines (validation / test)",
                format!(
                    "majority answer {:.3} / {:.3}, format only {:.3} / {:.3}",
                    bl.majority_validation, bl.majority_test, bl.format_only_validation, bl.format_only_test
                ),
            ));
        }
        if !f.rescored.is_empty() {
            let r: Vec<String> = f.rescored.iter().map(|(id, s)| format!("#{id} {s:.3}")).collect();
            rows.push(("whole validation, the best nodes", r.join(", ")));
        }
    }
    rows.push((
        "state",
        v.finished.clone().map(|r| format!("stopped: {r}")).unwrap_or_else(|| "running or interrupted".into()),
    ));
    let mut out = String::from("<div class=\"panel\"><h2>Budget and result</h2><table>");
    for (k, val) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), untrusted(&val));
    }
    out.push_str("</table></div>");
    out
}

/// The tree, nodes at their depth, leaves spread left to right.
fn tree_svg(k: usize, tree: &Tree, best: Option<u64>) -> String {
    if tree.nodes.is_empty() {
        return "<p>No node yet.</p>".into();
    }
    // x: leaves in depth-first order, a parent above the middle of its children.
    let mut x = vec![0.0f64; tree.nodes.len()];
    let mut depth = vec![0usize; tree.nodes.len()];
    fn place(tree: &Tree, id: u64, d: usize, next: &mut f64, x: &mut [f64], depth: &mut [usize]) {
        depth[id as usize] = d;
        let kids: Vec<u64> = tree.children(id).map(|c| c.id).collect();
        if kids.is_empty() {
            x[id as usize] = *next;
            *next += 1.0;
        } else {
            for &c in &kids {
                place(tree, c, d + 1, next, x, depth);
            }
            x[id as usize] = (x[kids[0] as usize] + x[*kids.last().expect("kids") as usize]) / 2.0;
        }
    }
    let mut next = 0.0;
    place(tree, 0, 0, &mut next, &mut x, &mut depth);
    let (dx, dy, pad) = (56.0, 64.0, 28.0);
    let width = (next.max(1.0) - 1.0) * dx + 2.0 * pad + 80.0;
    let height = (*depth.iter().max().unwrap_or(&0) as f64) * dy + 2.0 * pad + 16.0;
    let pos = |id: u64| (pad + 40.0 + x[id as usize] * dx, pad + depth[id as usize] as f64 * dy);
    // The path from the root to the chosen node.
    let mut on_path = vec![false; tree.nodes.len()];
    let mut at = best;
    while let Some(id) = at {
        on_path[id as usize] = true;
        at = tree.nodes.get(id as usize).and_then(|n| n.parent);
    }
    let scores: Vec<f64> = tree.nodes.iter().filter_map(|n| n.result()).map(|r| r.score).collect();
    let (lo, hi) = scores.iter().fold((f64::MAX, f64::MIN), |(a, b), &s| (a.min(s), b.max(s)));
    let mut out = format!(
        "<svg class=\"tree\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\" aria-label=\"experiment tree\">"
    );
    for n in &tree.nodes {
        if let Some(p) = n.parent {
            let ((x1, y1), (x2, y2)) = (pos(p), pos(n.id));
            let class = if on_path[n.id as usize] { "edge best" } else { "edge" };
            let _ =
                write!(out, "<line class=\"{class}\" x1=\"{x1:.0}\" y1=\"{y1:.0}\" x2=\"{x2:.0}\" y2=\"{y2:.0}\"/>");
        }
    }
    for n in &tree.nodes {
        let (cx, cy) = pos(n.id);
        let fill = match (n.status(), n.result()) {
            (_, Some(r)) => {
                let t = if hi > lo { (r.score - lo) / (hi - lo) } else { 1.0 };
                // Light to dark green with the score.
                format!("hsl(130, 45%, {:.0}%)", 88.0 - 55.0 * t)
            }
            (NodeStatus::Failed, _) => "#e8a0a0".into(),
            (NodeStatus::Running, _) => "#9cc3ec".into(),
            _ => "#dddddd".into(),
        };
        let label = match n.result() {
            Some(r) => format!("{:.2}", r.score),
            None => n.status().as_str().to_string(),
        };
        let ring = if Some(n.id) == best { " chosen" } else { "" };
        let title = match &n.proposal {
            Some(p) => describe(p),
            None => "base model".into(),
        };
        let _ = write!(
            out,
            "<a href=\"#r{k}n{id}\" class=\"node {status}{ring}\" data-node=\"{id}\"><title>#{id} {title}</title>\
             <circle cx=\"{cx:.0}\" cy=\"{cy:.0}\" r=\"15\" fill=\"{fill}\"/>\
             <text x=\"{cx:.0}\" y=\"{ty:.0}\" class=\"id\">#{id}</text>\
             <text x=\"{cx:.0}\" y=\"{ly:.0}\" class=\"score\">{label}</text></a>",
            id = n.id,
            status = n.status().as_str(),
            title = untrusted(&title),
            ty = cy + 4.0,
            ly = cy + 28.0,
            label = esc(&label),
        );
    }
    out.push_str("</svg>");
    out
}

#[derive(Clone, Copy)]
enum Axis {
    Experiments,
    Seconds,
}

/// Best validation score so far against experiments finished (or search seconds), one line
/// per run.
fn best_so_far_chart(runs: &[RunPage], axis: Axis) -> String {
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|run| {
            let mut best = f64::MIN;
            let mut spent = 0.0;
            let mut pts = Vec::new();
            for (i, n) in run.view.nodes.iter().skip(1).enumerate() {
                let Some(r) = n.result() else { continue };
                spent += r.cost.seconds;
                best = best.max(r.score);
                let at = match axis {
                    Axis::Experiments => (i + 1) as f64,
                    Axis::Seconds => spent,
                };
                pts.push((at, best));
            }
            pts
        })
        .collect();
    let (w, h, pad) = (320.0, 180.0, 34.0);
    let xmax = series.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let ymax = series.iter().flatten().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let px = |x: f64| pad + (w - 2.0 * pad) * x / xmax;
    let py = |y: f64| h - pad - (h - 2.0 * pad) * y / ymax;
    let (label, unit) = match axis {
        Axis::Experiments => ("best validation score by experiment", "experiments"),
        Axis::Seconds => ("best validation score by compute", "seconds of experiments"),
    };
    let mut out = format!(
        "<figure><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{label}\">\
         <line class=\"axis\" x1=\"{pad}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/><line class=\"axis\" x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{y0}\"/>\
         <text x=\"{pad}\" y=\"{yl}\" class=\"tick\">0</text><text x=\"{x1}\" y=\"{yl}\" class=\"tick end\">{xmax:.0}</text>\
         <text x=\"{tx}\" y=\"{ty}\" class=\"tick end\">{ymax:.2}</text>",
        y0 = h - pad,
        x1 = w - pad,
        yl = h - pad + 14.0,
        tx = pad - 4.0,
        ty = pad + 4.0,
    );
    for (k, pts) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        // A step line: the best so far holds until the next improvement.
        let mut d = format!("M{:.1},{:.1}", px(0.0), py(pts[0].1));
        for (x, y) in pts {
            let _ = write!(d, " H{:.1} V{:.1}", px(*x), py(*y));
        }
        let _ =
            write!(out, "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>", PALETTE[k % PALETTE.len()]);
    }
    let _ = write!(out, "</svg><figcaption>{} ({})</figcaption></figure>", esc(label), esc(unit));
    out
}

fn node_detail(k: usize, run: &RunPage, tree: &Tree, n: &Node, best: Option<u64>) -> String {
    let default = if Some(n.id) == best { " chosen" } else { "" };
    let mut out = format!("<section class=\"node-detail{default}\" id=\"r{k}n{}\">", n.id);
    let head = match n.result() {
        Some(r) => format!("score {:.3} ({}/{}), normalized gain {:+.3}", r.score, r.passed, r.total, r.reward),
        None => n.status().as_str().to_string(),
    };
    let parent = n.parent.map(|p| format!(" · from <a href=\"#r{k}n{p}\">#{p}</a>")).unwrap_or_default();
    let _ = write!(out, "<h2>#{} <small>{}{parent}</small></h2>", n.id, esc(&head));
    match &n.proposal {
        Some(p) => {
            let _ = write!(out, "<p><b>Recipe</b> {}</p>", untrusted(&describe(p)));
            let parent_proposal = n.parent.and_then(|id| tree.nodes.get(id as usize)).and_then(|p| p.proposal.as_ref());
            out.push_str(&recipe_diff(parent_proposal, p));
            let _ = write!(out, "<p><b>Why</b> <q class=\"rationale\">{}</q></p>", untrusted(&p.rationale));
        }
        None => out.push_str("<p>The base model, scored as it is.</p>"),
    }
    if let Some(job) = &n.job {
        let _ = write!(out, "<p><b>Slurm job</b> {} (output: nodes/{}/slurm-{}.out)</p>", esc(job), n.id, esc(job));
    }
    if let Some(e) = n.error() {
        let _ = write!(out, "<p class=\"error\"><b>Error</b> {}</p>", untrusted(e));
    } else if !n.lesson.is_empty() {
        let _ = write!(out, "<p><b>Lesson</b> {}</p>", untrusted(&n.lesson));
    }
    if let Some(r) = n.result() {
        let c = &r.cost;
        let _ = write!(
            out,
            "<p><b>Cost</b> {:.0} s · {} training tokens · {} generated tokens · {} LLM tokens{}</p>",
            c.seconds,
            c.train_tokens,
            c.generated_tokens,
            n.proposal_llm_tokens,
            if c.cached { " · served from the experiment cache" } else { "" }
        );
        if c.stages.is_recorded() {
            let _ = write!(out, "<p><b>Where the time went</b> {}</p>", esc(&c.stages.describe()));
        }
        if let Some(j) = &c.job {
            let _ = write!(out, "<p><b>Around the Slurm job</b> {}</p>", esc(&j.describe()));
        }
        if let Some(t) = &r.train {
            let _ = write!(
                out,
                "<p><b>Training</b> {} examples, {} steps, {} tokens, {} truncated; loss {:.3} → {:.3}{}</p>",
                t.examples,
                t.steps,
                t.tokens,
                t.truncated,
                t.first_loss,
                t.final_loss,
                if t.continued { " (continued from the parent's adapter)" } else { "" }
            );
            out.push_str(&loss_svg(&t.loss_curve));
        }
        if !r.data.is_empty() {
            out.push_str("<table><tr><th>data step</th><th>in</th><th>out</th><th>dropped</th></tr>");
            for s in &r.data {
                let dropped: Vec<String> = s.dropped.iter().map(|(why, n)| format!("{why}: {n}")).collect();
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    untrusted(&s.plugin),
                    s.records_in,
                    s.records_out,
                    untrusted(&dropped.join(", "))
                );
            }
            out.push_str("</table>");
        }
        if !r.bad_cases.is_empty() {
            out.push_str("<h3>Bad cases</h3><ul class=\"bad\">");
            for b in &r.bad_cases {
                let _ = write!(out, "<li><b>{}</b> × {}", untrusted(&b.label), b.count);
                if !b.examples.is_empty() {
                    out.push_str("<ul>");
                    for e in b.examples.iter().take(3) {
                        let _ = write!(out, "<li><code>{}</code></li>", untrusted(e));
                    }
                    out.push_str("</ul>");
                }
                out.push_str("</li>");
            }
            out.push_str("</ul>");
        }
        out.push_str(&answers(&run.dir, n.id));
    }
    out.push_str("</section>");
    out
}

/// The training recipe's fields and the data steps that differ from the parent's.
fn recipe_diff(parent: Option<&trex_sdk::types::Proposal>, p: &trex_sdk::types::Proposal) -> String {
    let fields = |p: Option<&trex_sdk::types::Proposal>| -> BTreeMap<String, serde_json::Value> {
        p.and_then(|p| serde_json::to_value(&p.train_recipe).ok())
            .and_then(|v| v.as_object().cloned())
            .map(|o| o.into_iter().collect())
            .unwrap_or_default()
    };
    let (before, after) = (fields(parent), fields(Some(p)));
    let steps = |p: Option<&trex_sdk::types::Proposal>| -> String {
        p.map(|p| {
            p.data_recipe
                .steps
                .iter()
                .map(|s| {
                    if s.config == serde_json::json!({}) {
                        s.plugin.clone()
                    } else {
                        format!("{} {}", s.plugin, s.config)
                    }
                })
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .unwrap_or_default()
    };
    let mut rows = String::new();
    // The training seed is the search's derivation, not a choice: left out.
    for (k, v) in after.iter().filter(|(k, _)| k.as_str() != "seed") {
        let old = before.get(k);
        if parent.is_none() || old != Some(v) {
            let was = old.map(|o| o.to_string()).unwrap_or_else(|| "-".into());
            let _ = write!(
                rows,
                "<tr><td>{}</td><td class=\"was\">{}</td><td>{}</td></tr>",
                esc(k),
                untrusted(&was),
                untrusted(&v.to_string())
            );
        }
    }
    let (s0, s1) = (steps(parent), steps(Some(p)));
    if parent.is_none() || s0 != s1 {
        let _ = write!(
            rows,
            "<tr><td>data steps</td><td class=\"was\">{}</td><td>{}</td></tr>",
            untrusted(if parent.is_none() { "-" } else { &s0 }),
            untrusted(&s1)
        );
    }
    if rows.is_empty() {
        return "<p>The same recipe as its parent.</p>".into();
    }
    let what = if parent.is_some() { "Changed from the parent" } else { "Recipe" };
    format!("<table class=\"diff\"><tr><th>{what}</th><th>was</th><th>now</th></tr>{rows}</table>")
}

fn loss_svg(curve: &[f32]) -> String {
    if curve.len() < 2 {
        return String::new();
    }
    let (w, h, pad) = (320.0, 120.0, 24.0);
    let finite: Vec<f32> = curve.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut d = String::new();
    for (i, v) in curve.iter().enumerate() {
        if !v.is_finite() {
            continue;
        }
        let x = pad + (w - 2.0 * pad) * i as f64 / (curve.len() - 1) as f64;
        let y = h - pad - (h - 2.0 * pad) * f64::from((v - lo) / span);
        let _ = write!(d, "{}{x:.1},{y:.1}", if d.is_empty() { "M" } else { " L" });
    }
    format!(
        "<figure><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"training loss\">\
         <path d=\"{d}\" fill=\"none\" stroke=\"#555\" stroke-width=\"1.5\"/>\
         <text x=\"{pad}\" y=\"{pad}\" class=\"tick\">{hi:.2}</text><text x=\"{pad}\" y=\"{yb}\" class=\"tick\">{lo:.2}</text>\
         </svg><figcaption>training loss by step</figcaption></figure>",
        yb = h - 6.0,
    )
}

/// The first validation answers of node `id` with their verdicts, from its `evaluation.jsonl`.
fn answers(run_dir: &Path, id: u64) -> String {
    let path = run_dir.join("nodes").join(id.to_string()).join("evaluation.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else { return String::new() };
    let mut rows = String::new();
    for line in text.lines().take(ANSWERS_SHOWN) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let passed = v.get("passed").and_then(|p| p.as_bool()).unwrap_or(false);
        let _ = write!(
            rows,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if passed { "pass" } else { "fail" },
            untrusted(&s("prompt")),
            untrusted(&s("expected")),
            untrusted(&s("output")),
            if passed { "✓".to_string() } else { untrusted(&s("explanation")) }
        );
    }
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "<h3>First validation answers</h3><table class=\"answers\"><tr><th>prompt</th><th>expected</th><th>answer</th><th>verdict</th></tr>{rows}</table>"
    )
}

const STYLE: &str = "\
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
main{padding:12px 20px}h1{font-size:20px;margin:8px 0 2px}h1 small,h2 small{font-weight:normal;color:#666;font-size:13px}\
h2{font-size:16px;margin:4px 0 8px}h3{font-size:14px;margin:10px 0 4px}.goal{color:#444;margin:0 0 10px}\
.top{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px;overflow:auto;max-width:100%}\
.charts{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}figcaption{font-size:12px;color:#666;text-align:center}\
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top}\
th{color:#555;font-weight:600}.was{color:#999;text-decoration:line-through}\
svg text{font-size:11px;text-anchor:middle;fill:#222}svg text.tick{font-size:10px;fill:#666;text-anchor:start}svg text.tick.end{text-anchor:end}\
.edge{stroke:#bbb;stroke-width:1.5}.edge.best{stroke:#c77800;stroke-width:3}.axis{stroke:#999}\
a.node circle{stroke:#666;stroke-width:1}a.node.chosen circle{stroke:#c77800;stroke-width:3}a.node.running circle{stroke-dasharray:4 2}a.node:hover circle{stroke:#000;stroke-width:2}\
.node-detail{display:none;background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin-top:12px}\
.node-detail:target,.node-detail.open{display:block;border-color:#c77800}.run:not(:has(.node-detail:target,.node-detail.open)) .node-detail.chosen{display:block}\
.error{color:#a00}.answers tr.pass td:last-child{color:#070}.answers tr.fail td:last-child{color:#a00}.swatch{display:inline-block;width:12px;height:12px;border-radius:2px}\
.hint{font-size:12px;color:#888;margin:4px 0 0}q.rationale{font-style:italic}code{font-size:12px;word-break:break-all}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn untrusted_text_is_one_printable_capped_line() {
        let t = untrusted(&format!("a\r\nb\u{1b}]0;x\u{7}{}", "y".repeat(5000)));
        assert!(!t.contains('\n') && !t.contains('\r') && !t.contains('\u{1b}'), "{t}");
        assert!(t.chars().count() < TEXT_MAX + 50, "{}", t.len());
    }
}
