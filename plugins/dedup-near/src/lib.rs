//! `dedup-near`: drops records whose text is a near-duplicate of an earlier record's, by
//! MinHash signatures over word or character shingles and locality-sensitive hashing (banding).
//!
//! Two texts are near-duplicates when the Jaccard similarity of their shingle sets is at least
//! `threshold`. LSH proposes candidate pairs (records sharing one band of the signature); each
//! candidate is confirmed by the signatures' estimated similarity before a record is dropped,
//! so the bands control recall and the threshold controls precision. Keeps the first occurrence;
//! deterministic for a given `seed`.

use std::collections::HashMap;
use std::hash::Hasher;

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

/// The SplitMix64 finalizer: a cheap, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A word's hash, case-insensitive (FNV-1a over the lowercased bytes, then mixed).
fn word_hash(word: &str) -> u64 {
    let fnv = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    let h = if word.is_ascii() {
        word.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| fnv(h, b.to_ascii_lowercase()))
    } else {
        word.to_lowercase().bytes().fold(0xcbf2_9ce4_8422_2325, fnv)
    };
    mix(h)
}

/// Shingle hashes of a text (a text shorter than one shingle is one shingle): each shingle's
/// hash combines the hashes of its `shingle_size` units in order.
fn shingles(config: &Config, text: &str) -> Vec<u64> {
    let k = config.shingle_size.max(1);
    let units: Vec<u64> = match config.unit {
        ShingleUnit::Words => text.split_whitespace().map(word_hash).collect(),
        ShingleUnit::Chars => text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
            .chars()
            .map(|c| mix(u64::from(c)))
            .collect(),
    };
    let combine = |window: &[u64]| window.iter().fold(k as u64, |h, &u| mix(h.rotate_left(17) ^ u));
    // Repeated shingles stay: a minimum over a multiset is the minimum over its set.
    if units.len() <= k { vec![combine(&units)] } else { units.windows(k).map(combine).collect() }
}

/// MinHash with `a·x + b` permutations (mod 2^32, odd `a`) of 32-bit shingle hashes. 32-bit
/// values keep a million signatures of 128 in 512 MiB, and the permutations run four lanes at a
/// time in WebAssembly SIMD; two different minima agree by chance with odds 2^-32.
fn signature(perms: &Perms, shingles: &[u64], mins: &mut Vec<u32>, out: &mut Vec<u32>) {
    mins.clear();
    mins.resize(perms.a.len(), u32::MAX);
    // The host's engine (wasmtime) supports the WebAssembly SIMD proposal.
    #[cfg(target_arch = "wasm32")]
    minima_simd(perms, shingles, mins);
    #[cfg(not(target_arch = "wasm32"))]
    minima(perms, shingles, mins);
    out.extend_from_slice(mins);
}

#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
fn minima_simd(perms: &Perms, shingles: &[u64], mins: &mut [u32]) {
    minima(perms, shingles, mins)
}

/// Shingles outside, permutations inside: three flat arrays in lockstep, which the compiler
/// vectorizes.
#[inline(always)]
fn minima(perms: &Perms, shingles: &[u64], mins: &mut [u32]) {
    for &x in shingles {
        let x = (x >> 32) as u32;
        for ((m, &a), &b) in mins.iter_mut().zip(&perms.a).zip(&perms.b) {
            *m = (*m).min(a.wrapping_mul(x).wrapping_add(b));
        }
    }
}

/// The MinHash permutations `a·x + b`, as two arrays.
struct Perms {
    a: Vec<u32>,
    b: Vec<u32>,
}

fn similarity(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Hashes a `u64` key that is already a well-mixed hash by keeping it as it is.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// The LSH key of band `index` of a signature.
fn band_key(index: usize, band: &[u32]) -> u64 {
    band.iter().fold(mix(index as u64 + 1), |h, &v| mix(h ^ u64::from(v)))
}

/// LSH buckets: band key → the kept records with that band. Most buckets hold one record, so the
/// first lives in a flat map and only the others in a second one.
#[derive(Default)]
struct Buckets {
    first: KeyMap<u32>,
    more: KeyMap<Vec<u32>>,
}

impl Buckets {
    fn get(&self, key: u64) -> impl Iterator<Item = u32> + '_ {
        self.first.get(&key).copied().into_iter().chain(self.more.get(&key).into_iter().flatten().copied())
    }

    fn insert(&mut self, key: u64, id: u32) {
        match self.first.entry(key) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.more.entry(key).or_default().push(id),
        }
    }
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
        let (a, b) = (0..config.permutations)
            .map(|_| ((rng.next_u64() >> 32) as u32 | 1, (rng.next_u64() >> 32) as u32))
            .unzip();
        let perms = Perms { a, b };
        let mut mins = Vec::with_capacity(config.permutations);
        let mut buckets = Buckets::default();
        // Signatures of the kept records, `permutations` values each, end to end.
        let mut kept: Vec<u32> = Vec::new();
        let mut sig = Vec::with_capacity(config.permutations);
        let mut stats = RunStats::default();
        let mut candidates_checked = 0u64;
        while let Some(record) = input.next_record()? {
            let Some(text) = text_of(&config, &record) else {
                stats.bad_record(
                    config.on_bad_record,
                    input.records_read(),
                    &format!("none of the fields {:?}", config.fields),
                )?;
                continue;
            };
            sig.clear();
            signature(&perms, &shingles(&config, &text), &mut mins, &mut sig);
            let keys: Vec<u64> = sig.chunks(rows).enumerate().map(|(b, band)| band_key(b, band)).collect();
            let mut duplicate = false;
            'bands: for &key in &keys {
                for id in buckets.get(key) {
                    candidates_checked += 1;
                    let at = id as usize * config.permutations;
                    if similarity(&sig, &kept[at..at + config.permutations]) >= config.threshold {
                        duplicate = true;
                        break 'bands;
                    }
                }
            }
            if duplicate {
                stats.drop_record("near-duplicate");
                continue;
            }
            let id = (kept.len() / config.permutations) as u32;
            for key in keys {
                buckets.insert(key, id);
            }
            kept.extend_from_slice(&sig);
            output.pass(input.position())?;
        }
        stats.metrics.insert("candidates-checked".into(), candidates_checked as f64);
        Ok(stats)
    }
}

trex_sdk::export_data_tool!(DedupNear);
