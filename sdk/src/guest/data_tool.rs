//! The data-tool side of the SDK: [`DataTool`], record streams, run statistics.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use super::bindings::data_tool::exports::trex::plugin::data_tool_api as wit;
use super::bindings::imports::trex::plugin::{records, types as wit_types};
use super::{PluginError, PluginMeta};
use crate::types::OnBadRecord;

/// A record: one JSON object.
pub type Record = serde_json::Map<String, serde_json::Value>;

/// A data tool streams records from a reader to a writer.
///
/// ```
/// use trex_sdk::guest::{DataTool, PluginError, RecordReader, RecordWriter, RunStats};
/// use trex_sdk::types::OnBadRecord;
///
/// /// Keeps records whose `text` field is at most `max_chars` characters long.
/// struct ShortOnly;
///
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct Config {
///     max_chars: usize,
///     #[serde(default)]
///     on_bad_record: OnBadRecord,
/// }
///
/// impl DataTool for ShortOnly {
///     type Config = Config;
///     const NAME: &'static str = "short-only";
///     const DESCRIPTION: &'static str = "Keep records whose `text` is short.";
///
///     fn run(config: Config, input: &mut RecordReader<'_>, output: &mut RecordWriter<'_>) -> Result<RunStats, PluginError> {
///         let mut stats = RunStats::default();
///         while let Some(record) = input.next_record()? {
///             match record.get("text").and_then(|t| t.as_str()) {
///                 // Kept as it came: pass it on by position, nothing crosses back.
///                 Some(text) if text.chars().count() <= config.max_chars => output.pass(input.position())?,
///                 Some(_) => stats.drop_record("too-long"),
///                 None => stats.bad_record(config.on_bad_record, input.records_read(), "missing string field `text`")?,
///             }
///         }
///         Ok(stats)
///     }
/// }
///
/// trex_sdk::export_data_tool!(ShortOnly);
/// ```
pub trait DataTool: 'static {
    /// The config, deserialized from the recipe step's JSON; its schema is published.
    type Config: DeserializeOwned + Serialize + JsonSchema;
    /// Plugin name (must equal the manifest's `name`).
    const NAME: &'static str;
    /// One paragraph for `trex-host plugins inspect`.
    const DESCRIPTION: &'static str;

    /// Stream `input` into `output`.
    fn run(
        config: Self::Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError>;

    /// Checks a parsed config beyond its type (ranges, fields that go together), so that a
    /// recipe fails at validation, before any record is read. Runs before `run` too.
    fn check(config: &Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }
}

/// The text of a record's `fields`, in order: string fields as they are, and for a chat
/// transcript (a list of `{role, content}` turns) the content of each turn. `None` when the
/// record has none of the fields.
pub fn text_fields<'r>(record: &'r Record, fields: &[String]) -> Option<Vec<&'r str>> {
    let mut out = Vec::new();
    let mut found = false;
    for f in fields {
        match record.get(f) {
            Some(serde_json::Value::String(s)) => {
                found = true;
                out.push(s.as_str());
            }
            Some(serde_json::Value::Array(turns)) => {
                found = true;
                out.extend(turns.iter().filter_map(|t| t.get("content").and_then(|c| c.as_str())));
            }
            _ => {}
        }
    }
    found.then_some(out)
}

/// Statistics a data tool returns: records dropped by reason, and named metrics.
/// The host counts records in and out itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    /// Records dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Named numbers worth recording.
    pub metrics: BTreeMap<String, f64>,
}

impl RunStats {
    /// Count one dropped record under `reason`.
    pub fn drop_record(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    /// Apply the bad-record policy to record number `record` (1-based): count it under
    /// `bad-record: <problem>` and go on (`skip`), or fail naming the record (`fail`).
    /// Keep `problem` free of per-record details so that drops group by cause.
    pub fn bad_record(&mut self, policy: OnBadRecord, record: u64, problem: &str) -> Result<(), PluginError> {
        match policy {
            OnBadRecord::Skip => {
                self.drop_record(&format!("bad-record: {problem}"));
                Ok(())
            }
            OnBadRecord::Fail => Err(PluginError::new(format!(
                "record {record}: {problem} (set `on_bad_record = \"skip\"` to drop such records instead)"
            ))),
        }
    }
}

/// Records coming into a data tool, fetched from the host in batches.
#[derive(Debug)]
pub struct RecordReader<'a> {
    inner: &'a records::Reader,
    /// The current batch, end to end, and the byte length of each record in it.
    text: String,
    lengths: Vec<u32>,
    /// The next record of the batch: its index in `lengths` and its byte offset in `text`.
    at: usize,
    offset: usize,
    done: bool,
    index: u64,
}

/// Records fetched from the host per call.
const READ_BATCH: u32 = 1024;

impl<'a> RecordReader<'a> {
    fn new(inner: &'a records::Reader) -> Self {
        Self { inner, text: String::new(), lengths: Vec::new(), at: 0, offset: 0, done: false, index: 0 }
    }

    /// The next record's JSON text, borrowed from the batch (no copy), or `None` at the end of
    /// the input.
    pub fn next_text(&mut self) -> Option<&str> {
        while self.at == self.lengths.len() {
            if self.done {
                return None;
            }
            let (text, lengths) = self.inner.read_packed(READ_BATCH);
            self.done = lengths.is_empty();
            (self.text, self.lengths, self.at, self.offset) = (text, lengths, 0, 0);
        }
        let start = self.offset;
        self.offset += self.lengths[self.at] as usize;
        self.at += 1;
        self.index += 1;
        // The host cuts the batch at record boundaries, which are character boundaries.
        Some(self.text.get(start..self.offset).unwrap_or(""))
    }

    /// The next record as JSON text, or `None` at the end of the input.
    pub fn next_raw(&mut self) -> Option<String> {
        self.next_text().map(String::from)
    }

    /// The next record parsed, or `None` at the end of the input.
    pub fn next_record(&mut self) -> Result<Option<Record>, PluginError> {
        let Some(raw) = self.next_text() else { return Ok(None) };
        let parsed = serde_json::from_str(raw);
        parsed.map(Some).map_err(|e| PluginError::new(format!("record {} is not a JSON object: {e}", self.index)))
    }

    /// The next record both as its original text and parsed, for tools that inspect a record
    /// and then pass it on unchanged.
    pub fn next_with_raw(&mut self) -> Result<Option<(String, Record)>, PluginError> {
        let Some(raw) = self.next_raw() else { return Ok(None) };
        let record = serde_json::from_str(&raw)
            .map_err(|e| PluginError::new(format!("record {} is not a JSON object: {e}", self.index)))?;
        Ok(Some((raw, record)))
    }

    /// How many records have been taken so far.
    pub fn records_read(&self) -> u64 {
        self.index
    }

    /// The 0-based position in the input of the record taken last, for [`RecordWriter::pass`].
    pub fn position(&self) -> u64 {
        self.index.saturating_sub(1)
    }
}

/// Where a data tool writes its records; batches them before they cross to the host.
#[derive(Debug)]
pub struct RecordWriter<'a> {
    inner: &'a records::Writer,
    buffer: Vec<String>,
    buffered_bytes: usize,
    /// Input positions to pass on; at most one of `buffer` and `passes` is non-empty, so that
    /// records reach the host in the order they were written.
    passes: Vec<u64>,
}

const WRITE_BATCH_RECORDS: usize = 1024;
const WRITE_BATCH_BYTES: usize = 1 << 20;

impl<'a> RecordWriter<'a> {
    fn new(inner: &'a records::Writer) -> Self {
        Self { inner, buffer: Vec::new(), buffered_bytes: 0, passes: Vec::new() }
    }

    /// Write one record (anything that serializes to a JSON object).
    pub fn push<T: Serialize + ?Sized>(&mut self, record: &T) -> Result<(), PluginError> {
        let text =
            serde_json::to_string(record).map_err(|e| PluginError::new(format!("record does not serialize: {e}")))?;
        self.push_raw(text)
    }

    /// Write one record already encoded as a JSON object.
    pub fn push_raw(&mut self, record: String) -> Result<(), PluginError> {
        self.flush_passes()?;
        self.buffered_bytes += record.len();
        self.buffer.push(record);
        if self.buffer.len() >= WRITE_BATCH_RECORDS || self.buffered_bytes >= WRITE_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Keep the input record at `position` (see [`RecordReader::position`]) exactly as it came.
    /// The record's text stays on the host: nothing is copied back or checked again, so this is
    /// the cheap way for filters and deduplicators to keep a record. Each position may be passed
    /// once, after it was read; to emit a record twice, `push_raw` the copy.
    pub fn pass(&mut self, position: u64) -> Result<(), PluginError> {
        self.flush_records()?;
        self.passes.push(position);
        if self.passes.len() >= WRITE_BATCH_RECORDS * 4 {
            self.flush_passes()?;
        }
        Ok(())
    }

    fn flush_records(&mut self) -> Result<(), PluginError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.buffer);
        self.buffered_bytes = 0;
        self.inner.write(&batch).map_err(PluginError::new)
    }

    fn flush_passes(&mut self) -> Result<(), PluginError> {
        if self.passes.is_empty() {
            return Ok(());
        }
        let positions = std::mem::take(&mut self.passes);
        self.inner.pass(&positions).map_err(PluginError::new)
    }

    /// Send buffered records to the host now.
    pub fn flush(&mut self) -> Result<(), PluginError> {
        self.flush_records()?;
        self.flush_passes()
    }
}

#[doc(hidden)]
pub fn __describe<T: DataTool>(version: &'static str) -> wit_types::PluginInfo {
    super::install_panic_hook();
    let meta = PluginMeta { name: T::NAME, version, description: T::DESCRIPTION };
    super::info::<T::Config>(&meta, wit_types::PluginKind::DataTool)
}

#[doc(hidden)]
pub fn __validate<T: DataTool>(config: String) -> Result<String, wit_types::PluginError> {
    super::install_panic_hook();
    let parsed: T::Config = super::parse_config(&config)?;
    T::check(&parsed)?;
    serde_json::to_string(&parsed)
        .map_err(|e| PluginError::new(format!("config does not serialize: {e}")))
        .map_err(Into::into)
}

#[doc(hidden)]
pub fn __run<T: DataTool>(
    config: String,
    input: &records::Reader,
    output: &records::Writer,
) -> Result<wit::RunStats, wit_types::PluginError> {
    super::install_panic_hook();
    let config = super::parse_config::<T::Config>(&config)?;
    T::check(&config)?;
    let mut reader = RecordReader::new(input);
    let mut writer = RecordWriter::new(output);
    let stats = T::run(config, &mut reader, &mut writer)?;
    writer.flush()?;
    Ok(wit::RunStats {
        dropped: stats.dropped.into_iter().map(|(reason, count)| wit::DropCount { reason, count }).collect(),
        metrics: super::metrics(&stats.metrics),
    })
}

/// Export a [`DataTool`] implementation as this component's `data-tool` world.
#[macro_export]
macro_rules! export_data_tool {
    ($ty:ty) => {
        const _: () = {
            struct __TrexDataToolExport;
            impl $crate::guest::bindings::data_tool::exports::trex::plugin::data_tool_api::Guest for __TrexDataToolExport {
                fn describe() -> $crate::guest::bindings::imports::trex::plugin::types::PluginInfo {
                    $crate::guest::data_tool::__describe::<$ty>(env!("CARGO_PKG_VERSION"))
                }
                fn validate_config(config: String) -> Result<String, $crate::guest::bindings::imports::trex::plugin::types::PluginError> {
                    $crate::guest::data_tool::__validate::<$ty>(config)
                }
                fn run(
                    config: String,
                    input: &$crate::guest::bindings::imports::trex::plugin::records::Reader,
                    output: &$crate::guest::bindings::imports::trex::plugin::records::Writer,
                ) -> Result<
                    $crate::guest::bindings::data_tool::exports::trex::plugin::data_tool_api::RunStats,
                    $crate::guest::bindings::imports::trex::plugin::types::PluginError,
                > {
                    $crate::guest::data_tool::__run::<$ty>(config, input, output)
                }
            }
            $crate::guest::bindings::data_tool::export_data_tool_world!(__TrexDataToolExport with_types_in $crate::guest::bindings::data_tool);
        };
    };
}
