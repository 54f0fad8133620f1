//! The evaluator side of the SDK: [`Evaluator`] and its per-example results.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use super::bindings::evaluator::exports::trex::plugin::evaluator_api as wit;
use super::bindings::imports::trex::plugin::types as wit_types;
use super::{PluginError, PluginMeta};

/// One example and the model's output for it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    /// The example's id.
    pub id: String,
    /// The dataset record, including its reference answer.
    pub example: serde_json::Value,
    /// What the model produced.
    pub output: String,
}

/// The verdict on one example.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExampleResult {
    /// The example's id.
    pub id: String,
    /// In [0, 1].
    pub score: f64,
    /// Whether the example counts as solved.
    pub passed: bool,
    /// Short failure categories, used to cluster bad cases.
    pub tags: Vec<String>,
    /// Why, in a sentence.
    pub explanation: String,
}

/// The task metric over all examples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aggregate {
    /// The task metric, in [0, 1].
    pub score: f64,
    /// Examples passed.
    pub passed: u64,
    /// Examples scored.
    pub total: u64,
    /// Further named numbers.
    pub metrics: BTreeMap<String, f64>,
}

impl Aggregate {
    /// Mean score and pass count: the default aggregate.
    pub fn mean(results: &[ExampleResult]) -> Self {
        let total = results.len() as u64;
        let passed = results.iter().filter(|r| r.passed).count() as u64;
        let score = if total == 0 { 0.0 } else { results.iter().map(|r| r.score).sum::<f64>() / total as f64 };
        Self { score, passed, total, metrics: BTreeMap::new() }
    }
}

/// An evaluator scores model outputs against examples.
///
/// ```
/// use trex_sdk::guest::{EvalItem, Evaluator, ExampleResult, PluginError};
///
/// /// Passes when the output contains the record's `answer`.
/// struct Contains;
///
/// #[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields, default)]
/// struct Config {
///     case_sensitive: bool,
/// }
///
/// impl Evaluator for Contains {
///     type Config = Config;
///     const NAME: &'static str = "contains";
///     const DESCRIPTION: &'static str = "Passes when the output contains the answer.";
///
///     fn evaluate(config: &Config, items: Vec<EvalItem>) -> Result<Vec<ExampleResult>, PluginError> {
///         Ok(items
///             .into_iter()
///             .map(|item| {
///                 let answer = item.example["answer"].as_str().unwrap_or_default();
///                 let (out, ans) = if config.case_sensitive {
///                     (item.output.clone(), answer.to_string())
///                 } else {
///                     (item.output.to_lowercase(), answer.to_lowercase())
///                 };
///                 let passed = out.contains(&ans);
///                 ExampleResult {
///                     id: item.id,
///                     score: if passed { 1.0 } else { 0.0 },
///                     passed,
///                     tags: if passed { vec![] } else { vec!["missing-answer".into()] },
///                     explanation: String::new(),
///                 }
///             })
///             .collect())
///     }
/// }
///
/// trex_sdk::export_evaluator!(Contains);
/// ```
pub trait Evaluator: 'static {
    /// The config; its schema is published.
    type Config: DeserializeOwned + Serialize + JsonSchema;
    /// Plugin name (must equal the manifest's `name`).
    const NAME: &'static str;
    /// One paragraph for `trex-host plugins inspect`.
    const DESCRIPTION: &'static str;

    /// Score one batch. Return one result per item, with the item's id.
    fn evaluate(config: &Self::Config, items: Vec<EvalItem>) -> Result<Vec<ExampleResult>, PluginError>;

    /// Combine every batch's results into the task metric. Defaults to the mean score.
    fn aggregate(config: &Self::Config, results: &[ExampleResult]) -> Result<Aggregate, PluginError> {
        let _ = config;
        Ok(Aggregate::mean(results))
    }
}

fn to_wit(r: ExampleResult) -> wit::ExampleResult {
    wit::ExampleResult { id: r.id, score: r.score, passed: r.passed, tags: r.tags, explanation: r.explanation }
}

fn from_wit(r: wit::ExampleResult) -> ExampleResult {
    ExampleResult { id: r.id, score: r.score, passed: r.passed, tags: r.tags, explanation: r.explanation }
}

#[doc(hidden)]
pub fn __describe<T: Evaluator>(version: &'static str) -> wit_types::PluginInfo {
    super::install_panic_hook();
    let meta = PluginMeta { name: T::NAME, version, description: T::DESCRIPTION };
    super::info::<T::Config>(&meta, wit_types::PluginKind::Evaluator)
}

#[doc(hidden)]
pub fn __validate<T: Evaluator>(config: String) -> Result<String, wit_types::PluginError> {
    super::install_panic_hook();
    super::validate_config::<T::Config>(&config).map_err(Into::into)
}

#[doc(hidden)]
pub fn __evaluate<T: Evaluator>(
    config: String,
    items: Vec<wit::EvalItem>,
) -> Result<Vec<wit::ExampleResult>, wit_types::PluginError> {
    super::install_panic_hook();
    let config = super::parse_config::<T::Config>(&config)?;
    let items = items
        .into_iter()
        .map(|i| {
            let example = serde_json::from_str(&i.example)
                .map_err(|e| PluginError::field("example", format!("example `{}` is not JSON: {e}", i.id)))?;
            Ok(EvalItem { id: i.id, example, output: i.output })
        })
        .collect::<Result<Vec<_>, PluginError>>()?;
    Ok(T::evaluate(&config, items)?.into_iter().map(to_wit).collect())
}

#[doc(hidden)]
pub fn __aggregate<T: Evaluator>(
    config: String,
    results: Vec<wit::ExampleResult>,
) -> Result<wit::AggregateResult, wit_types::PluginError> {
    super::install_panic_hook();
    let config = super::parse_config::<T::Config>(&config)?;
    let results: Vec<ExampleResult> = results.into_iter().map(from_wit).collect();
    let agg = T::aggregate(&config, &results)?;
    Ok(wit::AggregateResult {
        score: agg.score,
        passed: agg.passed,
        total: agg.total,
        metrics: super::metrics(&agg.metrics),
    })
}

/// Export an [`Evaluator`] implementation as this component's `evaluator` world.
#[macro_export]
macro_rules! export_evaluator {
    ($ty:ty) => {
        const _: () = {
            struct __TrexEvaluatorExport;
            impl $crate::guest::bindings::evaluator::exports::trex::plugin::evaluator_api::Guest for __TrexEvaluatorExport {
                fn describe() -> $crate::guest::bindings::imports::trex::plugin::types::PluginInfo {
                    $crate::guest::evaluator::__describe::<$ty>(env!("CARGO_PKG_VERSION"))
                }
                fn validate_config(config: String) -> Result<String, $crate::guest::bindings::imports::trex::plugin::types::PluginError> {
                    $crate::guest::evaluator::__validate::<$ty>(config)
                }
                fn evaluate(
                    config: String,
                    items: Vec<$crate::guest::bindings::evaluator::exports::trex::plugin::evaluator_api::EvalItem>,
                ) -> Result<
                    Vec<$crate::guest::bindings::evaluator::exports::trex::plugin::evaluator_api::ExampleResult>,
                    $crate::guest::bindings::imports::trex::plugin::types::PluginError,
                > {
                    $crate::guest::evaluator::__evaluate::<$ty>(config, items)
                }
                fn aggregate(
                    config: String,
                    results: Vec<$crate::guest::bindings::evaluator::exports::trex::plugin::evaluator_api::ExampleResult>,
                ) -> Result<
                    $crate::guest::bindings::evaluator::exports::trex::plugin::evaluator_api::AggregateResult,
                    $crate::guest::bindings::imports::trex::plugin::types::PluginError,
                > {
                    $crate::guest::evaluator::__aggregate::<$ty>(config, results)
                }
            }
            $crate::guest::bindings::evaluator::export_evaluator_world!(__TrexEvaluatorExport with_types_in $crate::guest::bindings::evaluator);
        };
    };
}
