//! `select`: chooses and orders records, seeded and deterministic.
//!
//! Modes (`mode`):
//! - `sample`: a uniform random subset of `n` records or a `fraction` of them;
//! - `stratified`: per group of the `by` field (a string, or the first element of a list such
//!   as `tags`), at most `per_group` records or a `fraction` of each group;
//! - `mix`: sources (groups of `by`) in the given `ratios`, as many records as the scarcest
//!   source allows (or `total`);
//! - `split`: a seeded train/validation split that keeps one side (`keep`); a record's side
//!   depends only on its `key` field (or its whole text) and the seed, so it never moves when
//!   other records are added or removed;
//! - `curriculum`: every record, ordered by `order_by` (`length`, or a numeric field such as a
//!   difficulty score), ascending unless `descending`.
//!
//! Selected records keep their input order (except in `curriculum`). Dropped records are counted
//! by reason: `not-sampled`, `not-in-mix`, `other-split`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, Record, RecordReader, RecordWriter, RunStats, text_fields};
use trex_sdk::rng::SplitMix64;
use trex_sdk::types::OnBadRecord;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    /// A uniform random subset.
    #[default]
    Sample,
    /// A random subset of every group.
    Stratified,
    /// Groups in fixed ratios.
    Mix,
    /// One side of a seeded train/validation split.
    Split,
    /// Every record, reordered.
    Curriculum,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Side {
    /// The records not held out.
    #[default]
    Train,
    /// The held-out records.
    Validation,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// What to do.
    mode: Mode,
    /// `sample`: how many records to keep.
    n: Option<u64>,
    /// `sample`, `stratified`: the share of records (of each group) to keep, in (0, 1].
    fraction: Option<f64>,
    /// `stratified`, `mix`: the field that names a record's group.
    by: String,
    /// `stratified`: at most this many records per group.
    per_group: Option<u64>,
    /// `mix`: relative weight of each group; groups not listed are dropped.
    ratios: BTreeMap<String, f64>,
    /// `mix`: records in all (default: as many as the scarcest group allows).
    total: Option<u64>,
    /// `split`: share of records held out for validation, in (0, 1).
    validation_fraction: f64,
    /// `split`: which side to keep.
    keep: Side,
    /// `split`: the field that identifies a record (default: the whole record).
    key: Option<String>,
    /// `curriculum`: `length` (characters of the text fields) or a numeric field.
    order_by: String,
    /// `curriculum`: longest or hardest first.
    descending: bool,
    /// Seed of every random choice.
    seed: u64,
    /// What to do with a record that lacks the field a mode needs.
    on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Sample,
            n: None,
            fraction: None,
            by: "tags".into(),
            per_group: None,
            ratios: BTreeMap::new(),
            total: None,
            validation_fraction: 0.1,
            keep: Side::Train,
            key: None,
            order_by: "length".into(),
            descending: false,
            seed: 0,
            on_bad_record: OnBadRecord::Skip,
        }
    }
}

/// A record's group: a string field, or the first string of a list field.
fn group_of(record: &Record, field: &str) -> Option<String> {
    match record.get(field)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => a.first().and_then(|v| v.as_str()).map(String::from),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `k` distinct indices out of `0..len`, chosen uniformly, in increasing order.
fn choose(rng: &mut SplitMix64, len: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    let k = k.min(len);
    for i in 0..k {
        let j = i + rng.below((len - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut out = idx[..k].to_vec();
    out.sort_unstable();
    out
}

/// A stable hash of text and seed (FNV-1a, then mixed), mapped to [0, 1).
fn unit_hash(text: &str, seed: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SplitMix64(h).unit()
}

fn check_fraction(name: &str, f: f64, closed: bool) -> Result<(), PluginError> {
    let ok = f > 0.0 && (f < 1.0 || (closed && f == 1.0));
    if ok {
        Ok(())
    } else {
        Err(PluginError::field(name, format!("must be in (0, 1{}, got {f}", if closed { "]" } else { ")" })))
    }
}

impl Config {
    fn validate(&self) -> Result<(), PluginError> {
        match self.mode {
            Mode::Sample => match (self.n, self.fraction) {
                (Some(_), None) => Ok(()),
                (None, Some(f)) => check_fraction("fraction", f, true),
                _ => Err(PluginError::field("n", "mode `sample` needs exactly one of `n` and `fraction`")),
            },
            Mode::Stratified => match (self.per_group, self.fraction) {
                (Some(0), None) => Err(PluginError::field("per_group", "must be at least 1")),
                (Some(_), None) => Ok(()),
                (None, Some(f)) => check_fraction("fraction", f, true),
                _ => Err(PluginError::field(
                    "per_group",
                    "mode `stratified` needs exactly one of `per_group` and `fraction`",
                )),
            },
            Mode::Mix => {
                if self.ratios.is_empty() {
                    return Err(PluginError::field(
                        "ratios",
                        "mode `mix` needs ratios, e.g. { web = 0.7, books = 0.3 }",
                    ));
                }
                match self.ratios.iter().find(|(_, r)| !(r.is_finite() && **r > 0.0)) {
                    Some((g, r)) => {
                        Err(PluginError::field(format!("ratios.{g}"), format!("must be positive, got {r}")))
                    }
                    None => Ok(()),
                }
            }
            Mode::Split => check_fraction("validation_fraction", self.validation_fraction, false),
            Mode::Curriculum => Ok(()),
        }
    }
}

struct Select;

impl DataTool for Select {
    type Config = Config;
    const NAME: &'static str = "select";
    const DESCRIPTION: &'static str = "Choose and order records, seeded: random or stratified sampling, mixing groups by ratio, one side of a stable train/validation split, curriculum ordering by length or a difficulty field.";

    fn check(config: &Config) -> Result<(), PluginError> {
        config.validate()
    }

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let mut stats = RunStats::default();
        let mut rng = SplitMix64(config.seed);
        // (raw text, group or sort key) of every usable record, in input order.
        let mut rows: Vec<(String, Record)> = Vec::new();
        while let Some(row) = input.next_with_raw()? {
            rows.push(row);
        }
        let needs_group = matches!(config.mode, Mode::Stratified | Mode::Mix);
        let mut usable: Vec<(String, Record, String, u64)> = Vec::with_capacity(rows.len());
        for (i, (raw, record)) in rows.into_iter().enumerate() {
            let group = if needs_group {
                match group_of(&record, &config.by) {
                    Some(g) => g,
                    None => {
                        stats.bad_record(
                            config.on_bad_record,
                            i as u64 + 1,
                            &format!("no group field `{}`", config.by),
                        )?;
                        continue;
                    }
                }
            } else {
                String::new()
            };
            usable.push((raw, record, group, i as u64));
        }
        let mut keep = vec![false; usable.len()];
        // Dropped for a reason counted already (not in the mix, the other split side).
        let mut counted = vec![false; usable.len()];
        match config.mode {
            Mode::Sample => {
                let k = match (config.n, config.fraction) {
                    (Some(n), _) => n as usize,
                    (_, Some(f)) => (f * usable.len() as f64).round() as usize,
                    _ => unreachable!("checked"),
                };
                for i in choose(&mut rng, usable.len(), k) {
                    keep[i] = true;
                }
            }
            Mode::Stratified | Mode::Mix => {
                let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for (i, (_, _, g, _)) in usable.iter().enumerate() {
                    groups.entry(g.as_str()).or_default().push(i);
                }
                stats.metrics.insert("groups".into(), groups.len() as f64);
                let quota: BTreeMap<&str, usize> = if config.mode == Mode::Stratified {
                    groups
                        .iter()
                        .map(|(g, m)| {
                            let k = match (config.per_group, config.fraction) {
                                (Some(p), _) => p as usize,
                                (_, Some(f)) => ((f * m.len() as f64).round() as usize).max(1),
                                _ => unreachable!("checked"),
                            };
                            (*g, k.min(m.len()))
                        })
                        .collect()
                } else {
                    if let Some(missing) = config.ratios.keys().find(|g| !groups.contains_key(g.as_str())) {
                        return Err(PluginError::field(
                            format!("ratios.{missing}"),
                            format!(
                                "no record has `{}` = `{missing}`; groups present: {:?}",
                                config.by,
                                groups.keys().collect::<Vec<_>>()
                            ),
                        ));
                    }
                    let sum: f64 = config.ratios.values().sum();
                    let feasible = config
                        .ratios
                        .iter()
                        .map(|(g, r)| groups[g.as_str()].len() as f64 / (r / sum))
                        .fold(f64::INFINITY, f64::min);
                    let total = (config.total.map_or(feasible, |t| (t as f64).min(feasible)) + 1e-9).floor();
                    if config.total.is_some_and(|t| (t as f64) > feasible) {
                        stats.metrics.insert("total-capped-to".into(), feasible.floor());
                    }
                    config
                        .ratios
                        .iter()
                        .map(|(g, r)| {
                            (g.as_str(), ((total * r / sum + 1e-9).floor() as usize).min(groups[g.as_str()].len()))
                        })
                        .collect()
                };
                for (g, members) in &groups {
                    match quota.get(g) {
                        Some(&k) => {
                            for j in choose(&mut rng, members.len(), k) {
                                keep[members[j]] = true;
                            }
                        }
                        None => {
                            for &i in members {
                                stats.drop_record("not-in-mix");
                                counted[i] = true;
                            }
                        }
                    }
                }
                for (g, members) in &groups {
                    if quota.contains_key(g) {
                        let kept = members.iter().filter(|&&i| keep[i]).count();
                        stats.metrics.insert(format!("kept:{g}"), kept as f64);
                    }
                }
            }
            Mode::Split => {
                for (i, (raw, record, _, _)) in usable.iter().enumerate() {
                    let key = match &config.key {
                        Some(k) => match record.get(k) {
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(v) => v.to_string(),
                            None => {
                                stats.bad_record(config.on_bad_record, i as u64 + 1, &format!("no key field `{k}`"))?;
                                counted[i] = true;
                                continue;
                            }
                        },
                        None => raw.clone(),
                    };
                    let held_out = unit_hash(&key, config.seed) < config.validation_fraction;
                    keep[i] = held_out == (config.keep == Side::Validation);
                    if !keep[i] {
                        stats.drop_record("other-split");
                        counted[i] = true;
                    }
                }
            }
            Mode::Curriculum => {
                let mut keyed: Vec<(f64, usize)> = Vec::with_capacity(usable.len());
                for (i, (_, record, _, _)) in usable.iter().enumerate() {
                    let key = if config.order_by == "length" {
                        let fields = ["messages", "prompt", "completion", "response", "text"].map(String::from);
                        text_fields(record, &fields).map(|t| t.iter().map(|s| s.chars().count()).sum::<usize>() as f64)
                    } else {
                        record.get(&config.order_by).and_then(|v| v.as_f64())
                    };
                    match key {
                        Some(k) => keyed.push((k, i)),
                        None => stats.bad_record(
                            config.on_bad_record,
                            i as u64 + 1,
                            &format!("no numeric `{}` to order by", config.order_by),
                        )?,
                    }
                }
                keyed.sort_by(|a, b| if config.descending { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) });
                for (_, i) in keyed {
                    output.pass(usable[i].3)?;
                }
                return Ok(stats);
            }
        }
        for (i, (_, _, _, position)) in usable.into_iter().enumerate() {
            if keep[i] {
                output.pass(position)?;
            } else if !counted[i] {
                stats.drop_record("not-sampled");
            }
        }
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(Select);
