//! Human-readable tables for the terminal.

use std::time::Duration;

use trex_lab::pipeline::PipelineReport;

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
            for (tag, n) in &e.failure_tags {
                let example = r.results.iter().find(|x| !x.passed && x.tags.contains(tag));
                let hint = example.map(|x| format!("  e.g. {}: {}", x.id, x.explanation)).unwrap_or_default();
                println!("  {tag:<24} {n:>5}{hint}");
            }
        }
    }
    println!("\ndone in {:.2} s", elapsed.as_secs_f64());
}
