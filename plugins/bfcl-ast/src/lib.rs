//! `bfcl-ast`: scores tool calls the way the Berkeley Function-Calling Leaderboard's AST checker
//! does. The model's output must parse as JSON tool calls (a list of `{"name", "arguments"}`
//! calls, one such call, or BFCL's `{"function": {arguments}}`), possibly inside a code fence.
//! Each call is matched against the ground truth (`answer`: a list of `{function: {argument:
//! [acceptable values]}}`, where an acceptable `""` marks an optional argument):
//!
//! - the function name must match;
//! - every required argument must be present, and no argument the function lacks;
//! - each value must equal one of the acceptable values, type-aware: `5` equals `5.0`, but
//!   `"5"` does not equal `5`. Strings compare case-insensitively, ignoring spaces and
//!   punctuation. Lists compare element by element, objects key by key.
//!
//! Several expected calls are matched in any order (parallel calls). An example passes when
//! every expected call is matched by a distinct produced call. Failures are tagged
//! `malformed-json`, `not-a-call`, `wrong-call-count`, `wrong-function`, `missing-argument`,
//! `unexpected-argument`, `wrong-type` or `wrong-value`, for bad-case analysis.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use trex_sdk::guest::{EvalItem, Evaluator, ExampleResult, PluginError};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// The field holding the ground truth.
    answer_field: String,
    /// Strip these markers from the output before parsing (chat end tokens).
    strip_markers: Vec<String>,
    /// Expected calls must come in the listed order (otherwise any order).
    ordered: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            answer_field: "answer".into(),
            strip_markers: ["<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>"].map(String::from).to_vec(),
            ordered: false,
        }
    }
}

/// One call: a name and its arguments.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    args: Map<String, Value>,
}

/// Why a produced call does not match an expected one.
#[derive(Debug, Clone, PartialEq)]
struct Mismatch {
    tag: &'static str,
    detail: String,
}

fn mismatch(tag: &'static str, detail: String) -> Mismatch {
    Mismatch { tag, detail }
}

struct BfclAst;

impl Evaluator for BfclAst {
    type Config = Config;
    const NAME: &'static str = "bfcl-ast";
    const DESCRIPTION: &'static str = "BFCL-style AST check of JSON tool calls against the ground truth: function name, required and unexpected arguments, type-aware values; failures tagged malformed-json, not-a-call, wrong-call-count, wrong-function, missing-argument, unexpected-argument, wrong-type or wrong-value.";

    fn evaluate(config: &Config, items: Vec<EvalItem>) -> Result<Vec<ExampleResult>, PluginError> {
        items.into_iter().map(|item| judge(config, item)).collect()
    }
}

fn judge(config: &Config, item: EvalItem) -> Result<ExampleResult, PluginError> {
    let truth = item.example.get(&config.answer_field).ok_or_else(|| {
        PluginError::field("answer_field", format!("example `{}` has no `{}`", item.id, config.answer_field))
    })?;
    let expected = ground_truth(truth).ok_or_else(|| {
        PluginError::new(format!(
            "example `{}`: `{}` is not a BFCL ground truth (a list of {{function: {{argument: [values]}}}})",
            item.id, config.answer_field
        ))
    })?;
    let result = match parse_output(config, &item.output) {
        Err(m) => Err(m),
        Ok(produced) => match_calls(&expected, &produced, config.ordered),
    };
    Ok(match result {
        Ok(()) => ExampleResult {
            id: item.id,
            score: 1.0,
            passed: true,
            tags: Vec::new(),
            explanation: "every call matches".into(),
        },
        Err(m) => {
            ExampleResult { id: item.id, score: 0.0, passed: false, tags: vec![m.tag.into()], explanation: m.detail }
        }
    })
}

/// `[{function: {argument: [acceptable]}}]` → (name, argument → acceptable values).
fn ground_truth(v: &Value) -> Option<Vec<(String, Map<String, Value>)>> {
    v.as_array()?
        .iter()
        .map(|call| {
            let obj = call.as_object()?;
            let (name, args) = obj.iter().next()?;
            Some((name.clone(), args.as_object()?.clone()))
        })
        .collect()
}

/// The calls in the model's output.
fn parse_output(config: &Config, output: &str) -> Result<Vec<Call>, Mismatch> {
    let mut text = output.to_string();
    for m in &config.strip_markers {
        text = text.replace(m.as_str(), "");
    }
    let mut text = text.trim();
    if let Some(inner) = text.strip_prefix("```") {
        let inner = inner.trim_start_matches(|c: char| c.is_alphanumeric());
        text = inner.rsplit_once("```").map_or(inner, |(body, _)| body).trim();
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| mismatch("malformed-json", format!("the output is not JSON ({e}): {}", preview(text))))?;
    let calls = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        other => return Err(mismatch("not-a-call", format!("expected a call or a list of calls, got {other}"))),
    };
    calls
        .into_iter()
        .map(|c| {
            let obj = c.as_object().ok_or_else(|| mismatch("not-a-call", format!("`{c}` is not a call object")))?;
            match (obj.get("name").and_then(Value::as_str), obj.get("arguments")) {
                (Some(name), Some(Value::Object(args))) => Ok(Call { name: name.into(), args: args.clone() }),
                // Some models write the arguments as a JSON string.
                (Some(name), Some(Value::String(s))) => match serde_json::from_str::<Value>(s) {
                    Ok(Value::Object(args)) => Ok(Call { name: name.into(), args }),
                    _ => Err(mismatch("malformed-json", format!("the arguments of `{name}` are not a JSON object"))),
                },
                (Some(name), None) => Ok(Call { name: name.into(), args: Map::new() }),
                _ => match obj.iter().next() {
                    Some((name, Value::Object(args))) if obj.len() == 1 => {
                        Ok(Call { name: name.clone(), args: args.clone() })
                    }
                    _ => Err(mismatch("not-a-call", format!("`{c}` has no `name` and `arguments`"))),
                },
            }
        })
        .collect()
}

fn preview(text: &str) -> String {
    let cut: String = text.chars().take(80).collect();
    if cut.len() < text.len() { format!("{cut}…") } else { cut }
}

/// Every expected call matched by a distinct produced call (in order when `ordered`).
fn match_calls(expected: &[(String, Map<String, Value>)], produced: &[Call], ordered: bool) -> Result<(), Mismatch> {
    if expected.len() != produced.len() {
        return Err(mismatch(
            "wrong-call-count",
            format!("expected {} call(s), got {}", expected.len(), produced.len()),
        ));
    }
    if ordered {
        for (e, p) in expected.iter().zip(produced) {
            check_call(e, p)?;
        }
        return Ok(());
    }
    // Parallel calls: a small assignment search; the first mismatch of the best attempt explains.
    let mut used = vec![false; produced.len()];
    assign(expected, produced, &mut used)
}

fn assign(expected: &[(String, Map<String, Value>)], produced: &[Call], used: &mut [bool]) -> Result<(), Mismatch> {
    let Some((first, rest)) = expected.split_first() else { return Ok(()) };
    let mut best: Option<Mismatch> = None;
    for i in 0..produced.len() {
        if used[i] {
            continue;
        }
        match check_call(first, &produced[i]) {
            Ok(()) => {
                used[i] = true;
                match assign(rest, produced, used) {
                    Ok(()) => return Ok(()),
                    Err(m) => best = best.or(Some(m)),
                }
                used[i] = false;
            }
            // A mismatch on the right function explains more than one on another function.
            Err(m) if m.tag != "wrong-function" || best.is_none() => best = Some(m),
            Err(_) => {}
        }
    }
    Err(best.unwrap_or_else(|| mismatch("wrong-call-count", "no call left to match".into())))
}

fn check_call((name, params): &(String, Map<String, Value>), call: &Call) -> Result<(), Mismatch> {
    if call.name != *name {
        return Err(mismatch("wrong-function", format!("expected `{name}`, got `{}`", call.name)));
    }
    for arg in call.args.keys() {
        if !params.contains_key(arg) {
            return Err(mismatch("unexpected-argument", format!("`{name}` has no argument `{arg}`")));
        }
    }
    for (param, acceptable) in params {
        let options: Vec<&Value> = match acceptable {
            Value::Array(v) => v.iter().collect(),
            other => vec![other],
        };
        let optional = options.iter().any(|o| o.as_str() == Some(""));
        let Some(got) = call.args.get(param) else {
            if optional {
                continue;
            }
            return Err(mismatch("missing-argument", format!("`{name}` needs `{param}`")));
        };
        let candidates: Vec<&&Value> = options.iter().filter(|o| o.as_str() != Some("")).collect();
        if candidates.iter().any(|o| values_equal(got, o)) {
            continue;
        }
        let tag = if candidates.iter().any(|o| same_kind(got, o)) { "wrong-value" } else { "wrong-type" };
        let wanted: Vec<String> = candidates.iter().map(|o| o.to_string()).collect();
        return Err(mismatch(tag, format!("`{name}.{param}` is {got}, expected one of [{}]", wanted.join(", "))));
    }
    Ok(())
}

fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Case, spaces and punctuation do not count in strings (as in BFCL's checker).
fn standardize(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace() && !",./-_*^'\"".contains(*c)).flat_map(char::to_lowercase).collect()
}

/// Type-aware equality of a produced value and an acceptable one. An acceptable object maps
/// keys to lists of acceptable values, as BFCL writes nested arguments.
fn values_equal(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => false,
        },
        (Value::String(a), Value::String(b)) => standardize(a) == standardize(b),
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Null, Value::Null) => true,
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| values_equal(x, y)),
        (Value::Object(a), Value::Object(b)) => {
            a.keys().all(|k| b.contains_key(k))
                && b.iter().all(|(k, options)| {
                    let options: Vec<&Value> = match options {
                        Value::Array(v) => v.iter().collect(),
                        other => vec![other],
                    };
                    match a.get(k) {
                        Some(x) => options.iter().any(|o| o.as_str() != Some("") && values_equal(x, o)),
                        None => options.iter().any(|o| o.as_str() == Some("")),
                    }
                })
        }
        _ => false,
    }
}

trex_sdk::export_evaluator!(BfclAst);
