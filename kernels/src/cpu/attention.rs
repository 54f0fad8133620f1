//! Causal grouped-query attention for one sequence, forward and backward.
//!
//! Layouts: `q` is [seq, heads·head_dim] (the output of the query projection), `k` and `v` are
//! [seq, kv_heads·head_dim]; query head `h` reads key/value head `h / (heads / kv_heads)`. The
//! forward pass keeps the attention probabilities ([heads, seq, seq]) for the backward pass.
//! Heads run in parallel; each head's products go through the `gemm` crate on one thread.
//! Generation's cached attention reads the key/value cache in place, one (position, head) pair
//! at a time, since a decoding step has one query row per sequence.

use rayon::prelude::*;

use super::matmul::{Trans, matmul_strided};
use crate::Real;

/// The dimensions of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query positions (and key positions, for training: the whole sequence).
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
}

impl AttentionShape {
    fn group(&self) -> usize {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "attention: {} heads cannot share {} key/value heads",
            self.heads,
            self.kv_heads
        );
        self.heads / self.kv_heads
    }
}

/// Write each head's [rows, d] output into its columns of `out` ([rows, heads·d]).
fn scatter_heads<T: Real>(per_head: &[Vec<T>], rows: usize, heads: usize, d: usize, out: &mut [T]) {
    for (h, oh) in per_head.iter().enumerate() {
        for t in 0..rows {
            out[(t * heads + h) * d..(t * heads + h + 1) * d].copy_from_slice(&oh[t * d..(t + 1) * d]);
        }
    }
}

/// Rows of queries processed together; each block only computes the key columns it can see,
/// so the masked upper triangle of the score matrix is (mostly) never computed.
const BLOCK: usize = 64;

/// Softmax of a score row over its first `visible` columns (in place), zeros after.
fn causal_softmax_row<T: Real>(row: &mut [T], visible: usize) {
    let i = visible - 1;
    let max = row[..=i].iter().copied().fold(T::neg_infinity(), T::max);
    let mut sum = T::zero();
    for x in &mut row[..=i] {
        *x = (*x - max).exp();
        sum = sum + *x;
    }
    let inv = sum.recip();
    row[..=i].iter_mut().for_each(|x| *x = *x * inv);
    row[i + 1..].iter_mut().for_each(|x| *x = T::zero());
}

/// `out = softmax(scale·q·kᵀ + causal mask)·v`; `probs` receives the [heads, seq, seq]
/// probabilities (zero above the diagonal).
pub fn attention_forward<T: Real>(shape: AttentionShape, q: &[T], k: &[T], v: &[T], out: &mut [T], probs: &mut [T]) {
    let AttentionShape { seq, heads, kv_heads, head_dim: d } = shape;
    let group = shape.group();
    assert_eq!(q.len(), seq * heads * d, "attention: q is not [seq, heads·head_dim]");
    assert_eq!(k.len(), seq * kv_heads * d, "attention: k is not [seq, kv_heads·head_dim]");
    assert_eq!(v.len(), k.len(), "attention: v and k differ in size");
    assert_eq!(out.len(), q.len());
    assert_eq!(probs.len(), heads * seq * seq);
    let scale = T::from_f64(1.0 / (d as f64).sqrt()).expect("finite");
    let (ldq, ldk) = (heads * d, kv_heads * d);
    let per_head: Vec<Vec<T>> = probs
        .par_chunks_mut(seq * seq)
        .enumerate()
        .map(|(h, p)| {
            let g = h / group;
            let (qh, kh, vh) = (&q[h * d..], &k[g * d..], &v[g * d..]);
            let mut oh = vec![T::zero(); seq * d];
            for r0 in (0..seq).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(seq);
                let rows = r1 - r0;
                matmul_strided(
                    Trans::N,
                    Trans::T,
                    rows,
                    r1,
                    d,
                    scale,
                    &qh[r0 * ldq..],
                    ldq,
                    kh,
                    ldk,
                    T::zero(),
                    &mut p[r0 * seq..],
                    seq,
                );
                for i in r0..r1 {
                    causal_softmax_row(&mut p[i * seq..(i + 1) * seq], i + 1);
                }
                matmul_strided(
                    Trans::N,
                    Trans::N,
                    rows,
                    d,
                    r1,
                    T::one(),
                    &p[r0 * seq..],
                    seq,
                    vh,
                    ldk,
                    T::zero(),
                    &mut oh[r0 * d..],
                    d,
                );
            }
            oh
        })
        .collect();
    scatter_heads(&per_head, seq, heads, d, out);
}

/// Gradients of [`attention_forward`] with respect to `q`, `k` and `v` (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    shape: AttentionShape,
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    dout: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let AttentionShape { seq, heads, kv_heads, head_dim: d } = shape;
    let group = shape.group();
    assert_eq!(dout.len(), seq * heads * d);
    assert!(dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len());
    let scale = T::from_f64(1.0 / (d as f64).sqrt()).expect("finite");
    let (ldq, ldk) = (heads * d, kv_heads * d);
    // Per query head: (dq_h, dk_h, dv_h), each [seq, d]; dk/dv are summed per key/value head below.
    let grads: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            let p = &probs[h * seq * seq..(h + 1) * seq * seq];
            let (qh, kh, vh, doh) = (&q[h * d..], &k[g * d..], &v[g * d..], &dout[h * d..]);
            let (mut dqh, mut dkh, mut dvh) =
                (vec![T::zero(); seq * d], vec![T::zero(); seq * d], vec![T::zero(); seq * d]);
            let mut ds = vec![T::zero(); BLOCK * seq];
            for r0 in (0..seq).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(seq);
                let rows = r1 - r0;
                // dV[0..r1] += P[r0..r1, 0..r1]ᵀ·dO[r0..r1]
                matmul_strided(
                    Trans::T,
                    Trans::N,
                    r1,
                    d,
                    rows,
                    T::one(),
                    &p[r0 * seq..],
                    seq,
                    &doh[r0 * ldq..],
                    ldq,
                    T::one(),
                    &mut dvh,
                    d,
                );
                // dP = dO[r0..r1]·V[0..r1]ᵀ, then dS = P∘(dP − rowsum(dP∘P))·scale on the visible part.
                matmul_strided(
                    Trans::N,
                    Trans::T,
                    rows,
                    r1,
                    d,
                    T::one(),
                    &doh[r0 * ldq..],
                    ldq,
                    vh,
                    ldk,
                    T::zero(),
                    &mut ds,
                    r1,
                );
                for i in r0..r1 {
                    let (pr, dr) = (&p[i * seq..i * seq + r1], &mut ds[(i - r0) * r1..(i - r0 + 1) * r1]);
                    let dot = pr[..=i].iter().zip(&dr[..=i]).map(|(&a, &b)| a * b).sum::<T>();
                    for j in 0..=i {
                        dr[j] = pr[j] * (dr[j] - dot) * scale;
                    }
                    dr[i + 1..].iter_mut().for_each(|x| *x = T::zero());
                }
                // dQ[r0..r1] = dS·K[0..r1] ; dK[0..r1] += dSᵀ·Q[r0..r1]
                matmul_strided(
                    Trans::N,
                    Trans::N,
                    rows,
                    d,
                    r1,
                    T::one(),
                    &ds,
                    r1,
                    kh,
                    ldk,
                    T::zero(),
                    &mut dqh[r0 * d..],
                    d,
                );
                matmul_strided(
                    Trans::T,
                    Trans::N,
                    r1,
                    d,
                    rows,
                    T::one(),
                    &ds,
                    r1,
                    &qh[r0 * ldq..],
                    ldq,
                    T::one(),
                    &mut dkh,
                    d,
                );
            }
            (dqh, dkh, dvh)
        })
        .collect();
    dk.iter_mut().for_each(|x| *x = T::zero());
    dv.iter_mut().for_each(|x| *x = T::zero());
    for (h, (dqh, dkh, dvh)) in grads.iter().enumerate() {
        let g = h / group;
        for t in 0..seq {
            dq[(t * heads + h) * d..(t * heads + h + 1) * d].copy_from_slice(&dqh[t * d..(t + 1) * d]);
            let kv = (t * kv_heads + g) * d;
            for i in 0..d {
                dk[kv + i] = dk[kv + i] + dkh[t * d + i];
                dv[kv + i] = dv[kv + i] + dvh[t * d + i];
            }
        }
    }
}

/// Attention for `new` query positions that continue a sequence of `past` cached positions
/// (generation): `q` is [new, heads·head_dim]; `k` and `v` hold all `past + new` positions
/// ([past + new, kv_heads·head_dim]); query `i` sees keys `0..=past + i`. No probabilities are
/// kept (there is no backward pass in generation).
#[allow(clippy::too_many_arguments)]
pub fn attention_cached<T: Real>(
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    past: usize,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &mut [T],
) {
    let d = head_dim;
    let group = AttentionShape { seq: 0, heads, kv_heads, head_dim }.group();
    let new = q.len() / (heads * d);
    let total = past + new;
    assert_eq!(k.len(), total * kv_heads * d, "attention_cached: k must hold past + new positions");
    assert_eq!(v.len(), k.len());
    assert_eq!(out.len(), q.len());
    let scale = T::from_f64(1.0 / (d as f64).sqrt()).expect("finite");
    let ldk = kv_heads * d;
    // One (query position, head) pair: its scores against the visible keys, read in place from
    // the cache (no per-head copy of it), softmax, then the weighted sum of the values.
    let one = |idx: usize, o: &mut [T], scores: &mut Vec<T>| {
        let (i, h) = (idx / heads, idx % heads);
        let g = h / group;
        let qv = &q[idx * d..(idx + 1) * d];
        let visible = past + i + 1;
        scores.clear();
        scores.extend((0..visible).map(|t| dot8(qv, &k[t * ldk + g * d..t * ldk + (g + 1) * d]) * scale));
        causal_softmax_row(scores, visible);
        o.iter_mut().for_each(|x| *x = T::zero());
        for (t, &p) in scores.iter().enumerate() {
            for (a, &b) in o.iter_mut().zip(&v[t * ldk + g * d..t * ldk + (g + 1) * d]) {
                *a = *a + p * b;
            }
        }
    };
    // Threads pay off only on long prefills; decoding one token is a few microseconds of work.
    if new * heads * total * d >= 1 << 20 {
        out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (idx, o)| one(idx, o, scores));
    } else {
        let mut scores = Vec::with_capacity(total);
        out.chunks_mut(d).enumerate().for_each(|(idx, o)| one(idx, o, &mut scores));
    }
}

/// `a · b` with eight partial sums, so the compiler can keep them in vector lanes.
fn dot8<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut tail = T::zero();
    for (&x, &y) in ra.iter().zip(rb) {
        tail = tail + x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testing::*;

    fn naive(shape: AttentionShape, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
        let AttentionShape { seq, heads, kv_heads, head_dim: d } = shape;
        let group = heads / kv_heads;
        let mut out = vec![0.0; seq * heads * d];
        for h in 0..heads {
            let g = h / group;
            for i in 0..seq {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d).map(|c| q[(i * heads + h) * d + c] * k[(j * kv_heads + g) * d + c]).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - max).exp() / z;
                    for c in 0..d {
                        out[(i * heads + h) * d + c] += p * v[(j * kv_heads + g) * d + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_naive_and_backward_matches_finite_differences() {
        let shape = AttentionShape { seq: 5, heads: 4, kv_heads: 2, head_dim: 3 };
        let (nq, nk) = (5 * 4 * 3, 5 * 2 * 3);
        let (q, k, v, up) = (random(nq, 1), random(nk, 2), random(nk, 3), random(nq, 4));
        let fwd = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut out = vec![0.0; nq];
            let mut probs = vec![0.0; 4 * 25];
            attention_forward(shape, q, k, v, &mut out, &mut probs);
            (out, probs)
        };
        let (out, probs) = fwd(&q, &k, &v);
        assert_close(&out, &naive(shape, &q, &k, &v), 1e-12, "forward");
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nk], vec![0.0; nk]);
        attention_backward(shape, &q, &k, &v, &probs, &up, &mut dq, &mut dk, &mut dv);
        assert_close(&dq, &numeric_grad(&q, |q| dot(&fwd(q, &k, &v).0, &up)), 1e-7, "dq");
        assert_close(&dk, &numeric_grad(&k, |k| dot(&fwd(&q, k, &v).0, &up)), 1e-7, "dk");
        assert_close(&dv, &numeric_grad(&v, |v| dot(&fwd(&q, &k, v).0, &up)), 1e-7, "dv");
    }

    #[test]
    fn blocked_attention_over_many_blocks_matches_naive() {
        // Longer than several blocks, and not a multiple of the block size.
        let seq = 2 * BLOCK + 7;
        let shape = AttentionShape { seq, heads: 3, kv_heads: 1, head_dim: 4 };
        let (nq, nk) = (seq * 12, seq * 4);
        let (q, k, v, up) = (random(nq, 5), random(nk, 6), random(nk, 7), random(nq, 8));
        let mut out = vec![0.0; nq];
        let mut probs = vec![1.0; 3 * seq * seq];
        attention_forward(shape, &q, &k, &v, &mut out, &mut probs);
        assert_close(&out, &naive(shape, &q, &k, &v), 1e-12, "forward");
        // Backward against a slower reference: the same formulas on one block covering everything.
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nk], vec![0.0; nk]);
        attention_backward(shape, &q, &k, &v, &probs, &up, &mut dq, &mut dk, &mut dv);
        let eps = 1e-6;
        for (i, which) in [(17usize, 0), (seq * 12 - 3, 0), (5, 1), (nk - 1, 1), (9, 2), (nk / 2, 2)] {
            let f = |q: &[f64], k: &[f64], v: &[f64]| dot(&naive(shape, q, k, v), &up);
            let (mut a, mut b) = ([q.clone(), k.clone(), v.clone()], [q.clone(), k.clone(), v.clone()]);
            a[which][i] += eps;
            b[which][i] -= eps;
            let num = (f(&a[0], &a[1], &a[2]) - f(&b[0], &b[1], &b[2])) / (2.0 * eps);
            let got = [&dq, &dk, &dv][which][i];
            assert!((num - got).abs() < 1e-6 * num.abs().max(1.0), "input {which} element {i}: {got} vs {num}");
        }
    }

    #[test]
    fn cached_attention_continues_the_full_pass() {
        let shape = AttentionShape { seq: 6, heads: 4, kv_heads: 2, head_dim: 3 };
        let (q, k, v) = (random(6 * 12, 1), random(6 * 6, 2), random(6 * 6, 3));
        let mut full = vec![0.0; 6 * 12];
        attention_forward(shape, &q, &k, &v, &mut full, &mut vec![0.0; 4 * 36]);
        // The last 2 positions, with 4 cached before them.
        let mut tail = vec![0.0; 2 * 12];
        attention_cached(4, 2, 3, 4, &q[4 * 12..], &k, &v, &mut tail);
        assert_close(&tail, &full[4 * 12..], 1e-12, "cached");
    }
}
