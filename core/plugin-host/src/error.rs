//! Errors of the plugin host. Each names the plugin (or file) and says what to do next.

use std::path::PathBuf;

/// Why a plugin could not be found, loaded or called.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// A `plugin.toml` that cannot be read or is invalid.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The plugin was built against another version of the plugin contract.
    #[error(
        "plugin `{plugin}` was built for trex plugin API {plugin_version}, but this host implements API {host_version}: rebuild the plugin against trex-sdk {host_version}"
    )]
    ApiVersion {
        /// Plugin name.
        plugin: String,
        /// The API version in its manifest or `describe()`.
        plugin_version: String,
        /// The host's API version.
        host_version: String,
    },
    /// The component file is missing or is not a valid component.
    #[error("plugin `{plugin}`: cannot load {}: {message}", path.display())]
    Load {
        /// Plugin name.
        plugin: String,
        /// The `.wasm` file.
        path: PathBuf,
        /// The loader's complaint.
        message: String,
    },
    /// The component does not implement the world its manifest declares.
    #[error(
        "plugin `{plugin}`: its plugin.toml says kind `{kind}`, but the component does not implement world `trex:plugin/{kind}`: {message}"
    )]
    WrongWorld {
        /// Plugin name.
        plugin: String,
        /// The declared kind.
        kind: String,
        /// The linker's complaint.
        message: String,
    },
    /// No plugin of that name (and kind) is loaded.
    #[error("no {kind} plugin named `{name}` in {}{hint}", dir.display())]
    NotFound {
        /// Requested name.
        name: String,
        /// Requested kind.
        kind: String,
        /// Plugin folder searched.
        dir: PathBuf,
        /// Suggestions.
        hint: String,
    },
    /// A call ran past its wall-clock deadline.
    #[error("plugin `{plugin}` exceeded its time limit of {limit_ms} ms and was stopped{context}")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        limit_ms: u64,
        /// Captured output.
        context: String,
    },
    /// A call tried to grow memory past the cap.
    #[error("plugin `{plugin}` exceeded its memory limit of {limit_mib} MiB and was stopped{context}")]
    Memory {
        /// Plugin name.
        plugin: String,
        /// The cap.
        limit_mib: u64,
        /// Captured output.
        context: String,
    },
    /// A call used up its fuel.
    #[error("plugin `{plugin}` ran out of fuel ({fuel} units) and was stopped{context}")]
    Fuel {
        /// Plugin name.
        plugin: String,
        /// The budget.
        fuel: u64,
        /// Captured output.
        context: String,
    },
    /// A data tool wrote more than its output limit.
    #[error(
        "plugin `{plugin}` exceeded its output limit of {limit_mib} MiB; raise [limits] output_mib in its plugin.toml if the output is expected{context}"
    )]
    Output {
        /// Plugin name.
        plugin: String,
        /// The cap.
        limit_mib: u64,
        /// Captured output.
        context: String,
    },
    /// The plugin kept more in `/scratch` than its quota allows.
    #[error(
        "plugin `{plugin}` exceeded its scratch quota of {limit} {what} (it had {used}) and was stopped; raise [limits] scratch_mib or scratch_files in its plugin.toml if that much is expected{context}"
    )]
    Scratch {
        /// Plugin name.
        plugin: String,
        /// `bytes` or `files`.
        what: String,
        /// What it had.
        used: u64,
        /// The quota.
        limit: u64,
        /// Captured output.
        context: String,
    },
    /// The guest panicked.
    #[error("plugin `{plugin}` panicked: {message}{context}")]
    Panic {
        /// Plugin name.
        plugin: String,
        /// The panic message.
        message: String,
        /// Captured output.
        context: String,
    },
    /// The guest trapped for another reason.
    #[error("plugin `{plugin}` failed: {message}{context}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap.
        message: String,
        /// Captured output.
        context: String,
    },
    /// The plugin returned an error on purpose.
    #[error("plugin `{plugin}` reported an error: {}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Reported {
        /// Plugin name.
        plugin: String,
        /// Its message.
        message: String,
        /// The field it is about.
        field: Option<String>,
    },
    /// The plugin broke the contract (wrong name in `describe()`, a malformed document).
    #[error("plugin `{plugin}` broke the plugin contract: {message}")]
    Contract {
        /// Plugin name.
        plugin: String,
        /// What it did wrong.
        message: String,
    },
    /// The call was cancelled by the host.
    #[error("plugin `{plugin}`: call cancelled")]
    Cancelled {
        /// Plugin name.
        plugin: String,
    },
    /// A host-side failure (engine set-up, cache, file system).
    #[error("plugin host: {0}")]
    Host(String),
}

impl PluginError {
    /// The plugin this error is about, when there is one.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Self::Manifest { .. } | Self::Host(_) | Self::NotFound { .. } => None,
            Self::ApiVersion { plugin, .. }
            | Self::Load { plugin, .. }
            | Self::WrongWorld { plugin, .. }
            | Self::Timeout { plugin, .. }
            | Self::Memory { plugin, .. }
            | Self::Fuel { plugin, .. }
            | Self::Output { plugin, .. }
            | Self::Scratch { plugin, .. }
            | Self::Panic { plugin, .. }
            | Self::Trap { plugin, .. }
            | Self::Reported { plugin, .. }
            | Self::Contract { plugin, .. }
            | Self::Cancelled { plugin } => Some(plugin),
        }
    }
}
