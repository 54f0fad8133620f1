//! Calling plugins: one function per export, each under the plugin's limits, each failure
//! turned into a [`PluginError`] that names the plugin and what happened.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use trex_sdk::types::{Outcome, PluginKind, Proposal, ResearchContext, TaskBrief};
use wasmtime::component::ResourceAny;
use wasmtime::{Store, Trap};

use crate::bindings::{evaluator, researcher, types};
use crate::records::{HostReader, HostWriter};
use crate::state::{Stop, StoreState};
use crate::{CallEnv, KindPre, LoadedPlugin, PluginError, PluginHost, PluginInfo};

/// What a data-tool run produced.
#[derive(Debug, Clone, Serialize)]
pub struct DataToolRun {
    /// The records written, each a JSON object as text.
    #[serde(skip)]
    pub records: Vec<String>,
    /// Records given to the plugin.
    pub records_in: u64,
    /// Records it wrote.
    pub records_out: u64,
    /// Records it dropped, by reason (as it reported them).
    pub dropped: BTreeMap<String, u64>,
    /// Its metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Wall time of the call, including instantiation.
    pub elapsed: Duration,
}

/// One example to score and the model's output for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalItem {
    /// Example id.
    pub id: String,
    /// The dataset record.
    pub example: serde_json::Value,
    /// The model's output.
    pub output: String,
}

/// The verdict on one example.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ExampleResult {
    /// Example id.
    pub id: String,
    /// In [0, 1].
    pub score: f64,
    /// Solved or not.
    pub passed: bool,
    /// Failure categories.
    pub tags: Vec<String>,
    /// Why.
    pub explanation: String,
}

/// An evaluation: every example's result and the task metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Per-example results, in input order.
    pub results: Vec<ExampleResult>,
    /// The task metric in [0, 1].
    pub score: f64,
    /// Examples passed.
    pub passed: u64,
    /// Examples scored.
    pub total: u64,
    /// Further metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// An open Researcher session: its own store, kept for the session's lifetime.
pub struct ResearcherSession<'h> {
    host: &'h PluginHost,
    plugin: &'h LoadedPlugin,
    store: Store<StoreState>,
    bindings: researcher::Researcher,
    session: ResourceAny,
    /// Set once a call trapped; the instance may be inconsistent, so the session is over.
    broken: Option<String>,
}

impl std::fmt::Debug for ResearcherSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResearcherSession")
            .field("plugin", &self.plugin.manifest.name)
            .field("broken", &self.broken)
            .finish()
    }
}

/// Stop waiting well after the epoch deadline should have fired (a host import that hangs).
async fn with_backstop<T>(
    plugin: &LoadedPlugin,
    fut: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let backstop = Duration::from_millis(plugin.limits.timeout_ms) + Duration::from_secs(5);
    match tokio::time::timeout(backstop, fut).await {
        Ok(r) => r,
        Err(_) => Err(wasmtime::Error::new(Trap::Interrupt)),
    }
}

/// Longest message of a plugin kept in an error (plugin text is made safe by `text::line`).
const MESSAGE_MAX: usize = 2000;

/// Append the plugin's stderr and recent log lines to an error message: the last lines only,
/// each cut and made safe to print.
fn context(state: &StoreState) -> String {
    let mut out = String::new();
    for (label, text) in [("stderr", state.stderr_text()), ("stdout", state.stdout_text())] {
        if text.is_empty() {
            continue;
        }
        out.push_str(&format!("\n  plugin {label} (last lines):"));
        for l in crate::text::tail_lines(&text, 12, 300) {
            out.push_str("\n  | ");
            out.push_str(&l);
        }
    }
    if !state.log_tail.is_empty() {
        out.push_str("\n  plugin log (last lines):");
        for l in state.log_tail.iter().rev().take(5).collect::<Vec<_>>().into_iter().rev() {
            out.push_str("\n  | ");
            out.push_str(&crate::text::line(l, 300));
        }
    }
    out
}

/// Turn a failed call into a [`PluginError`]: from what the host itself recorded (its own
/// stops, the memory limiter) and the kind of trap, never from the trap's text.
fn classify(plugin: &LoadedPlugin, state: &StoreState, err: wasmtime::Error) -> PluginError {
    let name = plugin.manifest.name.clone();
    let ctx = context(state);
    let trap = err.downcast_ref::<Trap>().copied();
    match &state.stop {
        Some(Stop::Deadline) => {
            return PluginError::Timeout { plugin: name, limit_ms: state.deadline_ms, context: ctx };
        }
        Some(Stop::Scratch { what, used, limit }) => {
            return PluginError::Scratch {
                plugin: name,
                what: what.to_string(),
                used: *used,
                limit: *limit,
                context: ctx,
            };
        }
        None => {}
    }
    if trap == Some(Trap::Interrupt) {
        if state.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return PluginError::Cancelled { plugin: name };
        }
        return PluginError::Timeout { plugin: name, limit_ms: state.deadline_ms, context: ctx };
    }
    if trap == Some(Trap::OutOfFuel) {
        return PluginError::Fuel { plugin: name, fuel: plugin.limits.fuel.unwrap_or(u64::MAX), context: ctx };
    }
    if state.limits.memory_hit {
        return PluginError::Memory { plugin: name, limit_mib: plugin.limits.memory_mib, context: ctx };
    }
    let message = match trap {
        // A Rust panic aborts the instance with `unreachable`. The SDK's hook reports the message
        // first (`host.panicked`); a component built before 0.1.1 logs it at error level instead.
        Some(Trap::UnreachableCodeReached) => {
            let message = state
                .panic
                .clone()
                .or_else(|| state.last_error_log.clone())
                .unwrap_or_else(|| "reached `unreachable` (a panic or an abort, with no message)".into());
            return PluginError::Panic { plugin: name, message, context: ctx };
        }
        Some(Trap::StackOverflow) => {
            "stack overflow: deep recursion or large arrays on the stack (move them into a Vec or a Box)".to_string()
        }
        // Rust's stack grows down from the start of linear memory, so running past its bottom
        // is an access below address 0.
        Some(Trap::MemoryOutOfBounds) => "out-of-bounds memory access; in a Rust plugin this is usually a stack overflow (deep recursion or large arrays on the stack: move them into a Vec or a Box)".to_string(),
        Some(t) => format!("trapped: {t}"),
        None => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => format!(
                "called exit({}) during the call instead of returning from it; the call produced no result",
                exit.0
            ),
            // The outermost error says what failed; the rest of the chain is wasm backtrace.
            None => crate::text::line(&err.to_string(), MESSAGE_MAX),
        },
    };
    PluginError::Trap { plugin: name, message, context: ctx }
}

/// Turn an error the plugin returned into a [`PluginError`].
fn reported(plugin: &LoadedPlugin, state: &StoreState, e: types::PluginError) -> PluginError {
    if state.output_limit_hit {
        return PluginError::Output {
            plugin: plugin.manifest.name.clone(),
            limit_mib: plugin.limits.output_mib,
            context: String::new(),
        };
    }
    PluginError::Reported {
        plugin: plugin.manifest.name.clone(),
        message: crate::text::line(&e.message, MESSAGE_MAX),
        field: e.field.map(|f| crate::text::line(&f, 200)),
    }
}

/// A proposal document that is not a usable `Proposal`, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidProposal(pub String);

/// Bytes a proposal document may take, and characters its rationale keeps.
const PROPOSAL_MAX_BYTES: usize = 8 << 10;
const RATIONALE_CHARS: usize = 1000;

/// A proposal of a Researcher's reply: within the size limit, matching the schema, its
/// rationale cut and made safe to print.
fn parse_proposal(text: &str) -> Result<Proposal, InvalidProposal> {
    if text.len() > PROPOSAL_MAX_BYTES {
        return Err(InvalidProposal(format!(
            "it is {} bytes, more than the {PROPOSAL_MAX_BYTES} a proposal may take",
            text.len()
        )));
    }
    let mut p: Proposal = serde_json::from_str(text).map_err(|e| {
        InvalidProposal(crate::text::line(&format!("it does not match the Proposal schema: {e}"), MESSAGE_MAX))
    })?;
    p.rationale = crate::text::line(&p.rationale, RATIONALE_CHARS);
    Ok(p)
}

/// The deadline of `describe` and `validate-config`, which do no real work: a plugin that spins
/// there cannot hold up every command that lists the plugins.
fn quick_deadline(plugin: &LoadedPlugin) -> Duration {
    Duration::from_millis(plugin.limits.timeout_ms.min(QUICK_CALL_MS))
}

/// Milliseconds `describe` and `validate-config` may take at most.
const QUICK_CALL_MS: u64 = 2000;

/// After a call that returned: it still fails if the plugin left more in `/scratch` than its
/// quota (one large write between two checks).
fn after_call(plugin: &LoadedPlugin, store: &mut Store<StoreState>) -> Result<(), PluginError> {
    let state = store.data_mut();
    state.deadline = None;
    match state.check_limits() {
        Some(Stop::Scratch { what, used, limit }) => Err(PluginError::Scratch {
            plugin: plugin.manifest.name.clone(),
            what: what.to_string(),
            used,
            limit,
            context: String::new(),
        }),
        _ => Ok(()),
    }
}

/// Entries at most in a plugin's drop counts, metrics, tags per example; characters at most in
/// their names and in an explanation.
const NAMES_MAX: usize = 64;
const NAME_CHARS: usize = 80;
const TAGS_PER_EXAMPLE: usize = 16;
const EXPLANATION_CHARS: usize = 1000;

/// A plugin's named counts, bounded: at most [`NAMES_MAX`] names of [`NAME_CHARS`] characters;
/// the counts of the others are summed under `other`.
fn bounded_counts(items: impl Iterator<Item = (String, u64)>) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (name, n) in items {
        let name = crate::text::line(&name, NAME_CHARS);
        let key = if out.len() < NAMES_MAX || out.contains_key(&name) { name } else { "other".to_string() };
        *out.entry(key).or_default() += n;
    }
    out
}

/// A plugin's metrics, bounded like [`bounded_counts`] (metrics past the limit are left out).
fn bounded_metrics(items: impl Iterator<Item = (String, f64)>) -> BTreeMap<String, f64> {
    items.take(NAMES_MAX).map(|(n, v)| (crate::text::line(&n, NAME_CHARS), v)).collect()
}

/// Instantiate `$pre` (any world) in `$store` and call the export every world has, e.g.
/// `call_describe(&mut store)`, on its API interface: the one place the three worlds' plumbing
/// is written.
macro_rules! any_world {
    ($pre:expr, $store:expr, |$api:ident| $call:expr) => {
        match $pre {
            KindPre::DataTool(pre) => {
                let b = pre.instantiate_async(&mut $store).await?;
                let $api = b.trex_plugin_data_tool_api();
                $call
            }
            KindPre::Evaluator(pre) => {
                let b = pre.instantiate_async(&mut $store).await?;
                let $api = b.trex_plugin_evaluator_api();
                $call
            }
            KindPre::Researcher(pre) => {
                let b = pre.instantiate_async(&mut $store).await?;
                let $api = b.trex_plugin_researcher_api();
                $call
            }
        }
    };
}

/// The keys of node summaries that plugins built against contract 0.1.0 do not know (and, with
/// that SDK, refuse): the host leaves them out of what it sends such a plugin.
const NODE_KEYS_SINCE_0_1_1: &[&str] = &["failure"];

/// A host document (a `ResearchContext` or an `Outcome`) as text for a plugin built against
/// contract `api_version`, shaped for that version.
fn document_for<T: Serialize>(api_version: &str, doc: &T) -> Result<String, PluginError> {
    let mut value = serde_json::to_value(doc).map_err(|e| PluginError::Host(e.to_string()))?;
    if api_version == "0.1.0" {
        let strip = |node: &mut serde_json::Value| {
            if let Some(o) = node.as_object_mut() {
                for k in NODE_KEYS_SINCE_0_1_1 {
                    o.remove(*k);
                }
            }
        };
        if let Some(n) = value.get_mut("node") {
            strip(n);
        }
        for list in ["parent_path", "siblings", "best", "worst"] {
            if let Some(serde_json::Value::Array(nodes)) = value.get_mut(list) {
                nodes.iter_mut().for_each(strip);
            }
        }
        if let Some(o) = value.as_object_mut() {
            o.remove("tried");
        }
        // A task brief: the search-space fields added since.
        if let Some(space) = value.get_mut("search_space").and_then(|v| v.as_object_mut()) {
            space.remove("max_seq_len");
            if let Some(lr) = space.get_mut("learning_rate").and_then(|v| v.as_object_mut()) {
                lr.remove("values");
            }
        }
    }
    Ok(value.to_string())
}

fn to_json_text(value: &serde_json::Value) -> String {
    if value.is_null() { "{}".to_string() } else { value.to_string() }
}

fn contract(plugin: &LoadedPlugin, message: String) -> PluginError {
    PluginError::Contract { plugin: plugin.manifest.name.clone(), message }
}

impl PluginHost {
    /// Instantiate `plugin` and ask it to describe itself; checks the answer against its manifest.
    pub(super) async fn describe(&self, plugin: &LoadedPlugin) -> Result<PluginInfo, PluginError> {
        let mut store = self.new_store(plugin, &CallEnv::default())?;
        self.arm_for(&mut store, plugin, quick_deadline(plugin))?;
        let fut = async { Ok(any_world!(&plugin.pre, store, |api| api.call_describe(&mut store).await?)) };
        let info = with_backstop(plugin, fut).await.map_err(|e| classify(plugin, store.data(), e))?;
        let m = &plugin.manifest;
        if info.name != m.name {
            return Err(contract(
                plugin,
                format!(
                    "describe() says its name is `{}`, but {} says `{}`",
                    info.name,
                    m.manifest_path.display(),
                    m.name
                ),
            ));
        }
        if info.api_version != m.api_version {
            return Err(PluginError::ApiVersion {
                plugin: m.name.clone(),
                plugin_version: info.api_version,
                host_version: super::HOST_API_VERSION.to_string(),
            });
        }
        let kind = match info.kind {
            types::PluginKind::DataTool => PluginKind::DataTool,
            types::PluginKind::Evaluator => PluginKind::Evaluator,
            types::PluginKind::Researcher => PluginKind::Researcher,
        };
        if kind != m.kind {
            return Err(contract(
                plugin,
                format!(
                    "describe() says it is {}, but {} says kind `{}`: fix one of them",
                    crate::with_article(kind),
                    m.manifest_path.display(),
                    m.kind
                ),
            ));
        }
        let config_schema = serde_json::from_str(&info.config_schema)
            .map_err(|e| contract(plugin, format!("describe() returned a config schema that is not JSON: {e}")))?;
        let description = crate::text::line(&info.description, MESSAGE_MAX);
        Ok(PluginInfo {
            name: info.name,
            kind,
            version: crate::text::line(&info.version, 64),
            api_version: info.api_version,
            description: if description.is_empty() { m.description.clone() } else { description },
            config_schema,
        })
    }

    /// Check that `name` is a loaded plugin of `kind` and that it accepts `config`; returns the
    /// config with defaults filled in.
    pub async fn check_config(
        &self,
        name: &str,
        kind: PluginKind,
        config: &serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        self.expect(name, kind)?;
        self.validate_config(name, config).await
    }

    /// Check `config` against plugin `name`'s config type; returns it with defaults filled in.
    pub async fn validate_config(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        let plugin = self.plugins.get(name).ok_or_else(|| PluginError::NotFound {
            name: name.into(),
            kind: "any".into(),
            dir: self.dir.clone(),
            hint: String::new(),
        })?;
        let mut store = self.new_store(plugin, &CallEnv::default())?;
        self.arm_for(&mut store, plugin, quick_deadline(plugin))?;
        let text = to_json_text(config);
        let fut =
            async { Ok(any_world!(&plugin.pre, store, |api| api.call_validate_config(&mut store, &text).await?)) };
        let result = with_backstop(plugin, fut).await.map_err(|e| classify(plugin, store.data(), e))?;
        let normalized = result.map_err(|e| reported(plugin, store.data(), e))?;
        serde_json::from_str(&normalized)
            .map_err(|e| contract(plugin, format!("validate-config returned invalid JSON: {e}")))
    }

    /// Stream `input` (JSON objects as text) through data tool `name`.
    pub async fn run_data_tool(
        &self,
        name: &str,
        config: &serde_json::Value,
        input: Vec<String>,
        env: &CallEnv,
    ) -> Result<DataToolRun, PluginError> {
        let plugin = self.expect(name, PluginKind::DataTool)?;
        let KindPre::DataTool(pre) = &plugin.pre else { unreachable!("expect() checked the kind") };
        let started = Instant::now();
        let records_in = input.len() as u64;
        let mut store = self.new_store(plugin, env)?;
        let input = super::records::Input::new(input);
        let reader = store
            .data_mut()
            .table
            .push(HostReader::new(input.clone()))
            .map_err(|e| PluginError::Host(e.to_string()))?;
        let writer = store
            .data_mut()
            .table
            .push(HostWriter::new(plugin.limits.output_mib << 20, input))
            .map_err(|e| PluginError::Host(e.to_string()))?;
        let writer_rep = writer.rep();
        self.arm(&mut store, plugin)?;
        let text = to_json_text(config);
        let fut = async {
            let b = pre.instantiate_async(&mut store).await?;
            b.trex_plugin_data_tool_api().call_run(&mut store, &text, reader, writer).await
        };
        let result = with_backstop(plugin, fut).await.map_err(|e| classify(plugin, store.data(), e))?;
        let stats = result.map_err(|e| reported(plugin, store.data(), e))?;
        after_call(plugin, &mut store)?;
        let writer = wasmtime::component::Resource::<HostWriter>::new_own(writer_rep);
        let records =
            store.data_mut().table.delete(writer).map_err(|e| PluginError::Host(e.to_string()))?.into_records();
        Ok(DataToolRun {
            records_in,
            records_out: records.len() as u64,
            records,
            dropped: bounded_counts(stats.dropped.into_iter().map(|d| (d.reason, d.count))),
            metrics: bounded_metrics(stats.metrics.into_iter().map(|m| (m.name, m.value))),
            elapsed: started.elapsed(),
        })
    }

    /// Score `items` with evaluator `name`, `batch_size` items per call, in one instance.
    pub async fn evaluate(
        &self,
        name: &str,
        config: &serde_json::Value,
        items: &[EvalItem],
        batch_size: usize,
        env: &CallEnv,
    ) -> Result<EvalReport, PluginError> {
        let plugin = self.expect(name, PluginKind::Evaluator)?;
        let KindPre::Evaluator(pre) = &plugin.pre else { unreachable!("expect() checked the kind") };
        let mut store = self.new_store(plugin, env)?;
        self.arm(&mut store, plugin)?;
        let bindings = with_backstop(plugin, pre.instantiate_async(&mut store))
            .await
            .map_err(|e| classify(plugin, store.data(), e))?;
        let api = bindings.trex_plugin_evaluator_api();
        let text = to_json_text(config);
        let mut results: Vec<evaluator::exports::trex::plugin::evaluator_api::ExampleResult> =
            Vec::with_capacity(items.len());
        for (i, chunk) in items.chunks(batch_size.max(1)).enumerate() {
            let batch: Vec<_> = chunk
                .iter()
                .map(|it| evaluator::exports::trex::plugin::evaluator_api::EvalItem {
                    id: it.id.clone(),
                    example: it.example.to_string(),
                    output: it.output.clone(),
                })
                .collect();
            self.arm(&mut store, plugin)?;
            let r = with_backstop(plugin, api.call_evaluate(&mut store, &text, &batch))
                .await
                .map_err(|e| classify(plugin, store.data(), e))?
                .map_err(|e| reported(plugin, store.data(), e))?;
            if r.len() != chunk.len() {
                return Err(contract(
                    plugin,
                    format!("evaluate() returned {} results for a batch of {} (batch {i})", r.len(), chunk.len()),
                ));
            }
            for (res, item) in r.iter().zip(chunk) {
                if res.id != item.id {
                    return Err(contract(
                        plugin,
                        format!("evaluate() returned result `{}` where `{}` was expected", res.id, item.id),
                    ));
                }
                if !res.score.is_finite() {
                    return Err(contract(plugin, format!("evaluate() returned a non-finite score for `{}`", res.id)));
                }
            }
            results.extend(r);
        }
        self.arm(&mut store, plugin)?;
        let agg = with_backstop(plugin, api.call_aggregate(&mut store, &text, &results))
            .await
            .map_err(|e| classify(plugin, store.data(), e))?
            .map_err(|e| reported(plugin, store.data(), e))?;
        if !agg.score.is_finite() {
            return Err(contract(plugin, "aggregate() returned a non-finite score".into()));
        }
        after_call(plugin, &mut store)?;
        Ok(EvalReport {
            results: results
                .into_iter()
                .map(|r| ExampleResult {
                    id: r.id,
                    score: r.score,
                    passed: r.passed,
                    tags: r.tags.iter().take(TAGS_PER_EXAMPLE).map(|t| crate::text::line(t, NAME_CHARS)).collect(),
                    explanation: crate::text::line(&r.explanation, EXPLANATION_CHARS),
                })
                .collect(),
            score: agg.score,
            passed: agg.passed,
            total: agg.total,
            metrics: bounded_metrics(agg.metrics.into_iter().map(|m| (m.name, m.value))),
        })
    }

    /// Open a session with Researcher `name` for `task`.
    pub async fn open_researcher<'h>(
        &'h self,
        name: &str,
        config: &serde_json::Value,
        task: &TaskBrief,
        env: &CallEnv,
    ) -> Result<ResearcherSession<'h>, PluginError> {
        let plugin = self.expect(name, PluginKind::Researcher)?;
        let KindPre::Researcher(pre) = &plugin.pre else { unreachable!("expect() checked the kind") };
        let mut store = self.new_store(plugin, env)?;
        self.arm(&mut store, plugin)?;
        let config_text = to_json_text(config);
        let task_text = document_for(&plugin.info.api_version, task)?;
        let fut = async {
            let b = pre.instantiate_async(&mut store).await?;
            let opened =
                b.trex_plugin_researcher_api().session().call_open(&mut store, &config_text, &task_text).await?;
            Ok((b, opened))
        };
        let (bindings, opened) = with_backstop(plugin, fut).await.map_err(|e| classify(plugin, store.data(), e))?;
        let session = opened.map_err(|e| reported(plugin, store.data(), e))?;
        Ok(ResearcherSession { host: self, plugin, store, bindings, session, broken: None })
    }
}

impl ResearcherSession<'_> {
    fn check_usable(&self) -> Result<(), PluginError> {
        match &self.broken {
            Some(why) => Err(PluginError::Trap {
                plugin: self.plugin.manifest.name.clone(),
                message: format!("the session ended after an earlier failure ({why}); open a new one"),
                context: String::new(),
            }),
            None => Ok(()),
        }
    }

    /// Ask for up to `max` proposals. Each proposal is checked against the `Proposal` schema;
    /// the ones that fail come back as errors next to the valid ones.
    pub async fn propose(
        &mut self,
        context: &ResearchContext,
        max: u32,
    ) -> Result<Vec<Result<Proposal, InvalidProposal>>, PluginError> {
        self.check_usable()?;
        let text = document_for(&self.plugin.info.api_version, context)?;
        self.host.arm(&mut self.store, self.plugin)?;
        let api = self.bindings.trex_plugin_researcher_api().session();
        let result = with_backstop(self.plugin, api.call_propose(&mut self.store, self.session, &text, max)).await;
        let raw = match result {
            Ok(r) => r.map_err(|e| reported(self.plugin, self.store.data(), e))?,
            Err(e) => {
                let err = classify(self.plugin, self.store.data(), e);
                self.broken = Some(err.to_string());
                return Err(err);
            }
        };
        if raw.len() > max as usize {
            return Err(contract(
                self.plugin,
                format!("propose() returned {} proposals, more than the {max} asked for", raw.len()),
            ));
        }
        Ok(raw.iter().map(|p| parse_proposal(p)).collect())
    }

    /// Tell the Researcher how an experiment went.
    pub async fn observe(&mut self, outcome: &Outcome) -> Result<(), PluginError> {
        self.check_usable()?;
        let text = document_for(&self.plugin.info.api_version, outcome)?;
        self.host.arm(&mut self.store, self.plugin)?;
        let api = self.bindings.trex_plugin_researcher_api().session();
        match with_backstop(self.plugin, api.call_observe(&mut self.store, self.session, &text)).await {
            Ok(r) => r.map_err(|e| reported(self.plugin, self.store.data(), e)),
            Err(e) => {
                let err = classify(self.plugin, self.store.data(), e);
                self.broken = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// The plugin behind this session.
    pub fn plugin(&self) -> &LoadedPlugin {
        self.plugin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trex_sdk::types::{FailureKind, NodeStatus, NodeSummary};

    fn failed_node(id: u64) -> NodeSummary {
        NodeSummary {
            id,
            parent: Some(0),
            proposal: None,
            status: NodeStatus::Failed,
            failure: Some(FailureKind::Diverged),
            score: None,
            reward: None,
            lesson: "diverged".into(),
            metrics: Default::default(),
        }
    }

    #[test]
    fn plugins_of_contract_0_1_0_get_documents_without_the_fields_added_since() {
        let ctx = ResearchContext {
            node: failed_node(1),
            parent_path: vec![failed_node(0)],
            siblings: vec![failed_node(2)],
            best: vec![],
            worst: vec![failed_node(3)],
            bad_cases: vec![],
            notes: Default::default(),
            tried: vec!["0123456789abcdef".into()],
        };
        let new = document_for("0.1.1", &ctx).unwrap();
        assert_eq!(new.matches("\"failure\":\"diverged\"").count(), 4, "{new}");
        assert!(new.contains("\"tried\""), "{new}");
        let old = document_for("0.1.0", &ctx).unwrap();
        assert!(!old.contains("failure") && !old.contains("tried"), "{old}");
        // What is left is exactly what the 0.1.0 types accept.
        let back: ResearchContext = serde_json::from_str(&old).unwrap();
        assert_eq!(back.node.status, NodeStatus::Failed);
        assert_eq!(back.worst[0].failure, None);
        let outcome = document_for("0.1.0", &Outcome { node: failed_node(4) }).unwrap();
        assert!(!outcome.contains("failure"), "{outcome}");
    }
}
