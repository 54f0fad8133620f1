//! Test helpers: seeded random inputs, closeness checks, and finite-difference gradients.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// `n` values uniform in [-1, 1), seeded.
pub fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Panics with the worst element when `got` and `want` differ by more than `tol`
/// (absolute, or relative for values larger than 1).
pub fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        // NaN counts as the worst error.
        if err.is_nan() || err > worst.1 {
            worst = (i, err);
        }
    }
    assert!(
        worst.1 <= tol,
        "{what}: element {} is {} but should be {} (error {:.3e} > {tol:.1e})",
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.1
    );
}

/// Central finite-difference gradient of the scalar `f` at `x`.
pub fn numeric_grad(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// `sum(a * b)`: turns a tensor output into a scalar loss with a fixed random upstream gradient.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
