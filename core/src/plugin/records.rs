//! Host-owned record streams for data tools: the reader hands out batches, the writer checks
//! and collects what the plugin writes, within the call's output limit.

use serde::de::IgnoredAny;

/// The input side of a data-tool run.
#[derive(Debug)]
pub struct HostReader {
    records: std::vec::IntoIter<String>,
}

impl HostReader {
    /// A reader over `records` (each a JSON object as text).
    pub fn new(records: Vec<String>) -> Self {
        Self { records: records.into_iter() }
    }

    /// Up to `max` records; empty at the end.
    pub fn take(&mut self, max: usize) -> Vec<String> {
        self.records.by_ref().take(max).collect()
    }
}

/// The output side of a data-tool run.
#[derive(Debug)]
pub struct HostWriter {
    records: Vec<String>,
    bytes: u64,
    max_bytes: u64,
    limit_hit: bool,
}

impl HostWriter {
    /// A writer that accepts at most `max_bytes` of record text.
    pub fn new(max_bytes: u64) -> Self {
        Self { records: Vec::new(), bytes: 0, max_bytes, limit_hit: false }
    }

    /// Check and keep a batch. Every record must be a JSON object; the batch is refused whole
    /// if one is not, or if it would take the output past the limit.
    pub fn append(&mut self, batch: Vec<String>) -> Result<(), String> {
        let batch_bytes: u64 = batch.iter().map(|r| r.len() as u64).sum();
        if self.bytes + batch_bytes > self.max_bytes {
            self.limit_hit = true;
            return Err(format!("output limit of {} MiB reached; stop writing", self.max_bytes >> 20));
        }
        for (i, record) in batch.iter().enumerate() {
            if !record.trim_start().starts_with('{') || serde_json::from_str::<IgnoredAny>(record).is_err() {
                let preview: String = record.chars().take(80).collect();
                return Err(format!("record {} of the batch is not a JSON object: {preview}", self.records.len() + i));
            }
        }
        self.bytes += batch_bytes;
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
        let mut r = HostReader::new((0..5).map(|i| format!("{{\"i\":{i}}}")).collect());
        assert_eq!(r.take(2).len(), 2);
        assert_eq!(r.take(10).len(), 3);
        assert!(r.take(10).is_empty());
    }

    #[test]
    fn writer_refuses_non_objects_and_keeps_nothing_of_that_batch() {
        let mut w = HostWriter::new(1 << 20);
        w.append(vec!["{\"a\":1}".into()]).unwrap();
        let err = w.append(vec!["{\"b\":2}".into(), "[1,2]".into()]).unwrap_err();
        assert!(err.contains("record 2") && err.contains("not a JSON object"), "{err}");
        assert_eq!(w.into_records(), vec!["{\"a\":1}".to_string()]);
    }

    #[test]
    fn writer_enforces_the_byte_limit() {
        let mut w = HostWriter::new(10);
        assert!(w.append(vec!["{\"a\":1}".into()]).is_ok());
        assert!(w.append(vec!["{\"a\":1}".into()]).unwrap_err().contains("output limit"));
        assert!(w.limit_hit());
    }
}
