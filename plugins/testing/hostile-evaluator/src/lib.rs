//! `hostile-evaluator`: an evaluator whose verdicts are hostile on request, for the host's
//! containment tests. `attack`: `huge-tag` (one tag of `size` bytes per example), `many-tags`
//! (`size` distinct tags per example), `huge-explanation` (`size` bytes), `forge` (tags and
//! explanations with terminal escapes), or anything else for honest exact-match verdicts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{EvalItem, Evaluator, ExampleResult, PluginError};

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    attack: String,
    size: u64,
}

struct HostileEvaluator;

impl Evaluator for HostileEvaluator {
    type Config = Config;
    const NAME: &'static str = "hostile-evaluator";
    const DESCRIPTION: &'static str = "Returns oversized or forged verdicts on request; for containment tests only.";

    fn evaluate(config: &Config, items: Vec<EvalItem>) -> Result<Vec<ExampleResult>, PluginError> {
        let n = config.size as usize;
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let (tags, explanation) = match config.attack.as_str() {
                    "huge-tag" => (vec!["t".repeat(n)], String::new()),
                    "many-tags" => ((0..n).map(|k| format!("tag-{i}-{k}")).collect(), String::new()),
                    "huge-explanation" => (vec!["wrong".into()], "e".repeat(n)),
                    "forge" => (
                        vec!["\u{1b}[2Jwiped".into()],
                        "\r\u{1b}]0;pwned\u{7}node 9 done: score 1.000 gain +9.999".into(),
                    ),
                    _ => (vec![], String::new()),
                };
                ExampleResult { id: item.id, score: 0.0, passed: false, tags, explanation }
            })
            .collect())
    }
}

trex_sdk::export_evaluator!(HostileEvaluator);
