//! `dedup-near`: drops records whose text is a near-duplicate of an earlier record's, by
//! MinHash signatures over word or character shingles and locality-sensitive hashing (banding).
//!
//! Two texts are near-duplicates when the Jaccard similarity of their shingle sets is at least
//! `threshold`. LSH proposes candidate pairs (records sharing one band of the signature); each
//! candidate is confirmed by the signatures' estimated similarity before a record is dropped,
//! so the bands control recall and the threshold controls precision. Keeps the first occurrence;
//! deterministic for a given `seed`.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use trex_sdk::guest::{DataTool, PluginError, Record, RecordReader, RecordWriter, RunStats, text_fields};
use trex_sdk::rng::SplitMix64;
use trex_sdk::types::OnBadRecord;

/// What a shingle is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum ShingleUnit {
    /// `shingle_size` consecutive words (lowercased).
    #[default]
    Words,
    /// `shingle_size` consecutive characters (lowercased, whitespace collapsed).
    Chars,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Fields whose text is compared (those present are joined); chat transcripts count their turns.
    fields: Vec<String>,
    /// Jaccard similarity at or above which two records are duplicates.
    threshold: f64,
    /// Shingle length in `unit`s.
    shingle_size: usize,
    /// Words or characters.
    unit: ShingleUnit,
    /// MinHash permutations (signature length); must equal `bands × rows`.
    permutations: usize,
    /// LSH bands (more bands: higher recall at lower similarity, more candidates to check).
    bands: usize,
    /// Seed of the hash permutations.
    seed: u64,
    /// What to do with a record that has none of the fields.
    on_bad_record: OnBadRecord,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fields: ["messages", "completion", "prompt", "response", "text"].map(String::from).to_vec(),
            threshold: 0.8,
            shingle_size: 3,
            unit: ShingleUnit::Words,
            permutations: 128,
            bands: 16,
            seed: 1,
            on_bad_record: OnBadRecord::Skip,
        }
    }
}

struct DedupNear;

fn text_of(config: &Config, record: &Record) -> Option<String> {
    text_fields(record, &config.fields).map(|pieces| pieces.join("\n"))
}

fn hash64<T: Hash + ?Sized>(x: &T) -> u64 {
    let mut h = DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// Shingle hashes of a text (a text shorter than one shingle is one shingle).
fn shingles(config: &Config, text: &str) -> Vec<u64> {
    let k = config.shingle_size.max(1);
    let mut out = Vec::new();
    match config.unit {
        ShingleUnit::Words => {
            let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
            if words.len() <= k {
                out.push(hash64(&words));
            } else {
                out.extend(words.windows(k).map(hash64));
            }
        }
        ShingleUnit::Chars => {
            let chars: Vec<char> =
                text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase().chars().collect();
            if chars.len() <= k {
                out.push(hash64(&chars));
            } else {
                out.extend(chars.windows(k).map(hash64));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// MinHash with `a·x + b` permutations of the 64-bit shingle hashes (odd `a`, mod 2^64).
fn signature(perms: &[(u64, u64)], shingles: &[u64]) -> Vec<u64> {
    perms
        .iter()
        .map(|&(a, b)| shingles.iter().map(|&x| a.wrapping_mul(x).wrapping_add(b)).min().unwrap_or(u64::MAX))
        .collect()
}

fn similarity(a: &[u64], b: &[u64]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

impl DataTool for DedupNear {
    type Config = Config;
    const NAME: &'static str = "dedup-near";
    const DESCRIPTION: &'static str = "Drop near-duplicates (MinHash over word or character shingles + LSH banding, confirmed by estimated Jaccard similarity >= threshold), keeping the first occurrence.";

    fn run(
        config: Config,
        input: &mut RecordReader<'_>,
        output: &mut RecordWriter<'_>,
    ) -> Result<RunStats, PluginError> {
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(PluginError::field("threshold", format!("must be within [0, 1], got {}", config.threshold)));
        }
        if config.bands == 0 || config.permutations == 0 || !config.permutations.is_multiple_of(config.bands) {
            return Err(PluginError::field(
                "bands",
                format!(
                    "permutations ({}) must be a positive multiple of bands ({})",
                    config.permutations, config.bands
                ),
            ));
        }
        let rows = config.permutations / config.bands;
        let mut rng = SplitMix64(config.seed);
        let perms: Vec<(u64, u64)> = (0..config.permutations).map(|_| (rng.next_u64() | 1, rng.next_u64())).collect();
        // Band key -> indices (into `kept`) of kept records with that band.
        let mut buckets: HashMap<(usize, u64), Vec<u32>> = HashMap::new();
        let mut kept: Vec<Vec<u64>> = Vec::new();
        let mut stats = RunStats::default();
        let mut candidates_checked = 0u64;
        while let Some((raw, record)) = input.next_with_raw()? {
            let Some(text) = text_of(&config, &record) else {
                stats.bad_record(
                    config.on_bad_record,
                    input.records_read(),
                    &format!("none of the fields {:?}", config.fields),
                )?;
                continue;
            };
            let sig = signature(&perms, &shingles(&config, &text));
            let keys: Vec<(usize, u64)> = sig.chunks(rows).enumerate().map(|(b, band)| (b, hash64(band))).collect();
            let mut duplicate = false;
            'bands: for key in &keys {
                if let Some(ids) = buckets.get(key) {
                    for &id in ids {
                        candidates_checked += 1;
                        if similarity(&sig, &kept[id as usize]) >= config.threshold {
                            duplicate = true;
                            break 'bands;
                        }
                    }
                }
            }
            if duplicate {
                stats.drop_record("near-duplicate");
                continue;
            }
            let id = kept.len() as u32;
            for key in keys {
                buckets.entry(key).or_default().push(id);
            }
            kept.push(sig);
            output.push_raw(raw)?;
        }
        stats.metrics.insert("candidates-checked".into(), candidates_checked as f64);
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(DedupNear);
