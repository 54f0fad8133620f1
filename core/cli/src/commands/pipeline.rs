//! `trex-host pipeline`: a data recipe over a dataset, then an evaluator, from a pipeline file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use trex_lab::pipeline::{Pipeline, Predictor};

use super::{Global, host_config, open_host};

/// Run a data pipeline (a recipe over a dataset, then an evaluator) from a pipeline file.
#[derive(clap::Args, Debug)]
pub struct PipelineCommand {
    /// The pipeline file (TOML).
    file: PathBuf,
    /// Folder for the prepared data and the report.
    #[arg(long, default_value = "runs/pipelines")]
    out: PathBuf,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Override the evaluation's predictor (majority or oracle).
    #[arg(long, value_enum)]
    predictor: Option<PredictorArg>,
    /// The model whose tokenizer counts tokens for the steps (a model name, `.gguf` file or
    /// Hugging Face folder); overrides the pipeline file's `tokenizer`.
    #[arg(long, value_name = "MODEL")]
    tokenizer: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PredictorArg {
    /// The most frequent training answer for every example (the floor to beat).
    Majority,
    /// The reference answers themselves (checks the evaluator's wiring).
    Oracle,
}

impl PipelineCommand {
    /// Run it.
    pub async fn execute(self, global: &Global) -> Result<ExitCode> {
        let mut pipeline = Pipeline::load(&self.file)?;
        let mut config = host_config(global)?;
        if let Some(name) = self.tokenizer.as_ref().or(pipeline.tokenizer.as_ref()) {
            let model = crate::assets::load_model(name)
                .map_err(|e| anyhow::anyhow!("cannot load the tokenizer of `{name}`: {e:#}"))?;
            config.tokenizer = Some(std::sync::Arc::new(trex_lab::run::ModelTokens(model.tokenizer)));
        }
        let host = open_host(global, config).await?;
        if let (Some(eval), Some(p)) = (&mut pipeline.evaluate, self.predictor) {
            eval.predictor = match p {
                PredictorArg::Majority => Predictor::Majority,
                PredictorArg::Oracle => Predictor::Oracle,
            };
        }
        let started = std::time::Instant::now();
        let json = self.json;
        let report = pipeline
            .run(&host, &self.out, |i, plugin, run| {
                if !json {
                    eprintln!(
                        "step {i} {plugin}: {} -> {} records in {:.1} ms",
                        run.records_in,
                        run.records_out,
                        run.elapsed.as_secs_f64() * 1e3
                    );
                }
            })
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            crate::report::print_pipeline(&report, started.elapsed());
        }
        Ok(ExitCode::SUCCESS)
    }
}
