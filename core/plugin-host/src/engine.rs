//! The wasmtime engine: its configuration, the epoch ticker behind wall-clock deadlines, and the
//! on-disk cache of compiled components.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, OptLevel};

use crate::PluginError;

/// How often the engine's epoch advances; deadlines are rounded up to it.
const TICK: Duration = Duration::from_millis(5);

/// Where a component came from.
pub(crate) enum CompileSource {
    Compiled,
    Cache,
}

/// The engine plus the thread that advances its epoch; the thread stops when this drops.
pub(crate) struct EngineHandle {
    engine: Engine,
    stop: Arc<AtomicBool>,
}

impl EngineHandle {
    pub(crate) fn new() -> Result<Self, PluginError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true);
        let engine =
            Engine::new(&config).map_err(|e| PluginError::Host(format!("cannot create the wasm engine: {e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("trex-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Host(format!("cannot start the deadline thread: {e}")))?;
        Ok(Self { engine, stop })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A hex key for what makes compiled code reusable: wasmtime version, target and settings.
    fn compatibility_key(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Compile `bytes`, or load the compiled form from `cache_dir` when present there.
    pub(crate) fn compile(&self, bytes: &[u8], cache_dir: Option<&Path>) -> Result<(Component, CompileSource), String> {
        let Some(cache_dir) = cache_dir else {
            return self.compile_fresh(bytes).map(|c| (c, CompileSource::Compiled));
        };
        let digest = hex::encode(&Sha256::digest(bytes)[..16]);
        let path = cache_dir.join(format!("{digest}-{}.cwasm", self.compatibility_key()));
        // Read the file into memory rather than mapping it: a cache file truncated or rewritten
        // by another process while mapped would crash this one.
        if let Ok(cached) = std::fs::read(&path) {
            match checked(&cached) {
                None => tracing::warn!(
                    "ignoring corrupt cached component {} (its checksum does not match): compiling it again",
                    path.display()
                ),
                Some(code) => {
                    // SAFETY: `deserialize` trusts the bytes to be wasmtime's own output for this
                    // engine configuration. The file name carries the wasm's SHA-256 and the
                    // engine's compatibility hash, it is only ever written by `store_in_cache`
                    // below (atomically, via rename), its SHA-256 trailer has just been checked,
                    // so a bit changed on disk is caught, and wasmtime itself re-checks the
                    // version and configuration recorded in the bytes before using them.
                    #[allow(unsafe_code)]
                    match unsafe { Component::deserialize(&self.engine, code) } {
                        Ok(component) => return Ok((component, CompileSource::Cache)),
                        Err(e) => tracing::warn!("ignoring unusable cached component {}: {e:#}", path.display()),
                    }
                }
            }
        }
        let component = self.compile_fresh(bytes)?;
        if let Err(e) = store_in_cache(&component, &path) {
            tracing::warn!("cannot cache compiled component at {}: {e}", path.display());
        }
        Ok((component, CompileSource::Compiled))
    }

    fn compile_fresh(&self, bytes: &[u8]) -> Result<Component, String> {
        // The parser's message for a file that is not wasm at all quotes its first bytes: say
        // so without them (the file may be anything a manifest points at).
        if !bytes.starts_with(b"\0asm") {
            return Err(
                "not a valid WebAssembly component: the file does not start with the `\\0asm` magic number".into()
            );
        }
        Component::from_binary(&self.engine, bytes).map_err(|e| {
            let root = crate::text::line(&e.chain().last().map(|c| c.to_string()).unwrap_or_default(), 300);
            if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
                format!("this is a core WebAssembly module, not a component: build it for wasm32-wasip2 ({root})")
            } else {
                format!("not a valid WebAssembly component: {root}")
            }
        })
    }
}

/// Bytes of the SHA-256 trailer a cache file ends with.
const TRAILER: usize = 32;

/// The compiled code of a cache file whose trailer (the SHA-256 of what precedes it) matches.
fn checked(file: &[u8]) -> Option<&[u8]> {
    let (code, sum) = file.split_at_checked(file.len().checked_sub(TRAILER)?)?;
    (Sha256::digest(code).as_slice() == sum).then_some(code)
}

fn store_in_cache(component: &Component, path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut bytes = component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    // Written under a temporary name and renamed: a concurrent reader sees the whole file or none.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
