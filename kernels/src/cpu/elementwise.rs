//! Element-wise ops: SwiGLU, cross-entropy with ignored positions, small vector helpers.

use rayon::prelude::*;

use crate::Real;

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// `h = silu(g) * u`.
pub fn swiglu_forward<T: Real>(g: &[T], u: &[T], h: &mut [T]) {
    assert!(g.len() == u.len() && u.len() == h.len(), "swiglu: length mismatch");
    h.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((h, g), u)| {
        for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
            *h = g * sigmoid(g) * u;
        }
    });
}

/// Gradients of [`swiglu_forward`]: `dg = dh·u·σ(g)(1 + g(1−σ(g)))`, `du = dh·silu(g)`.
pub fn swiglu_backward<T: Real>(g: &[T], u: &[T], dh: &[T], dg: &mut [T], du: &mut [T]) {
    assert!(g.len() == u.len() && u.len() == dh.len() && dh.len() == dg.len() && dg.len() == du.len());
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(g.par_chunks(4096).zip(u.par_chunks(4096)).zip(dh.par_chunks(4096)))
        .for_each(|((dg, du), ((g, u), dh))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                du[i] = dh[i] * g[i] * s;
                dg[i] = dh[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
            }
        });
}

/// Cross-entropy over rows of `logits` ([rows, vocab]) against `targets` (a negative target
/// ignores the row). Returns the summed loss and the number of rows counted, and overwrites
/// `logits` with `grad_scale · (softmax − onehot)` (zero on ignored rows), so the caller needs no
/// second buffer of vocabulary size.
pub fn cross_entropy<T: Real>(logits: &mut [T], targets: &[i64], vocab: usize, grad_scale: T) -> (T, usize) {
    assert_eq!(logits.len(), targets.len() * vocab, "cross_entropy: logits are not [rows, vocab]");
    let parts: Vec<(T, usize)> = logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            if t < 0 {
                row.iter_mut().for_each(|x| *x = T::zero());
                return (T::zero(), 0);
            }
            let t = t as usize;
            assert!(t < vocab, "cross_entropy: target {t} is outside the vocabulary of {vocab}");
            let max = row.iter().copied().fold(T::neg_infinity(), T::max);
            // The target's logit relative to the max, taken before exponentiating: exp() of a
            // very negative value underflows to zero and its log would be -inf.
            let target_logit = row[t] - max;
            let mut sum = T::zero();
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum = sum + *x;
            }
            let loss = sum.ln() - target_logit;
            let inv = sum.recip();
            for x in row.iter_mut() {
                *x = *x * inv * grad_scale;
            }
            row[t] = row[t] - grad_scale;
            (loss, 1)
        })
        .collect();
    parts.into_iter().fold((T::zero(), 0), |(l, n), (a, b)| (l + a, n + b))
}

/// `y += x`.
pub fn add_assign<T: Real>(y: &mut [T], x: &[T]) {
    assert_eq!(y.len(), x.len());
    y.par_chunks_mut(8192).zip(x.par_chunks(8192)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = *y + x;
        }
    });
}

/// `y *= a`.
pub fn scale<T: Real>(y: &mut [T], a: T) {
    y.par_chunks_mut(8192).for_each(|y| y.iter_mut().for_each(|v| *v = *v * a));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testing::*;

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let n = 20;
        let (g, u, up) = (random(n, 1), random(n, 2), random(n, 3));
        let mut h = vec![0.0; n];
        swiglu_forward(&g, &u, &mut h);
        for i in 0..n {
            let silu = g[i] / (1.0 + (-g[i]).exp());
            assert!((h[i] - silu * u[i]).abs() < 1e-14);
        }
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&g, &u, &up, &mut dg, &mut du);
        let f = |g: &[f64], u: &[f64]| {
            let mut h = vec![0.0; n];
            swiglu_forward(g, u, &mut h);
            dot(&h, &up)
        };
        assert_close(&dg, &numeric_grad(&g, |g| f(g, &u)), 1e-7, "dg");
        assert_close(&du, &numeric_grad(&u, |u| f(&g, u)), 1e-7, "du");
    }

    #[test]
    fn cross_entropy_value_gradient_and_ignore() {
        let (rows, vocab) = (4, 7);
        let logits = random(rows * vocab, 1).iter().map(|x| 3.0 * x).collect::<Vec<_>>();
        let targets = [2i64, -100, 6, 0];
        let mut g = logits.clone();
        let (loss, n) = cross_entropy(&mut g, &targets, vocab, 0.5);
        assert_eq!(n, 3);
        let naive = |l: &[f64]| -> f64 {
            let mut total = 0.0;
            for (r, &t) in targets.iter().enumerate() {
                if t < 0 {
                    continue;
                }
                let row = &l[r * vocab..(r + 1) * vocab];
                let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                total += lse - row[t as usize];
            }
            total
        };
        assert!((loss - naive(&logits)).abs() < 1e-12);
        let num: Vec<f64> = numeric_grad(&logits, naive).iter().map(|x| 0.5 * x).collect();
        assert_close(&g, &num, 1e-7, "dlogits");
        assert!(g[vocab..2 * vocab].iter().all(|&x| x == 0.0), "ignored row has zero gradient");
    }

    #[test]
    fn cross_entropy_stays_finite_for_very_unlikely_targets() {
        // The target's probability underflows f32 (logit gap 200): the loss must be the gap.
        let mut logits = vec![0f32, 200.0, -5.0];
        let (loss, n) = cross_entropy(&mut logits, &[0], 3, 1.0);
        assert_eq!(n, 1);
        assert!((loss - 200.0).abs() < 1e-3, "{loss}");
        assert!(logits.iter().all(|x| x.is_finite()));
    }
}
