//! Human-readable tables for the terminal.

use std::time::Duration;

use trex_lab::pipeline::PipelineReport;

/// Plugin-written text on one line, escaped and cut.
fn safe(text: &str, max: usize) -> String {
    trex_plugin_host::text::line(text, max)
}

/// Print a pipeline report: one row per step, then the evaluation and its bad cases.
pub fn print_pipeline(report: &PipelineReport, elapsed: Duration) {
    println!("\npipeline `{}`: {} input records", report.name, report.input_records);
    println!("{:<4} {:<16} {:>9} {:>9} {:>10}  DROPPED", "STEP", "PLUGIN", "IN", "OUT", "MS");
    for (i, s) in report.steps.iter().enumerate() {
        let dropped = if s.run.dropped.is_empty() {
            "-".to_string()
        } else {
            s.run.dropped.iter().map(|(r, n)| format!("{r}: {n}")).collect::<Vec<_>>().join(", ")
        };
        println!(
            "{:<4} {:<16} {:>9} {:>9} {:>10.1}  {}",
            i + 1,
            s.plugin,
            s.run.records_in,
            s.run.records_out,
            s.run.elapsed.as_secs_f64() * 1e3,
            dropped
        );
    }
    println!("prepared data: {}", report.output.display());
    if let Some(e) = &report.evaluation {
        let r = &e.report;
        println!(
            "\nevaluation with `{}` (predictor: {:?}): score {:.3}, {} of {} passed",
            e.plugin, e.predictor, r.score, r.passed, r.total
        );
        for (k, v) in &r.metrics {
            println!("  {k}: {v:.4}");
        }
        if !e.failure_tags.is_empty() {
            println!("bad cases by tag:");
            // The first failing example of each tag, found in one pass over the results.
            let mut first: std::collections::HashMap<&str, &trex_plugin_host::ExampleResult> = Default::default();
            for x in r.results.iter().filter(|x| !x.passed) {
                for t in &x.tags {
                    first.entry(t.as_str()).or_insert(x);
                }
            }
            for (tag, n) in &e.failure_tags {
                let hint = first
                    .get(tag.as_str())
                    .map(|x| format!("  e.g. {}: {}", safe(&x.id, 60), safe(&x.explanation, 160)))
                    .unwrap_or_default();
                println!("  {:<24} {n:>5}{hint}", safe(tag, 60));
            }
        }
    }
    println!("\ndone in {:.2} s", elapsed.as_secs_f64());
}
