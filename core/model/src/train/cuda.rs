//! The CUDA training engine (feature `cuda`): the forward and backward pass of
//! [`Llama::train_step`] on an NVIDIA GPU through `trex_kernels::cuda`.
//!
//! The frozen base weights live on the GPU in bf16; the LoRA `A`/`B` matrices, their gradients
//! and AdamW's moments live in flat f32 arenas (one launch updates them all), with a bf16 copy of
//! the weights for the matrix products. Activations are bf16; norms' statistics, the attention's
//! log-sum-exp and the loss are f32. Batches are packed as on the CPU: attention and RoPE run per
//! sequence inside one launch, and the LM head with cross-entropy runs only on positions that
//! have a target, in vocabulary chunks.

use trex_kernels::cpu::AttentionShape;
use trex_kernels::cuda::{AdamW as GpuAdamW, CudaError, CudaSlice, Device, Mat, to_bf16};

use super::{Engine, TrainError};
use crate::{Batch, Llama, LlamaConfig, LoraAdapter};

impl From<CudaError> for TrainError {
    fn from(e: CudaError) -> Self {
        TrainError::Device(e.to_string())
    }
}

type Buf = CudaSlice<u16>;

/// One decoder block's frozen weights in bf16.
struct GpuLayer {
    attn_norm: Buf,
    q: Buf,
    k: Buf,
    v: Buf,
    o: Buf,
    bias: Option<[Buf; 3]>,
    mlp_norm: Buf,
    gate: Buf,
    up: Buf,
    down: Buf,
}

/// Where one adapted projection's `A` [rank, in] and `B` [out, rank] sit in the arenas.
#[derive(Debug, Clone, Copy)]
struct Slot {
    a: usize,
    b: usize,
}

/// The adapter's bf16 weights and constants, borrowed by the passes.
struct Lora<'a> {
    weights: &'a Buf,
    slots: &'a [[Option<Slot>; 7]],
    rank: usize,
    scale: f32,
    dropout: f32,
}

/// Training state on one GPU.
pub struct CudaEngine {
    dev: Device,
    config: LlamaConfig,
    embed: Buf,
    head: Option<Buf>,
    final_norm: Buf,
    layers: Vec<GpuLayer>,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    slots: Vec<[Option<Slot>; 7]>,
    rank: usize,
    scale: f32,
    dropout: f32,
    params: CudaSlice<f32>,
    params_bf16: Buf,
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    step: u32,
}

impl std::fmt::Debug for CudaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEngine").field("device", &self.dev).field("parameters", &self.params.len()).finish()
    }
}

fn bf16(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| to_bf16(v)).collect()
}

/// Seed of the dropout mask of projection `target` in `layer` for a batch seeded `seed`.
fn mask_seed(seed: u64, layer: usize, target: usize) -> u64 {
    seed ^ ((layer * 7 + target + 1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl CudaEngine {
    /// Open the first GPU, upload `model`'s weights in bf16 and `adapter` into f32 arenas.
    pub fn new(model: &Llama<f32>, adapter: &LoraAdapter<f32>) -> Result<Self, TrainError> {
        let dev = Device::open(0)?;
        Self::with_device(dev, model, adapter)
    }

    /// [`CudaEngine::new`] on an opened device.
    pub fn with_device(dev: Device, model: &Llama<f32>, adapter: &LoraAdapter<f32>) -> Result<Self, TrainError> {
        let c = model.config.clone();
        let w = &model.weights;
        let up = |x: &[f32]| dev.upload(&bf16(x));
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    attn_norm: up(&l.attn_norm)?,
                    q: up(&l.q)?,
                    k: up(&l.k)?,
                    v: up(&l.v)?,
                    o: up(&l.o)?,
                    bias: match &l.qkv_bias {
                        Some([a, b, cc]) => Some([up(a)?, up(b)?, up(cc)?]),
                        None => None,
                    },
                    mlp_norm: up(&l.mlp_norm)?,
                    gate: up(&l.gate)?,
                    up: up(&l.up)?,
                    down: up(&l.down)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let rope = model.rope_table();
        // Arena layout: per layer, per target in block order, A then B.
        let mut host = Vec::with_capacity(adapter.parameters());
        let mut slots = Vec::with_capacity(c.layers);
        for layer in &adapter.layers {
            let mut s: [Option<Slot>; 7] = Default::default();
            for (i, pair) in layer.iter().enumerate() {
                if let Some(p) = pair {
                    let a = host.len();
                    host.extend_from_slice(&p.a);
                    let b = host.len();
                    host.extend_from_slice(&p.b);
                    s[i] = Some(Slot { a, b });
                }
            }
            slots.push(s);
        }
        let n = host.len();
        Ok(Self {
            embed: up(&w.embed)?,
            head: w.lm_head.as_deref().map(up).transpose()?,
            final_norm: up(&w.final_norm)?,
            layers,
            cos: dev.upload(rope.cos())?,
            sin: dev.upload(rope.sin())?,
            slots,
            rank: adapter.rank,
            scale: adapter.scale(),
            dropout: adapter.dropout as f32,
            params_bf16: dev.upload(&bf16(&host))?,
            params: dev.upload(&host)?,
            grads: dev.zeros(n)?,
            m: dev.zeros(n)?,
            v: dev.zeros(n)?,
            step: 0,
            config: c,
            dev,
        })
    }

    /// The device in use.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The accumulated gradients, shaped like `adapter` (for checks against the CPU engine).
    pub fn read_gradients(&self, adapter: &mut LoraAdapter<f32>) -> Result<(), TrainError> {
        let flat = self.dev.download(&self.grads)?;
        unflatten(&flat, adapter);
        Ok(())
    }

    /// Forward and backward of one packed batch; gradients are added into the arena. The same
    /// five steps as [`Llama::train_step`]: per block `attention_forward` then `mlp_forward`,
    /// `head_loss`, then from the last block down `mlp_backward` and `attention_backward`.
    fn step(&mut self, batch: &Batch, grad_scale: f32, seed: u64) -> Result<(f64, usize), CudaError> {
        let n = batch.tokens.len();
        let c = &self.config;
        if let Some(&t) = batch.tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(CudaError::Shape(format!("token id {t} is outside the vocabulary of {}", c.vocab)));
        }
        let ids: Vec<i32> = batch.tokens.iter().map(|&t| t as i32).collect();
        let mut positions = Vec::with_capacity(n);
        for &len in &batch.seq_lens {
            positions.extend(0..len as i32);
        }
        let max_pos = batch.seq_lens.iter().copied().max().unwrap_or(0);
        if max_pos > c.max_pos {
            return Err(CudaError::Shape(format!(
                "a sequence of {max_pos} tokens is longer than the model's context of {}",
                c.max_pos
            )));
        }
        let CudaEngine { dev, embed, head, final_norm, layers, cos, sin, slots, params_bf16, grads, .. } = self;
        let (dev, embed, grads) = (&*dev, &*embed, grads);
        let pass = Pass {
            dev,
            config: c,
            layers,
            embed,
            head: head.as_ref(),
            final_norm,
            cos,
            sin,
            lora: Lora { weights: params_bf16, slots, rank: self.rank, scale: self.scale, dropout: self.dropout },
            n,
            positions: dev.upload(&positions)?,
            max_pos,
            packing: dev.packing(&batch.seq_lens)?,
            seed,
        };
        let mut x = dev.scratch::<u16>(n * c.hidden)?;
        dev.embedding_forward(embed, &dev.upload(&ids)?, c.hidden, &mut x)?;
        // As on the CPU: below the lowest block with an adapter nothing is kept or gone back
        // through.
        let lowest = slots.iter().position(|s| s.iter().any(Option::is_some)).unwrap_or(c.layers);
        let mut saved = Vec::with_capacity(c.layers - lowest.min(c.layers));
        for li in 0..c.layers {
            let (h1, attn) = pass.attention_forward(li, x)?;
            let (next, mlp) = pass.mlp_forward(li, h1)?;
            x = next;
            if li >= lowest {
                saved.push((attn, mlp));
            }
        }
        let (loss, count, mut dx) = pass.head_loss(&x, &batch.targets, grad_scale)?;
        drop(x);
        for li in (lowest..c.layers).rev() {
            let (attn, mlp) = saved.pop().expect("one saved state per layer");
            let dh1 = pass.mlp_backward(li, &mlp, grads, &dx)?;
            dx = pass.attention_backward(li, &attn, grads, &dh1)?;
        }
        Ok((loss, count))
    }
}

/// One batch's pass through the engine: the frozen weights on the device, the adapter, and the
/// packing of the batch's sequences.
struct Pass<'a> {
    dev: &'a Device,
    config: &'a LlamaConfig,
    layers: &'a [GpuLayer],
    embed: &'a Buf,
    head: Option<&'a Buf>,
    final_norm: &'a Buf,
    cos: &'a CudaSlice<f32>,
    sin: &'a CudaSlice<f32>,
    lora: Lora<'a>,
    /// Tokens in the batch.
    n: usize,
    /// Each token's position in its sequence.
    positions: CudaSlice<i32>,
    /// The longest sequence.
    max_pos: usize,
    packing: trex_kernels::cuda::Packing,
    /// The batch's dropout seed.
    seed: u64,
}

/// What a block's attention half keeps for its backward pass.
struct AttentionSaved {
    x_in: Buf,
    xn1: Buf,
    inv1: CudaSlice<f32>,
    q: Buf,
    k: Buf,
    v: Buf,
    attn: Buf,
    lse: CudaSlice<f32>,
    /// `dropout(x)·Aᵀ` of q, k, v, o.
    xa: [Option<Buf>; 4],
}

/// What a block's MLP half keeps for its backward pass.
struct MlpSaved {
    h1: Buf,
    xn2: Buf,
    inv2: CudaSlice<f32>,
    gate: Buf,
    up: Buf,
    act: Buf,
    /// `dropout(x)·Aᵀ` of gate, up, down.
    xa: [Option<Buf>; 3],
}

impl Pass<'_> {
    fn dev(&self) -> &Device {
        self.dev
    }

    fn config(&self) -> &LlamaConfig {
        self.config
    }

    /// Projection `t` of block `li` with its dropout seed, when it is adapted.
    fn slot(&self, li: usize, t: usize) -> Option<(Slot, u64)> {
        self.lora.slots[li][t].map(|s| (s, mask_seed(self.seed, li, t)))
    }

    /// Projection `t` of block `li` for the backward pass, with what its forward saved.
    fn back_slot<'b>(&self, li: usize, t: usize, xa: &'b Option<Buf>) -> Option<(Slot, &'b Buf, u64)> {
        self.lora.slots[li][t].map(|s| (s, xa.as_ref().expect("saved with its slot"), mask_seed(self.seed, li, t)))
    }

    fn rope(&self, x: &mut Buf, heads: usize, sign: f32) -> Result<(), CudaError> {
        let hd = self.config.head_dim;
        self.dev.rope_packed(
            x,
            self.cos,
            self.sin,
            heads,
            hd,
            &self.positions,
            self.max_pos.saturating_sub(1),
            false,
            sign,
        )
    }

    fn shape(&self) -> AttentionShape {
        let c = self.config();
        AttentionShape { seq: 0, heads: c.heads, kv_heads: c.kv_heads, head_dim: c.head_dim }
    }

    /// Block `li`'s attention half on the residual stream `x`: RMSNorm, q/k/v, RoPE, packed causal
    /// attention, the output projection, plus the residual. Returns `h1`.
    fn attention_forward(&self, li: usize, x: Buf) -> Result<(Buf, AttentionSaved), CudaError> {
        let (dev, c, lora, n) = (self.dev(), self.config(), &self.lora, self.n);
        let lw = &self.layers[li];
        let (d, qd, kvd) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let (mut xn1, mut inv1) = (dev.scratch::<u16>(n * d)?, dev.scratch::<f32>(n)?);
        dev.rms_norm_forward(&x, &lw.attn_norm, c.rms_eps as f32, d, &mut xn1, &mut inv1)?;
        let bias = lw.bias.as_ref();
        let (mut q, xa0) = linear(dev, lora, &xn1, n, &lw.q, qd, d, bias.map(|b| &b[0]), self.slot(li, 0))?;
        let (mut k, xa1) = linear(dev, lora, &xn1, n, &lw.k, kvd, d, bias.map(|b| &b[1]), self.slot(li, 1))?;
        let (v, xa2) = linear(dev, lora, &xn1, n, &lw.v, kvd, d, bias.map(|b| &b[2]), self.slot(li, 2))?;
        self.rope(&mut q, c.heads, 1.0)?;
        self.rope(&mut k, c.kv_heads, 1.0)?;
        let (mut attn, mut lse) = (dev.scratch::<u16>(n * qd)?, dev.scratch::<f32>(n * c.heads)?);
        dev.attention_forward_packed(self.shape(), &self.packing, &q, &k, &v, &mut attn, &mut lse)?;
        let (o, xa3) = linear(dev, lora, &attn, n, &lw.o, d, qd, None, self.slot(li, 3))?;
        let mut h1 = dev.duplicate(&x)?;
        dev.add(&mut h1, &o)?;
        Ok((h1, AttentionSaved { x_in: x, xn1, inv1, q, k, v, attn, lse, xa: [xa0, xa1, xa2, xa3] }))
    }

    /// Block `li`'s MLP half on `h1`: RMSNorm, gate and up, SwiGLU, down, plus the residual.
    /// Returns the block's output.
    fn mlp_forward(&self, li: usize, h1: Buf) -> Result<(Buf, MlpSaved), CudaError> {
        let (dev, c, lora, n) = (self.dev(), self.config(), &self.lora, self.n);
        let lw = &self.layers[li];
        let (d, f) = (c.hidden, c.intermediate);
        let (mut xn2, mut inv2) = (dev.scratch::<u16>(n * d)?, dev.scratch::<f32>(n)?);
        dev.rms_norm_forward(&h1, &lw.mlp_norm, c.rms_eps as f32, d, &mut xn2, &mut inv2)?;
        let (gate, xa4) = linear(dev, lora, &xn2, n, &lw.gate, f, d, None, self.slot(li, 4))?;
        let (up, xa5) = linear(dev, lora, &xn2, n, &lw.up, f, d, None, self.slot(li, 5))?;
        let mut act = dev.scratch::<u16>(n * f)?;
        dev.swiglu_forward(&gate, &up, &mut act)?;
        let (down, xa6) = linear(dev, lora, &act, n, &lw.down, d, f, None, self.slot(li, 6))?;
        let mut next = dev.duplicate(&h1)?;
        dev.add(&mut next, &down)?;
        Ok((next, MlpSaved { h1, xn2, inv2, gate, up, act, xa: [xa4, xa5, xa6] }))
    }

    /// The final norm, then the LM head and cross-entropy on the positions that have targets.
    /// Returns the summed loss, the positions counted and the gradient of the last block's output.
    fn head_loss(&self, x: &Buf, targets: &[i64], grad_scale: f32) -> Result<(f64, usize, Buf), CudaError> {
        let (dev, c, n) = (self.dev(), self.config(), self.n);
        let d = c.hidden;
        let (mut hf, mut inv_f) = (dev.scratch::<u16>(n * d)?, dev.scratch::<f32>(n)?);
        dev.rms_norm_forward(x, self.final_norm, c.rms_eps as f32, d, &mut hf, &mut inv_f)?;
        let rows: Vec<i32> = (0..n).filter(|&i| targets[i] >= 0).map(|i| i as i32).collect();
        let row_targets: Vec<i32> = rows.iter().map(|&i| targets[i as usize] as i32).collect();
        let mut dhf = dev.zeros::<u16>(n * d)?; // scatter_rows writes only the target rows
        let (mut loss, mut count) = (0.0f64, 0usize);
        if !rows.is_empty() {
            let m = rows.len();
            let rows_dev = dev.upload(&rows)?;
            let mut h = dev.scratch::<u16>(m * d)?;
            dev.embedding_forward(&hf, &rows_dev, d, &mut h)?;
            let mut dh = dev.scratch::<u16>(m * d)?;
            // Logits chunks of about 64 Mi values.
            let chunk = ((1usize << 26) / m).max(1024).min(c.vocab);
            let head = self.head.unwrap_or(self.embed);
            let (l, k) = dev.cross_entropy_lm_head(&h, head, &row_targets, d, chunk, grad_scale, &mut dh)?;
            (loss, count) = (f64::from(l), k);
            dev.scatter_rows(&dh, &rows_dev, d, &mut dhf)?;
        }
        drop(hf);
        let mut dx = dev.scratch::<u16>(n * d)?;
        dev.rms_norm_backward(x, self.final_norm, &inv_f, &dhf, d, &mut dx)?;
        Ok((loss, count, dx))
    }

    /// Backward of [`Pass::mlp_forward`]: from the gradient `dx` of block `li`'s output to the
    /// gradient of `h1`; LoRA gradients of gate, up and down into `grads`.
    fn mlp_backward(&self, li: usize, s: &MlpSaved, grads: &mut CudaSlice<f32>, dx: &Buf) -> Result<Buf, CudaError> {
        let (dev, c, lora, n) = (self.dev(), self.config(), &self.lora, self.n);
        let lw = &self.layers[li];
        let (d, f) = (c.hidden, c.intermediate);
        let mut dact = dev.scratch::<u16>(n * f)?;
        let slot = |t: usize| self.back_slot(li, t, &s.xa[t - 4]);
        linear_backward(dev, lora, grads, &s.act, dx, n, &lw.down, d, f, slot(6), &mut dact, false)?;
        let (mut dgate, mut dup) = (dev.scratch::<u16>(n * f)?, dev.scratch::<u16>(n * f)?);
        dev.swiglu_backward(&s.gate, &s.up, &dact, &mut dgate, &mut dup)?;
        drop(dact);
        let mut dxn2 = dev.scratch::<u16>(n * d)?;
        linear_backward(dev, lora, grads, &s.xn2, &dgate, n, &lw.gate, f, d, slot(4), &mut dxn2, false)?;
        linear_backward(dev, lora, grads, &s.xn2, &dup, n, &lw.up, f, d, slot(5), &mut dxn2, true)?;
        drop((dgate, dup));
        // The block output is h1 + mlp(h1), so dh1 = dx + norm2'(dxn2).
        let mut dh1 = dev.scratch::<u16>(n * d)?;
        dev.rms_norm_backward(&s.h1, &lw.mlp_norm, &s.inv2, &dxn2, d, &mut dh1)?;
        dev.add(&mut dh1, dx)?;
        Ok(dh1)
    }

    /// Backward of [`Pass::attention_forward`]: from the gradient `dh1` to the gradient of block
    /// `li`'s input; LoRA gradients of q, k, v and o into `grads`.
    fn attention_backward(
        &self,
        li: usize,
        s: &AttentionSaved,
        grads: &mut CudaSlice<f32>,
        dh1: &Buf,
    ) -> Result<Buf, CudaError> {
        let (dev, c, lora, n) = (self.dev(), self.config(), &self.lora, self.n);
        let lw = &self.layers[li];
        let (d, qd, kvd) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let slot = |t: usize| self.back_slot(li, t, &s.xa[t]);
        let mut dattn = dev.scratch::<u16>(n * qd)?;
        linear_backward(dev, lora, grads, &s.attn, dh1, n, &lw.o, d, qd, slot(3), &mut dattn, false)?;
        let (mut dq, mut dk, mut dv) =
            (dev.scratch::<u16>(n * qd)?, dev.scratch::<u16>(n * kvd)?, dev.scratch::<u16>(n * kvd)?);
        dev.attention_backward_packed(
            self.shape(),
            &self.packing,
            &s.q,
            &s.k,
            &s.v,
            &s.attn,
            &s.lse,
            &dattn,
            &mut dq,
            &mut dk,
            &mut dv,
        )?;
        drop(dattn);
        self.rope(&mut dq, c.heads, -1.0)?;
        self.rope(&mut dk, c.kv_heads, -1.0)?;
        let mut dxn1 = dev.scratch::<u16>(n * d)?;
        linear_backward(dev, lora, grads, &s.xn1, &dq, n, &lw.q, qd, d, slot(0), &mut dxn1, false)?;
        linear_backward(dev, lora, grads, &s.xn1, &dk, n, &lw.k, kvd, d, slot(1), &mut dxn1, true)?;
        linear_backward(dev, lora, grads, &s.xn1, &dv, n, &lw.v, kvd, d, slot(2), &mut dxn1, true)?;
        drop((dq, dk, dv));
        let mut dx = dev.scratch::<u16>(n * d)?;
        dev.rms_norm_backward(&s.x_in, &lw.attn_norm, &s.inv1, &dxn1, d, &mut dx)?;
        dev.add(&mut dx, dh1)?;
        Ok(dx)
    }
}

/// `y = x·Wᵀ (+ bias) (+ scale·(dropout(x)·Aᵀ)·Bᵀ)` for `rows` rows; returns `y` and, for an
/// adapted projection, `dropout(x)·Aᵀ` for the backward pass.
#[allow(clippy::too_many_arguments)]
fn linear(
    dev: &Device,
    lora: &Lora<'_>,
    x: &Buf,
    rows: usize,
    w: &Buf,
    out: usize,
    inp: usize,
    bias: Option<&Buf>,
    slot: Option<(Slot, u64)>,
) -> Result<(Buf, Option<Buf>), CudaError> {
    let mut y = dev.scratch::<u16>(rows * out)?;
    dev.gemm(Mat::new(x, rows, inp), Mat::new(w, out, inp).t(), &mut y, 1.0, 0.0)?;
    if let Some(b) = bias {
        dev.add_bias(&mut y, b)?;
    }
    let Some((s, seed)) = slot else { return Ok((y, None)) };
    let r = lora.rank;
    let dropped;
    let xin = if lora.dropout > 0.0 {
        let mut xd = dev.scratch::<u16>(x.len())?;
        dev.dropout(x, &mut xd, lora.dropout, seed)?;
        dropped = xd;
        &dropped
    } else {
        x
    };
    let mut xa = dev.scratch::<u16>(rows * r)?;
    dev.gemm(Mat::new(xin, rows, inp), Mat::new(lora.weights, r, inp).at(s.a).t(), &mut xa, 1.0, 0.0)?;
    dev.gemm(Mat::new(&xa, rows, r), Mat::new(lora.weights, out, r).at(s.b).t(), &mut y, lora.scale, 1.0)?;
    Ok((y, Some(xa)))
}

/// Backward of [`linear`]: `dx (+)= dy·W (+ lora)`, and the LoRA gradients added into `grads`.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    dev: &Device,
    lora: &Lora<'_>,
    grads: &mut CudaSlice<f32>,
    x: &Buf,
    dy: &Buf,
    rows: usize,
    w: &Buf,
    out: usize,
    inp: usize,
    slot: Option<(Slot, &Buf, u64)>,
    dx: &mut Buf,
    accumulate: bool,
) -> Result<(), CudaError> {
    let beta = if accumulate { 1.0 } else { 0.0 };
    dev.gemm(Mat::new(dy, rows, out), Mat::new(w, out, inp), dx, 1.0, beta)?;
    let Some((s, xa, seed)) = slot else { return Ok(()) };
    let (r, sc) = (lora.rank, lora.scale);
    // t = dy·B [rows, r]
    let mut t = dev.scratch::<u16>(rows * r)?;
    dev.gemm(Mat::new(dy, rows, out), Mat::new(lora.weights, out, r).at(s.b), &mut t, 1.0, 0.0)?;
    // dB += s·dyᵀ·xa [out, r]
    dev.gemm_at(Mat::new(dy, rows, out).t(), Mat::new(xa, rows, r), grads, s.b, sc, 1.0)?;
    let a = Mat::new(lora.weights, r, inp).at(s.a);
    if lora.dropout > 0.0 {
        let mut xd = dev.scratch::<u16>(x.len())?;
        dev.dropout(x, &mut xd, lora.dropout, seed)?;
        // dA += s·tᵀ·dropout(x) [r, in]; dx += dropout'(s·t·A).
        dev.gemm_at(Mat::new(&t, rows, r).t(), Mat::new(&xd, rows, inp), grads, s.a, sc, 1.0)?;
        let mut g = xd;
        dev.gemm(Mat::new(&t, rows, r), a, &mut g, sc, 0.0)?;
        dev.dropout_add(dx, &g, lora.dropout, seed)?;
    } else {
        dev.gemm_at(Mat::new(&t, rows, r).t(), Mat::new(x, rows, inp), grads, s.a, sc, 1.0)?;
        dev.gemm(Mat::new(&t, rows, r), a, dx, sc, 1.0)?;
    }
    Ok(())
}

/// Copy a flat arena (per layer, per target, A then B) into an adapter's buffers.
fn unflatten(flat: &[f32], adapter: &mut LoraAdapter<f32>) {
    let mut at = 0;
    adapter.for_each_mut(|v| {
        let n = v.len();
        v.copy_from_slice(&flat[at..at + n]);
        at += n;
    });
}

impl Engine for CudaEngine {
    fn accumulate(&mut self, batch: &Batch, grad_scale: f32, seed: u64) -> Result<(f64, usize), TrainError> {
        Ok(self.step(batch, grad_scale, seed)?)
    }

    fn grad_norm(&mut self) -> Result<f64, TrainError> {
        Ok(self.dev.sum_squares(&self.grads)?.sqrt())
    }

    fn update(&mut self, lr: f64, weight_decay: f64, grad_scale: f32) -> Result<(), TrainError> {
        self.step += 1;
        let hp = GpuAdamW { lr: lr as f32, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: weight_decay as f32 };
        self.dev.adamw(
            &mut self.params,
            &self.grads,
            &mut self.m,
            &mut self.v,
            Some(&mut self.params_bf16),
            hp,
            self.step,
            grad_scale,
        )?;
        self.dev.fill_zero(&mut self.grads)?;
        Ok(())
    }

    fn read_adapter(&mut self, adapter: &mut LoraAdapter<f32>) -> Result<(), TrainError> {
        let flat = self.dev.download(&self.params)?;
        unflatten(&flat, adapter);
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), TrainError> {
        Ok(self.dev.synchronize()?)
    }

    fn device_name(&self) -> String {
        self.dev.name.clone()
    }
}
