//! `trex-host fetch`: a known model or data set into the cache.

use std::process::ExitCode;

use anyhow::{Result, bail};

/// Fetch a known model or data set into the cache and print where it is.
#[derive(clap::Args, Debug)]
pub struct FetchCommand {
    /// Model or data set name.
    #[arg(default_value = "smollm2")]
    name: String,
}

impl FetchCommand {
    /// Run it.
    pub fn execute(self) -> Result<ExitCode> {
        let name = &self.name;
        if trex_assets::datasets::KNOWN_DATASETS.iter().any(|d| d.0 == name) {
            println!("{}", trex_assets::datasets::fetch(name)?.display());
            return Ok(ExitCode::SUCCESS);
        }
        match trex_assets::models::known_model(name)? {
            Some(path) => println!("{}", path.display()),
            None => bail!(
                "unknown model or data set `{name}`; known: {}",
                trex_assets::models::KNOWN_MODELS
                    .iter()
                    .chain(trex_assets::datasets::KNOWN_DATASETS)
                    .map(|m| m.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}
