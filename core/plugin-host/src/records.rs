//! Host-owned record streams for data tools: the reader hands out batches, the writer checks
//! and collects what the plugin writes, within the call's output limit.

use std::sync::{Arc, Mutex, PoisonError};

use crate::manifest::RECORD_OVERHEAD_BYTES;

/// A run's input, shared by its reader (which hands records out in order) and its writer
/// (which takes records the plugin passes on, by position, without copying them).
#[derive(Debug, Default)]
pub struct Input {
    records: Vec<String>,
    /// Records before this position have been read.
    next: usize,
}

impl Input {
    /// The input of one run.
    pub fn new(records: Vec<String>) -> Arc<Mutex<Input>> {
        Arc::new(Mutex::new(Input { records, next: 0 }))
    }
}

fn lock(input: &Mutex<Input>) -> std::sync::MutexGuard<'_, Input> {
    input.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The input side of a data-tool run.
#[derive(Debug)]
pub struct HostReader {
    input: Arc<Mutex<Input>>,
}

impl HostReader {
    /// A reader over a run's input (each record a JSON object as text).
    pub fn new(input: Arc<Mutex<Input>>) -> Self {
        Self { input }
    }

    /// Up to `max` records; empty at the end.
    pub fn take(&mut self, max: usize) -> Vec<String> {
        let mut input = lock(&self.input);
        let end = (input.next + max).min(input.records.len());
        let batch = input.records[input.next..end].to_vec();
        input.next = end;
        batch
    }

    /// Up to `max` records end to end in one text, with their byte lengths; empty at the end.
    pub fn take_packed(&mut self, max: usize) -> (String, Vec<u32>) {
        let mut input = lock(&self.input);
        let end = (input.next + max).min(input.records.len());
        let records = &input.records[input.next..end];
        let mut text = String::with_capacity(records.iter().map(String::len).sum());
        let mut lengths = Vec::with_capacity(records.len());
        for r in records {
            text.push_str(r);
            lengths.push(u32::try_from(r.len()).unwrap_or(u32::MAX));
        }
        input.next = end;
        (text, lengths)
    }
}

/// Why `record` would not survive the host's reading it back (a JSON-lines file and
/// `serde_json::Value`), if it would not.
fn check_record(record: &str) -> Result<(), &'static str> {
    if record.contains(['\n', '\r']) {
        return Err("has a line break (records are one line each: serialize without pretty-printing)");
    }
    match serde_json::from_str::<serde_json::Value>(record) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err("is not a JSON object"),
        Err(_) => Err("is not valid JSON (or nests too deep, or has a lone surrogate)"),
    }
}

/// The output side of a data-tool run.
#[derive(Debug)]
pub struct HostWriter {
    records: Vec<String>,
    bytes: u64,
    max_bytes: u64,
    limit_hit: bool,
    input: Arc<Mutex<Input>>,
}

impl HostWriter {
    /// A writer that accepts at most `max_bytes` of record text, and takes records of `input`
    /// that the plugin passes on.
    pub fn new(max_bytes: u64, input: Arc<Mutex<Input>>) -> Self {
        Self { records: Vec::new(), bytes: 0, max_bytes, limit_hit: false, input }
    }

    /// Count `records` records of `text_bytes` bytes against the limit: each record costs
    /// [`RECORD_OVERHEAD_BYTES`] more than its text, for what the host keeps per record.
    fn reserve(&mut self, text_bytes: u64, records: usize) -> Result<u64, String> {
        let batch_bytes = text_bytes + records as u64 * RECORD_OVERHEAD_BYTES;
        if self.bytes + batch_bytes > self.max_bytes {
            self.limit_hit = true;
            return Err(format!("output limit of {} MiB reached; stop writing", self.max_bytes >> 20));
        }
        Ok(batch_bytes)
    }

    /// Keep input records unchanged, by position: each must have been read and not passed
    /// already (the record moves to the output; nothing is copied). Refused whole otherwise, or
    /// if the batch would take the output past the limit.
    pub(crate) fn pass(&mut self, positions: &[u64]) -> Result<(), String> {
        let input = Arc::clone(&self.input);
        let mut input = lock(&input);
        let mut batch_bytes = 0u64;
        for &p in positions {
            let Some(record) = usize::try_from(p).ok().filter(|&p| p < input.next).map(|p| &input.records[p]) else {
                return Err(format!("position {p} has not been read (the reader is at {})", input.next));
            };
            if record.is_empty() {
                return Err(format!("position {p} was passed on already; write a copy with `write` instead"));
            }
            batch_bytes += record.len() as u64;
        }
        if positions.len() > 1 {
            let mut sorted = positions.to_vec();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!(
                    "position {} is passed twice in one batch; write a copy with `write` instead",
                    w[0]
                ));
            }
        }
        self.bytes += self.reserve(batch_bytes, positions.len())?;
        self.records.extend(positions.iter().map(|&p| std::mem::take(&mut input.records[p as usize])));
        Ok(())
    }

    /// Check and keep a batch. Every record must be a JSON object on one line that the host's
    /// own reader will parse (no lone surrogates, nesting within serde_json's limit); the batch
    /// is refused whole if one is not, or if it would take the output past the limit.
    pub(crate) fn append(&mut self, batch: Vec<String>) -> Result<(), String> {
        let batch_bytes: u64 = batch.iter().map(|r| r.len() as u64).sum();
        let cost = self.reserve(batch_bytes, batch.len())?;
        for (i, record) in batch.iter().enumerate() {
            if let Err(why) = check_record(record) {
                let preview = crate::text::line(record, 80);
                return Err(format!("record {} of the batch {why}: {preview}", self.records.len() + i));
            }
        }
        self.bytes += cost;
        self.records.extend(batch);
        Ok(())
    }

    /// Whether a write was refused for exceeding the output limit.
    pub fn limit_hit(&self) -> bool {
        self.limit_hit
    }

    /// The records written.
    pub fn into_records(self) -> Vec<String> {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_hands_out_batches_then_nothing() {
        let mut r = HostReader::new(Input::new((0..5).map(|i| format!("{{\"i\":{i}}}")).collect()));
        assert_eq!(r.take(2).len(), 2);
        assert_eq!(r.take(10).len(), 3);
        assert!(r.take(10).is_empty());
        let mut r = HostReader::new(Input::new(vec!["{}".into(), "{\"é\":1}".into(), "{\"c\":2}".into()]));
        assert_eq!(r.take_packed(2), ("{}{\"é\":1}".to_string(), vec![2, 8]), "byte lengths");
        assert_eq!(r.take_packed(2), ("{\"c\":2}".to_string(), vec![7]));
        assert_eq!(r.take_packed(2), (String::new(), vec![]));
    }

    #[test]
    fn writer_refuses_non_objects_and_keeps_nothing_of_that_batch() {
        let mut w = HostWriter::new(1 << 20, Arc::default());
        w.append(vec!["{\"a\":1}".into()]).unwrap();
        let err = w.append(vec!["{\"b\":2}".into(), "[1,2]".into()]).unwrap_err();
        assert!(err.contains("record 2") && err.contains("not a JSON object"), "{err}");
        assert_eq!(w.into_records(), vec!["{\"a\":1}".to_string()]);
    }

    #[test]
    fn writer_enforces_the_byte_limit_counting_what_each_record_costs_the_host() {
        // 7 bytes of text and 64 of overhead: one record fits in 100 bytes, two do not.
        let mut w = HostWriter::new(100, Arc::default());
        assert!(w.append(vec!["{\"a\":1}".into()]).is_ok());
        assert!(w.append(vec!["{\"a\":1}".into()]).unwrap_err().contains("output limit"));
        assert!(w.limit_hit());
        // Tiny records cannot slip under a byte limit: `{}` costs 66 bytes, not 2.
        let mut w = HostWriter::new(1 << 20, Arc::default());
        let tiny = vec!["{}".to_string(); 100_000];
        assert!(w.append(tiny).unwrap_err().contains("output limit"));
    }

    #[test]
    fn writer_refuses_records_its_own_reader_would_refuse() {
        let mut w = HostWriter::new(1 << 20, Arc::default());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        for (record, why) in [
            ("{\"s\":\"\\ud800\"}".to_string(), "not valid JSON"),
            (deep, "not valid JSON"),
            ("{\"a\":\n1}".to_string(), "line break"),
            ("{\"a\":\r1}".to_string(), "line break"),
        ] {
            let err = w.append(vec![record]).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        assert!(w.append(vec!["{\"s\":\"line\\nbreak \\ud83d\\ude00\"}".into()]).is_ok(), "escapes are fine");
        assert_eq!(w.into_records().len(), 1);
    }

    #[test]
    fn writer_moves_read_records_by_position() {
        let input = Input::new(vec!["{\"a\":0}".into(), "{\"a\":1}".into(), "{\"a\":2}".into()]);
        let mut r = HostReader::new(input.clone());
        let mut w = HostWriter::new(1 << 20, input.clone());
        assert!(w.pass(&[0]).unwrap_err().contains("position 0 has not been read"));
        assert_eq!(r.take_packed(2).1, vec![7, 7]);
        w.pass(&[1]).unwrap();
        w.append(vec!["{\"b\":2}".into()]).unwrap();
        w.pass(&[0]).unwrap();
        assert!(w.pass(&[1]).unwrap_err().contains("passed on already"));
        assert!(w.pass(&[2]).unwrap_err().contains("has not been read"));
        assert_eq!(r.take(5), vec!["{\"a\":2}".to_string()]);
        assert!(w.pass(&[2, 2]).unwrap_err().contains("passed twice"));
        assert_eq!(w.into_records(), ["{\"a\":1}", "{\"b\":2}", "{\"a\":0}"]);
        let input = Input::new(vec!["{\"a\":0}".into(), "{\"a\":1}".into()]);
        HostReader::new(input.clone()).take(2);
        let mut small = HostWriter::new(10, input);
        assert!(small.pass(&[0, 1]).unwrap_err().contains("output limit") && small.limit_hit());
    }
}
