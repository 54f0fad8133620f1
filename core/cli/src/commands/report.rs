//! `trex-host report`: one or more runs as a self-contained HTML file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::html::{self, RunPage};

/// Write a run's tree, node details, budget and best-so-far curves as one HTML file that opens
/// offline (inline SVG, no script, no network).
///
/// With several run folders, the page compares them first (best-so-far curves side by side),
/// then shows each run.
///
/// Examples:
///
///   trex-host report runs/unit-conversion-mcts-s0-1764640000
///
///   trex-host report runs/bench-search/*/ --out compare.html
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReportCommand {
    /// Run folders (each holds a journal.jsonl).
    #[arg(required = true)]
    run_dirs: Vec<PathBuf>,
    /// The file to write [default: RUN_DIR/report.html for one run, report.html for several].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Read run folders as the page shows them.
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<RunPage>> {
    dirs.iter()
        .map(|dir| {
            let view = trex_lab::run::view(dir).with_context(|| format!("cannot read the run {}", dir.display()))?;
            Ok(RunPage { dir: dir.clone(), view })
        })
        .collect()
}

impl ReportCommand {
    /// Run it.
    pub fn execute(self) -> Result<ExitCode> {
        let runs = load_runs(&self.run_dirs)?;
        let out = self.out.clone().unwrap_or_else(|| match self.run_dirs.as_slice() {
            [one] => one.join("report.html"),
            _ => PathBuf::from("report.html"),
        });
        let page = html::render(&runs);
        trex_model::files::write_atomically(&out, page.as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
        // A report is for sharing: readable by others, like any file the user writes.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644))?;
        }
        println!("wrote {} ({} run(s), {} KiB)", out.display(), runs.len(), page.len().div_ceil(1024));
        Ok(ExitCode::SUCCESS)
    }
}
