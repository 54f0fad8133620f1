//! `trex-host train` (a LoRA adapter on a JSON-lines dataset, outside a search) and the hidden
//! `adapter-random` (a seeded random adapter, for fixtures and goldens).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use trex_model::train::{self, ComputeDevice};

/// Train a LoRA adapter on a JSON-lines dataset, outside a search.
#[derive(clap::Args, Debug)]
pub struct TrainCommand {
    /// A .gguf file, a Hugging Face model directory, or `smollm2` (fetched on first use).
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Training records (JSON lines).
    #[arg(long)]
    data: PathBuf,
    /// Training recipe: a JSON file, or the JSON itself (`--recipe '{"epochs": 0.5}'`), a
    /// TrainRecipe (see `trex-host schema TrainRecipe`); defaults apply to absent fields.
    #[arg(long)]
    recipe: Option<String>,
    /// Output folder (adapter/, train_report.json, checkpoints).
    #[arg(long)]
    out: PathBuf,
    /// Start from this adapter (PEFT folder) instead of a fresh one.
    #[arg(long)]
    continue_from: Option<PathBuf>,
    /// Write a checkpoint every N optimizer steps (0: only the final adapter).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Also write the base model with the adapter merged in, as a Hugging Face folder (OUT/merged).
    #[arg(long)]
    merge: bool,
    /// Where to train: `cpu` (f32, the reference) or `cuda` (the first NVIDIA GPU; bf16
    /// activations, f32 LoRA weights; needs the NVIDIA driver, NVRTC and cuBLAS).
    #[arg(long, value_parser = super::device(), default_value = "cpu")]
    device: ComputeDevice,
}

impl TrainCommand {
    /// Run it.
    pub fn execute(self) -> Result<ExitCode> {
        let args = &self;
        let recipe: trex_sdk::types::TrainRecipe = match &args.recipe {
            Some(inline) if inline.trim_start().starts_with('{') => {
                serde_json::from_str(inline).context("--recipe: invalid recipe (see `trex-host schema TrainRecipe`)")?
            }
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read the recipe file {p} (--recipe takes a file or inline JSON)")
                })?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{p}: invalid recipe (see `trex-host schema TrainRecipe`)"))?
            }
            None => Default::default(),
        };
        train::check_recipe(&recipe)?;
        let base = crate::assets::load_model(&args.model)?;
        let examples = train::data::load_jsonl(&args.data, &base.tokenizer)?;
        let tokenized = train::data::tokenize(&examples, &base.tokenizer, recipe.max_seq_len as usize);
        let targets: Vec<_> = recipe.targets.clone();
        let mut adapter = match &args.continue_from {
            Some(dir) => {
                let a = train::peft::load_adapter(dir, &base.config)?;
                let mut wanted = targets.clone();
                wanted.sort();
                wanted.dedup();
                if a.rank != recipe.lora_rank as usize || a.targets != wanted {
                    eprintln!(
                        "note: continuing from {} keeps its rank {} and targets; the recipe's rank and targets are ignored",
                        dir.display(),
                        a.rank
                    );
                }
                a
            }
            None => trex_model::LoraAdapter::from_recipe(&base.config, &recipe),
        };
        let model = trex_model::Llama::new(base.config.clone(), base.weights);
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        let checkpoints = train::Checkpointing {
            dir: args.out.clone(),
            every: args.checkpoint_every,
            base_model: base.source.display().to_string(),
        };
        eprintln!(
            "training {} LoRA parameters on {} examples ({} truncated to {} tokens)",
            adapter.parameters(),
            tokenized.len(),
            tokenized.iter().filter(|e| e.truncated).count(),
            recipe.max_seq_len
        );
        let report = train::train(args.device, &model, &mut adapter, &tokenized, &recipe, Some(&checkpoints), |s| {
            bar.set_length(s.total_steps as u64);
            bar.set_position(s.step as u64);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                s.loss,
                s.lr,
                s.tokens as f64 / s.elapsed.max(1e-9)
            ));
            std::ops::ControlFlow::Continue(())
        })?;
        bar.finish();
        let dir = train::adapter_dir(&args.out);
        train::peft::save_adapter(&dir, &adapter, &base.source.display().to_string())?;
        let report_path = args.out.join("train_report.json");
        trex_model::files::write_atomically(&report_path, serde_json::to_string_pretty(&report)?.as_bytes())
            .with_context(|| format!("cannot write {}", report_path.display()))?;
        println!(
            "trained {} steps in {:.1} s ({:.0} tokens/s); loss {:.4} -> {:.4}",
            report.steps, report.seconds, report.tokens_per_second, report.first_loss, report.final_loss
        );
        println!("adapter: {}", dir.display());
        if args.merge {
            let merged = train::peft::merge(&model.weights, &adapter);
            let mdir = args.out.join("merged");
            trex_model::export_hf_dir(&mdir, &model.config, &merged, &base.tokenizer)?;
            println!("merged model: {}", mdir.display());
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Write a seeded random LoRA adapter (non-zero B) in PEFT layout.
#[derive(clap::Args, Debug)]
pub struct AdapterRandomCommand {
    /// Base model.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Rank.
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// Comma-separated targets (PEFT module names).
    #[arg(long, default_value = "q_proj,v_proj,down_proj")]
    targets: String,
    /// Seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

impl AdapterRandomCommand {
    /// Run it.
    pub fn execute(self) -> Result<ExitCode> {
        let path = trex_assets::models::resolve_model(&self.model)?;
        let base = trex_model::BaseModel::load(&path)?;
        let targets = train::peft::parse_targets(&self.targets)?;
        let adapter = train::peft::random_adapter(&base.config, self.rank, &targets, self.seed);
        train::peft::save_adapter(&self.out, &adapter, &path.display().to_string())?;
        println!("{}", self.out.display());
        Ok(ExitCode::SUCCESS)
    }
}
