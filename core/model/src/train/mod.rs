//! The LoRA trainer: tokenized examples → length-bucketed packed batches → AdamW with warmup +
//! cosine, gradient clipping and accumulation, loss on completion tokens only, seeded; progress
//! reports, periodic checkpoints, continuing from a parent adapter.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod peft;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use trex_sdk::types::TrainRecipe;

use crate::lora::SplitMix;
use crate::{Batch, Llama, LlamaConfig, LoraAdapter};
pub use data::{Example, TokenizedExample};

/// Why training could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The recipe is unusable.
    #[error("recipe: {0}")]
    Recipe(String),
    /// The data is unusable.
    #[error("{0}")]
    Data(String),
    /// Reading or writing an adapter failed.
    #[error(transparent)]
    Adapter(#[from] peft::AdapterError),
    /// The compute device failed or is missing.
    #[error("device: {0}")]
    Device(String),
    /// The loss became NaN or infinite.
    #[error(
        "the loss diverged (became {loss}) at step {step}: lower the learning rate (now {lr:.2e}) or enable gradient clipping"
    )]
    Diverged {
        /// The step.
        step: usize,
        /// The loss value.
        loss: f32,
        /// The learning rate then.
        lr: f64,
    },
}

/// One optimizer step's report (for progress bars and logs).
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// 1-based step.
    pub step: usize,
    /// Steps in all.
    pub total_steps: usize,
    /// Mean loss per target token in this step.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed so far (prompt and completion).
    pub tokens: usize,
    /// Seconds since training started.
    pub elapsed: f64,
}

/// What a training run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Optimizer steps the recipe asked for: more than `steps` when the caller stopped the run
    /// early (its `on_step` returned [`ControlFlow::Break`]).
    pub planned_steps: usize,
    /// Mean loss of the first step.
    pub first_loss: f32,
    /// Mean loss of the last step.
    pub final_loss: f32,
    /// Tokens processed (prompt and completion, all epochs).
    pub tokens: usize,
    /// Target (completion) tokens.
    pub target_tokens: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Tokens per second.
    pub tokens_per_second: f64,
    /// Examples truncated to `max_seq_len`.
    pub truncated: usize,
    /// Per-step losses.
    pub losses: Vec<f32>,
}

/// Where and how often to write checkpoints.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// Folder; checkpoints go to `dir/checkpoint-<step>`.
    pub dir: PathBuf,
    /// Every this many steps (0: never).
    pub every: usize,
    /// Base model name recorded in `adapter_config.json`.
    pub base_model: String,
}

/// Bounds on each field of a recipe, so that a recipe from a Researcher (or an LLM) can neither
/// exhaust the host nor fail with misleading advice. `(field, min, max)`, inclusive.
pub const RECIPE_BOUNDS: &[(&str, f64, f64)] = &[
    ("lora_rank", 1.0, 512.0),
    ("lora_alpha", 1e-3, 4096.0),
    ("learning_rate", 1e-8, 1.0),
    ("weight_decay", 0.0, 1.0),
    ("epochs", 1e-3, 100.0),
    ("batch_size", 1.0, 1024.0),
    ("grad_accumulation", 1.0, 1024.0),
    ("max_seq_len", 2.0, 32768.0),
    ("warmup_ratio", 0.0, 1.0),
    ("grad_clip", 0.0, 1e6),
    ("lora_layers", 0.0, 4096.0),
];

/// Check a recipe before any work starts: every number finite and within [`RECIPE_BOUNDS`],
/// dropout in [0, 1), at least one target. The error names the field and its bounds.
pub fn check_recipe(r: &TrainRecipe) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::Recipe(m));
    if r.targets.is_empty() {
        return bad(
            "targets is empty: name at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                .into(),
        );
    }
    if !(r.lora_dropout.is_finite() && (0.0..1.0).contains(&r.lora_dropout)) {
        return bad(format!("lora_dropout {} must be in [0, 1)", r.lora_dropout));
    }
    let values = [
        r.lora_rank as f64,
        r.lora_alpha as f64,
        r.learning_rate,
        r.weight_decay,
        r.epochs as f64,
        r.batch_size as f64,
        r.grad_accumulation as f64,
        r.max_seq_len as f64,
        r.warmup_ratio as f64,
        r.grad_clip as f64,
        r.lora_layers as f64,
    ];
    for (&(field, min, max), v) in RECIPE_BOUNDS.iter().zip(values) {
        if !(v.is_finite() && v >= min && v <= max) {
            return bad(format!("{field} {} is outside [{min}, {max}]", number(v)));
        }
    }
    Ok(())
}

/// Check the parts of a recipe that depend on the model: `lora_layers` cannot ask for more
/// blocks than the model has.
pub fn check_recipe_for(config: &LlamaConfig, r: &TrainRecipe) -> Result<(), TrainError> {
    if r.lora_layers as usize > config.layers {
        return Err(TrainError::Recipe(format!(
            "lora_layers {} is more than the model's {} blocks (0 adapts every block)",
            r.lora_layers, config.layers
        )));
    }
    Ok(())
}

/// `v` as a person reads it: whole numbers as they are, very large or very small ones in
/// scientific notation.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_finite() && (v.abs() >= 1e6 || v.abs() < 1e-4) {
        format!("{v:.3e}")
    } else {
        format!("{v}")
    }
}

/// Bytes of activations the CPU engine keeps per training token of `config` at sequence
/// length `seq` with LoRA rank `rank`: per block the saved inputs, projections, attention
/// probabilities and LoRA intermediates (f32), with half again for the transient buffers of the
/// backward pass.
pub fn activation_bytes_per_token(config: &LlamaConfig, seq: usize, rank: usize) -> u64 {
    let (d, f) = (config.hidden, config.intermediate);
    let (qd, kvd) = (config.heads * config.head_dim, config.kv_heads * config.head_dim);
    let per_layer = 4 * d + 2 * qd + 2 * kvd + 3 * f + 7 * rank + config.heads * seq;
    (config.layers * per_layer * 4 * 3 / 2) as u64
}

/// The most tokens one batch may hold on this machine for `config` at sequence length `seq`:
/// what fits in 60% of the memory available now (`MemAvailable`), so that a recipe asking for
/// more is refused with a message instead of the host being killed for memory.
pub fn max_batch_tokens(config: &LlamaConfig, seq: usize, rank: usize) -> u64 {
    let available = available_memory_bytes().unwrap_or(8 << 30);
    (available / 10 * 6 / activation_bytes_per_token(config, seq, rank).max(1)).max(1)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (`None` where it cannot be read).
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Refuse a recipe whose batches would not fit in this machine's memory (see
/// [`max_batch_tokens`]).
pub fn check_batch_memory(config: &LlamaConfig, r: &TrainRecipe) -> Result<(), TrainError> {
    let tokens = r.batch_size as u64 * r.max_seq_len as u64;
    let limit = max_batch_tokens(config, r.max_seq_len as usize, r.lora_rank as usize);
    if tokens > limit {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let need = tokens * activation_bytes_per_token(config, r.max_seq_len as usize, r.lora_rank as usize);
        return Err(TrainError::Recipe(format!(
            "batch_size {} × max_seq_len {} = {tokens} tokens per batch needs about {:.1} GiB for activations, more than this machine can give ({limit} tokens per batch at most now): use a smaller batch_size (and grad_accumulation for the same effective batch) or max_seq_len",
            r.batch_size,
            r.max_seq_len,
            gib(need)
        )));
    }
    Ok(())
}

/// Learning rate at 0-based `step`: linear warmup, then cosine decay to zero.
pub fn learning_rate(recipe: &TrainRecipe, step: usize, total: usize) -> f64 {
    let warmup = ((recipe.warmup_ratio as f64) * total as f64).round() as usize;
    if step < warmup {
        return recipe.learning_rate * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = (step - warmup) as f64 / span as f64;
    recipe.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Group examples into batches of similar length (less attention work wasted on long
/// neighbours), in a seeded order: sort by length within shuffled pools of 32 batches.
pub fn bucketed_batches(examples: &[TokenizedExample], batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix(seed);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let pool = batch_size * 32;
    let mut batches = Vec::new();
    for chunk in order.chunks(pool) {
        let mut c = chunk.to_vec();
        c.sort_by_key(|&i| examples[i].tokens.len());
        batches.extend(c.chunks(batch_size).map(<[usize]>::to_vec));
    }
    for i in (1..batches.len()).rev() {
        batches.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    batches
}

fn pack(examples: &[TokenizedExample], idx: &[usize]) -> Batch {
    let mut b = Batch::default();
    for &i in idx {
        let e = &examples[i];
        b.tokens.extend_from_slice(&e.tokens);
        b.targets.extend_from_slice(&e.targets);
        b.seq_lens.push(e.tokens.len());
    }
    b
}

/// Where training runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    /// The CPU backend (the numerical reference; f32).
    #[default]
    Cpu,
    /// The first NVIDIA GPU: bf16 weights and activations, f32 LoRA weights and optimizer state.
    Cuda,
}

impl ComputeDevice {
    /// Every device, by the name the command line and the journal use.
    pub const NAMES: &'static [&'static str] = &["cpu", "cuda"];

    /// The name the command line and the journal use.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeDevice::Cpu => "cpu",
            ComputeDevice::Cuda => "cuda",
        }
    }

    /// The device of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        [ComputeDevice::Cpu, ComputeDevice::Cuda].into_iter().find(|d| d.as_str() == name)
    }
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One backend's training state: the adapter, its gradients and the optimizer's moments, where
/// the backend keeps them.
pub trait Engine {
    /// Add the gradients of `grad_scale ×` the summed loss of `batch`; returns the summed loss
    /// and the positions counted. `seed` makes dropout masks reproducible.
    fn accumulate(&mut self, batch: &Batch, grad_scale: f32, seed: u64) -> Result<(f64, usize), TrainError>;
    /// The L2 norm of the accumulated gradients.
    fn grad_norm(&mut self) -> Result<f64, TrainError>;
    /// One AdamW update with the gradients times `grad_scale` (clipping), then zero them.
    fn update(&mut self, lr: f64, weight_decay: f64, grad_scale: f32) -> Result<(), TrainError>;
    /// Copy the current adapter weights into `adapter` (same shape as the one trained).
    fn read_adapter(&mut self, adapter: &mut LoraAdapter<f32>) -> Result<(), TrainError>;
    /// Wait until queued work has finished (for timing); the CPU engine never queues.
    fn synchronize(&mut self) -> Result<(), TrainError> {
        Ok(())
    }
    /// The device's name, for reports.
    fn device_name(&self) -> String {
        "cpu".into()
    }
}

/// The CPU engine: the f32 reference implementation.
#[derive(Debug)]
pub struct CpuEngine<'a> {
    model: &'a Llama<f32>,
    adapter: LoraAdapter<f32>,
    grads: LoraAdapter<f32>,
    opt: AdamW,
}

impl<'a> CpuEngine<'a> {
    /// Train `adapter` on `model`.
    pub fn new(model: &'a Llama<f32>, adapter: &LoraAdapter<f32>) -> Self {
        Self { model, grads: adapter.zeros_like(), opt: AdamW::new(adapter), adapter: adapter.clone() }
    }
}

impl CpuEngine<'_> {
    /// The accumulated gradients (for checks against other engines).
    pub fn read_gradients(&self, grads: &mut LoraAdapter<f32>) {
        grads.clone_from(&self.grads);
    }
}

impl Engine for CpuEngine<'_> {
    fn accumulate(&mut self, batch: &Batch, grad_scale: f32, seed: u64) -> Result<(f64, usize), TrainError> {
        let (l, n) = self.model.train_step(batch, &self.adapter, &mut self.grads, grad_scale, seed);
        Ok((f64::from(l), n))
    }

    fn grad_norm(&mut self) -> Result<f64, TrainError> {
        Ok(global_norm(&self.grads))
    }

    fn update(&mut self, lr: f64, weight_decay: f64, grad_scale: f32) -> Result<(), TrainError> {
        if grad_scale != 1.0 {
            self.grads.for_each_mut(|g| g.iter_mut().for_each(|x| *x *= grad_scale));
        }
        self.opt.step(&mut self.adapter, &self.grads, lr, weight_decay);
        self.grads.for_each_mut(|g| g.iter_mut().for_each(|x| *x = 0.0));
        Ok(())
    }

    fn read_adapter(&mut self, adapter: &mut LoraAdapter<f32>) -> Result<(), TrainError> {
        adapter.clone_from(&self.adapter);
        Ok(())
    }
}

/// Open the engine for `device`.
pub fn engine<'a>(
    device: ComputeDevice,
    model: &'a Llama<f32>,
    adapter: &LoraAdapter<f32>,
) -> Result<Box<dyn Engine + 'a>, TrainError> {
    match device {
        ComputeDevice::Cpu => Ok(Box::new(CpuEngine::new(model, adapter))),
        #[cfg(feature = "cuda")]
        ComputeDevice::Cuda => Ok(Box::new(cuda::CudaEngine::new(model, adapter)?)),
        #[cfg(not(feature = "cuda"))]
        ComputeDevice::Cuda => Err(TrainError::Device(
            "this trex-host was built without CUDA support: rebuild with `cargo build --release --features cuda` (the default) or train with --device cpu".into(),
        )),
    }
}

/// AdamW state for a LoRA adapter.
#[derive(Debug, Clone)]
pub struct AdamW {
    m: LoraAdapter<f32>,
    v: LoraAdapter<f32>,
    t: i32,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl AdamW {
    /// Zero moments shaped like `params`.
    pub fn new(params: &LoraAdapter<f32>) -> Self {
        Self { m: params.zeros_like(), v: params.zeros_like(), t: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// One update with learning rate `lr` and decoupled weight decay `wd`.
    pub fn step(&mut self, params: &mut LoraAdapter<f32>, grads: &LoraAdapter<f32>, lr: f64, wd: f64) {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        let bufs =
            params.buffers_mut().into_iter().zip(grads.buffers()).zip(self.m.buffers_mut()).zip(self.v.buffers_mut());
        for (((p, g), m), v) in bufs {
            for j in 0..p.len() {
                let gj = g[j] as f64;
                let mj = b1 * m[j] as f64 + (1.0 - b1) * gj;
                let vj = b2 * v[j] as f64 + (1.0 - b2) * gj * gj;
                m[j] = mj as f32;
                v[j] = vj as f32;
                let update = (mj / c1) / ((vj / c2).sqrt() + self.eps) + wd * p[j] as f64;
                p[j] = (p[j] as f64 - lr * update) as f32;
            }
        }
    }
}

fn global_norm(grads: &LoraAdapter<f32>) -> f64 {
    let mut s = 0.0f64;
    grads.for_each(|g| s += g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>());
    s.sqrt()
}

/// Train `adapter` (fresh or continued from a parent) on `examples` with `recipe`, on `device`.
/// `on_step` sees every optimizer step; returning [`ControlFlow::Break`] stops the run there,
/// with the adapter as that step left it (and no further checkpoint).
pub fn train(
    device: ComputeDevice,
    model: &Llama<f32>,
    adapter: &mut LoraAdapter<f32>,
    examples: &[TokenizedExample],
    recipe: &TrainRecipe,
    checkpoints: Option<&Checkpointing>,
    on_step: impl FnMut(&StepReport) -> ControlFlow<()>,
) -> Result<TrainReport, TrainError> {
    train_from(device, model, adapter, examples, recipe, 0.0, checkpoints, on_step)
}

/// [`train`], starting `start_epoch` epochs into the data stream that `recipe.seed` orders: a
/// continued adapter trained with its parent's seed from where the parent stopped sees the
/// examples that come next, not the parent's first batches again.
#[allow(clippy::too_many_arguments)]
pub fn train_from(
    device: ComputeDevice,
    model: &Llama<f32>,
    adapter: &mut LoraAdapter<f32>,
    examples: &[TokenizedExample],
    recipe: &TrainRecipe,
    start_epoch: f32,
    checkpoints: Option<&Checkpointing>,
    mut on_step: impl FnMut(&StepReport) -> ControlFlow<()>,
) -> Result<TrainReport, TrainError> {
    check_recipe(recipe)?;
    check_recipe_for(&model.config, recipe)?;
    if device == ComputeDevice::Cpu {
        check_batch_memory(&model.config, recipe)?;
    }
    if examples.is_empty() {
        return Err(TrainError::Data(
            "no training examples (is the dataset empty, or was everything filtered out?)".into(),
        ));
    }
    if examples.iter().all(|e| e.target_count() == 0) {
        return Err(TrainError::Data("no example has a completion token to learn from".into()));
    }
    let truncated = examples.iter().filter(|e| e.truncated).count();
    // Whole epochs of batches, plus a fractional last epoch.
    let per_epoch = examples.len().div_ceil(recipe.batch_size as usize);
    let total_batches = ((recipe.epochs as f64) * per_epoch as f64).ceil().max(1.0) as usize;
    let skip = ((start_epoch.max(0.0) as f64) * per_epoch as f64).round() as usize;
    let mut stream: Vec<Vec<usize>> = Vec::with_capacity(skip + total_batches);
    let mut epoch = 0u64;
    while stream.len() < skip + total_batches {
        let batches = bucketed_batches(examples, recipe.batch_size as usize, recipe.seed.wrapping_add(epoch));
        stream.extend(batches.into_iter().take(skip + total_batches - stream.len()));
        epoch += 1;
    }
    let schedule: Vec<Vec<usize>> = stream.split_off(skip);
    let accum = recipe.grad_accumulation as usize;
    let total_steps = schedule.len().div_ceil(accum);
    let mut engine = engine(device, model, adapter)?;
    let started = Instant::now();
    let (mut tokens, mut target_tokens) = (0usize, 0usize);
    let mut losses = Vec::with_capacity(total_steps);
    for (step, group) in schedule.chunks(accum).enumerate() {
        let batches: Vec<Batch> = group.iter().map(|idx| pack(examples, idx)).collect();
        let targets: usize = batches.iter().map(Batch::target_count).sum();
        let mut loss_sum = 0.0f64;
        for (mi, b) in batches.iter().enumerate() {
            if b.target_count() == 0 {
                continue;
            }
            let seed = recipe.seed ^ ((step as u64) << 20) ^ mi as u64;
            let (l, _) = engine.accumulate(b, 1.0 / targets.max(1) as f32, seed)?;
            loss_sum += l;
            tokens += b.tokens.len();
        }
        target_tokens += targets;
        let loss = (loss_sum / targets.max(1) as f64) as f32;
        let lr = learning_rate(recipe, step, total_steps);
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step: step + 1, loss, lr });
        }
        let norm = engine.grad_norm()?;
        let clip = if recipe.grad_clip > 0.0 && norm > recipe.grad_clip as f64 {
            (recipe.grad_clip as f64 / norm) as f32
        } else {
            1.0
        };
        engine.update(lr, recipe.weight_decay, clip)?;
        losses.push(loss);
        let flow = on_step(&StepReport {
            step: step + 1,
            total_steps,
            loss,
            lr,
            grad_norm: norm,
            tokens,
            elapsed: started.elapsed().as_secs_f64(),
        });
        if flow.is_break() {
            break;
        }
        if let Some(cp) = checkpoints
            && cp.every > 0
            && (step + 1) % cp.every == 0
            && step + 1 < total_steps
        {
            engine.read_adapter(adapter)?;
            peft::save_adapter(&cp.dir.join(format!("checkpoint-{}", step + 1)), adapter, &cp.base_model)?;
        }
    }
    engine.read_adapter(adapter)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(TrainReport {
        steps: losses.len(),
        planned_steps: total_steps,
        first_loss: losses.first().copied().unwrap_or(f32::NAN),
        final_loss: losses.last().copied().unwrap_or(f32::NAN),
        tokens,
        target_tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        truncated,
        losses,
    })
}

/// Where a trained adapter is written inside an output folder.
pub fn adapter_dir(out: &Path) -> PathBuf {
    out.join("adapter")
}
