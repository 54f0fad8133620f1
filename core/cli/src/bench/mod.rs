//! The benchmarks behind `trex-host bench`: programs that print tables, never timed tests.
//! [`search`] and [`tasks`] compare search strategies; this module holds `bench plugins`,
//! `bench train`, `bench generate` and `bench pipeline`; [`serve`] loads a chat-completions server.
//!
//! `bench plugins`: what crossing the plugin boundary costs, printed as a table.
//!
//! Measures, each as the median of `repeat` runs:
//! - loading a component cold (compile with Cranelift) versus from the on-disk cache;
//! - one evaluator call in a fresh instance (instantiate + evaluate + aggregate), and the
//!   per-call cost of many one-item calls into one instance, next to a native Rust call;
//! - a 10 000-record batch through a pass-through data tool (pure boundary cost) and through
//!   `dedup-exact` (a real tool), next to moving the same records natively.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use trex_plugin_host::{CallEnv, EvalItem, HostConfig, PluginHost};

pub mod replay;
pub mod search;
pub mod serve;
pub mod tasks;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn spread(v: &[Duration]) -> (Duration, Duration) {
    (*v.iter().min().unwrap_or(&Duration::ZERO), *v.iter().max().unwrap_or(&Duration::ZERO))
}

struct Row {
    what: String,
    trex: String,
    native: String,
    note: String,
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Synthetic records of about 120 bytes, 10% duplicated (generated, not real data).
fn records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let k = if i % 10 == 9 { i - 1 } else { i };
            serde_json::json!({
                "id": i,
                "prompt": format!("What is item number {k} in the catalogue?"),
                "completion": format!("Item {k} is a widget of size {}.", k % 17),
            })
            .to_string()
        })
        .collect()
}

/// Run the benchmark against the plugins in `plugins_dir` (and `plugins_dir/testing`).
pub async fn plugins(plugins_dir: &Path, repeat: usize) -> Result<()> {
    let repeat = repeat.max(3);
    let testing = plugins_dir.join("testing");
    let hostile_manifest = testing.join("hostile/plugin.toml");
    let dedup_manifest = plugins_dir.join("dedup-exact/plugin.toml");
    let exact_manifest = plugins_dir.join("exact-match/plugin.toml");
    for m in [&hostile_manifest, &dedup_manifest, &exact_manifest] {
        anyhow::ensure!(m.is_file(), "{} is missing: run `cargo xtask build-plugins` first", m.display());
    }
    let mut rows = Vec::new();

    // Cold versus cached load.
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let cache = tempfile::tempdir()?;
        let config = HostConfig { cache_dir: Some(cache.path().to_path_buf()), ..HostConfig::default() };
        let mut host = PluginHost::new(config.clone())?;
        let p = host.load(&dedup_manifest).await?;
        anyhow::ensure!(!p.load.from_cache, "the first load must compile");
        cold.push(p.load.load_time);
        let mut host = PluginHost::new(config)?;
        let p = host.load(&dedup_manifest).await?;
        anyhow::ensure!(p.load.from_cache, "the second load must come from the cache");
        cached.push(p.load.load_time);
    }
    let size = std::fs::metadata(plugins_dir.join("dedup-exact/dedup_exact.wasm")).map(|m| m.len()).unwrap_or(0);
    let cold_m = median(cold);
    let cached_m = median(cached);
    rows.push(Row {
        what: format!("load dedup-exact ({} KiB component)", size / 1024),
        trex: format!("cold {} / cached {}", ms(cold_m), ms(cached_m)),
        native: "-".into(),
        note: format!("cache is {:.0}x faster", cold_m.as_secs_f64() / cached_m.as_secs_f64().max(1e-9)),
    });

    let mut host = PluginHost::new(HostConfig { cache_dir: None, ..HostConfig::default() })?;
    host.load(&hostile_manifest).await?;
    host.load(&dedup_manifest).await?;
    host.load(&exact_manifest).await?;
    let env = CallEnv::default();
    let cfg = serde_json::json!({});

    // Evaluator: one call in a fresh instance, and many calls into one instance.
    let one = vec![EvalItem { id: "0".into(), example: serde_json::json!({"answer": "4"}), output: "4".into() }];
    let mut fresh = Vec::new();
    for _ in 0..repeat * 5 {
        let t = Instant::now();
        host.evaluate("exact-match", &cfg, &one, 1, &env).await?;
        fresh.push(t.elapsed());
    }
    let calls = 1000;
    let many: Vec<EvalItem> = (0..calls)
        .map(|i| EvalItem { id: i.to_string(), example: serde_json::json!({"answer": "4"}), output: "4".into() })
        .collect();
    let mut per_call = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        host.evaluate("exact-match", &cfg, &many, 1, &env).await?;
        per_call.push(t.elapsed() / calls as u32);
    }
    let native_call = {
        let t = Instant::now();
        let n = 1_000_000u32;
        for i in 0..n {
            std::hint::black_box(native_empty_evaluate(std::hint::black_box(i)));
        }
        t.elapsed() / n
    };
    rows.push(Row {
        what: "evaluator call, fresh instance (instantiate + evaluate + aggregate)".into(),
        trex: us(median(fresh)),
        native: format!("{:.1} ns", native_call.as_secs_f64() * 1e9),
        note: "once per evaluation".into(),
    });
    rows.push(Row {
        what: "evaluator call, warm instance, 1 item per call".into(),
        trex: us(median(per_call)),
        native: format!("{:.1} ns", native_call.as_secs_f64() * 1e9),
        note: "batch items to amortize".into(),
    });

    // Data tools: 10 000 records through echo and dedup-exact.
    let batch = records(10_000);
    let bytes: usize = batch.iter().map(String::len).sum();
    let echo_cfg = serde_json::json!({"attack": "echo"});
    let dedup_cfg = serde_json::json!({"fields": ["prompt", "completion"]});
    let (mut echo, mut dedup, mut native) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat {
        let input = batch.clone();
        let t = Instant::now();
        let run = host.run_data_tool("hostile", &echo_cfg, input, &env).await?;
        echo.push(t.elapsed());
        anyhow::ensure!(run.records_out == 10_000, "echo lost records");
        let input = batch.clone();
        let t = Instant::now();
        let run = host.run_data_tool("dedup-exact", &dedup_cfg, input, &env).await?;
        dedup.push(t.elapsed());
        anyhow::ensure!(run.records_out == 9_000, "dedup-exact kept {} of 10000, expected 9000", run.records_out);
        let input = batch.clone();
        let t = Instant::now();
        let out: Vec<String> = std::hint::black_box(input).into_iter().collect();
        std::hint::black_box(out);
        native.push(t.elapsed());
    }
    let (echo_m, dedup_m) = (median(echo.clone()), median(dedup.clone()));
    let (lo, hi) = spread(&echo);
    rows.push(Row {
        what: format!("10 000-record batch through pass-through tool ({} KiB)", bytes / 1024),
        trex: format!("{} ({:.2} µs/record; {}..{})", ms(echo_m), echo_m.as_secs_f64() * 1e6 / 1e4, ms(lo), ms(hi)),
        native: ms(median(native)),
        note: "pure boundary cost".into(),
    });
    rows.push(Row {
        what: "10 000-record batch through dedup-exact".into(),
        trex: format!("{} ({:.0} records/s)", ms(dedup_m), 1e4 / dedup_m.as_secs_f64()),
        native: "-".into(),
        note: format!("boundary ≈ {:.0}% of it", 100.0 * echo_m.as_secs_f64() / dedup_m.as_secs_f64()),
    });

    println!("\n| measurement | trex (wasm plugin) | native Rust | note |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.trex, r.native, r.note);
    }
    println!(
        "\nmedian of {repeat} runs; cpu threads: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    Ok(())
}

#[inline(never)]
fn native_empty_evaluate(i: u32) -> (u32, f64) {
    (i, 1.0)
}

/// Options for `trex-host bench train`.
#[derive(Debug, Clone)]
pub struct TrainBench {
    /// Sequence length.
    pub seq: usize,
    /// Sequences per step.
    pub batch: usize,
    /// LoRA rank (all seven targets).
    pub rank: usize,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// Fraction of positions that carry a loss (the rest are prompt).
    pub completion_fraction: f64,
    /// Adapt only the top this many blocks (0: every block).
    pub lora_layers: usize,
    /// Where to train.
    pub device: trex_model::train::ComputeDevice,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Measured f32 GEMM throughput of this machine through the same GEMM path the trainer uses.
fn gemm_gflops() -> f64 {
    use trex_kernels::cpu::{Trans, matmul};
    let (m, n, k) = (1024, 1536, 576);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0f32; m * n];
    matmul(Trans::N, Trans::T, m, n, k, 1.0, &a, &b, 0.0, &mut c);
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        matmul(Trans::N, Trans::T, m, n, k, 1.0, &a, &b, 0.0, &mut c);
    }
    2.0 * (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Dense bf16 peak of known GPUs in FLOP/s (for MFU), by device name.
pub fn gpu_peak_flops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    [("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)]
        .iter()
        .find(|(k, _)| n.contains(k))
        .map(|&(_, v)| v)
}

/// LoRA training throughput on the SmolLM2-135M shape with random weights; prints a table row.
pub fn train(opts: &TrainBench) -> Result<()> {
    use trex_model::lora::SplitMix;
    use trex_model::{Batch, Llama, LlamaConfig, LoraAdapter, Weights};
    use trex_sdk::types::{LoraTarget, TrainRecipe};
    let config = LlamaConfig::smollm2_135m();
    let model = Llama::new(config.clone(), Weights::<f32>::random(&config, 1));
    let mut adapter = LoraAdapter::<f32>::new(&config, opts.rank, 2.0 * opts.rank as f64, 0.0, &LoraTarget::ALL, 0);
    anyhow::ensure!(
        opts.lora_layers <= config.layers,
        "--lora-layers {} is more than the model's {} blocks",
        opts.lora_layers,
        config.layers
    );
    let trained = if opts.lora_layers == 0 { config.layers } else { opts.lora_layers };
    anyhow::ensure!(
        trained == config.layers || opts.device == trex_model::train::ComputeDevice::Cpu,
        "--lora-layers is measured on the CPU engine (the GPU row's MFU counts every block); drop it with --device cuda"
    );
    adapter.keep_top_layers(trained);
    let mut label = if trained == config.layers { "trex".to_string() } else { format!("trex, top {trained} blocks") };
    if opts.device == trex_model::train::ComputeDevice::Cpu {
        // Which library ran the large products (`TREX_BLAS=openblas` chooses OpenBLAS).
        let blas = trex_kernels::cpu::blas_backend();
        label = format!("{label} ({})", blas.split(' ').next().unwrap_or("gemm"));
    }
    let mut engine = trex_model::train::engine(opts.device, &model, &adapter)?;
    let recipe = TrainRecipe::default();
    let mut rng = SplitMix(7);
    let mut batch = Batch::default();
    let prompt = ((1.0 - opts.completion_fraction) * opts.seq as f64).round() as usize;
    for _ in 0..opts.batch {
        let toks: Vec<u32> = (0..opts.seq).map(|_| (rng.next_u64() % config.vocab as u64) as u32).collect();
        for i in 0..opts.seq {
            batch.targets.push(if i + 1 >= prompt.max(1) && i + 1 < opts.seq { toks[i + 1] as i64 } else { -1 });
        }
        batch.tokens.extend(toks);
        batch.seq_lens.push(opts.seq);
    }
    let n_targets = batch.target_count();
    let mut times = Vec::new();
    let warmup = if opts.device == trex_model::train::ComputeDevice::Cuda { 3 } else { 1 };
    for step in 0..warmup + opts.steps {
        let t = Instant::now();
        let (loss, _) = engine.accumulate(&batch, 1.0 / n_targets as f32, step as u64)?;
        engine.update(recipe.learning_rate, 0.0, 1.0)?;
        engine.synchronize()?;
        anyhow::ensure!(loss.is_finite(), "loss is not finite");
        if step >= warmup {
            times.push(t.elapsed());
        }
    }
    let tokens = (opts.batch * opts.seq) as f64;
    let med = median(times.clone()).as_secs_f64();
    let (lo, hi) = spread(&times);
    let tps = tokens / med;
    let with_loss = n_targets as f64 / tokens;
    if opts.device == trex_model::train::ComputeDevice::Cuda {
        let name = engine.device_name();
        let flops = trex_model::flops::model_flops_per_token(&config, opts.seq, opts.rank, with_loss);
        let mfu = gpu_peak_flops(&name)
            .map(|p| format!("{:.1}% of {:.0} TFLOP/s", 100.0 * tps * flops / p, p / 1e12))
            .unwrap_or_else(|| "unknown peak".into());
        println!(
            "| trex cuda ({name}) | {} x {} | {:.0}% | {:.0} | {:.3}..{:.3} s | {:.2} GFLOP | {:.1} TFLOP/s, MFU {mfu} | - |",
            opts.batch,
            opts.seq,
            opts.completion_fraction * 100.0,
            tps,
            lo.as_secs_f64(),
            hi.as_secs_f64(),
            flops / 1e9,
            tps * flops / 1e12,
        );
        return Ok(());
    }
    let flops = trex_model::flops::train_flops_per_token_top(&config, opts.seq, opts.rank, with_loss, trained);
    let gemm = gemm_gflops();
    println!(
        "| {label} | {} x {} | {:.0}% | {:.1} | {:.2}..{:.2} s | {:.2} GFLOP | {:.1} GFLOP/s ({:.0}% of {:.0} GFLOP/s GEMM) | {:.0} MiB |",
        opts.batch,
        opts.seq,
        opts.completion_fraction * 100.0,
        tps,
        lo.as_secs_f64(),
        hi.as_secs_f64(),
        flops / 1e9,
        tps * flops / 1e9,
        100.0 * tps * flops / 1e9 / gemm,
        gemm,
        peak_rss_mib()
    );
    Ok(())
}

/// Greedy generation tokens/s with the real SmolLM2-135M-Instruct, `prompts` prompts of the
/// same shape as the reference script's, each forced to `new` tokens, unbatched and batched.
pub fn generate(prompts: usize, new: usize) -> Result<()> {
    use trex_model::generate::{GenerationConfig, generate};
    use trex_model::{BaseModel, Llama};
    let path = trex_assets::models::fetch_smollm2()?;
    let base = BaseModel::load(&path)?;
    let texts: Vec<String> = (0..prompts)
        .map(|i| {
            let prompt = base.tokenizer.chat_prompt(None, &format!("Convert {} km to m.", i + 3));
            prompt.map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    let mut tokenizer = base.tokenizer.clone();
    // Force exactly `new` tokens, as the reference does with min_new_tokens.
    tokenizer.eos.clear();
    let model = Llama::new(base.config.clone(), base.weights);
    for batch in [1, prompts] {
        let config = GenerationConfig { max_new_tokens: new, batch_size: batch, ..GenerationConfig::default() };
        generate(&model, &tokenizer, None, &texts[..batch.min(texts.len())], &config, |_| {});
        let t = Instant::now();
        let out = generate(&model, &tokenizer, None, &texts, &config, |_| {});
        let tokens: usize = out.iter().map(|g| g.tokens).sum();
        println!("| trex | {batch} | {prompts} | {new} | {:.1} |", tokens as f64 / t.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `trex-host bench eval`: answer and score `req`'s validation split with the base model under
/// each batch size, without and with the shared-prefix cache, and print one table.
pub async fn eval(req: &trex_lab::run::SearchRequest, batch_sizes: &[usize]) -> Result<()> {
    use trex_lab::executor::Split;
    let dir = tempfile::tempdir()?;
    let (lab, _, _, _) = trex_lab::run::open_lab(req, dir.path().to_path_buf()).await?;
    let base = lab.generation_config();
    let mut configs = vec![(batch_sizes[0], false)];
    configs.extend(batch_sizes.iter().map(|&b| (b, true)));
    println!(
        "| batch | shared prefix | answers | seconds (generate + score) | answers/s | generated tokens | vs first row | same answers |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut first: Option<(Vec<String>, f64)> = None;
    for (batch_size, share_prefix) in configs {
        let config = trex_model::generate::GenerationConfig { batch_size, share_prefix, ..base.clone() };
        let t = Instant::now();
        let scoring = lab.score_base_with(Split::Validation, config).await?;
        let secs = t.elapsed().as_secs_f64();
        let answers: Vec<String> = scoring.outputs.iter().map(|g| g.text.clone()).collect();
        let tokens: usize = scoring.outputs.iter().map(|g| g.tokens).sum();
        let (same, speedup) = match &first {
            None => ("—".to_string(), 1.0),
            Some((a, s0)) => {
                let differ = a.iter().zip(&answers).filter(|(x, y)| x != y).count();
                (if differ == 0 { "yes".into() } else { format!("**no: {differ} differ**") }, s0 / secs)
            }
        };
        println!(
            "| {batch_size} | {} | {} | {secs:.1} | {:.2} | {tokens} | {speedup:.2}× | {same} |",
            if share_prefix { "yes" } else { "no" },
            answers.len(),
            answers.len() as f64 / secs,
        );
        first.get_or_insert((answers, secs));
    }
    Ok(())
}

/// Options for `trex-host bench pipeline`.
#[derive(Debug, Clone)]
pub struct PipelineBench {
    /// Records in the generated input.
    pub records: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Folder for the input, the outputs and the `datasets` cache.
    pub work: std::path::PathBuf,
    /// Python interpreter with `datasets` and `datasketch` for the baseline; `None` skips it.
    pub python: Option<String>,
    /// The baseline script.
    pub script: std::path::PathBuf,
}

/// Pseudo-words built from syllables, so that the text has realistic word lengths.
fn pseudo_word(i: usize) -> String {
    const SYL: [&str; 40] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "hu", "ja", "ke", "li", "mo", "nu",
        "pa", "qe", "ri", "so", "tu", "ve", "wa", "xi", "yo", "za", "bre", "cla", "dro", "fle", "gri", "plo", "sta",
        "tre", "ven", "mor", "lin", "sar",
    ];
    let mut w = format!("{}{}", SYL[i % 40], SYL[(i / 40) % 40]);
    if i >= 1600 {
        w.push_str(SYL[(i / 1600) % 40]);
    }
    w
}

/// Synthetic text records (`{"id", "text"}`, generated here, not real data) with the defects the
/// pipeline removes: 10% exact repeats of an earlier text with different case and spacing, 6%
/// near-duplicates (one word of a 40-word-plus text replaced), 2% too short, 2% too long, and 3%
/// with decomposed accents and a control character. Word choice is skewed (Zipf-like).
pub fn pipeline_records(n: usize, seed: u64) -> Vec<String> {
    let mut rng = trex_sdk::rng::SplitMix64(seed);
    let vocab: Vec<String> = (0..8000).map(pseudo_word).collect();
    let word = |rng: &mut trex_sdk::rng::SplitMix64| vocab[(8000.0 * rng.unit().powi(3)) as usize].clone();
    let mut bases: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let roll = rng.unit();
        let text = if roll < 0.10 && !bases.is_empty() {
            let b = &bases[rng.below(bases.len() as u64) as usize];
            let mut t = b.replacen(' ', "  ", 3);
            if let Some(first) = t.get(..1) {
                t = first.to_uppercase() + &t[1..];
            }
            t + " \t"
        } else if roll < 0.16 && !bases.is_empty() {
            let b = &bases[rng.below(bases.len() as u64) as usize];
            let mut words: Vec<String> = b.split(' ').map(String::from).collect();
            if words.len() >= 40 {
                let at = rng.below(words.len() as u64) as usize;
                words[at] = word(&mut rng);
            }
            words.join(" ")
        } else if roll < 0.18 {
            word(&mut rng)
        } else if roll < 0.20 {
            (0..250).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ")
        } else {
            let len = 20 + rng.below(61) as usize;
            let mut t = (0..len).map(|_| word(&mut rng)).collect::<Vec<_>>().join(" ");
            if roll > 0.97 {
                t.push_str(" cafe\u{301}\u{7} re\u{301}sume\u{301}");
            }
            bases.push(t.clone());
            t
        };
        out.push(serde_json::json!({"id": i, "text": text}).to_string());
    }
    out
}

/// The 1M-record pipeline (normalize → length filter → exact dedup → near dedup) through the
/// plugins, the same steps with Hugging Face `datasets` (`core/reference/bench_pipeline_datasets.py`)
/// on the same file, and the plugin-boundary share measured with a pass-through tool.
pub async fn pipeline(plugins_dir: &Path, opts: &PipelineBench) -> Result<()> {
    let echo_manifest = plugins_dir.join("testing/hostile/plugin.toml");
    anyhow::ensure!(
        echo_manifest.is_file(),
        "{} is missing: run `cargo xtask build-plugins` first",
        echo_manifest.display()
    );
    std::fs::create_dir_all(&opts.work)?;
    let input = opts.work.join(format!("records-{}.jsonl", opts.records));
    eprintln!("generating {} synthetic records into {}", opts.records, input.display());
    let mut text = pipeline_records(opts.records, opts.seed).join("\n");
    text.push('\n');
    std::fs::write(&input, text)?;
    let bytes = std::fs::metadata(&input)?.len();

    let mut host = PluginHost::discover(plugins_dir, HostConfig::default()).await?;
    // The pass-through tool, with limits sized for a million records.
    let echo_dir = tempfile::tempdir()?;
    std::fs::copy(plugins_dir.join("testing/hostile/hostile.wasm"), echo_dir.path().join("hostile.wasm"))?;
    let manifest = std::fs::read_to_string(&echo_manifest)?
        .replace("timeout_ms = 2000", "timeout_ms = 600000")
        .replace("memory_mib = 64", "memory_mib = 1024")
        .replace("output_mib = 8", "output_mib = 4096");
    std::fs::write(echo_dir.path().join("plugin.toml"), manifest)?;
    host.load(&echo_dir.path().join("plugin.toml")).await?;
    let env = CallEnv::default();
    let steps = [
        ("normalize", "clean-text", serde_json::json!({"fields": ["text"]})),
        ("length filter", "filter-length", serde_json::json!({"fields": ["text"], "min": 20, "max": 1000})),
        ("exact dedup", "dedup-exact", serde_json::json!({"fields": ["text"], "normalize": true})),
        (
            "near dedup",
            "dedup-near",
            serde_json::json!({"fields": ["text"], "threshold": 0.8, "shingle_size": 3, "permutations": 128, "bands": 16}),
        ),
    ];
    eprintln!("running the pipeline through the plugins");
    let started = Instant::now();
    let t = Instant::now();
    let mut records: Vec<String> = std::fs::read_to_string(&input)?.lines().map(String::from).collect();
    let read = t.elapsed();
    let mut rows: Vec<(&str, u64, Duration, Option<Duration>)> = vec![("read", records.len() as u64, read, None)];
    let mut inputs = Vec::new();
    for (label, plugin, config) in &steps {
        inputs.push(records.len());
        let run = host.run_data_tool(plugin, config, records, &env).await?;
        rows.push((label, run.records_out, run.elapsed, None));
        records = run.records;
    }
    let t = Instant::now();
    let output = opts.work.join("kept-trex.jsonl");
    let mut text = records.join("\n");
    text.push('\n');
    std::fs::write(&output, text)?;
    rows.push(("write", records.len() as u64, t.elapsed(), None));
    let total = started.elapsed();

    // Boundary: each step's input through a tool that does nothing else: for the normalizer,
    // which writes back the records it changed, every record written back (an upper bound); for
    // the filters, which keep records by position, every record kept that way.
    eprintln!("measuring the plugin boundary with a pass-through tool");
    let sample = pipeline_records(*inputs.iter().max().unwrap_or(&0), opts.seed);
    let mut boundary = Duration::ZERO;
    for (i, n) in inputs.iter().enumerate() {
        let batch: Vec<String> = sample[..*n].to_vec();
        let attack = if i == 0 { "echo" } else { "pass" };
        let run = host.run_data_tool("hostile", &serde_json::json!({ "attack": attack }), batch, &env).await?;
        boundary += run.elapsed;
    }

    let python = match &opts.python {
        None => None,
        Some(py) => {
            eprintln!("running the same pipeline with Hugging Face datasets ({py})");
            let out = std::process::Command::new(py)
                .arg(&opts.script)
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(opts.work.join("kept-datasets.jsonl"))
                .output()?;
            if out.status.success() {
                let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
                Some(serde_json::from_str::<serde_json::Value>(&line)?)
            } else {
                eprintln!(
                    "the datasets baseline failed (install it with `pip install datasets datasketch`):\n{}",
                    String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join("\n")
                );
                None
            }
        }
    };
    let py_secs = |label: &str| python.as_ref().and_then(|p| p["seconds"][label].as_f64());
    let py_count = |label: &str| python.as_ref().and_then(|p| p["records"][label].as_u64());
    println!(
        "\n{} synthetic records ({:.0} MiB of JSON lines), {} CPU threads\n",
        opts.records,
        bytes as f64 / (1u64 << 20) as f64,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("| step | records after (trex) | trex | records after (datasets) | datasets | speed-up |");
    println!("|---|---|---|---|---|---|");
    let speedup = |trex: f64, py: Option<f64>| py.map_or("-".to_string(), |p| format!("{:.1}×", p / trex.max(1e-9)));
    for (label, n, d, _) in &rows {
        let py = py_secs(label);
        println!(
            "| {label} | {n} | {:.2} s | {} | {} | {} |",
            d.as_secs_f64(),
            py_count(label).map_or("-".into(), |c| c.to_string()),
            py.map_or("-".into(), |p| format!("{p:.2} s")),
            speedup(d.as_secs_f64(), py)
        );
    }
    let py_total = py_secs("total");
    println!(
        "| **total** | {} | **{:.2} s** ({:.0} records/s) | {} | {} | **{}** |",
        records.len(),
        total.as_secs_f64(),
        opts.records as f64 / total.as_secs_f64(),
        py_count("near dedup").map_or("-".into(), |c| c.to_string()),
        py_total.map_or("-".into(), |p| format!("{p:.2} s ({:.0} records/s)", opts.records as f64 / p)),
        speedup(total.as_secs_f64(), py_total)
    );
    println!(
        "\nplugin boundary (the same record counts through a pass-through tool): {:.2} s, {:.1}% of the trex pipeline",
        boundary.as_secs_f64(),
        100.0 * boundary.as_secs_f64() / total.as_secs_f64()
    );
    Ok(())
}
