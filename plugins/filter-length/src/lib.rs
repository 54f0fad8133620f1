//! `filter-length`: keeps records whose text length lies within bounds, in characters or words.
//!
//! The measured text is the concatenation of the configured fields that are present: strings
//! count as they are, a chat transcript (`messages`) counts the `content` of every turn.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, Record, RecordReader, RecordWriter, RunStats, text_fields};
use trex_sdk::types::OnBadRecord;

/// How length is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Unit {
    /// Unicode scalar values.
    #[default]
    Chars,
    /// Whitespace-separated words.
    Words,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Keep records at least this long.
    min: usize,
    /// Keep records at most this long.
    max: usize,
    /// Unit of `min` and `max`.
    unit: Unit,
    /// Fields whose text is measured (those present are concatenated).
    fields: Vec<String>,
    /// What to do with a record that has none of the fields.
    on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min: 1,
            max: 8192,
            unit: Unit::Chars,
            fields: ["messages", "completion", "prompt", "response", "text"].map(String::from).to_vec(),
            on_bad_record: OnBadRecord::Skip,
        }
    }
}

struct FilterLength;

impl DataTool for FilterLength {
    type Config = Config;
    const NAME: &'static str = "filter-length";
    const DESCRIPTION: &'static str =
        "Keep records whose text length (characters or words over chosen fields) lies in [min, max].";

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        if config.min > config.max {
            return Err(PluginError::field("min", format!("min ({}) is larger than max ({})", config.min, config.max)));
        }
        let mut stats = RunStats::default();
        let (mut total, mut kept) = (0u64, 0u64);
        while let Some((raw, record)) = input.next_with_raw()? {
            let Some(len) = measure(&config, &record) else {
                stats.bad_record(
                    config.on_bad_record,
                    input.records_read(),
                    &format!("none of the fields {:?}", config.fields),
                )?;
                continue;
            };
            if len < config.min {
                stats.drop_record("too-short");
            } else if len > config.max {
                stats.drop_record("too-long");
            } else {
                total += len as u64;
                kept += 1;
                output.push_raw(raw)?;
            }
        }
        if kept > 0 {
            stats.metrics.insert("mean-length-kept".into(), total as f64 / kept as f64);
        }
        Ok(stats)
    }
}

fn measure(config: &Config, record: &Record) -> Option<usize> {
    let pieces = text_fields(record, &config.fields)?;
    Some(
        pieces
            .iter()
            .map(|s| match config.unit {
                Unit::Chars => s.chars().count(),
                Unit::Words => s.split_whitespace().count(),
            })
            .sum(),
    )
}

trex_sdk::export_data_tool!(FilterLength);
