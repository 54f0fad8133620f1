//! Per-store state and the host functions plugins import (`host`, `llm`, `records`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::TokenCounter;
use crate::bindings::{host, llm, records, tokenizer, types};
use crate::llm::{ChatRequest, LlmClient};
use crate::records::{HostReader, HostWriter};

/// Lines of plugin log kept for error reports.
const LOG_TAIL_LINES: usize = 32;
/// Longest log line kept; longer ones are cut.
const LOG_LINE_MAX: usize = 4096;
/// Bytes of stdout and stderr captured per store.
pub(crate) const STDIO_CAPTURE_BYTES: usize = 64 * 1024;

/// Progress reported by a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The plugin reporting.
    pub plugin: String,
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// What is being done.
    pub message: String,
}

/// Receives progress reports from plugins (for a progress bar).
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Everything one plugin call (or one Researcher session) owns.
pub(crate) struct StoreState {
    pub plugin: String,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: PluginLimits,
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
    pub log_tail: VecDeque<String>,
    /// The last message logged at error level.
    pub last_error_log: Option<String>,
    /// What the plugin said through `host.panicked` before it trapped.
    pub panic: Option<String>,
    pub cancel: Arc<AtomicBool>,
    pub progress: Option<ProgressSink>,
    /// `Some` when the plugin was granted the `llm` capability and the host has a client.
    pub llm: LlmAccess,
    /// The tokenizer behind `tokenizer.count`, when the host has one.
    pub tokenizer: Option<Arc<dyn TokenCounter>>,
    /// Set when a writer refused output because the limit was reached.
    pub output_limit_hit: bool,
    /// When the current call must end (set by `arm`).
    pub deadline: Option<Instant>,
    /// The current call's time limit, in milliseconds (for the error that reports it).
    pub deadline_ms: u64,
    /// Why the host stopped the current call itself, when it did.
    pub stop: Option<Stop>,
    /// This call's private scratch folder and its quota, when the plugin has one.
    pub scratch: Option<Scratch>,
}

/// Why the host stopped a call on its own, read by `classify` instead of the trap's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The call ran past its wall-clock deadline.
    Deadline,
    /// The plugin kept more than its quota in `/scratch`.
    Scratch {
        /// What went over (`bytes` or `files`) and by how much.
        what: &'static str,
        /// The amount found.
        used: u64,
        /// The quota.
        limit: u64,
    },
}

/// A call's private scratch folder (made with `mkdtemp`, mode 0700, removed with the store) and
/// its quota.
#[derive(Debug)]
pub(crate) struct Scratch {
    /// The folder; removing it does not follow links the plugin made.
    pub dir: tempfile::TempDir,
    /// Bytes the plugin may keep there.
    pub max_bytes: u64,
    /// Files and folders it may keep there.
    pub max_files: u64,
}

/// Epoch ticks between two checks of a running call's deadline and scratch quota (the ticker
/// advances every 5 ms).
pub(crate) const CHECK_TICKS: u64 = 20;

/// Bytes of text one `tokenizer.count` call may count (the SDK splits larger batches).
pub(crate) const COUNT_MAX_BYTES: usize = 1 << 20;

impl Scratch {
    /// Bytes and entries under the folder, not following links, counting no further than one
    /// past the file quota.
    fn usage(&self) -> (u64, u64) {
        let (mut bytes, mut entries) = (0u64, 0u64);
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(list) = std::fs::read_dir(&d) else { continue };
            for e in list.flatten() {
                entries += 1;
                if entries > self.max_files {
                    return (bytes, entries);
                }
                let Ok(meta) = e.path().symlink_metadata() else { continue };
                if meta.is_dir() {
                    stack.push(e.path());
                } else {
                    bytes += meta.len();
                }
            }
        }
        (bytes, entries)
    }
}

/// What `llm.chat` may do for this store.
#[derive(Clone)]
pub(crate) enum LlmAccess {
    /// The manifest did not ask for `llm`, or the host denied it.
    NotGranted,
    /// Granted, but the host runs without an LLM.
    NotConfigured,
    /// Granted and available.
    Client(Arc<dyn LlmClient>),
}

impl StoreState {
    /// Whether the current call must stop now: past its deadline (measured in time, not in
    /// ticks, so a loaded machine does not stretch it) or over its scratch quota.
    pub(crate) fn check_limits(&mut self) -> Option<Stop> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Stop::Deadline);
        }
        let scratch = self.scratch.as_ref()?;
        let (bytes, files) = scratch.usage();
        if files > scratch.max_files {
            return Some(Stop::Scratch { what: "files", used: files, limit: scratch.max_files });
        }
        if bytes > scratch.max_bytes {
            return Some(Stop::Scratch { what: "bytes", used: bytes, limit: scratch.max_bytes });
        }
        None
    }

    /// Record that the host stops the call, as the error that ends it.
    pub(crate) fn stop_call(&mut self, stop: Stop) -> wasmtime::Error {
        let message = format!("stopped by the host: {stop:?}");
        self.stop = Some(stop);
        wasmtime::Error::msg(message)
    }

    pub(crate) fn log_line(&mut self, level: host::LogLevel, message: &str) {
        let line = crate::text::line(message, LOG_LINE_MAX);
        let plugin = self.plugin.as_str();
        match level {
            host::LogLevel::Trace => tracing::trace!(target: "trex::plugin", plugin, "{line}"),
            host::LogLevel::Debug => tracing::debug!(target: "trex::plugin", plugin, "{line}"),
            host::LogLevel::Info => tracing::info!(target: "trex::plugin", plugin, "{line}"),
            host::LogLevel::Warn => tracing::warn!(target: "trex::plugin", plugin, "{line}"),
            host::LogLevel::Error => {
                tracing::error!(target: "trex::plugin", plugin, "{line}");
                self.last_error_log = Some(line.clone());
            }
        }
        if self.log_tail.len() == LOG_TAIL_LINES {
            self.log_tail.pop_front();
        }
        self.log_tail.push_back(line);
    }

    /// The captured stderr, as text (lossy), trimmed.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }

    /// The captured stdout, as text (lossy), trimmed.
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.contents()).trim().to_string()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Gives the generated `add_to_linker` functions access to [`StoreState`].
pub(crate) struct HostData;

impl HasData for HostData {
    type Data<'a> = &'a mut StoreState;
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    async fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        self.log_line(level, &message);
        Ok(())
    }

    async fn progress(&mut self, done: u64, total: Option<u64>, message: String) -> wasmtime::Result<()> {
        if let Some(sink) = &self.progress {
            sink(&Progress { plugin: self.plugin.clone(), done, total, message });
        }
        Ok(())
    }

    async fn cancelled(&mut self) -> wasmtime::Result<bool> {
        Ok(self.cancel.load(Ordering::Relaxed))
    }

    async fn panicked(&mut self, message: String) -> wasmtime::Result<()> {
        self.log_line(host::LogLevel::Error, &message);
        self.panic = Some(crate::text::line(&message, LOG_LINE_MAX));
        Ok(())
    }
}

impl StoreState {
    /// `llm.complete` and `llm.chat`: the request through the host's client, with the reason for
    /// a failure as a variant.
    async fn complete(&mut self, request: llm::ChatRequest) -> Result<llm::ChatResponse, llm::LlmError> {
        let client = match &self.llm {
            LlmAccess::NotGranted => {
                return Err(llm::LlmError::NotGranted(format!(
                    "plugin `{}` may not call the LLM: its plugin.toml does not request the `llm` capability, or the host denied it",
                    self.plugin
                )));
            }
            LlmAccess::NotConfigured => {
                return Err(llm::LlmError::NotConfigured(
                    "no LLM configured: give the task an [llm] section, or pass --llm-base-url and --llm-model".into(),
                ));
            }
            LlmAccess::Client(c) => c.clone(),
        };
        let response_schema = match request.response_schema {
            Some(s) => match serde_json::from_str(&s) {
                Ok(v) => Some(v),
                Err(e) => return Err(llm::LlmError::Failed(format!("response-schema is not JSON: {e}"))),
            },
            None => None,
        };
        let request = ChatRequest {
            messages: request
                .messages
                .into_iter()
                .map(|m| trex_sdk::types::ChatMessage { role: m.role, content: m.content })
                .collect(),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            response_schema,
        };
        match client.chat(&self.plugin, request).await {
            Ok(r) => Ok(llm::ChatResponse {
                content: r.content,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
            }),
            Err(e @ crate::llm::LlmError::Budget(_)) => Err(llm::LlmError::BudgetExhausted(e.to_string())),
            Err(e) => Err(llm::LlmError::Failed(e.to_string())),
        }
    }
}

impl llm::Host for StoreState {
    async fn chat(&mut self, request: llm::ChatRequest) -> wasmtime::Result<Result<llm::ChatResponse, String>> {
        // 0.1.0 components read the reason from the message.
        Ok(self.complete(request).await.map_err(|e| match e {
            llm::LlmError::NotGranted(m)
            | llm::LlmError::NotConfigured(m)
            | llm::LlmError::BudgetExhausted(m)
            | llm::LlmError::Failed(m) => m,
        }))
    }

    async fn complete(
        &mut self,
        request: llm::ChatRequest,
    ) -> wasmtime::Result<Result<llm::ChatResponse, llm::LlmError>> {
        Ok(StoreState::complete(self, request).await)
    }
}

impl tokenizer::Host for StoreState {
    async fn count(&mut self, texts: Vec<String>) -> wasmtime::Result<Result<Vec<u32>, String>> {
        let Some(tok) = self.tokenizer.clone() else {
            return Ok(Err(
                "no tokenizer: this host runs without a model (for a pipeline, pass --tokenizer MODEL or set `tokenizer` in the pipeline file)".into(),
            ));
        };
        let bytes: usize = texts.iter().map(String::len).sum();
        if bytes > COUNT_MAX_BYTES {
            return Ok(Err(format!(
                "tokenizer.count: {bytes} bytes in one call, more than the {COUNT_MAX_BYTES} a call may count; count in smaller batches (the SDK's count_tokens does)"
            )));
        }
        let mut counts = Vec::with_capacity(texts.len());
        for t in &texts {
            // Counting is host work the plugin's deadline still bounds.
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.stop_call(Stop::Deadline));
            }
            counts.push(tok.count(t) as u32);
        }
        Ok(Ok(counts))
    }
}

impl records::Host for StoreState {}

impl records::HostReader for StoreState {
    async fn read(&mut self, reader: Resource<HostReader>, max: u32) -> wasmtime::Result<Vec<String>> {
        if self.cancel.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let reader = self.table.get_mut(&reader)?;
        Ok(reader.take(max.clamp(1, 65_536) as usize))
    }

    async fn read_packed(&mut self, reader: Resource<HostReader>, max: u32) -> wasmtime::Result<(String, Vec<u32>)> {
        if self.cancel.load(Ordering::Relaxed) {
            return Ok((String::new(), Vec::new()));
        }
        let reader = self.table.get_mut(&reader)?;
        Ok(reader.take_packed(max.clamp(1, 65_536) as usize))
    }

    async fn drop(&mut self, reader: Resource<HostReader>) -> wasmtime::Result<()> {
        self.table.delete(reader)?;
        Ok(())
    }
}

impl records::HostWriter for StoreState {
    async fn write(
        &mut self,
        writer: Resource<HostWriter>,
        batch: Vec<String>,
    ) -> wasmtime::Result<Result<(), String>> {
        let writer = self.table.get_mut(&writer)?;
        let result = writer.append(batch);
        if result.is_err() && writer.limit_hit() {
            self.output_limit_hit = true;
        }
        Ok(result)
    }

    async fn pass(
        &mut self,
        writer: Resource<HostWriter>,
        positions: Vec<u64>,
    ) -> wasmtime::Result<Result<(), String>> {
        let writer = self.table.get_mut(&writer)?;
        let result = writer.pass(&positions);
        if result.is_err() && writer.limit_hit() {
            self.output_limit_hit = true;
        }
        Ok(result)
    }

    async fn drop(&mut self, writer: Resource<HostWriter>) -> wasmtime::Result<()> {
        self.table.delete(writer)?;
        Ok(())
    }
}

/// The store's resource limits: linear memory up to the plugin's cap (a growth past it traps,
/// and the limiter records that it refused, so the host reports the limit without reading trap
/// text), and small fixed numbers of instances, memories and tables.
#[derive(Debug)]
pub(crate) struct PluginLimits {
    /// Bytes of linear memory a memory may reach.
    pub memory_bytes: usize,
    /// Set once a growth past `memory_bytes` was refused.
    pub memory_hit: bool,
}

impl PluginLimits {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        Self { memory_bytes, memory_hit: false }
    }
}

/// Elements a table may hold.
const TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for PluginLimits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit: growing linear memory to {desired} bytes, past the cap of {} bytes",
                self.memory_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        8
    }
}

/// Lets the store enforce [`PluginLimits`] while the state owns them.
pub(crate) fn limiter(state: &mut StoreState) -> &mut dyn ResourceLimiter {
    &mut state.limits
}
