//! Bad-case analysis: failures grouped by the evaluator's tags and by error patterns the host
//! can see itself (answers cut off at the length limit, empty answers, echoed prompts), each
//! cluster with a few representative examples.

use std::collections::BTreeMap;

use trex_sdk::types::BadCaseCluster;

use trex_plugin_host::ExampleResult;

/// One scored example, with what the host knows about it.
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    /// The prompt shown to the model.
    pub prompt: &'a str,
    /// The reference answer, when the record has one.
    pub expected: Option<&'a str>,
    /// The model's output.
    pub output: &'a str,
    /// Why generation stopped (`eos`, `stop`, `length`).
    pub finish: &'a str,
    /// The evaluator's verdict.
    pub result: &'a ExampleResult,
}

fn clip(s: &str, n: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        let mut out: String = one_line.chars().take(n).collect();
        out.push('…');
        out
    }
}

/// Host-visible failure patterns of one failed example.
fn patterns(s: &Scored<'_>) -> Vec<&'static str> {
    let mut out = Vec::new();
    let trimmed = s.output.trim();
    if trimmed.is_empty() {
        out.push("pattern:empty-output");
    }
    if s.finish == "length" {
        out.push("pattern:cut-at-length-limit");
    }
    let prompt_tail: String = s.prompt.trim().chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    if trimmed.len() > 8 && prompt_tail.len() > 8 && trimmed.contains(prompt_tail.trim()) {
        out.push("pattern:echoes-prompt");
    }
    if let Some(e) = s.expected
        && !e.trim().is_empty()
        && trimmed.len() > 3 * e.trim().len().max(4)
    {
        out.push("pattern:much-longer-than-reference");
    }
    out
}

/// Cluster the failures (most frequent first, then by label), with at most `per_cluster`
/// examples each and at most `max_clusters` clusters.
pub fn bad_cases(items: &[Scored<'_>], per_cluster: usize, max_clusters: usize) -> Vec<BadCaseCluster> {
    let mut clusters: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for s in items.iter().filter(|s| !s.result.passed) {
        let mut labels: Vec<String> = s.result.tags.iter().map(|t| format!("tag:{t}")).collect();
        if labels.is_empty() {
            labels.push("tag:untagged".into());
        }
        labels.extend(patterns(s).into_iter().map(String::from));
        for label in labels {
            let entry = clusters.entry(label).or_default();
            entry.0 += 1;
            if entry.1.len() < per_cluster {
                entry.1.push(format!(
                    "input: {} | expected: {} | got: {}",
                    clip(s.prompt, 120),
                    clip(s.expected.unwrap_or("?"), 80),
                    clip(s.output, 80)
                ));
            }
        }
    }
    let mut out: Vec<BadCaseCluster> =
        clusters.into_iter().map(|(label, (count, examples))| BadCaseCluster { label, count, examples }).collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.label.cmp(&b.label)));
    out.truncate(max_clusters);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(passed: bool, tags: &[&str]) -> ExampleResult {
        ExampleResult {
            id: "x".into(),
            score: passed as u8 as f64,
            passed,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            explanation: String::new(),
        }
    }

    #[test]
    fn clusters_by_tag_and_pattern_most_frequent_first() {
        let (r1, r2, r3, ok) =
            (result(false, &["wrong-answer"]), result(false, &["wrong-answer"]), result(false, &[]), result(true, &[]));
        let items = [
            Scored {
                prompt: "Convert 3 km to m.",
                expected: Some("3000 m"),
                output: "300 m",
                finish: "eos",
                result: &r1,
            },
            Scored {
                prompt: "Convert 4 km to m.",
                expected: Some("4000 m"),
                output: "4 km is a distance that can be converted as follows",
                finish: "length",
                result: &r2,
            },
            Scored { prompt: "Convert 5 km to m.", expected: Some("5000 m"), output: "", finish: "eos", result: &r3 },
            Scored { prompt: "p", expected: Some("a"), output: "a", finish: "eos", result: &ok },
        ];
        let c = bad_cases(&items, 1, 10);
        let labels: Vec<(&str, u64)> = c.iter().map(|c| (c.label.as_str(), c.count)).collect();
        assert_eq!(
            labels,
            vec![
                ("tag:wrong-answer", 2),
                ("pattern:cut-at-length-limit", 1),
                ("pattern:empty-output", 1),
                ("pattern:much-longer-than-reference", 1),
                ("tag:untagged", 1)
            ]
        );
        assert_eq!(c[0].examples, vec!["input: Convert 3 km to m. | expected: 3000 m | got: 300 m"]);
        assert_eq!(bad_cases(&items, 1, 2).len(), 2);
    }
}
