//! `dedup-exact`: drops records whose chosen fields repeat an earlier record's, optionally after
//! normalizing case and whitespace. Keeps the first occurrence; deterministic.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, Record, RecordReader, RecordWriter, RunStats};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Fields that make up a record's identity; empty means the whole record.
    fields: Vec<String>,
    /// Compare after lowercasing and collapsing runs of whitespace.
    normalize: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { fields: Vec::new(), normalize: true }
    }
}

struct DedupExact;

impl DataTool for DedupExact {
    type Config = Config;
    const NAME: &'static str = "dedup-exact";
    const DESCRIPTION: &'static str = "Drop exact duplicates (by chosen fields or the whole record, optionally case- and whitespace-insensitive), keeping the first occurrence.";

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let mut stats = RunStats::default();
        let mut seen: HashSet<u128> = HashSet::new();
        let mut n = 0u64;
        while let Some(raw) = input.next_text() {
            n += 1;
            let key = if config.fields.is_empty() {
                if config.normalize { normalize(raw) } else { raw.to_string() }
            } else {
                let record: Record = serde_json::from_str(raw)
                    .map_err(|e| PluginError::new(format!("record {n} is not a JSON object: {e}")))?;
                let mut key = String::new();
                for f in &config.fields {
                    match record.get(f) {
                        Some(serde_json::Value::String(s)) => key.push_str(s),
                        Some(other) => key.push_str(&other.to_string()),
                        None => key.push('\u{0}'),
                    }
                    key.push('\u{1}');
                }
                if config.normalize { normalize(&key) } else { key }
            };
            if seen.insert(fingerprint(&key)) {
                output.pass(input.position())?;
            } else {
                stats.drop_record("duplicate");
            }
        }
        stats.metrics.insert("distinct".into(), seen.len() as f64);
        Ok(stats)
    }
}

/// Lowercased words joined by single spaces.
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        if word.is_ascii() {
            out.extend(word.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            out.push_str(&word.to_lowercase());
        }
    }
    out
}

/// A 128-bit fingerprint from two independently keyed SipHash runs (collisions are negligible
/// at any dataset size trex handles).
fn fingerprint(s: &str) -> u128 {
    let mut a = DefaultHasher::new();
    0u8.hash(&mut a);
    s.hash(&mut a);
    let mut b = DefaultHasher::new();
    1u8.hash(&mut b);
    s.hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

trex_sdk::export_data_tool!(DedupExact);
