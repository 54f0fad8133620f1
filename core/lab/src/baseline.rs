//! Answers that need no model, scored like a node: what a fine-tune has to beat before its gain
//! means anything. The majority answer gives every prompt the most frequent training answer. The
//! format-only answer gives each prompt a training answer drawn at random: the right format,
//! and no knowledge of the prompt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trex_sdk::rng::SplitMix64;

/// The no-model baselines of a task, on the validation split the search scores and on the test
/// split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baselines {
    /// The most frequent training answer.
    pub majority_answer: String,
    /// Its score on the validation split, as the search scores nodes.
    pub majority_validation: f64,
    /// Its score on the test split.
    pub majority_test: f64,
    /// A random training answer per prompt (seeded), on the validation split.
    pub format_only_validation: f64,
    /// The same on the test split.
    pub format_only_test: f64,
}

/// The answer a training record teaches: its `completion`, `response` or `answer` field, or the
/// last assistant turn of its `messages`.
pub fn training_answer(record: &serde_json::Value) -> Option<String> {
    if let Some(a) = ["completion", "completion_text", "response", "answer"]
        .iter()
        .find_map(|f| record.get(*f).and_then(|v| v.as_str()))
    {
        return Some(a.to_string());
    }
    record.get("messages")?.as_array()?.iter().rev().find_map(|m| {
        (m.get("role")?.as_str()? == "assistant").then(|| m.get("content")?.as_str().map(String::from))?
    })
}

/// Every training record's answer, in file order (records without one are skipped).
pub fn training_answers(records: &[String]) -> Vec<String> {
    records.iter().filter_map(|r| serde_json::from_str(r).ok()).filter_map(|v| training_answer(&v)).collect()
}

/// The most frequent answer; ties go to the one that comes first in text order, so the choice
/// does not depend on the file's order.
pub fn majority(answers: &[String]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers {
        *counts.entry(a).or_default() += 1;
    }
    let top = counts.values().copied().max()?;
    counts.into_iter().find(|(_, c)| *c == top).map(|(a, _)| a.to_string())
}

/// `n` answers drawn from `answers` with replacement, the same for the same `seed`.
pub fn drawn(answers: &[String], n: usize, seed: u64) -> Vec<String> {
    if answers.is_empty() {
        return vec![String::new(); n];
    }
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| answers[rng.below(answers.len() as u64) as usize].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_from_any_record_shape_and_the_majority_breaks_ties_by_text() {
        let records = [
            r#"{"prompt": "a", "response": "yes"}"#,
            r#"{"prompt_text": "b", "completion_text": "no"}"#,
            r#"{"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "no"}]}"#,
            r#"{"messages": [{"role": "user", "content": "d"}]}"#,
            r#"{"prompt": "e", "answer": "yes"}"#,
            "not json",
        ]
        .map(String::from);
        let answers = training_answers(&records);
        assert_eq!(answers, ["yes", "no", "no", "yes"]);
        assert_eq!(majority(&answers).as_deref(), Some("no"), "a tie goes to the first in text order");
        assert_eq!(majority(&answers[..1]).as_deref(), Some("yes"));
        assert_eq!(majority(&[]), None);
    }

    #[test]
    fn drawn_answers_are_training_answers_and_repeat_for_a_seed() {
        let answers: Vec<String> = ["1 m", "2 m", "3 m"].map(String::from).to_vec();
        let a = drawn(&answers, 50, 7);
        assert_eq!(a, drawn(&answers, 50, 7));
        assert_ne!(a, drawn(&answers, 50, 8));
        assert!(a.iter().all(|x| answers.contains(x)));
        assert!(answers.iter().all(|x| a.contains(x)), "50 draws of 3 answers reach all of them");
        assert_eq!(drawn(&[], 2, 0), ["", ""]);
    }
}
