//! The Llama-family decoder: a training pass (forward with saved activations, backward into
//! LoRA gradients only, since the base is frozen) and an inference pass with a KV cache.
//!
//! Training batches are *packed*: several sequences laid end to end in one [tokens, hidden]
//! matrix, so every projection is one large matrix product and no compute is spent on padding;
//! attention and RoPE run per sequence. The LM head and cross-entropy run only on positions that
//! have a target (completion tokens), in chunks, so prompt tokens cost nothing there.

use trex_kernels::Real;
use trex_kernels::cpu::flush_denormals;
use trex_kernels::cpu::{
    AttentionShape, RopeLayout, RopeTable, Trans, add_assign, attention_backward, attention_cached, attention_forward,
    cross_entropy, matmul, rms_norm_backward, rms_norm_forward, rope_backward, rope_forward, swiglu_backward,
    swiglu_forward,
};
use trex_sdk::types::LoraTarget;

use super::lora::{LoraAdapter, LoraPair, SplitMix, target_index};
use super::{LlamaConfig, Weights};

/// Rows of the LM head computed at once (bounds the logits buffer to `LM_CHUNK × vocab`).
const LM_CHUNK: usize = 128;

/// A packed training batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Token ids of every sequence, end to end.
    pub tokens: Vec<u32>,
    /// For each position, the id of the next token to predict there, or a negative number to
    /// ignore the position (prompt tokens, the last token of a sequence).
    pub targets: Vec<i64>,
    /// Length of each sequence; they sum to `tokens.len()`.
    pub seq_lens: Vec<usize>,
}

impl Batch {
    /// Positions that carry a loss.
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }
}

/// A model ready to run: configuration, weights and RoPE table.
#[derive(Debug, Clone)]
pub struct Llama<T> {
    /// Shape and constants.
    pub config: LlamaConfig,
    /// Weights.
    pub weights: Weights<T>,
    rope: RopeTable<T>,
}

/// What one adapted projection keeps for the backward pass.
#[derive(Debug, Default)]
struct LoraSaved<T> {
    /// `dropout(x)·Aᵀ` [rows, rank].
    xa: Vec<T>,
    /// The dropout mask (0 or 1/(1−p)), when dropout is on.
    mask: Option<Vec<T>>,
}

#[derive(Debug, Default)]
struct LayerSaved<T> {
    x_in: Vec<T>,
    inv1: Vec<T>,
    xn1: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    probs: Vec<Vec<T>>,
    attn: Vec<T>,
    h1: Vec<T>,
    inv2: Vec<T>,
    xn2: Vec<T>,
    gate: Vec<T>,
    up: Vec<T>,
    act: Vec<T>,
    lora: [Option<LoraSaved<T>>; 7],
}

/// Per-sequence key/value cache for generation.
#[derive(Debug, Clone)]
pub struct KvCache<T> {
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
    len: usize,
}

impl<T: Real> KvCache<T> {
    /// An empty cache for `config`.
    pub fn new(config: &LlamaConfig) -> Self {
        Self { k: vec![Vec::new(); config.layers], v: vec![Vec::new(); config.layers], len: 0 }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The adapter, its scale, and (in training) the dropout random state.
struct LoraCtx<'a, T> {
    adapter: &'a LoraAdapter<T>,
    scale: T,
}

/// What the backward pass of one adapted projection needs: the adapter pair, what the forward
/// pass saved, where its gradients go, and the scale.
type LoraBackward<'a, T> = (&'a LoraPair<T>, &'a LoraSaved<T>, &'a mut LoraPair<T>, T);

/// What the backward pass of adapted projection `i` of a block needs, when it is adapted: its
/// adapter pair `a[i]`, what the forward pass saved, and its gradient slot `g[i]`.
fn lora_backward<'a, T>(
    s: &'a LayerSaved<T>,
    a: &'a [Option<LoraPair<T>>; 7],
    g: &'a mut [Option<LoraPair<T>>; 7],
    i: usize,
    scale: T,
) -> Option<LoraBackward<'a, T>> {
    let saved = s.lora[i].as_ref()?;
    Some((
        a[i].as_ref().expect("saved implies an adapter"),
        saved,
        g[i].as_mut().expect("a gradient slot per pair"),
        scale,
    ))
}

fn zeros<T: Real>(n: usize) -> Vec<T> {
    vec![T::zero(); n]
}

impl<T: Real> Llama<T> {
    /// Wrap weights; the RoPE table covers `config.max_pos` positions.
    pub fn new(config: LlamaConfig, weights: Weights<T>) -> Self {
        let rope = RopeTable::new(config.head_dim, config.max_pos, config.rope_theta);
        Self { config, weights, rope }
    }

    /// The RoPE table (cos and sin per position).
    pub fn rope_table(&self) -> &RopeTable<T> {
        &self.rope
    }

    fn lm_head(&self) -> &[T] {
        self.weights.lm_head.as_deref().unwrap_or(&self.weights.embed)
    }

    fn embed(&self, tokens: &[u32]) -> Vec<T> {
        let d = self.config.hidden;
        let mut x = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            let t = t as usize;
            assert!(t < self.config.vocab, "token id {t} is outside the vocabulary of {}", self.config.vocab);
            x.extend_from_slice(&self.weights.embed[t * d..(t + 1) * d]);
        }
        x
    }

    /// `y = x·Wᵀ (+ bias) (+ lora)` for `rows` rows; returns what the backward pass needs.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        x: &[T],
        rows: usize,
        w: &[T],
        bias: Option<&[T]>,
        out: usize,
        inp: usize,
        lora: Option<(&LoraPair<T>, &LoraCtx<'_, T>)>,
        dropout: Option<&mut SplitMix>,
        y: &mut [T],
    ) -> Option<LoraSaved<T>> {
        matmul(Trans::N, Trans::T, rows, out, inp, T::one(), x, w, T::zero(), y);
        if let Some(b) = bias {
            for row in y.chunks_mut(out) {
                for (y, &b) in row.iter_mut().zip(b) {
                    *y = *y + b;
                }
            }
        }
        let (pair, ctx) = lora?;
        let r = ctx.adapter.rank;
        let p = ctx.adapter.dropout;
        let (xd, mask) = match dropout {
            Some(rng) if p > 0.0 => {
                let keep = T::from_f64(1.0 / (1.0 - p)).expect("finite");
                let mask: Vec<T> = (0..x.len()).map(|_| if rng.unit() < p { T::zero() } else { keep }).collect();
                (x.iter().zip(&mask).map(|(&a, &m)| a * m).collect::<Vec<T>>(), Some(mask))
            }
            _ => (Vec::new(), None),
        };
        let xin = if mask.is_some() { &xd[..] } else { x };
        let mut xa = zeros(rows * r);
        matmul(Trans::N, Trans::T, rows, r, inp, T::one(), xin, &pair.a, T::zero(), &mut xa);
        matmul(Trans::N, Trans::T, rows, out, r, ctx.scale, &xa, &pair.b, T::one(), y);
        Some(LoraSaved { xa, mask })
    }

    /// Backward of [`Llama::linear`]: `dx (+)= dy·W + lora`, and LoRA gradients into `grad`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        x: &[T],
        dy: &[T],
        rows: usize,
        w: &[T],
        out: usize,
        inp: usize,
        lora: Option<LoraBackward<'_, T>>,
        dx: &mut [T],
        accumulate: bool,
    ) {
        let beta = if accumulate { T::one() } else { T::zero() };
        matmul(Trans::N, Trans::N, rows, inp, out, T::one(), dy, w, beta, dx);
        let Some((pair, saved, grad, scale)) = lora else { return };
        let r = pair.a.len() / inp;
        // t = dy·B [rows, r]
        let mut t = zeros(rows * r);
        matmul(Trans::N, Trans::N, rows, r, out, T::one(), dy, &pair.b, T::zero(), &mut t);
        // dB += s·dyᵀ·xa [out, r]
        matmul(Trans::T, Trans::N, out, r, rows, scale, dy, &saved.xa, T::one(), &mut grad.b);
        // dA += s·tᵀ·dropout(x) [r, in]
        match &saved.mask {
            Some(mask) => {
                let xd: Vec<T> = x.iter().zip(mask).map(|(&a, &m)| a * m).collect();
                matmul(Trans::T, Trans::N, r, inp, rows, scale, &t, &xd, T::one(), &mut grad.a);
                let mut dxd = zeros(rows * inp);
                matmul(Trans::N, Trans::N, rows, inp, r, scale, &t, &pair.a, T::zero(), &mut dxd);
                for ((dx, &g), &m) in dx.iter_mut().zip(&dxd).zip(mask) {
                    *dx = *dx + g * m;
                }
            }
            None => {
                matmul(Trans::T, Trans::N, r, inp, rows, scale, &t, x, T::one(), &mut grad.a);
                matmul(Trans::N, Trans::N, rows, inp, r, scale, &t, &pair.a, T::one(), dx);
            }
        }
    }

    fn pair<'a>(
        lora: Option<&'a LoraCtx<'a, T>>,
        layer: usize,
        t: LoraTarget,
    ) -> Option<(&'a LoraPair<T>, &'a LoraCtx<'a, T>)> {
        let ctx = lora?;
        ctx.adapter.layers[layer][target_index(t)].as_ref().map(|p| (p, ctx))
    }

    /// `y = x·Wᵀ (+ bias)` over all rows, plus each segment's adapter over its rows (no dropout:
    /// inference). One segment computes exactly what [`Llama::linear`] does.
    #[allow(clippy::too_many_arguments)]
    fn linear_segments(
        &self,
        x: &[T],
        w: &[T],
        bias: Option<&[T]>,
        out: usize,
        inp: usize,
        layer: usize,
        target: LoraTarget,
        segments: &[(usize, usize, Option<LoraCtx<'_, T>>)],
        y: &mut [T],
    ) {
        let rows = x.len() / inp;
        if let [(_, _, ctx)] = segments {
            self.linear(x, rows, w, bias, out, inp, Self::pair(ctx.as_ref(), layer, target), None, y);
            return;
        }
        self.linear(x, rows, w, bias, out, inp, None, None, y);
        for (first, n, ctx) in segments {
            if let Some((pair, ctx)) = Self::pair(ctx.as_ref(), layer, target) {
                let (x, y) = (&x[first * inp..(first + n) * inp], &mut y[first * out..(first + n) * out]);
                let mut xa = zeros(n * ctx.adapter.rank);
                matmul(Trans::N, Trans::T, *n, ctx.adapter.rank, inp, T::one(), x, &pair.a, T::zero(), &mut xa);
                matmul(Trans::N, Trans::T, *n, out, ctx.adapter.rank, ctx.scale, &xa, &pair.b, T::one(), y);
            }
        }
    }

    /// Loss and LoRA gradients for one packed batch. Gradients of the *summed* loss times
    /// `grad_scale` are added into `grads` (shaped like `adapter`). Returns the summed loss and
    /// the number of positions counted. `dropout_seed` makes dropout masks reproducible.
    ///
    /// The pass reads as the model does: per block, `attention_forward` then
    /// `mlp_forward` (each half adds into the residual stream); the LM head and loss
    /// (`head_loss`); then, from the last block down, `mlp_backward` and
    /// `attention_backward`. The CUDA engine has the same five steps.
    pub fn train_step(
        &self,
        batch: &Batch,
        adapter: &LoraAdapter<T>,
        grads: &mut LoraAdapter<T>,
        grad_scale: T,
        dropout_seed: u64,
    ) -> (T, usize) {
        let n = batch.tokens.len();
        assert_eq!(batch.targets.len(), n, "batch: one target per token");
        assert_eq!(batch.seq_lens.iter().sum::<usize>(), n, "batch: sequence lengths must add up to the token count");
        let ctx = LoraCtx { adapter, scale: adapter.scale() };
        let mut rng = SplitMix(dropout_seed);
        flush_denormals();

        // Forward, keeping what the backward pass needs. Below the lowest block that holds an
        // adapter no gradient is needed, so those blocks keep nothing and are not gone back
        // through.
        let lowest = adapter.lowest_layer();
        let mut x = self.embed(&batch.tokens);
        let mut saved: Vec<LayerSaved<T>> = Vec::with_capacity(self.config.layers - lowest.min(self.config.layers));
        for li in 0..self.config.layers {
            let mut s = LayerSaved::<T>::default();
            let mut h1 = self.attention_forward(li, &x, &batch.seq_lens, &ctx, &mut rng, &mut s);
            add_assign(&mut h1, &x);
            let mut next = self.mlp_forward(li, &h1, &ctx, &mut rng, &mut s);
            add_assign(&mut next, &h1);
            if li >= lowest {
                (s.x_in, s.h1) = (std::mem::replace(&mut x, next), h1);
                saved.push(s);
            } else {
                x = next;
            }
        }
        let (loss, count, mut dx) = self.head_loss(&x, &batch.targets, grad_scale);

        // Backward through the blocks; `dx` is the gradient of the block output.
        for li in (lowest..self.config.layers).rev() {
            let s = saved.pop().expect("one saved state per layer");
            let (a, g) = (&adapter.layers[li], &mut grads.layers[li]);
            let dh1 = self.mlp_backward(li, &s, a, g, ctx.scale, &dx);
            dx = self.attention_backward(li, &s, a, g, ctx.scale, &batch.seq_lens, &dh1);
        }
        (loss, count)
    }

    /// Block `li`'s attention half on the residual stream `x`: RMSNorm, the q/k/v projections,
    /// RoPE and causal attention per packed sequence, and the output projection. Returns the
    /// output projection (the caller adds `x`); saves what the backward pass needs into `s`.
    fn attention_forward(
        &self,
        li: usize,
        x: &[T],
        seq_lens: &[usize],
        ctx: &LoraCtx<'_, T>,
        rng: &mut SplitMix,
        s: &mut LayerSaved<T>,
    ) -> Vec<T> {
        let c = &self.config;
        let lw = &self.weights.layers[li];
        let n = seq_lens.iter().sum::<usize>();
        let (d, hd) = (c.hidden, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);
        let lora = Some(ctx);
        (s.inv1, s.xn1) = (zeros(n), zeros(n * d));
        rms_norm_forward(x, &lw.attn_norm, T::from_f64(c.rms_eps).expect("finite"), d, &mut s.xn1, &mut s.inv1);
        let bias = lw.qkv_bias.as_ref();
        let (mut q, mut k, mut v) = (zeros(n * qd), zeros(n * kvd), zeros(n * kvd));
        for (i, (w, out, t, y)) in [
            (&lw.q, qd, LoraTarget::QProj, &mut q),
            (&lw.k, kvd, LoraTarget::KProj, &mut k),
            (&lw.v, kvd, LoraTarget::VProj, &mut v),
        ]
        .into_iter()
        .enumerate()
        {
            let b = bias.map(|b| &b[i][..]);
            s.lora[i] = self.linear(&s.xn1, n, w, b, out, d, Self::pair(lora, li, t), Some(&mut *rng), y);
        }
        let mut attn = zeros(n * qd);
        let mut start = 0;
        for &len in seq_lens {
            let (qs, ks) = (start * qd..(start + len) * qd, start * kvd..(start + len) * kvd);
            rope_forward(&mut q[qs.clone()], &self.rope, c.heads, 0, RopeLayout::HalfSplit);
            rope_forward(&mut k[ks.clone()], &self.rope, c.kv_heads, 0, RopeLayout::HalfSplit);
            let shape = AttentionShape { seq: len, heads: c.heads, kv_heads: c.kv_heads, head_dim: hd };
            let mut probs = zeros(c.heads * len * len);
            attention_forward(shape, &q[qs.clone()], &k[ks.clone()], &v[ks], &mut attn[qs], &mut probs);
            s.probs.push(probs);
            start += len;
        }
        let mut o = zeros(n * d);
        let pair = Self::pair(lora, li, LoraTarget::OProj);
        s.lora[3] = self.linear(&attn, n, &lw.o, None, d, qd, pair, Some(rng), &mut o);
        (s.q, s.k, s.v, s.attn) = (q, k, v, attn);
        o
    }

    /// Block `li`'s MLP half on the residual stream `h1`: RMSNorm, gate and up projections,
    /// SwiGLU and the down projection. Returns the down projection (the caller adds `h1`).
    fn mlp_forward(
        &self,
        li: usize,
        h1: &[T],
        ctx: &LoraCtx<'_, T>,
        rng: &mut SplitMix,
        s: &mut LayerSaved<T>,
    ) -> Vec<T> {
        let c = &self.config;
        let lw = &self.weights.layers[li];
        let (d, f) = (c.hidden, c.intermediate);
        let n = h1.len() / d;
        let lora = Some(ctx);
        (s.inv2, s.xn2) = (zeros(n), zeros(n * d));
        rms_norm_forward(h1, &lw.mlp_norm, T::from_f64(c.rms_eps).expect("finite"), d, &mut s.xn2, &mut s.inv2);
        let (mut gate, mut up) = (zeros(n * f), zeros(n * f));
        let pair = Self::pair(lora, li, LoraTarget::GateProj);
        s.lora[4] = self.linear(&s.xn2, n, &lw.gate, None, f, d, pair, Some(&mut *rng), &mut gate);
        let pair = Self::pair(lora, li, LoraTarget::UpProj);
        s.lora[5] = self.linear(&s.xn2, n, &lw.up, None, f, d, pair, Some(&mut *rng), &mut up);
        let mut act = zeros(n * f);
        swiglu_forward(&gate, &up, &mut act);
        let mut down = zeros(n * d);
        let pair = Self::pair(lora, li, LoraTarget::DownProj);
        s.lora[6] = self.linear(&act, n, &lw.down, None, d, f, pair, Some(rng), &mut down);
        (s.gate, s.up, s.act) = (gate, up, act);
        down
    }

    /// The final norm, then the LM head and cross-entropy on the positions that have a target
    /// only, in chunks. Returns the summed loss, the positions counted and the gradient of the
    /// last block's output.
    fn head_loss(&self, x: &[T], targets: &[i64], grad_scale: T) -> (T, usize, Vec<T>) {
        let c = &self.config;
        let d = c.hidden;
        let n = targets.len();
        let mut inv_f = zeros(n);
        let mut hf = zeros(n * d);
        rms_norm_forward(x, &self.weights.final_norm, T::from_f64(c.rms_eps).expect("finite"), d, &mut hf, &mut inv_f);
        let rows: Vec<usize> = (0..n).filter(|&i| targets[i] >= 0).collect();
        let mut dhf = zeros(n * d);
        let (mut loss, mut count) = (T::zero(), 0);
        let head = self.lm_head();
        for chunk in rows.chunks(LM_CHUNK) {
            let m = chunk.len();
            let mut h = Vec::with_capacity(m * d);
            for &i in chunk {
                h.extend_from_slice(&hf[i * d..(i + 1) * d]);
            }
            let mut logits = zeros(m * c.vocab);
            matmul(Trans::N, Trans::T, m, c.vocab, d, T::one(), &h, head, T::zero(), &mut logits);
            let chunk_targets: Vec<i64> = chunk.iter().map(|&i| targets[i]).collect();
            let (l, k) = cross_entropy(&mut logits, &chunk_targets, c.vocab, grad_scale);
            loss = loss + l;
            count += k;
            let mut dh = zeros(m * d);
            matmul(Trans::N, Trans::N, m, d, c.vocab, T::one(), &logits, head, T::zero(), &mut dh);
            for (j, &i) in chunk.iter().enumerate() {
                dhf[i * d..(i + 1) * d].copy_from_slice(&dh[j * d..(j + 1) * d]);
            }
        }
        drop(hf);
        let mut dx = zeros(n * d);
        rms_norm_backward(x, &self.weights.final_norm, &inv_f, &dhf, d, &mut dx);
        (loss, count, dx)
    }

    /// Backward of `mlp_forward` plus the residual: from the gradient `dx` of block
    /// `li`'s output to the gradient of `h1`; LoRA gradients of gate, up and down into `g`.
    #[allow(clippy::too_many_arguments)]
    fn mlp_backward(
        &self,
        li: usize,
        s: &LayerSaved<T>,
        a: &[Option<LoraPair<T>>; 7],
        g: &mut [Option<LoraPair<T>>; 7],
        scale: T,
        dx: &[T],
    ) -> Vec<T> {
        let c = &self.config;
        let lw = &self.weights.layers[li];
        let (d, f) = (c.hidden, c.intermediate);
        let n = dx.len() / d;
        let mut dact = zeros(n * f);
        self.linear_backward(&s.act, dx, n, &lw.down, d, f, lora_backward(s, a, g, 6, scale), &mut dact, false);
        let (mut dgate, mut dup) = (zeros(n * f), zeros(n * f));
        swiglu_backward(&s.gate, &s.up, &dact, &mut dgate, &mut dup);
        drop(dact);
        let mut dxn2 = zeros(n * d);
        self.linear_backward(&s.xn2, &dgate, n, &lw.gate, f, d, lora_backward(s, a, g, 4, scale), &mut dxn2, false);
        self.linear_backward(&s.xn2, &dup, n, &lw.up, f, d, lora_backward(s, a, g, 5, scale), &mut dxn2, true);
        drop((dgate, dup));
        // The block output is h1 + mlp(h1), so dh1 = dx + norm2'(dxn2).
        let mut dh1 = zeros(n * d);
        rms_norm_backward(&s.h1, &lw.mlp_norm, &s.inv2, &dxn2, d, &mut dh1);
        add_assign(&mut dh1, dx);
        dh1
    }

    /// Backward of `attention_forward` plus the residual: from the gradient `dh1` to
    /// the gradient of block `li`'s input; LoRA gradients of q, k, v and o into `g`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        li: usize,
        s: &LayerSaved<T>,
        a: &[Option<LoraPair<T>>; 7],
        g: &mut [Option<LoraPair<T>>; 7],
        scale: T,
        seq_lens: &[usize],
        dh1: &[T],
    ) -> Vec<T> {
        let c = &self.config;
        let lw = &self.weights.layers[li];
        let (d, hd) = (c.hidden, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);
        let n = dh1.len() / d;
        let mut dattn = zeros(n * qd);
        self.linear_backward(&s.attn, dh1, n, &lw.o, d, qd, lora_backward(s, a, g, 3, scale), &mut dattn, false);
        let (mut dq, mut dk, mut dv) = (zeros(n * qd), zeros(n * kvd), zeros(n * kvd));
        let mut start = 0;
        for (si, &len) in seq_lens.iter().enumerate() {
            let shape = AttentionShape { seq: len, heads: c.heads, kv_heads: c.kv_heads, head_dim: hd };
            let (qs, ks) = (start * qd..(start + len) * qd, start * kvd..(start + len) * kvd);
            attention_backward(
                shape,
                &s.q[qs.clone()],
                &s.k[ks.clone()],
                &s.v[ks.clone()],
                &s.probs[si],
                &dattn[qs.clone()],
                &mut dq[qs.clone()],
                &mut dk[ks.clone()],
                &mut dv[ks.clone()],
            );
            rope_backward(&mut dq[qs], &self.rope, c.heads, 0, RopeLayout::HalfSplit);
            rope_backward(&mut dk[ks], &self.rope, c.kv_heads, 0, RopeLayout::HalfSplit);
            start += len;
        }
        drop(dattn);
        let mut dxn1 = zeros(n * d);
        self.linear_backward(&s.xn1, &dq, n, &lw.q, qd, d, lora_backward(s, a, g, 0, scale), &mut dxn1, false);
        self.linear_backward(&s.xn1, &dk, n, &lw.k, kvd, d, lora_backward(s, a, g, 1, scale), &mut dxn1, true);
        self.linear_backward(&s.xn1, &dv, n, &lw.v, kvd, d, lora_backward(s, a, g, 2, scale), &mut dxn1, true);
        drop((dq, dk, dv));
        let mut dx = zeros(n * d);
        rms_norm_backward(&s.x_in, &lw.attn_norm, &s.inv1, &dxn1, d, &mut dx);
        add_assign(&mut dx, dh1);
        dx
    }

    /// Run new tokens of several sequences through the model, extending each cache, and return
    /// the logits of each sequence's last new token ([sequences, vocab]).
    pub fn forward_cached(
        &self,
        seqs: &[&[u32]],
        caches: &mut [KvCache<T>],
        adapter: Option<&LoraAdapter<T>>,
    ) -> Vec<T> {
        self.forward_cached_multi(seqs, caches, &vec![adapter; seqs.len()])
    }

    /// [`Llama::forward_cached`] with each sequence's own adapter (or none): the base
    /// projections run once over every sequence's rows, and each adapter's low-rank products
    /// over the rows of the sequences that use it (multi-LoRA batching). With one adapter for
    /// all it computes exactly what `forward_cached` does.
    pub fn forward_cached_multi(
        &self,
        seqs: &[&[u32]],
        caches: &mut [KvCache<T>],
        adapters: &[Option<&LoraAdapter<T>>],
    ) -> Vec<T> {
        assert_eq!(seqs.len(), caches.len(), "one cache per sequence");
        assert_eq!(seqs.len(), adapters.len(), "one adapter (or none) per sequence");
        let c = &self.config;
        let (d, f, hd) = (c.hidden, c.intermediate, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let n = tokens.len();
        flush_denormals();
        // Runs of consecutive sequences that share an adapter: (first row, rows, adapter).
        let mut segments: Vec<(usize, usize, Option<LoraCtx<'_, T>>)> = Vec::new();
        let mut row = 0;
        for (seq, a) in seqs.iter().zip(adapters) {
            match segments.last_mut() {
                Some((_, rows, ctx)) if ctx.as_ref().map(|c| c.adapter as *const _) == a.map(|a| a as *const _) => {
                    *rows += seq.len();
                }
                _ => segments.push((row, seq.len(), a.map(|a| LoraCtx { adapter: a, scale: a.scale() }))),
            }
            row += seq.len();
        }
        let eps = T::from_f64(c.rms_eps).expect("finite");
        let mut x = self.embed(&tokens);
        for (li, lw) in self.weights.layers.iter().enumerate() {
            let mut xn = zeros(n * d);
            let mut inv = zeros(n);
            rms_norm_forward(&x, &lw.attn_norm, eps, d, &mut xn, &mut inv);
            let bias = lw.qkv_bias.as_ref();
            let (mut q, mut k, mut v) = (zeros(n * qd), zeros(n * kvd), zeros(n * kvd));
            let projections = [
                (LoraTarget::QProj, &lw.q, qd, &mut q),
                (LoraTarget::KProj, &lw.k, kvd, &mut k),
                (LoraTarget::VProj, &lw.v, kvd, &mut v),
            ];
            for (slot, (target, w, width, out)) in projections.into_iter().enumerate() {
                let b = bias.map(|b| &b[slot][..]);
                self.linear_segments(&xn, w, b, width, d, li, target, &segments, out);
            }
            let mut attn = zeros(n * qd);
            let mut start = 0;
            for (seq, cache) in seqs.iter().zip(caches.iter_mut()) {
                let len = seq.len();
                let past = cache.len;
                rope_forward(&mut q[start * qd..(start + len) * qd], &self.rope, c.heads, past, RopeLayout::HalfSplit);
                rope_forward(
                    &mut k[start * kvd..(start + len) * kvd],
                    &self.rope,
                    c.kv_heads,
                    past,
                    RopeLayout::HalfSplit,
                );
                cache.k[li].extend_from_slice(&k[start * kvd..(start + len) * kvd]);
                cache.v[li].extend_from_slice(&v[start * kvd..(start + len) * kvd]);
                attention_cached(
                    c.heads,
                    c.kv_heads,
                    hd,
                    past,
                    &q[start * qd..(start + len) * qd],
                    &cache.k[li],
                    &cache.v[li],
                    &mut attn[start * qd..(start + len) * qd],
                );
                start += len;
            }
            let mut o = zeros(n * d);
            self.linear_segments(&attn, &lw.o, None, d, qd, li, LoraTarget::OProj, &segments, &mut o);
            add_assign(&mut x, &o);
            rms_norm_forward(&x, &lw.mlp_norm, eps, d, &mut xn, &mut inv);
            let (mut gate, mut up) = (zeros(n * f), zeros(n * f));
            self.linear_segments(&xn, &lw.gate, None, f, d, li, LoraTarget::GateProj, &segments, &mut gate);
            self.linear_segments(&xn, &lw.up, None, f, d, li, LoraTarget::UpProj, &segments, &mut up);
            let mut act = zeros(n * f);
            swiglu_forward(&gate, &up, &mut act);
            let mut down = zeros(n * d);
            self.linear_segments(&act, &lw.down, None, d, f, li, LoraTarget::DownProj, &segments, &mut down);
            add_assign(&mut x, &down);
        }
        for (seq, cache) in seqs.iter().zip(caches.iter_mut()) {
            cache.len += seq.len();
        }
        // Last position of each sequence only.
        let mut last = Vec::with_capacity(seqs.len() * d);
        let mut end = 0;
        for seq in seqs {
            end += seq.len();
            last.extend_from_slice(&x[(end - 1) * d..end * d]);
        }
        let m = seqs.len();
        let mut hn = zeros(m * d);
        let mut inv = zeros(m);
        rms_norm_forward(&last, &self.weights.final_norm, eps, d, &mut hn, &mut inv);
        let mut logits = zeros(m * c.vocab);
        matmul(Trans::N, Trans::T, m, c.vocab, d, T::one(), &hn, self.lm_head(), T::zero(), &mut logits);
        logits
    }

    /// Logits at every position of one sequence ([len, vocab]); for tests and parity checks.
    pub fn logits_all(&self, tokens: &[u32], adapter: Option<&LoraAdapter<T>>) -> Vec<T> {
        let mut cache = KvCache::new(&self.config);
        let mut out = Vec::with_capacity(tokens.len() * self.config.vocab);
        // One position at a time through the cache: exercises the generation path too.
        for t in tokens {
            out.extend(self.forward_cached(&[std::slice::from_ref(t)], std::slice::from_mut(&mut cache), adapter));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, LlamaConfig, Weights};

    fn tiny(arch: Arch) -> Llama<f64> {
        let config = LlamaConfig { arch, ..LlamaConfig::tiny() };
        let weights = Weights::<f64>::random(&config, 3);
        Llama::new(config, weights)
    }

    fn batch() -> Batch {
        let tokens = vec![5, 17, 3, 88, 42, 9, 1, 60];
        let targets = vec![-1, 3, 88, 42, -1, -1, 60, -1];
        Batch { tokens, targets, seq_lens: vec![5, 3] }
    }

    fn adapter(model: &Llama<f64>, dropout: f64) -> LoraAdapter<f64> {
        let mut a = LoraAdapter::new(&model.config, 2, 4.0, dropout, &LoraTarget::ALL, 11);
        // PEFT starts B at zero; give it values so that every gradient path is exercised.
        let mut rng = SplitMix(99);
        for layer in &mut a.layers {
            for pair in layer.iter_mut().flatten() {
                pair.b.iter_mut().for_each(|x| *x = rng.unit() - 0.5);
            }
        }
        a
    }

    /// `top`: adapt only the top this many blocks (0: every block).
    fn check_gradients(arch: Arch, dropout: f64, top: usize) {
        let model = tiny(arch);
        let b = batch();
        let mut a = adapter(&model, dropout);
        if top > 0 {
            a.keep_top_layers(top);
            assert_eq!(a.lowest_layer(), model.config.layers - top);
        }
        let mut grads = a.zeros_like();
        let (loss, count) = model.train_step(&b, &a, &mut grads, 1.0, 7);
        assert_eq!(count, 4);
        assert!(loss.is_finite() && loss > 0.0);
        let mut flat_grads = Vec::new();
        grads.for_each(|g| flat_grads.extend_from_slice(g));
        let loss_of = |a: &LoraAdapter<f64>| model.train_step(&b, a, &mut a.zeros_like(), 1.0, 7).0;
        let h = 1e-6;
        let mut checked = 0;
        for p in (0..a.parameters()).step_by(13) {
            let mut up = a.clone();
            let mut down = a.clone();
            let (mut i_up, mut i_down) = (0, 0);
            up.for_each_mut(|v| {
                if p >= i_up && p < i_up + v.len() {
                    v[p - i_up] += h;
                }
                i_up += v.len();
            });
            down.for_each_mut(|v| {
                if p >= i_down && p < i_down + v.len() {
                    v[p - i_down] -= h;
                }
                i_down += v.len();
            });
            let num = (loss_of(&up) - loss_of(&down)) / (2.0 * h);
            let got = flat_grads[p];
            assert!(
                (num - got).abs() <= 1e-6 * num.abs().max(1.0),
                "{arch:?} dropout {dropout}: parameter {p}: analytic {got} vs numeric {num}"
            );
            checked += 1;
        }
        assert!(checked > 50, "checked only {checked} parameters");
    }

    #[test]
    fn lora_gradients_match_finite_differences() {
        check_gradients(Arch::Llama, 0.0, 0);
    }

    #[test]
    fn lora_gradients_match_finite_differences_when_only_the_top_block_is_adapted() {
        check_gradients(Arch::Llama, 0.0, 1);
    }

    #[test]
    fn stopping_the_backward_pass_below_the_lowest_adapter_changes_no_gradient() {
        // An adapter whose lower block has B = 0 computes the same forward pass as one without
        // that block, so the top block's gradients must be the same whether or not the backward
        // pass goes on below it.
        let model = tiny(Arch::Llama);
        let b = batch();
        let mut full = adapter(&model, 0.0);
        full.layers[0].iter_mut().flatten().for_each(|p| p.b.iter_mut().for_each(|x| *x = 0.0));
        let mut top = full.clone();
        top.keep_top_layers(1);
        let (mut g_full, mut g_top) = (full.zeros_like(), top.zeros_like());
        let (l_full, _) = model.train_step(&b, &full, &mut g_full, 1.0, 3);
        let (l_top, _) = model.train_step(&b, &top, &mut g_top, 1.0, 3);
        assert!((l_full - l_top).abs() < 1e-12, "{l_full} vs {l_top}");
        assert!(g_top.layers[0].iter().all(Option::is_none), "no gradient below the lowest adapter");
        for (t, (x, y)) in g_full.layers[1].iter().zip(&g_top.layers[1]).enumerate() {
            let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
            for (u, v) in x.a.iter().chain(&x.b).zip(y.a.iter().chain(&y.b)) {
                assert!((u - v).abs() < 1e-12, "target {t}: {u} vs {v}");
            }
        }
        // And the lower block does get a gradient when it is adapted.
        assert!(g_full.layers[0].iter().flatten().any(|p| p.b.iter().any(|x| *x != 0.0)));
    }

    #[test]
    fn lora_gradients_match_finite_differences_with_qkv_bias_and_dropout() {
        check_gradients(Arch::Qwen2, 0.3, 0);
    }

    #[test]
    fn packed_training_loss_equals_the_cached_inference_path() {
        let model = tiny(Arch::Llama);
        let b = batch();
        let a = adapter(&model, 0.0);
        let (loss, _) = model.train_step(&b, &a, &mut a.zeros_like(), 1.0, 0);
        let vocab = model.config.vocab;
        let mut want = 0.0;
        let mut start = 0;
        for &len in &b.seq_lens {
            let logits = model.logits_all(&b.tokens[start..start + len], Some(&a));
            for i in 0..len {
                let t = b.targets[start + i];
                if t < 0 {
                    continue;
                }
                let row = &logits[i * vocab..(i + 1) * vocab];
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                want += lse - row[t as usize];
            }
            start += len;
        }
        assert!((loss - want).abs() < 1e-9, "packed training loss {loss} vs per-sequence inference {want}");
    }

    #[test]
    fn fresh_adapter_leaves_the_model_unchanged() {
        let model = tiny(Arch::Llama);
        let a = LoraAdapter::new(&model.config, 4, 8.0, 0.0, &LoraTarget::ALL, 1);
        let tokens = [1, 2, 3, 4];
        assert_eq!(model.logits_all(&tokens, Some(&a)), model.logits_all(&tokens, None));
    }

    #[test]
    fn sequences_with_different_adapters_in_one_pass_match_each_run_alone() {
        let model = tiny(Arch::Llama);
        let a = adapter(&model, 0.0);
        let mut b = LoraAdapter::new(&model.config, 3, 6.0, 0.0, &[LoraTarget::QProj, LoraTarget::DownProj], 5);
        let mut rng = SplitMix(7);
        b.for_each_mut(|v| v.iter_mut().for_each(|x| *x = rng.unit() - 0.5));
        let seqs: [&[u32]; 4] = [&[5, 17, 3], &[88, 42], &[9, 1, 60, 2], &[4]];
        let adapters = [Some(&a), None, Some(&b), Some(&a)];
        let mut caches: Vec<_> = (0..4).map(|_| KvCache::new(&model.config)).collect();
        let together = model.forward_cached_multi(&seqs, &mut caches, &adapters);
        // A second step from the caches, one token each.
        let next: [&[u32]; 4] = [&[7], &[8], &[9], &[10]];
        let together_next = model.forward_cached_multi(&next, &mut caches, &adapters);
        let vocab = model.config.vocab;
        for (i, (seq, ad)) in seqs.iter().zip(adapters).enumerate() {
            let mut cache = KvCache::new(&model.config);
            let alone = model.forward_cached(&[seq], std::slice::from_mut(&mut cache), ad);
            let alone_next = model.forward_cached(&[next[i]], std::slice::from_mut(&mut cache), ad);
            for (x, y) in together[i * vocab..(i + 1) * vocab].iter().zip(&alone) {
                assert!((x - y).abs() < 1e-9, "sequence {i}: {x} vs {y}");
            }
            for (x, y) in together_next[i * vocab..(i + 1) * vocab].iter().zip(&alone_next) {
                assert!((x - y).abs() < 1e-9, "sequence {i}, second step: {x} vs {y}");
            }
        }
        // The adapters matter: without them the first sequence's logits differ.
        let mut cache = KvCache::new(&model.config);
        let plain = model.forward_cached(&[seqs[0]], std::slice::from_mut(&mut cache), None);
        assert!(plain.iter().zip(&together[..vocab]).any(|(x, y)| (x - y).abs() > 1e-6));
    }
}
