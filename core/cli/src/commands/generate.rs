//! `trex-host generate`: text from a model, with or without an adapter.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use trex_model::generate::{GenerationConfig, generate};

/// Generate text with a model (and optionally an adapter).
#[derive(clap::Args, Debug)]
pub struct GenerateCommand {
    /// A .gguf file, a Hugging Face model directory, or `smollm2`.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// A prompt (repeatable); wrapped as a user turn with the chat template unless --raw.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Use the prompt text as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Optional system message (chat mode).
    #[arg(long)]
    system: Option<String>,
    /// New tokens at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sequences decoded together (continuous batching: a finished one's slot goes to the next
    /// prompt). The answers do not depend on it.
    #[arg(long, default_value_t = GenerationConfig::default().batch_size)]
    batch_size: usize,
}

impl GenerateCommand {
    /// Run it.
    pub fn execute(self) -> Result<ExitCode> {
        let args = &self;
        let base = crate::assets::load_model(&args.model)?;
        let adapter = match &args.adapter {
            Some(dir) => Some(trex_model::train::peft::load_adapter(dir, &base.config)?),
            None => None,
        };
        let prompts: Vec<String> = args
            .prompt
            .iter()
            .map(|p| {
                if args.raw {
                    return Ok(p.clone());
                }
                Ok(base.tokenizer.chat_prompt(args.system.as_deref(), p)?)
            })
            .collect::<Result<_>>()?;
        let model = trex_model::Llama::new(base.config.clone(), base.weights);
        let config = GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            stop: args.stop.clone(),
            seed: args.seed,
            batch_size: args.batch_size.max(1),
            ..GenerationConfig::default()
        };
        let started = std::time::Instant::now();
        let out = generate(&model, &base.tokenizer, adapter.as_ref(), &prompts, &config, |_| {});
        let tokens: usize = out.iter().map(|g| g.tokens).sum();
        for (p, g) in args.prompt.iter().zip(&out) {
            println!("### {p}\n{}\n", g.text);
        }
        eprintln!(
            "{tokens} tokens in {:.1} s ({:.1} tokens/s)",
            started.elapsed().as_secs_f64(),
            tokens as f64 / started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    }
}
