//! `augment`: rule-based augmentation for structured tasks. Each record passes through and is
//! followed by up to `copies` variants made by one rule:
//!
//! - `permute-arguments`: the tool calls in `call_field` (a JSON list of `{"name", "arguments"}`
//!   calls, one such call, or BFCL's `{"function": {arguments}}`) are written with their
//!   arguments in a different order. The calls mean the same; the model learns that order does
//!   not matter.
//! - `rename-variables`: the names in `variables` are replaced, consistently across every
//!   rewritten field of the record, by names from `pool` that the record does not already use.
//! - `swap-units`: unit spellings are swapped for equivalent ones (`km` / `kilometers` /
//!   `kilometres`, `h` / `hours`, ...), consistently across the rewritten fields. By default only
//!   the prompt side is rewritten, so that a reference answer keeps its format.
//!
//! Variants are seeded by `seed` and the record's content, so a recipe gives the same data every
//! time. A variant identical to the record or to an earlier variant is not written. A variant's
//! `id` is the record's with `~<rule><k>` appended, it carries `augmented: "<rule>"` and the tag
//! `augmented`. Records a rule does not apply to pass through unchanged.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trex_sdk::guest::{DataTool, PluginError, Record, RecordReader, RecordWriter, RunStats};
use trex_sdk::rng::SplitMix64;
use trex_sdk::types::OnBadRecord;

/// The augmentation rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Rule {
    /// Reorder the arguments of tool calls.
    PermuteArguments,
    /// Rename variables consistently.
    RenameVariables,
    /// Swap unit spellings for equivalent ones.
    SwapUnits,
}

impl Rule {
    fn as_str(self) -> &'static str {
        match self {
            Rule::PermuteArguments => "permute-arguments",
            Rule::RenameVariables => "rename-variables",
            Rule::SwapUnits => "swap-units",
        }
    }
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

fn completion() -> String {
    "completion".into()
}

fn default_pool() -> Vec<String> {
    ["a", "b", "c", "k", "m", "n", "p", "q", "r", "s", "t", "u", "v", "w", "z"].map(String::from).to_vec()
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The rule that makes variants.
    rule: Rule,
    /// Variants per record (at most 16; fewer when the rule cannot make that many distinct ones).
    #[serde(default = "one")]
    copies: usize,
    /// Write each record before its variants (otherwise only the variants of records the rule
    /// applies to, and the records it does not apply to, are written).
    #[serde(default = "yes")]
    keep_original: bool,
    /// Seed of the choices (combined with each record's content).
    #[serde(default)]
    seed: u64,
    /// Fields rewritten by `rename-variables` and `swap-units` (strings, or chat transcripts whose
    /// turn contents are rewritten). Default: `prompt`, `messages`, `completion`, `response` and
    /// `answer` for `rename-variables`; `prompt` and `messages` for `swap-units`.
    #[serde(default)]
    fields: Option<Vec<String>>,
    /// `permute-arguments`: the field holding the calls as JSON text.
    #[serde(default = "completion")]
    call_field: String,
    /// `rename-variables`: the names to rename (whole identifiers only).
    #[serde(default)]
    variables: Vec<String>,
    /// `rename-variables`: the names to choose from.
    #[serde(default = "default_pool")]
    pool: Vec<String>,
    /// `swap-units`: groups of equivalent single-word spellings, e.g. `[["km", "kilometers"]]`;
    /// empty means the built-in table (metric and imperial length, mass, volume, time).
    #[serde(default)]
    units: Vec<Vec<String>>,
    /// What to do with a record the rule cannot read (calls that are not JSON): drop and count it,
    /// or fail.
    #[serde(default)]
    on_bad_record: OnBadRecord,
}

/// Built-in groups of equivalent unit spellings. Ambiguous words (`in` for inches) are left out.
const UNITS: &[&[&str]] = &[
    &["km", "kilometers", "kilometres"],
    &["m", "meters", "metres"],
    &["cm", "centimeters", "centimetres"],
    &["mm", "millimeters", "millimetres"],
    &["mi", "miles"],
    &["ft", "feet"],
    &["yd", "yards"],
    &["kg", "kilograms"],
    &["g", "grams"],
    &["mg", "milligrams"],
    &["lb", "lbs", "pounds"],
    &["oz", "ounces"],
    &["l", "L", "liters", "litres"],
    &["ml", "mL", "milliliters", "millilitres"],
    &["h", "hr", "hours"],
    &["min", "minutes"],
    &["s", "sec", "seconds"],
    &["ms", "milliseconds"],
];

struct Augment;

impl DataTool for Augment {
    type Config = Config;
    const NAME: &'static str = "augment";
    const DESCRIPTION: &'static str = "Rule-based augmentation for structured tasks: permute the argument order of tool calls, rename variables consistently, or swap equivalent unit spellings; each record is followed by seeded, distinct variants.";

    fn check(config: &Config) -> Result<(), PluginError> {
        if config.copies == 0 || config.copies > 16 {
            return Err(PluginError::field("copies", format!("must be between 1 and 16, not {}", config.copies)));
        }
        match config.rule {
            Rule::RenameVariables => {
                if config.variables.is_empty() {
                    return Err(PluginError::field("variables", "name the variables to rename, e.g. [\"x\", \"y\"]"));
                }
                for name in config.variables.iter().chain(&config.pool) {
                    if !is_identifier(name) {
                        return Err(PluginError::field("variables", format!("`{name}` is not an identifier")));
                    }
                }
                if config.pool.len() < config.variables.len() {
                    return Err(PluginError::field("pool", "needs at least as many names as `variables`"));
                }
            }
            Rule::SwapUnits => {
                let mut seen = std::collections::HashSet::new();
                for group in &config.units {
                    if group.len() < 2 {
                        return Err(PluginError::field(
                            "units",
                            format!("group {group:?} needs two or more spellings"),
                        ));
                    }
                    for s in group {
                        if s.is_empty() || !s.chars().all(char::is_alphabetic) {
                            return Err(PluginError::field("units", format!("`{s}` is not a single word")));
                        }
                        if !seen.insert(s.as_str()) {
                            return Err(PluginError::field("units", format!("`{s}` is in two groups")));
                        }
                    }
                }
            }
            Rule::PermuteArguments => {
                if config.call_field.is_empty() {
                    return Err(PluginError::field("call_field", "name the field that holds the calls"));
                }
            }
        }
        Ok(())
    }

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let fields = config.fields.clone().unwrap_or_else(|| match config.rule {
            Rule::SwapUnits => vec!["prompt".into(), "messages".into()],
            _ => ["prompt", "messages", "completion", "response", "answer"].map(String::from).to_vec(),
        });
        let units: Vec<Vec<String>> = if config.units.is_empty() {
            UNITS.iter().map(|g| g.iter().map(|s| s.to_string()).collect()).collect()
        } else {
            config.units.clone()
        };
        let mut stats = RunStats::default();
        let (mut variants, mut not_applicable, mut repeats) = (0u64, 0u64, 0u64);
        while let Some((raw, record)) = input.next_with_raw()? {
            let position = input.position();
            let mut rng = SplitMix64(config.seed ^ fnv1a(raw.as_bytes()));
            let mut made: Vec<Record> = Vec::new();
            let (mut applicable, mut unreadable) = (true, false);
            for _ in 0..config.copies {
                let variant = match config.rule {
                    Rule::PermuteArguments => match permute_arguments(&record, &config.call_field, &mut rng) {
                        Ok(Some(v)) => v,
                        Ok(None) => {
                            applicable = false;
                            break;
                        }
                        Err(problem) => {
                            stats.bad_record(config.on_bad_record, input.records_read(), &problem)?;
                            unreadable = true;
                            break;
                        }
                    },
                    Rule::RenameVariables => {
                        match rename_variables(&record, &fields, &config.variables, &config.pool, &mut rng) {
                            Some(v) => v,
                            None => {
                                applicable = false;
                                break;
                            }
                        }
                    }
                    Rule::SwapUnits => match swap_units(&record, &fields, &units, &mut rng) {
                        Some(v) => v,
                        None => {
                            applicable = false;
                            break;
                        }
                    },
                };
                if variant == record || made.contains(&variant) {
                    repeats += 1;
                } else {
                    made.push(variant);
                }
            }
            if unreadable {
                continue;
            }
            if !applicable || made.is_empty() {
                not_applicable += u64::from(!applicable);
                output.pass(position)?;
                continue;
            }
            if config.keep_original {
                output.pass(position)?;
            } else {
                stats.drop_record("replaced-by-variants");
            }
            let id = record.get("id").and_then(Value::as_str).map(String::from);
            for (k, mut v) in made.into_iter().enumerate() {
                if let Some(id) = &id {
                    v.insert("id".into(), Value::String(format!("{id}~{}{k}", config.rule.as_str())));
                }
                v.insert("augmented".into(), Value::String(config.rule.as_str().into()));
                let mut tags = v.get("tags").and_then(Value::as_array).cloned().unwrap_or_default();
                tags.push(Value::String("augmented".into()));
                v.insert("tags".into(), Value::Array(tags));
                output.push(&v)?;
                variants += 1;
            }
        }
        stats.metrics.insert("variants".into(), variants as f64);
        stats.metrics.insert("not-applicable".into(), not_applicable as f64);
        stats.metrics.insert("repeated-variants".into(), repeats as f64);
        Ok(stats)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_') && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// Rewrite every word of `text` that `map` knows. A word starts at a letter (or `_` when
/// `identifiers`) not preceded by a letter, `_` or an apostrophe, and runs over letters (and
/// digits and `_` when `identifiers`): `5km` has the word `km`, `it's` has none, `x2` is one word.
fn rewrite_words(text: &str, identifiers: bool, map: &dyn Fn(&str) -> Option<String>) -> String {
    let cont = |c: char| c.is_alphabetic() || (identifiers && (c.is_alphanumeric() || c == '_'));
    let start = |c: char| c.is_alphabetic() || (identifiers && c == '_');
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let blocked = prev.is_some_and(|p| p.is_alphabetic() || p == '_' || p == '\'' || p == '’');
        if start(c) && !blocked {
            let mut end = i + c.len_utf8();
            let mut last = c;
            while let Some(&(j, d)) = chars.peek() {
                if !cont(d) {
                    break;
                }
                end = j + d.len_utf8();
                last = d;
                chars.next();
            }
            let word = &text[i..end];
            match map(word) {
                Some(new) => out.push_str(&new),
                None => out.push_str(word),
            }
            prev = Some(last);
        } else {
            out.push(c);
            prev = Some(c);
        }
    }
    out
}

/// Every word of the record's `fields` (as `rewrite_words` sees them).
fn words_in(record: &Record, fields: &[String], identifiers: bool) -> std::collections::HashSet<String> {
    let found = std::cell::RefCell::new(std::collections::HashSet::new());
    let mut copy = record.clone();
    rewrite_fields(&mut copy, fields, &|text| {
        rewrite_words(text, identifiers, &|w| {
            found.borrow_mut().insert(w.to_string());
            None
        })
    });
    found.into_inner()
}

/// Apply `f` to each string field in `fields` and to the `content` of each turn of a transcript.
fn rewrite_fields(record: &mut Record, fields: &[String], f: &dyn Fn(&str) -> String) {
    for field in fields {
        match record.get_mut(field) {
            Some(Value::String(s)) => *s = f(s),
            Some(Value::Array(turns)) => {
                for turn in turns {
                    if let Some(Value::String(s)) = turn.get_mut("content") {
                        *s = f(s);
                    }
                }
            }
            _ => {}
        }
    }
}

fn rename_variables(
    record: &Record,
    fields: &[String],
    variables: &[String],
    pool: &[String],
    rng: &mut SplitMix64,
) -> Option<Record> {
    let words = words_in(record, fields, true);
    let present: Vec<&String> = variables.iter().filter(|v| words.contains(*v)).collect();
    let mut free: Vec<&String> = pool.iter().filter(|p| !words.contains(*p)).collect();
    if present.is_empty() || free.len() < present.len() {
        return None;
    }
    shuffle(&mut free, rng);
    let map: std::collections::HashMap<&str, &str> =
        present.iter().zip(&free).map(|(v, p)| (v.as_str(), p.as_str())).collect();
    let mut out = record.clone();
    rewrite_fields(&mut out, fields, &|text| rewrite_words(text, true, &|w| map.get(w).map(|s| s.to_string())));
    Some(out)
}

fn swap_units(record: &Record, fields: &[String], groups: &[Vec<String>], rng: &mut SplitMix64) -> Option<Record> {
    let words = words_in(record, fields, false);
    let mut map: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for group in groups {
        if group.iter().any(|s| words.contains(s)) {
            let pick = &group[rng.below(group.len() as u64) as usize];
            for s in group {
                map.insert(s, pick);
            }
        }
    }
    if map.is_empty() {
        return None;
    }
    let mut out = record.clone();
    rewrite_fields(&mut out, fields, &|text| rewrite_words(text, false, &|w| map.get(w).map(|s| s.to_string())));
    Some(out)
}

/// The record with the calls in `field` written with shuffled argument order (the plugins build
/// `serde_json` with `preserve_order`, so the original order is known); `None` when no call
/// has two arguments; `Err` when the field is not JSON calls.
fn permute_arguments(record: &Record, field: &str, rng: &mut SplitMix64) -> Result<Option<Record>, String> {
    let Some(text) = record.get(field).and_then(Value::as_str) else {
        return Err(format!("no string field `{field}` holding the calls"));
    };
    let parsed: Value = serde_json::from_str(text).map_err(|_| format!("`{field}` is not JSON"))?;
    let (calls, single) = match parsed {
        Value::Array(calls) => (calls, false),
        call @ Value::Object(_) => (vec![call], true),
        _ => return Err(format!("`{field}` holds neither a call nor a list of calls")),
    };
    let (mut any, mut changed) = (false, false);
    let mut written = Vec::new();
    for call in &calls {
        let Some(obj) = call.as_object() else {
            return Err(format!("`{field}` has a call that is not an object"));
        };
        // `{"name": ..., "arguments": {...}}`, or BFCL's `{"function": {...}}`.
        let (name_part, args) = match (obj.get("name"), obj.get("arguments")) {
            (Some(name), Some(Value::Object(args))) => (format!("\"name\":{name},\"arguments\":"), args),
            _ => match obj.iter().next() {
                Some((name, Value::Object(args))) if obj.len() == 1 => {
                    (format!("{}:", Value::String(name.clone())), args)
                }
                _ => return Err(format!("`{field}` has a call without `name` and `arguments`")),
            },
        };
        let mut keys: Vec<&String> = args.keys().collect();
        if keys.len() > 1 {
            any = true;
            let before = keys.clone();
            shuffle(&mut keys, rng);
            changed |= keys != before;
        }
        let body: Vec<String> = keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), args[*k])).collect();
        written.push(format!("{{{name_part}{{{}}}}}", body.join(",")));
    }
    if !any {
        return Ok(None);
    }
    if !changed {
        // The shuffle kept every order: the same calls as the record's, however it spaced them.
        return Ok(Some(record.clone()));
    }
    let text = if single { written.remove(0) } else { format!("[{}]", written.join(",")) };
    let mut out = record.clone();
    out.insert(field.into(), Value::String(text));
    Ok(Some(out))
}

trex_sdk::export_data_tool!(Augment);
