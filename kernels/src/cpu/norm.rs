//! RMSNorm, forward and backward (the weight is frozen, so only the input gradient is needed).

use rayon::prelude::*;

use crate::Real;

/// `y[r] = x[r] / sqrt(mean(x[r]²) + eps) * w` for each row `r` of width `d`; stores each row's
/// inverse RMS in `inv_rms` for the backward pass.
pub fn rms_norm_forward<T: Real>(x: &[T], w: &[T], eps: T, d: usize, y: &mut [T], inv_rms: &mut [T]) {
    assert_eq!(w.len(), d, "rms_norm: weight length {} != width {d}", w.len());
    assert_eq!(x.len(), y.len());
    assert_eq!(x.len(), inv_rms.len() * d);
    y.par_chunks_mut(d).zip(x.par_chunks(d)).zip(inv_rms.par_iter_mut()).for_each(|((y, x), r)| {
        let ms = x.iter().map(|&v| v * v).sum::<T>() / T::from_usize(d).expect("width fits the float");
        *r = (ms + eps).sqrt().recip();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * *r * w;
        }
    });
}

/// `dx` from `dy` for [`rms_norm_forward`]: `dx = r·(w∘dy) − x·r³·mean((w∘dy)∘x)`.
pub fn rms_norm_backward<T: Real>(x: &[T], w: &[T], inv_rms: &[T], dy: &[T], d: usize, dx: &mut [T]) {
    assert_eq!(x.len(), dy.len());
    assert_eq!(x.len(), dx.len());
    let df = T::from_usize(d).expect("width fits the float");
    dx.par_chunks_mut(d).zip(x.par_chunks(d)).zip(dy.par_chunks(d)).zip(inv_rms.par_iter()).for_each(
        |(((dx, x), dy), &r)| {
            let dot = x.iter().zip(dy).zip(w).map(|((&x, &dy), &w)| x * dy * w).sum::<T>();
            let coef = dot * r * r * r / df;
            for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                *dx = r * w * dy - x * coef;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testing::*;

    #[test]
    fn forward_matches_naive_and_backward_matches_finite_differences() {
        let (rows, d) = (3, 8);
        let x = random(rows * d, 1);
        let w = random(d, 2);
        let up = random(rows * d, 3);
        let fwd = |x: &[f64]| {
            let mut y = vec![0.0; rows * d];
            let mut r = vec![0.0; rows];
            rms_norm_forward(x, &w, 1e-5, d, &mut y, &mut r);
            (y, r)
        };
        let (y, r) = fwd(&x);
        for row in 0..rows {
            let xs = &x[row * d..(row + 1) * d];
            let rms = (xs.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
            let want: Vec<f64> = xs.iter().zip(&w).map(|(x, w)| x / rms * w).collect();
            assert_close(&y[row * d..(row + 1) * d], &want, 1e-12, "forward");
        }
        let mut dx = vec![0.0; rows * d];
        rms_norm_backward(&x, &w, &r, &up, d, &mut dx);
        let num = numeric_grad(&x, |x| dot(&fwd(x).0, &up));
        assert_close(&dx, &num, 1e-7, "dx");
    }
}
