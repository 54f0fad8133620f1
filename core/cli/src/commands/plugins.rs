//! `trex-host plugins list | inspect | validate | build`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use trex_plugin_host::{LoadedPlugin, PluginHost};

use super::{Global, host_config, open_host};

/// List, inspect and validate plugins.
#[derive(Subcommand, Debug)]
pub enum PluginsCommand {
    /// One line per plugin: name, kind, version, API version, granted capabilities.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A plugin's description, limits, capabilities and config schema.
    Inspect {
        /// Plugin name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin folder (or a folder of plugin folders) and report every problem.
    Validate {
        /// A folder holding plugin.toml, or a folder of such folders.
        dir: PathBuf,
    },
    /// Build a plugin crate (one made by `trex-host new`, say) into a component: `cargo build
    /// --release --target wasm32-wasip2` (the target is added through rustup when missing), the
    /// `.wasm` copied next to the crate's plugin.toml as its `wasm` field names it, then
    /// validated as `plugins validate` does.
    Build {
        /// The crate's folder (holding Cargo.toml and plugin.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

impl PluginsCommand {
    /// Run it.
    pub async fn execute(self, global: &Global) -> Result<ExitCode> {
        match self {
            PluginsCommand::List { json } => {
                let host = open_host(global, host_config(global)?).await?;
                list(&host, json)?;
                if host.plugins().next().is_none() && host.failures().is_empty() {
                    eprintln!(
                        "no plugins found in {}: build the standard ones with `cargo xtask build-plugins`, or pass --plugins DIR",
                        global.plugins.display()
                    );
                }
                Ok(if host.failures().is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            PluginsCommand::Inspect { name, json } => {
                let host = open_host(global, host_config(global)?).await?;
                let plugin = host.get(&name).with_context(|| {
                    format!("no plugin named `{name}` in {} (see `trex-host plugins list`)", global.plugins.display())
                })?;
                inspect(plugin, json)?;
                Ok(ExitCode::SUCCESS)
            }
            PluginsCommand::Validate { dir } => validate(global, &dir).await,
            PluginsCommand::Build { dir } => {
                build(&dir)?;
                validate(global, &dir).await
            }
        }
    }
}

fn list(host: &PluginHost, json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = host
            .plugins()
            .map(|p| {
                serde_json::json!({
                    "name": p.manifest.name,
                    "kind": p.manifest.kind,
                    "version": p.info.version,
                    "api_version": p.info.api_version,
                    "capabilities": p.granted.names(),
                    "denied": p.denied,
                    "path": p.manifest.manifest_path,
                })
            })
            .collect();
        let failures: Vec<_> =
            host.failures().iter().map(|f| serde_json::json!({"dir": f.dir, "error": f.error.to_string()})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"plugins": rows, "failures": failures}))?);
        return Ok(());
    }
    println!("{:<18} {:<11} {:<8} {:<5} {:<22} DESCRIPTION", "NAME", "KIND", "VERSION", "API", "CAPABILITIES");
    for p in host.plugins() {
        let mut caps = p.granted.names().join(",");
        if caps.is_empty() {
            caps = "-".into();
        }
        if !p.denied.is_empty() {
            caps.push_str(&format!(" (denied: {})", p.denied.join(",")));
        }
        // The manifest's description, else the one the component gives itself.
        let text = if p.manifest.description.is_empty() { &p.info.description } else { &p.manifest.description };
        let description: String = text.chars().take(60).collect();
        println!(
            "{:<18} {:<11} {:<8} {:<5} {:<22} {}",
            p.manifest.name,
            p.manifest.kind.to_string(),
            p.info.version,
            p.info.api_version,
            caps,
            description
        );
    }
    for f in host.failures() {
        println!("{:<18} FAILED      {}", f.dir.file_name().unwrap_or_default().to_string_lossy(), f.error);
    }
    Ok(())
}

fn inspect(p: &LoadedPlugin, json: bool) -> Result<()> {
    let value = serde_json::json!({
        "name": p.manifest.name,
        "kind": p.manifest.kind,
        "version": p.info.version,
        "api_version": p.info.api_version,
        "description": p.info.description,
        "manifest": p.manifest.manifest_path,
        "wasm": p.manifest.wasm,
        "capabilities": { "requested": p.manifest.capabilities.names(), "granted": p.granted.names(), "denied": p.denied },
        "limits": p.limits,
        "load": { "ms": p.load.load_time.as_secs_f64() * 1e3, "from_cache": p.load.from_cache },
        "config_schema": p.info.config_schema,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{} {} ({}, plugin API {})", p.manifest.name, p.info.version, p.manifest.kind, p.info.api_version);
    println!("\n{}\n", p.info.description);
    println!("manifest      {}", p.manifest.manifest_path.display());
    println!("component     {}", p.manifest.wasm.display());
    println!("requested     {}", list_or_dash(&p.manifest.capabilities.names()));
    println!("granted       {}", list_or_dash(&p.granted.names()));
    if !p.denied.is_empty() {
        println!("denied        {}", p.denied.join(", "));
    }
    let l = &p.limits;
    println!(
        "limits        timeout {} ms, memory {} MiB, output {} MiB, fuel {}",
        l.timeout_ms,
        l.memory_mib,
        l.output_mib,
        l.fuel.map(|f| f.to_string()).unwrap_or_else(|| "unlimited".into())
    );
    println!(
        "loaded in     {:.1} ms ({})",
        p.load.load_time.as_secs_f64() * 1e3,
        if p.load.from_cache { "from cache" } else { "compiled" }
    );
    println!("\nconfig schema:\n{}", serde_json::to_string_pretty(&p.info.config_schema)?);
    Ok(())
}

fn list_or_dash(items: &[&str]) -> String {
    if items.is_empty() { "-".into() } else { items.join(", ") }
}

async fn validate(global: &Global, dir: &Path) -> Result<ExitCode> {
    let folders: Vec<PathBuf> = if dir.join("plugin.toml").is_file() {
        vec![dir.to_path_buf()]
    } else {
        let v = trex_plugin_host::folders_holding(dir, "plugin.toml")
            .with_context(|| format!("cannot read {}", dir.display()))?;
        if v.is_empty() {
            bail!("{} holds no plugin.toml, and no sub-folder does", dir.display());
        }
        v
    };
    let mut failed = 0;
    for folder in &folders {
        let mut host = PluginHost::new(host_config(global)?)?;
        match host.load(&folder.join("plugin.toml")).await {
            Ok(p) => {
                let schema_ok = p.info.config_schema.is_object();
                println!("ok      {} ({} {}, {})", p.manifest.name, p.manifest.kind, p.info.version, folder.display());
                if !schema_ok {
                    println!("warning {}: its config schema is not a JSON object", p.manifest.name);
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAILED  {}: {e}", folder.display());
            }
        }
    }
    println!("{} passed, {} failed", folders.len() - failed, failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Build the plugin crate in `dir` for `wasm32-wasip2` and put its component where its manifest
/// says.
fn build(dir: &Path) -> Result<()> {
    use std::process::Command;
    let manifest_path = dir.join("plugin.toml");
    let cargo_toml = dir.join("Cargo.toml");
    for f in [&manifest_path, &cargo_toml] {
        if !f.is_file() {
            bail!("{} is missing: `plugins build` takes a plugin crate's folder (see `trex-host new`)", f.display());
        }
    }
    let manifest = trex_plugin_host::Manifest::load(&manifest_path)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The target, through rustup when it is there.
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(o) = installed
        && o.status.success()
        && !String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2")
    {
        eprintln!("adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
        let ok = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status()?.success();
        if !ok {
            bail!("`rustup target add wasm32-wasip2` failed");
        }
    }
    eprintln!("building {} for wasm32-wasip2", dir.display());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&cargo_toml)
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("the build of {} failed (its errors are above)", dir.display());
    }
    // Where cargo put it: the crate's target folder (or CARGO_TARGET_DIR), named after its library.
    let meta = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(&cargo_toml)
        .output()
        .with_context(|| format!("cannot run {cargo} metadata"))?;
    if !meta.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&meta.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let target = PathBuf::from(meta["target_directory"].as_str().context("cargo metadata: no target_directory")?);
    let lib = meta["packages"][0]["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"))))
        .and_then(|t| t["name"].as_str())
        .context("the crate has no cdylib library: add `[lib] crate-type = [\"cdylib\"]` to its Cargo.toml")?
        .replace('-', "_");
    let built = target.join("wasm32-wasip2/release").join(format!("{lib}.wasm"));
    std::fs::copy(&built, &manifest.wasm)
        .with_context(|| format!("cannot copy {} to {}", built.display(), manifest.wasm.display()))?;
    eprintln!("placed {}", manifest.wasm.display());
    Ok(())
}
