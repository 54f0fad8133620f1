//! The trex plugin host: finds plugins, compiles (and caches) their components, and calls them
//! in a sandbox with per-call limits; the LLM client behind `llm.chat` ([`llm`]).
//!
//! Architecture Invariant: a plugin gets no ambient authority. Its WASI context has no
//! environment, no arguments, no network, no stdin and no inherited files; the only folders it
//! sees are the preopens its manifest asked for *and* the host granted (`/data` read-only,
//! `/scratch` read-write). Secrets such as LLM API keys never enter a store.
//!
//! Each data-tool run and each evaluation gets a fresh store and instance, so a plugin that
//! crashed, leaked or was stopped cannot affect the next call. A Researcher session keeps its
//! store for the session's lifetime; a trap ends the session.

#![deny(unsafe_code)]

pub mod bindings;
mod calls;
mod engine;
pub mod error;
pub mod llm;
pub mod manifest;
pub mod records;
mod state;
pub mod text;
pub mod toml_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;
use trex_sdk::types::PluginKind;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

pub use calls::{DataToolRun, EvalItem, EvalReport, ExampleResult, InvalidProposal, ResearcherSession};
pub use error::PluginError;
pub use manifest::{Capabilities, HOST_API_VERSION, Limits, Manifest};
pub use state::{Progress, ProgressSink};

/// What stands behind the `tokenizer.count` import: the tokenizer of the model being fine-tuned.
/// The host does not know the model; its caller supplies one.
pub trait TokenCounter: Send + Sync {
    /// The number of tokens in `text` (no special tokens added).
    fn count(&self, text: &str) -> usize;
}

use crate::llm::LlmClient;
use bindings::{data_tool, evaluator, researcher};
use engine::{CompileSource, EngineHandle};
use state::{HostData, LlmAccess, STDIO_CAPTURE_BYTES, StoreState};

/// How the host treats plugins: what it grants, the ceilings it imposes, where it caches.
#[derive(Clone)]
pub struct HostConfig {
    /// Where compiled components are cached; `None` (the default) compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Capabilities the host is willing to grant (a plugin gets the intersection with its request).
    pub grant: Capabilities,
    /// Ceilings on every plugin's limits (a plugin gets the stricter of its own and these).
    pub max_limits: Limits,
    /// The LLM behind `llm.chat`, if any.
    pub llm: Option<Arc<dyn LlmClient>>,
    /// Where the calls' private scratch folders are made (each call gets a fresh one, mode
    /// 0700, removed afterwards); `None` (the default): a private folder under the system's
    /// temporary directory, made when the host starts and removed with it.
    pub scratch_root: Option<PathBuf>,
    /// The tokenizer behind `tokenizer.count` (the model being fine-tuned), if any.
    pub tokenizer: Option<Arc<dyn TokenCounter>>,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("cache_dir", &self.cache_dir)
            .field("grant", &self.grant)
            .field("max_limits", &self.max_limits)
            .field("llm", &self.llm.is_some())
            .field("scratch_root", &self.scratch_root)
            .field("tokenizer", &self.tokenizer.is_some())
            .finish()
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            grant: Capabilities { dataset: true, scratch: true, llm: true },
            max_limits: Limits {
                timeout_ms: 3_600_000,
                memory_mib: 4096,
                fuel: None,
                output_mib: 16 * 1024,
                scratch_mib: 4096,
                scratch_files: 100_000,
            },
            llm: None,
            scratch_root: None,
            tokenizer: None,
        }
    }
}

/// What a plugin says about itself through `describe()`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Its version.
    pub version: String,
    /// The contract version it was built against.
    pub api_version: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its config.
    pub config_schema: serde_json::Value,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoadStats {
    /// Time to compile or to load from the cache.
    pub load_time: Duration,
    /// Whether it came from the on-disk cache.
    pub from_cache: bool,
}

/// A plugin ready to be called.
pub struct LoadedPlugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// What it said about itself.
    pub info: PluginInfo,
    /// Capabilities it got.
    pub granted: Capabilities,
    /// Capabilities it asked for and did not get.
    pub denied: Vec<&'static str>,
    /// The limits it runs under (its own, capped by the host's).
    pub limits: Limits,
    /// How it was loaded.
    pub load: LoadStats,
    /// SHA-256 of the component, hex: what a cached result computed with it is keyed by.
    pub wasm_sha256: String,
    pre: KindPre,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.manifest.name)
            .field("kind", &self.manifest.kind)
            .field("granted", &self.granted)
            .field("limits", &self.limits)
            .finish()
    }
}

enum KindPre {
    DataTool(data_tool::DataToolPre<StoreState>),
    Evaluator(evaluator::EvaluatorPre<StoreState>),
    Researcher(researcher::ResearcherPre<StoreState>),
}

/// Per-call context: the folders to mount and the cancellation flag.
#[derive(Clone, Default)]
pub struct CallEnv {
    /// The task's dataset folder, mounted read-only at `/data` when granted.
    pub dataset_dir: Option<PathBuf>,
    /// Where this call's private scratch folder (mounted read-write at `/scratch`) is made,
    /// instead of the host's scratch root: a run folder, so a node's scratch lives with it.
    pub scratch_parent: Option<PathBuf>,
    /// Set to ask running plugins to stop (`cancelled()` turns true; readers run dry).
    pub cancel: Arc<AtomicBool>,
    /// Receives progress reports.
    pub progress: Option<ProgressSink>,
}

impl std::fmt::Debug for CallEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEnv")
            .field("dataset_dir", &self.dataset_dir)
            .field("scratch_parent", &self.scratch_parent)
            .field("cancel", &self.cancel)
            .finish()
    }
}

/// A plugin folder that could not be loaded, with the reason.
#[derive(Debug)]
pub struct LoadFailure {
    /// The plugin's folder.
    pub dir: PathBuf,
    /// Why.
    pub error: PluginError,
}

/// The plugin host.
pub struct PluginHost {
    engine: EngineHandle,
    data_tool_linker: Linker<StoreState>,
    evaluator_linker: Linker<StoreState>,
    researcher_linker: Linker<StoreState>,
    config: HostConfig,
    plugins: BTreeMap<String, LoadedPlugin>,
    failures: Vec<LoadFailure>,
    dir: PathBuf,
    /// Where calls' scratch folders are made by default, and the folder to remove on drop when
    /// the host made it itself.
    scratch_root: PathBuf,
    _scratch_owner: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("dir", &self.dir)
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("failures", &self.failures.len())
            .finish()
    }
}

impl PluginHost {
    /// A host with no plugins yet.
    pub fn new(config: HostConfig) -> Result<Self, PluginError> {
        let engine = EngineHandle::new()?;
        let host_err = |e: wasmtime::Error| PluginError::Host(format!("setting up the linker: {e:#}"));
        let mut data_tool_linker = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut data_tool_linker).map_err(host_err)?;
        data_tool::DataTool::add_to_linker::<StoreState, HostData>(&mut data_tool_linker, |s| s).map_err(host_err)?;
        let mut evaluator_linker = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut evaluator_linker).map_err(host_err)?;
        evaluator::Evaluator::add_to_linker::<StoreState, HostData>(&mut evaluator_linker, |s| s).map_err(host_err)?;
        let mut researcher_linker = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut researcher_linker).map_err(host_err)?;
        researcher::Researcher::add_to_linker::<StoreState, HostData>(&mut researcher_linker, |s| s)
            .map_err(host_err)?;
        let (scratch_root, scratch_owner) = match &config.scratch_root {
            Some(root) => (root.clone(), None),
            None => {
                let owned = tempfile::Builder::new()
                    .prefix("trex-scratch-")
                    .tempdir()
                    .map_err(|e| PluginError::Host(format!("cannot create a private scratch folder: {e}")))?;
                (owned.path().to_path_buf(), Some(owned))
            }
        };
        Ok(Self {
            engine,
            data_tool_linker,
            evaluator_linker,
            researcher_linker,
            config,
            plugins: BTreeMap::new(),
            failures: Vec::new(),
            dir: PathBuf::new(),
            scratch_root,
            _scratch_owner: scratch_owner,
        })
    }

    /// A host with every plugin found in the sub-folders of `dir` (each a folder holding a
    /// `plugin.toml`). Plugins that fail to load are kept in [`PluginHost::failures`].
    pub async fn discover(dir: &Path, config: HostConfig) -> Result<Self, PluginError> {
        let mut host = Self::new(config)?;
        host.dir = dir.to_path_buf();
        let folders = folders_holding(dir, "plugin.toml").map_err(|e| {
            PluginError::Host(format!(
                "cannot read plugin folder {}: {e} (pass --plugins DIR, a folder whose sub-folders hold plugin.toml files)",
                dir.display()
            ))
        })?;
        for folder in folders {
            if let Err(error) = host.load(&folder.join("plugin.toml")).await {
                host.failures.push(LoadFailure { dir: folder, error });
            }
        }
        Ok(host)
    }

    /// [`PluginHost::discover`], with every plugin that failed to load logged as a warning and
    /// skipped (a task or pipeline that needs one names it when it is missing).
    pub async fn open(dir: &Path, config: HostConfig) -> Result<Self, PluginError> {
        let host = Self::discover(dir, config).await?;
        for f in host.failures() {
            tracing::warn!("skipping plugin in {}: {}", f.dir.display(), f.error);
        }
        Ok(host)
    }

    /// Load one plugin from its manifest and make it callable by name.
    pub async fn load(&mut self, manifest_path: &Path) -> Result<&LoadedPlugin, PluginError> {
        let manifest = Manifest::load(manifest_path)?;
        if let Some(existing) = self.plugins.get(&manifest.name) {
            return Err(PluginError::Manifest {
                path: manifest_path.to_path_buf(),
                message: format!(
                    "field `name`: `{}` is already used by {}",
                    manifest.name,
                    existing.manifest.manifest_path.display()
                ),
            });
        }
        let plugin = self.prepare(manifest).await?;
        let name = plugin.manifest.name.clone();
        Ok(self.plugins.entry(name).or_insert(plugin))
    }

    async fn prepare(&self, manifest: Manifest) -> Result<LoadedPlugin, PluginError> {
        let name = manifest.name.clone();
        let started = Instant::now();
        let bytes = manifest.read_component()?;
        let wasm_sha256 = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&bytes))
        };
        let (component, source) = self
            .engine
            .compile(&bytes, self.config.cache_dir.as_deref())
            .map_err(|message| PluginError::Load { plugin: name.clone(), path: manifest.wasm.clone(), message })?;
        let load = LoadStats { load_time: started.elapsed(), from_cache: matches!(source, CompileSource::Cache) };
        let pre = self.link(&manifest, &component)?;
        let granted = manifest.capabilities.intersect(&self.config.grant);
        let denied = manifest.capabilities.denied_by(&granted);
        if !denied.is_empty() {
            tracing::warn!(plugin = %name, "capabilities denied by the host: {}", denied.join(", "));
        }
        let limits = manifest.limits.min(&self.config.max_limits);
        let mut plugin = LoadedPlugin {
            info: PluginInfo {
                name: name.clone(),
                kind: manifest.kind,
                version: manifest.version.clone(),
                api_version: manifest.api_version.clone(),
                description: manifest.description.clone(),
                config_schema: serde_json::Value::Null,
            },
            manifest,
            granted,
            denied,
            limits,
            load,
            wasm_sha256,
            pre,
        };
        plugin.info = self.describe(&plugin).await?;
        Ok(plugin)
    }

    fn link(&self, manifest: &Manifest, component: &Component) -> Result<KindPre, PluginError> {
        let plugin = manifest.name.clone();
        let kind = manifest.kind;
        let linker = match kind {
            PluginKind::DataTool => &self.data_tool_linker,
            PluginKind::Evaluator => &self.evaluator_linker,
            PluginKind::Researcher => &self.researcher_linker,
        };
        let ty = component.component_type();
        let engine = self.engine.engine();
        let looks_like = [PluginKind::DataTool, PluginKind::Evaluator, PluginKind::Researcher]
            .into_iter()
            .find(|k| ty.exports(engine).any(|(n, _)| n.starts_with(&format!("trex:plugin/{k}-api"))));
        let other_kind = looks_like.filter(|k| *k != kind).map(|other| {
            format!(
                "this component looks like {} (it exports `trex:plugin/{other}-api`): set kind = \"{other}\" in {}",
                with_article(other),
                manifest.manifest_path.display()
            )
        });
        let instance_pre = linker.instantiate_pre(component).map_err(|e| {
            let foreign: Vec<&str> =
                ty.imports(engine).map(|(n, _)| n).filter(|n| !PROVIDED_IMPORTS.iter().any(|p| n.starts_with(p))).collect();
            let message = if !foreign.is_empty() {
                format!(
                    "it imports {}, which trex does not provide (plugins get WASI's files, clocks and random numbers and trex's own interfaces; no network or HTTP)",
                    foreign.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                )
            } else if let Some(m) = &other_kind {
                m.clone()
            } else {
                format!("it imports something the host does not provide: {}", root_message(&e))
            };
            PluginError::WrongWorld { plugin: plugin.clone(), kind: kind.to_string(), message }
        })?;
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            plugin: plugin.clone(),
            kind: kind.to_string(),
            message: other_kind.clone().unwrap_or_else(|| root_message(&e)),
        };
        Ok(match kind {
            PluginKind::DataTool => KindPre::DataTool(data_tool::DataToolPre::new(instance_pre).map_err(wrong_world)?),
            PluginKind::Evaluator => {
                KindPre::Evaluator(evaluator::EvaluatorPre::new(instance_pre).map_err(wrong_world)?)
            }
            PluginKind::Researcher => {
                KindPre::Researcher(researcher::ResearcherPre::new(instance_pre).map_err(wrong_world)?)
            }
        })
    }

    /// A store for one call (or one Researcher session) of `plugin`, sandboxed per its grants.
    fn new_store(&self, plugin: &LoadedPlugin, env: &CallEnv) -> Result<Store<StoreState>, PluginError> {
        let name = &plugin.manifest.name;
        let stdout = MemoryOutputPipe::new(STDIO_CAPTURE_BYTES);
        let stderr = MemoryOutputPipe::new(STDIO_CAPTURE_BYTES);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if plugin.granted.dataset
            && let Some(dir) = &env.dataset_dir
        {
            wasi.preopened_dir(dir, "/data", FsPerms::ReadOnly).map_err(|e| {
                PluginError::Host(format!("cannot mount dataset folder {} for `{name}`: {e}", dir.display()))
            })?;
        }
        let scratch = if plugin.granted.scratch {
            // A fresh folder per call, made with mkdtemp (an unpredictable name, mode 0700,
            // refused if anything exists there): nothing planted beforehand is followed, and no
            // other call or node sees it.
            let parent = env.scratch_parent.as_ref().unwrap_or(&self.scratch_root);
            std::fs::create_dir_all(parent)
                .map_err(|e| PluginError::Host(format!("cannot create scratch root {}: {e}", parent.display())))?;
            let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir_in(parent).map_err(|e| {
                PluginError::Host(format!("cannot create a scratch folder in {}: {e}", parent.display()))
            })?;
            wasi.preopened_dir(dir.path(), "/scratch", FsPerms::ReadWrite).map_err(|e| {
                PluginError::Host(format!("cannot mount scratch folder {} for `{name}`: {e}", dir.path().display()))
            })?;
            Some(state::Scratch {
                dir,
                max_bytes: plugin.limits.scratch_mib << 20,
                max_files: plugin.limits.scratch_files,
            })
        } else {
            None
        };
        let limits = state::PluginLimits::new(usize::try_from(plugin.limits.memory_mib << 20).unwrap_or(usize::MAX));
        let llm = match (plugin.granted.llm, &self.config.llm) {
            (false, _) => LlmAccess::NotGranted,
            (true, None) => LlmAccess::NotConfigured,
            (true, Some(client)) => LlmAccess::Client(client.clone()),
        };
        let state = StoreState {
            plugin: name.clone(),
            wasi: wasi.build(),
            table: Default::default(),
            limits,
            stdout,
            stderr,
            log_tail: Default::default(),
            last_error_log: None,
            panic: None,
            cancel: env.cancel.clone(),
            progress: env.progress.clone(),
            llm,
            tokenizer: self.config.tokenizer.clone(),
            output_limit_hit: false,
            deadline: None,
            deadline_ms: plugin.limits.timeout_ms,
            stop: None,
            scratch,
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(state::limiter);
        // Every CHECK_TICKS ticks: stop the call past its deadline or over its scratch quota, and
        // otherwise yield, so that calls running side by side share their threads.
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            match state.check_limits() {
                Some(stop) => Err(state.stop_call(stop)),
                None => Ok(wasmtime::UpdateDeadline::Yield(state::CHECK_TICKS)),
            }
        });
        store.set_fuel(plugin.limits.fuel.unwrap_or(u64::MAX)).map_err(|e| PluginError::Host(format!("{e:#}")))?;
        Ok(store)
    }

    /// Arm the per-call limits (deadline and fuel) before a call.
    fn arm(&self, store: &mut Store<StoreState>, plugin: &LoadedPlugin) -> Result<(), PluginError> {
        self.arm_for(store, plugin, Duration::from_millis(plugin.limits.timeout_ms))
    }

    /// Arm the limits with a deadline of `timeout` from now.
    fn arm_for(
        &self,
        store: &mut Store<StoreState>,
        plugin: &LoadedPlugin,
        timeout: Duration,
    ) -> Result<(), PluginError> {
        let state = store.data_mut();
        state.deadline = Some(Instant::now() + timeout);
        state.deadline_ms = timeout.as_millis() as u64;
        state.stop = None;
        store.set_epoch_deadline(state::CHECK_TICKS);
        store.set_fuel(plugin.limits.fuel.unwrap_or(u64::MAX)).map_err(|e| PluginError::Host(format!("{e:#}")))
    }

    /// The plugin named `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<&LoadedPlugin> {
        self.plugins.get(name)
    }

    /// The plugin named `name` of kind `kind`, or an error listing the ones available.
    pub fn expect(&self, name: &str, kind: PluginKind) -> Result<&LoadedPlugin, PluginError> {
        match self.plugins.get(name) {
            Some(p) if p.manifest.kind == kind => Ok(p),
            found => {
                let available: Vec<&str> = self
                    .plugins
                    .values()
                    .filter(|p| p.manifest.kind == kind)
                    .map(|p| p.manifest.name.as_str())
                    .collect();
                let mut hint = match found {
                    Some(p) => format!(" (`{name}` is {} plugin)", with_article(p.manifest.kind)),
                    None => String::new(),
                };
                hint.push_str(&if available.is_empty() {
                    format!("; no {kind} plugins are loaded")
                } else {
                    format!("; available: {}", available.join(", "))
                });
                if let Some(f) = self.failures.iter().find(|f| f.dir.file_name().is_some_and(|d| d == name)) {
                    hint.push_str(&format!("; a plugin in {} failed to load: {}", f.dir.display(), f.error));
                }
                Err(PluginError::NotFound { name: name.into(), kind: kind.to_string(), dir: self.dir.clone(), hint })
            }
        }
    }

    /// Every loaded plugin, by name.
    pub fn plugins(&self) -> impl Iterator<Item = &LoadedPlugin> {
        self.plugins.values()
    }

    /// Plugin folders that failed to load.
    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }

    /// The engine (for benchmarks that compile components directly).
    pub fn engine(&self) -> &Engine {
        self.engine.engine()
    }

    /// The folder the plugins were loaded from (empty for a host made with [`PluginHost::new`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }
}

/// The sub-folders of `dir` that hold a file named `file` (`plugin.toml`, `task.toml`), sorted.
pub fn folders_holding(dir: &Path, file: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.join(file).is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The import namespaces the host's linkers define: WASI p2 (without HTTP) and trex's own.
const PROVIDED_IMPORTS: &[&str] =
    &["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:filesystem/", "wasi:random/", "wasi:sockets/", "trex:plugin/"];

/// "a data-tool", "an evaluator", "a researcher".
fn with_article(kind: PluginKind) -> String {
    let article = if kind == PluginKind::Evaluator { "an" } else { "a" };
    format!("{article} {kind}")
}

/// The innermost message of an error chain, for one-line reports.
fn root_message(e: &wasmtime::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_else(|| e.to_string())
}
