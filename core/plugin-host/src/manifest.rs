//! `plugin.toml`: what a plugin is, what it asks for, and the limits it runs under.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trex_sdk::types::PluginKind;

use crate::error::PluginError;

/// The version of the plugin contract this host implements.
pub const HOST_API_VERSION: &str = "0.1.1";

/// A parsed and checked `plugin.toml`.
///
/// ```toml
/// name = "dedup-exact"
/// kind = "data-tool"              # data-tool | evaluator | researcher
/// version = "0.1.0"
/// api_version = "0.1.1"           # the trex:plugin contract it was built against
/// wasm = "dedup_exact.wasm"       # relative to the manifest's folder
/// description = "..."
///
/// [capabilities]
/// dataset = false                 # read-only view of the task's dataset folder at /data
/// scratch = false                 # a private read-write folder at /scratch
/// llm = false                     # may call llm.chat through the host
///
/// [limits]
/// timeout_ms = 60000              # wall-clock deadline per call
/// memory_mib = 256                # linear memory cap
/// fuel = 1000000000               # optional instruction budget per call
/// output_mib = 1024               # bytes a data tool may write per run (records count 64 bytes more each)
/// scratch_mib = 256               # bytes the plugin may keep in /scratch during a call
/// scratch_files = 10000           # files and folders it may keep there
/// ```
///
/// Keys are snake_case; the kebab-case spellings of earlier versions (`api-version`,
/// `timeout-ms`, ...) are still read, with a warning ([`Manifest::deprecated`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// Plugin name, unique within a plugin folder.
    pub name: String,
    /// The world it implements.
    pub kind: PluginKind,
    /// Its own version.
    pub version: String,
    /// The contract version it was built against.
    pub api_version: String,
    /// Absolute path of the component.
    pub wasm: PathBuf,
    /// One line for listings.
    pub description: String,
    /// What it asks for.
    pub capabilities: Capabilities,
    /// Limits per call.
    pub limits: Limits,
    /// The manifest file itself.
    pub manifest_path: PathBuf,
    /// Old spellings the file used (`old → new`), for a warning.
    #[serde(skip)]
    pub deprecated: Vec<String>,
}

/// Capabilities a plugin may request; the host grants a subset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Read-only access to the task's dataset folder, mounted at `/data`.
    #[serde(default)]
    pub dataset: bool,
    /// Read-write access to a private scratch folder, mounted at `/scratch`.
    #[serde(default)]
    pub scratch: bool,
    /// Chat completions through the host's LLM client.
    #[serde(default)]
    pub llm: bool,
}

impl Capabilities {
    /// Capabilities in `self` that `granted` lacks, by name.
    pub fn denied_by(&self, granted: &Capabilities) -> Vec<&'static str> {
        let mut denied = Vec::new();
        if self.dataset && !granted.dataset {
            denied.push("dataset");
        }
        if self.scratch && !granted.scratch {
            denied.push("scratch");
        }
        if self.llm && !granted.llm {
            denied.push("llm");
        }
        denied
    }

    /// The capabilities both `self` and `other` allow.
    pub fn intersect(&self, other: &Capabilities) -> Capabilities {
        Capabilities {
            dataset: self.dataset && other.dataset,
            scratch: self.scratch && other.scratch,
            llm: self.llm && other.llm,
        }
    }

    /// Names of the capabilities set, for listings.
    pub fn names(&self) -> Vec<&'static str> {
        self.denied_by(&Capabilities::default())
    }
}

/// Per-call limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline of one call, in milliseconds.
    pub timeout_ms: u64,
    /// Cap on the plugin's linear memory, in MiB.
    pub memory_mib: u64,
    /// Instruction budget of one call (wasmtime fuel); unlimited when absent.
    pub fuel: Option<u64>,
    /// Bytes a data tool may write in one run, in MiB; each record counts
    /// [`RECORD_OVERHEAD_BYTES`] more than its text, for what the host keeps per record.
    pub output_mib: u64,
    /// Bytes the plugin may keep in its `/scratch` folder during one call, in MiB.
    pub scratch_mib: u64,
    /// Files and folders the plugin may keep in `/scratch` during one call.
    pub scratch_files: u64,
}

/// What the host keeps per record beyond its text (the string's header and its slot), counted
/// against a data tool's `output-mib` so that millions of tiny records cannot exhaust the host.
pub const RECORD_OVERHEAD_BYTES: u64 = 64;

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: 60_000,
            memory_mib: 256,
            fuel: None,
            output_mib: 1024,
            scratch_mib: 256,
            scratch_files: 10_000,
        }
    }
}

impl Limits {
    /// The stricter of two limits, field by field.
    pub fn min(&self, other: &Limits) -> Limits {
        Limits {
            timeout_ms: self.timeout_ms.min(other.timeout_ms),
            memory_mib: self.memory_mib.min(other.memory_mib),
            fuel: match (self.fuel, other.fuel) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            output_mib: self.output_mib.min(other.output_mib),
            scratch_mib: self.scratch_mib.min(other.scratch_mib),
            scratch_files: self.scratch_files.min(other.scratch_files),
        }
    }
}

/// `plugin.toml` as written (what `trex-host schema PluginManifest` describes).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// The plugin's name: lower-case letters, digits and `-`; the component's `NAME` must equal it.
    pub name: String,
    /// `data-tool`, `evaluator` or `researcher`.
    pub kind: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// The plugin contract (WIT package `trex:plugin`) it was built against, e.g. `0.1.1`.
    pub api_version: String,
    /// The component, a file name relative to the manifest's folder.
    pub wasm: String,
    /// One line for listings (default: the component's own description).
    #[serde(default)]
    pub description: String,
    /// What it asks for; the host grants a subset.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Limits per call (the host may lower them).
    #[serde(default)]
    pub limits: Limits,
}

/// Bytes a component file may have.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

impl Manifest {
    /// The component's bytes. `wasm` must resolve (links followed) to a regular file inside the
    /// plugin's folder, of at most [`MAX_COMPONENT_BYTES`]; it is opened without following a
    /// link and without blocking, so a link out, a device or a pipe is refused rather than read.
    pub fn read_component(&self) -> Result<Vec<u8>, PluginError> {
        let fail = |message: String| PluginError::Load { plugin: self.name.clone(), path: self.wasm.clone(), message };
        let folder = self.manifest_path.parent().unwrap_or(Path::new("."));
        let folder =
            std::fs::canonicalize(folder).map_err(|e| fail(format!("cannot resolve the plugin folder: {e}")))?;
        let resolved = std::fs::canonicalize(&self.wasm).map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                if is_standard_plugin(&folder) {
                    "no such file: build the standard plugins with `cargo xtask build-plugins`".to_string()
                } else {
                    format!(
                        "no such file: build the plugin with `trex-host plugins build {}` (or `cargo build --release --target wasm32-wasip2` there, then copy target/wasm32-wasip2/release/<crate>.wasm next to its plugin.toml)",
                        folder.display()
                    )
                }
            } else {
                format!("cannot resolve it: {e}")
            })
        })?;
        if !resolved.starts_with(&folder) {
            return Err(fail(format!(
                "it resolves to {}, outside the plugin folder {}: the component must be a file inside it",
                resolved.display(),
                folder.display()
            )));
        }
        let meta = std::fs::metadata(&resolved).map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("it is not a regular file (a folder, device or pipe)".into()));
        }
        if meta.len() > MAX_COMPONENT_BYTES {
            return Err(fail(format!(
                "it is {} MiB; a component may be at most {} MiB",
                meta.len() >> 20,
                MAX_COMPONENT_BYTES >> 20
            )));
        }
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&resolved)
            .map_err(|e| fail(format!("cannot open it: {e}")))?;
        if !file.metadata().map_err(|e| fail(e.to_string()))?.is_file() {
            return Err(fail("it is not a regular file".into()));
        }
        let mut bytes = Vec::new();
        file.take(MAX_COMPONENT_BYTES + 1).read_to_end(&mut bytes).map_err(|e| fail(format!("cannot read it: {e}")))?;
        if bytes.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(fail(format!("it grew past {} MiB while being read", MAX_COMPONENT_BYTES >> 20)));
        }
        Ok(bytes)
    }

    /// Read and check `path` (a `plugin.toml`).
    pub fn load(path: &Path) -> Result<Manifest, PluginError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PluginError::Manifest { path: path.to_path_buf(), message: format!("cannot read it: {e}") })?;
        Self::parse(&text, path)
    }

    /// Parse manifest text; `path` is used for error messages and to resolve `wasm`.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, PluginError> {
        let bad = |message: String| PluginError::Manifest { path: path.to_path_buf(), message };
        let (raw, deprecated): (ManifestFile, _) = crate::toml_file::parse(text).map_err(|e| bad(e.0))?;
        if let Some(w) = crate::toml_file::deprecation(path, &deprecated) {
            tracing::warn!("{w}");
        }

        if raw.name.is_empty() || !raw.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(bad(format!(
                "field `name`: `{}` is not a valid plugin name (use lowercase letters, digits and `-`)",
                raw.name
            )));
        }
        let kind: PluginKind = raw.kind.parse().map_err(|e| bad(format!("field `kind`: {e}")))?;
        parse_semver(&raw.version).map_err(|e| bad(format!("field `version`: {e}")))?;
        let api = parse_semver(&raw.api_version).map_err(|e| bad(format!("field `api_version`: {e}")))?;
        let host = parse_semver(HOST_API_VERSION).expect("the host's own API version is valid semver");
        if !api_compatible(api, host) {
            return Err(PluginError::ApiVersion {
                plugin: raw.name,
                plugin_version: raw.api_version,
                host_version: HOST_API_VERSION.to_string(),
            });
        }
        if raw.wasm.is_empty() || Path::new(&raw.wasm).is_absolute() || raw.wasm.contains("..") {
            return Err(bad(format!(
                "field `wasm`: `{}` must be a file name relative to the manifest's folder",
                raw.wasm
            )));
        }
        if raw.limits.timeout_ms == 0 || raw.limits.memory_mib == 0 || raw.limits.output_mib == 0 {
            return Err(bad("section [limits]: timeout_ms, memory_mib and output_mib must be positive".into()));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Manifest {
            name: raw.name,
            kind,
            version: raw.version,
            api_version: raw.api_version,
            wasm: dir.join(&raw.wasm),
            description: raw.description,
            capabilities: raw.capabilities,
            limits: raw.limits,
            manifest_path: path.to_path_buf(),
            deprecated,
        })
    }
}

/// Whether `folder` is one of the standard plugins of a trex checkout (`plugins/<name>` next to
/// the `xtask` folder), where `cargo xtask build-plugins` builds it.
fn is_standard_plugin(folder: &Path) -> bool {
    folder.parent().is_some_and(|p| p.file_name().is_some_and(|n| n == "plugins"))
        && folder.parent().and_then(Path::parent).is_some_and(|root| root.join("xtask").is_dir())
}

type Semver = (u64, u64, u64);

fn parse_semver(v: &str) -> Result<Semver, String> {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let nums: Option<Vec<u64>> = parts.iter().map(|p| p.parse().ok()).collect();
    match nums.as_deref() {
        Some([a, b, c]) => Ok((*a, *b, *c)),
        _ => Err(format!("`{v}` is not a semantic version like 0.1.0")),
    }
}

/// Cargo's rule: same major version, and for 0.x the same minor; the plugin may not be newer
/// than the host.
fn api_compatible(plugin: Semver, host: Semver) -> bool {
    let same_line = if host.0 == 0 { plugin.0 == 0 && plugin.1 == host.1 } else { plugin.0 == host.0 };
    same_line && plugin <= host
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "dedup-exact"
kind = "data-tool"
version = "0.1.0"
api_version = "0.1.0"
wasm = "dedup_exact.wasm"
"#;

    fn parse(text: &str) -> Result<Manifest, PluginError> {
        Manifest::parse(text, Path::new("/p/dedup-exact/plugin.toml"))
    }

    #[test]
    fn parses_a_minimal_manifest_with_defaults() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.kind, PluginKind::DataTool);
        assert_eq!(m.wasm, Path::new("/p/dedup-exact/dedup_exact.wasm"));
        assert_eq!(m.limits, Limits::default());
        assert_eq!(m.capabilities, Capabilities::default());
    }

    #[test]
    fn a_missing_component_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("my-tool");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("plugin.toml"), GOOD).unwrap();
        let m = Manifest::load(&folder.join("plugin.toml")).unwrap();
        let folder = folder.canonicalize().unwrap();
        assert_eq!(
            m.read_component().unwrap_err().to_string(),
            format!(
                "plugin `dedup-exact`: cannot load {}: no such file: build the plugin with `trex-host plugins build {}` \
                 (or `cargo build --release --target wasm32-wasip2` there, then copy \
                 target/wasm32-wasip2/release/<crate>.wasm next to its plugin.toml)",
                folder.join("dedup_exact.wasm").display(),
                folder.display()
            )
        );
    }

    #[test]
    fn unknown_field_is_named_with_the_file() {
        let err = parse(&format!("{GOOD}\n[limits]\ntimeout_sec = 3\n")).unwrap_err().to_string();
        assert!(err.contains("/p/dedup-exact/plugin.toml"), "{err}");
        assert!(err.contains("timeout_sec") && err.contains("line 9"), "{err}");
    }

    #[test]
    fn the_old_kebab_case_spellings_are_read_and_reported() {
        let old = GOOD.replace("api_version", "api-version") + "[limits]\ntimeout-ms = 5\n";
        let m = parse(&old).unwrap();
        assert_eq!((m.api_version.as_str(), m.limits.timeout_ms), ("0.1.0", 5));
        assert_eq!(m.deprecated, ["`api-version` → `api_version`", "`timeout-ms` → `timeout_ms`"]);
        assert!(parse(GOOD).unwrap().deprecated.is_empty());
    }

    #[test]
    fn bad_kind_lists_the_valid_ones() {
        let err = parse(&GOOD.replace("data-tool", "data_tool")).unwrap_err().to_string();
        assert!(err.contains("field `kind`") && err.contains("data-tool, evaluator, researcher"), "{err}");
    }

    #[test]
    fn incompatible_api_version_names_both_versions() {
        let err = parse(&GOOD.replace("api_version = \"0.1.0\"", "api_version = \"0.2.0\"")).unwrap_err().to_string();
        assert!(err.contains("0.2.0") && err.contains(HOST_API_VERSION), "{err}");
    }

    #[test]
    fn wasm_path_may_not_escape_the_folder() {
        let err = parse(&GOOD.replace("dedup_exact.wasm", "../evil.wasm")).unwrap_err().to_string();
        assert!(err.contains("field `wasm`"), "{err}");
    }

    #[test]
    fn limits_combine_to_the_stricter() {
        let a = Limits { timeout_ms: 10, memory_mib: 100, fuel: None, output_mib: 5, scratch_mib: 8, scratch_files: 3 };
        let b =
            Limits { timeout_ms: 20, memory_mib: 50, fuel: Some(7), output_mib: 9, scratch_mib: 4, scratch_files: 9 };
        assert_eq!(
            a.min(&b),
            Limits { timeout_ms: 10, memory_mib: 50, fuel: Some(7), output_mib: 5, scratch_mib: 4, scratch_files: 3 }
        );
    }

    #[test]
    fn semver_rule() {
        assert!(api_compatible((0, 1, 0), (0, 1, 3)));
        assert!(!api_compatible((0, 1, 4), (0, 1, 3)));
        assert!(!api_compatible((0, 2, 0), (0, 1, 3)));
        assert!(api_compatible((1, 0, 0), (1, 4, 0)));
    }
}
