//! `load-csv`: appends the rows of a CSV (or TSV) file from the granted dataset folder to the
//! record stream, one JSON object per row. Gzipped files (`.gz`) are read as they are.
//!
//! Columns become fields (renamed with `rename`, optionally limited to `columns`), `constants`
//! are added to every record, and `where_column` / `where_equals` keep matching rows only. A
//! MOSES split, for example, becomes molecule-generation records with
//!
//! ```toml
//! config = { path = "train.csv.gz", rename = { SMILES = "response" }, constants = { prompt = "Generate a drug-like molecule as SMILES." } }
//! ```
//!
//! Input records pass through first. A row with the wrong number of cells is a bad record.

use std::collections::BTreeMap;
use std::io::Read;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trex_sdk::guest::{DataTool, PluginError, RecordReader, RecordWriter, RunStats};
use trex_sdk::types::OnBadRecord;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// The file, relative to the dataset folder (`.gz` is decompressed).
    path: String,
    /// Cell separator: `,` for CSV, `\t` for TSV, `;` ...
    delimiter: char,
    /// The first row names the columns.
    has_header: bool,
    /// Column names when the file has no header row.
    names: Vec<String>,
    /// Keep only these columns (by original name); all when empty.
    columns: Vec<String>,
    /// Column → field renames.
    rename: BTreeMap<String, String>,
    /// Fields added to every record.
    constants: BTreeMap<String, Value>,
    /// Keep only rows whose cell in this column ...
    where_column: Option<String>,
    /// ... equals this text.
    where_equals: Option<String>,
    /// Turn cells that parse as numbers into JSON numbers.
    numbers: bool,
    /// Add an `id` field `<id_prefix><row number>` when the row has none.
    id_prefix: Option<String>,
    /// Stop after this many rows are written.
    limit: Option<u64>,
    /// What to do with a row that has the wrong number of cells.
    on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            path: String::new(),
            delimiter: ',',
            has_header: true,
            names: Vec::new(),
            columns: Vec::new(),
            rename: BTreeMap::new(),
            constants: BTreeMap::new(),
            where_column: None,
            where_equals: None,
            numbers: false,
            id_prefix: None,
            limit: None,
            on_bad_record: OnBadRecord::Skip,
        }
    }
}

struct LoadCsv;

fn cell(text: &str, numbers: bool) -> Value {
    if numbers {
        if let Ok(i) = text.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(f) = text.parse::<f64>()
            && f.is_finite()
        {
            return Value::from(f);
        }
    }
    Value::String(text.to_string())
}

impl DataTool for LoadCsv {
    type Config = Config;
    const NAME: &'static str = "load-csv";
    const DESCRIPTION: &'static str = "Load a CSV/TSV file (plain or gzipped) from the dataset folder: one record per row, columns renamed or dropped, constant fields added, rows filtered by a column value.";

    fn check(config: &Config) -> Result<(), PluginError> {
        if config.path.is_empty() {
            return Err(PluginError::field("path", "name the file inside the dataset folder, e.g. train.csv.gz"));
        }
        if config.path.starts_with('/') || config.path.split('/').any(|p| p == "..") {
            return Err(PluginError::field("path", "must be relative to the dataset folder, without `..`"));
        }
        if !config.delimiter.is_ascii() {
            return Err(PluginError::field("delimiter", "must be one ASCII character"));
        }
        if !config.has_header && config.names.is_empty() {
            return Err(PluginError::field("names", "a file without a header row needs column names"));
        }
        if config.where_column.is_some() != config.where_equals.is_some() {
            return Err(PluginError::field("where_equals", "give both where_column and where_equals, or neither"));
        }
        Ok(())
    }

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        while input.next_text().is_some() {
            output.pass(input.position())?;
        }
        let full = format!("/data/{}", config.path);
        let file = std::fs::File::open(&full).map_err(|e| {
            PluginError::field("path", format!("cannot open {} in the dataset folder: {e}", config.path))
        })?;
        let reader: Box<dyn Read> = if config.path.ends_with(".gz") {
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        let mut csv = csv::ReaderBuilder::new()
            .delimiter(config.delimiter as u8)
            .has_headers(config.has_header)
            .flexible(true)
            .from_reader(reader);
        let names: Vec<String> = if config.has_header {
            csv.headers()
                .map_err(|e| PluginError::field("path", format!("{}: cannot read the header row: {e}", config.path)))?
                .iter()
                .map(|h| h.trim().to_string())
                .collect()
        } else {
            config.names.clone()
        };
        for c in config.columns.iter().chain(config.rename.keys()).chain(config.where_column.iter()) {
            if !names.contains(c) {
                return Err(PluginError::field(
                    "columns",
                    format!("{} has no column `{c}`; it has {names:?}", config.path),
                ));
            }
        }
        let filter = config.where_column.as_ref().map(|c| {
            (names.iter().position(|n| n == c).expect("checked"), config.where_equals.clone().unwrap_or_default())
        });
        let mut stats = RunStats::default();
        let mut written = 0u64;
        for (i, row) in csv.records().enumerate() {
            let line = i as u64 + 1 + config.has_header as u64;
            let row = match row {
                Ok(r) => r,
                Err(e) => {
                    stats.bad_record(config.on_bad_record, line, &format!("unreadable row: {e}"))?;
                    continue;
                }
            };
            if row.len() != names.len() {
                stats.bad_record(
                    config.on_bad_record,
                    line,
                    &format!("{} cells where the header has {}", row.len(), names.len()),
                )?;
                continue;
            }
            if let Some((col, want)) = &filter
                && row.get(*col) != Some(want.as_str())
            {
                stats.drop_record("filtered-out");
                continue;
            }
            let mut record = serde_json::Map::new();
            for (name, text) in names.iter().zip(row.iter()) {
                if !config.columns.is_empty() && !config.columns.contains(name) {
                    continue;
                }
                let field = config.rename.get(name).unwrap_or(name);
                record.insert(field.clone(), cell(text, config.numbers));
            }
            for (k, v) in &config.constants {
                record.insert(k.clone(), v.clone());
            }
            if let Some(prefix) = &config.id_prefix
                && !record.contains_key("id")
            {
                record.insert("id".into(), Value::String(format!("{prefix}{}", i + 1)));
            }
            output.push(&record)?;
            written += 1;
            if config.limit.is_some_and(|l| written >= l) {
                break;
            }
        }
        stats.metrics.insert("rows-loaded".into(), written as f64);
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(LoadCsv);
