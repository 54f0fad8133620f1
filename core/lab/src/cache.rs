//! The experiment cache: every finished experiment's result, per-example evaluation, adapter and
//! (once scored) test score, keyed by the content of everything that determines it, and shared
//! by every run and strategy. A search that meets an experiment already run pays nothing for
//! it; a replay benchmark runs the real search loop on the cache alone.
//!
//! The key of an experiment hashes: the base model's content, the training split, the
//! validation split and its limit, the evaluator's component and config, the prompt settings,
//! the device, the components of the data steps, the experiment itself
//! ([`trex_sdk::types::experiment_key`]), its training seed, and, for a continued adapter, the
//! parent's key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use trex_model::files::{copy_dir, temporary_prefix, write_atomically};

use crate::tree::NodeResult;

/// Where cached experiments live, and how a search uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentCache {
    /// The cache folder (one sub-folder per experiment).
    pub dir: PathBuf,
    /// Serve only from the cache: an experiment not in it fails instead of training (a replay).
    pub only: bool,
    /// Score each cached result on this subset of the validation examples (a replay's
    /// resampling), instead of all of them.
    pub subset: Option<Subset>,
}

/// A seeded subset of the validation examples: each example is kept with probability
/// `fraction`, decided by a hash of its id and `seed`, so the same seed keeps the same examples
/// for every strategy (common random numbers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Subset {
    /// The seed.
    pub seed: u64,
    /// The share of examples kept.
    pub fraction: f64,
}

impl Subset {
    /// Whether example `id` is in the subset.
    pub fn keeps(&self, id: &str) -> bool {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = trex_sdk::rng::SplitMix64(h);
        rng.unit() < self.fraction
    }
}

/// One example's verdict, as stored with a cached experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The example's id.
    pub id: String,
    /// Its score in [0, 1].
    pub score: f64,
    /// Whether it passed.
    pub passed: bool,
}

/// A failure kept in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedFailure {
    /// The error.
    pub error: String,
    /// Its kind.
    pub kind: trex_sdk::types::FailureKind,
}

/// A cached experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The result as first computed (its `adapter` relative to the entry's folder); `None` for
    /// an experiment that failed.
    #[serde(default)]
    pub result: Option<NodeResult>,
    /// Why the experiment failed, when it failed in a way that running it again would repeat
    /// (its recipe diverged or was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<CachedFailure>,
    /// Every validation example's verdict.
    pub verdicts: Vec<Verdict>,
    /// The test-split score, once it was scored.
    #[serde(default)]
    pub test_score: Option<f64>,
    /// The score on the whole validation split (where the task limits what each node is scored
    /// on), once it was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_validation: Option<f64>,
    /// What the experiments of one task share (model, splits, evaluator, prompt): the entries of
    /// one task's table.
    #[serde(default)]
    pub lab: String,
}

impl ExperimentCache {
    /// The cache in `dir`, used by a search: hits are served, misses run and are stored.
    pub fn at(dir: PathBuf) -> ExperimentCache {
        ExperimentCache { dir, only: false, subset: None }
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(key)
    }

    /// The entry of `key`, when cached (an unreadable entry counts as absent).
    pub fn lookup(&self, key: &str) -> Option<(Entry, PathBuf)> {
        let dir = self.entry_dir(key);
        let text = std::fs::read_to_string(dir.join("entry.json")).ok()?;
        let entry: Entry = serde_json::from_str(&text).ok()?;
        if entry.result.is_none() && entry.failure.is_none() {
            return None;
        }
        if let Some(a) = entry.result.as_ref().and_then(|r| r.adapter.as_ref())
            && !dir.join(a).join("adapter_config.json").is_file()
        {
            return None;
        }
        Some((entry, dir))
    }

    /// Store `entry` under `key`, copying the adapter folder when there is one. Written in a
    /// private folder and renamed into place, so a reader never sees half an entry; an entry
    /// another process stored first is kept.
    pub fn store(&self, key: &str, mut entry: Entry, adapter: Option<&Path>) -> Result<(), CacheError> {
        let dir = self.entry_dir(key);
        if dir.join("entry.json").is_file() {
            return self.update(key, |e| {
                e.test_score = e.test_score.or(entry.test_score);
                e.full_validation = e.full_validation.or(entry.full_validation);
            });
        }
        let parent = dir.parent().expect("entries are two levels down");
        let fail = |path: &Path, e: std::io::Error| CacheError { path: path.to_path_buf(), message: e.to_string() };
        std::fs::create_dir_all(parent).map_err(|e| fail(parent, e))?;
        let work =
            tempfile::Builder::new().prefix(&temporary_prefix()).tempdir_in(parent).map_err(|e| fail(parent, e))?;
        if let Some(r) = &mut entry.result {
            r.adapter = None;
            if let Some(src) = adapter {
                copy_dir(src, &work.path().join("adapter")).map_err(|e| fail(src, e))?;
                r.adapter = Some("adapter".into());
            }
        }
        let text = serde_json::to_string(&entry).expect("entries serialize");
        std::fs::write(work.path().join("entry.json"), text).map_err(|e| fail(work.path(), e))?;
        match std::fs::rename(work.path(), &dir) {
            Ok(()) => {
                // The folder now lives at `dir`; keep `work` from removing it.
                let _ = work.keep();
                Ok(())
            }
            Err(_) if dir.join("entry.json").is_file() => Ok(()),
            Err(e) => Err(fail(&dir, e)),
        }
    }

    /// The keys of every entry stored for the lab `lab`, sorted.
    pub fn keys_of(&self, lab: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let Ok(shards) = std::fs::read_dir(&self.dir) else { return keys };
        for shard in shards.flatten() {
            let Ok(entries) = std::fs::read_dir(shard.path()) else { continue };
            for e in entries.flatten() {
                let key = e.file_name().to_string_lossy().into_owned();
                if key.starts_with('.') {
                    continue;
                }
                if self.lookup(&key).is_some_and(|(entry, _)| entry.lab == lab) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        keys
    }

    /// Change a stored entry (rewritten atomically).
    pub fn update(&self, key: &str, change: impl FnOnce(&mut Entry)) -> Result<(), CacheError> {
        let dir = self.entry_dir(key);
        let Some((mut entry, _)) = self.lookup(key) else { return Ok(()) };
        change(&mut entry);
        let path = dir.join("entry.json");
        write_atomically(&path, serde_json::to_string(&entry).expect("entries serialize").as_bytes())
            .map_err(|e| CacheError { path, message: e.to_string() })
    }
}

/// A cache entry that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("experiment cache: cannot write {}: {message}", path.display())]
pub struct CacheError {
    /// The file or folder.
    pub path: std::path::PathBuf,
    /// The I/O error.
    pub message: String,
}

/// SHA-256 over length-prefixed parts, hex.
pub fn hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The content hash of a model file or folder (every file in it, by name).
pub fn hash_model(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut files = Vec::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            let p = e?.path();
            if p.is_file() {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    for f in files {
        h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        let mut file = std::fs::File::open(&f)?;
        std::io::copy(&mut file, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}
