//! `trex-host schema`: the JSON Schemas of every document trex exchanges with plugins, and of
//! every loaded plugin's config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use trex_plugin_host::PluginHost;

use super::{Global, host_config, open_host};

/// Print the JSON Schemas of every document trex exchanges with plugins, of every file a user
/// writes (`PluginManifest` for plugin.toml, `Task` for task.toml, `Pipeline` for pipeline
/// files), and of every loaded plugin's config.
#[derive(clap::Args, Debug)]
pub struct SchemaCommand {
    /// Only this schema (a type such as TrainRecipe, or a plugin name), printed alone, as a
    /// JSON Schema document.
    name: Option<String>,
    /// Write one `<name>.schema.json` per schema into this folder instead of printing.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl SchemaCommand {
    /// Run it.
    pub async fn execute(self, global: &Global) -> Result<ExitCode> {
        let host = open_host(global, host_config(global)?).await?;
        print_schemas(&host, self.name.as_deref(), self.out.as_deref())?;
        Ok(ExitCode::SUCCESS)
    }
}

fn print_schemas(host: &PluginHost, only: Option<&str>, out: Option<&Path>) -> Result<()> {
    let mut all: Vec<(String, serde_json::Value)> =
        trex_sdk::types::all_schemas().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    // The files users write.
    all.push((
        "PluginManifest".into(),
        serde_json::to_value(schemars::schema_for!(trex_plugin_host::manifest::ManifestFile))?,
    ));
    all.push(("Task".into(), serde_json::to_value(schemars::schema_for!(trex_lab::task::Task))?));
    all.push(("Pipeline".into(), serde_json::to_value(schemars::schema_for!(trex_lab::pipeline::Pipeline))?));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for p in host.plugins() {
        all.push((format!("plugin.{}.config", p.manifest.name), p.info.config_schema.clone()));
    }
    if let Some(name) = only {
        all.retain(|(k, _)| k == name || *k == format!("plugin.{name}.config"));
        if all.is_empty() {
            bail!("no schema named `{name}` (run `trex-host schema` to see them all)");
        }
    }
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, schema) in &all {
                let path = dir.join(format!("{name}.schema.json"));
                std::fs::write(&path, serde_json::to_string_pretty(schema)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            eprintln!("wrote {} schemas to {}", all.len(), dir.display());
        }
        None => {
            // One schema asked for by name is printed alone, ready to save as a schema file;
            // otherwise a map from name to schema.
            let doc = match (only, &all[..]) {
                (Some(_), [(_, schema)]) => schema.clone(),
                _ => serde_json::Value::Object(all.into_iter().collect()),
            };
            // A reader that stops early (`| head`) is not an error.
            use std::io::Write;
            match writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&doc)?) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}
