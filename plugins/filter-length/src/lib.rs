//! `filter-length`: keeps records whose text length lies within bounds, in characters, words or
//! tokens.
//!
//! The measured text is the concatenation of the configured fields that are present: strings
//! count as they are, a chat transcript (`messages`) counts the `content` of every turn. Tokens
//! are counted by the host with the tokenizer of the model being fine-tuned, a batch of records
//! per call.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, RecordReader, RecordWriter, RunStats, count_tokens, text_fields};
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
    /// Tokens of the model being fine-tuned (counted by the host).
    Tokens,
}

/// Records measured per call to the host's tokenizer.
const TOKEN_BATCH: usize = 512;

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
        "Keep records whose text length (characters, words or model tokens over chosen fields) lies in [min, max].";

    fn check(config: &Config) -> Result<(), PluginError> {
        if config.min > config.max {
            return Err(PluginError::field("min", format!("min ({}) is larger than max ({})", config.min, config.max)));
        }
        Ok(())
    }

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        let mut filter = Filter { config, stats: RunStats::default(), total: 0, kept: 0 };
        let mut batch: Vec<(u64, Vec<String>)> = Vec::new();
        while let Some(record) = input.next_record()? {
            let position = input.position();
            let Some(pieces) = text_fields(&record, &filter.config.fields) else {
                let problem = format!("none of the fields {:?}", filter.config.fields);
                filter.stats.bad_record(filter.config.on_bad_record, input.records_read(), &problem)?;
                continue;
            };
            match filter.config.unit {
                Unit::Chars => filter.keep(position, pieces.iter().map(|s| s.chars().count()).sum(), output)?,
                Unit::Words => {
                    filter.keep(position, pieces.iter().map(|s| s.split_whitespace().count()).sum(), output)?
                }
                Unit::Tokens => {
                    batch.push((position, pieces.into_iter().map(String::from).collect()));
                    if batch.len() == TOKEN_BATCH {
                        filter.keep_batch(std::mem::take(&mut batch), output)?;
                    }
                }
            }
        }
        filter.keep_batch(batch, output)?;
        let Filter { mut stats, total, kept, .. } = filter;
        if kept > 0 {
            stats.metrics.insert("mean-length-kept".into(), total as f64 / kept as f64);
        }
        Ok(stats)
    }
}

struct Filter {
    config: Config,
    stats: RunStats,
    total: u64,
    kept: u64,
}

impl Filter {
    fn keep(&mut self, position: u64, len: usize, output: &mut RecordWriter<'_>) -> Result<(), PluginError> {
        if len < self.config.min {
            self.stats.drop_record("too-short");
        } else if len > self.config.max {
            self.stats.drop_record("too-long");
        } else {
            self.total += len as u64;
            self.kept += 1;
            output.pass(position)?;
        }
        Ok(())
    }

    /// Count the tokens of a batch of records in one host call, then filter them in order.
    fn keep_batch(&mut self, batch: Vec<(u64, Vec<String>)>, output: &mut RecordWriter<'_>) -> Result<(), PluginError> {
        if batch.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = batch.iter().flat_map(|(_, pieces)| pieces.iter().cloned()).collect();
        let counts =
            count_tokens(&texts).map_err(|e| PluginError::field("unit", format!("cannot count tokens: {e}")))?;
        let mut counts = counts.into_iter();
        for (position, pieces) in batch {
            let len: usize = counts.by_ref().take(pieces.len()).map(|c| c as usize).sum();
            self.keep(position, len, output)?;
        }
        Ok(())
    }
}

trex_sdk::export_data_tool!(FilterLength);
