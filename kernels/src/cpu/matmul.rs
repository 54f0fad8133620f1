//! Matrix products through the `gemm` crate (multi-threaded with rayon), or through the system
//! OpenBLAS for the large multi-threaded f32 ones when `TREX_BLAS=openblas` (see `blas`).

use crate::Real;

/// Whether an operand is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trans {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// `c = beta * c + alpha * op(a) · op(b)` with `op(a)`: m×k, `op(b)`: k×n, `c`: m×n, all
/// row-major and contiguous. `a` is stored m×k (`N`) or k×m (`T`); `b` is k×n (`N`) or n×k (`T`).
/// When `beta` is zero, `c` is overwritten (its old contents are never read). Large products
/// use every rayon thread.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let threads = if m * n * k >= 1 << 18 { rayon::current_num_threads() } else { 1 };
    let (lda, ldb) = (if ta == Trans::N { k } else { m }, if tb == Trans::N { n } else { k });
    gemm_checked(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, n, threads);
}

/// Like [`matmul`] but on the calling thread only (for use inside a parallel loop).
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial<T: Real>(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let (lda, ldb) = (if ta == Trans::N { k } else { m }, if tb == Trans::N { n } else { k });
    gemm_checked(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, n, 1);
}

/// [`matmul`] on strided operands, on the calling thread: `lda`, `ldb`, `ldc` are the row
/// strides (in elements) of `a`, `b` and `c` as stored. Lets callers multiply a head's columns
/// of a [tokens, heads·head_dim] matrix, or write into a block of a larger matrix, without copies.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided<T: Real>(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    gemm_checked(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, 1);
}

/// The one call into the `gemm` crate, with every bound it relies on checked first.
#[allow(clippy::too_many_arguments)]
fn gemm_checked<T: Real>(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    beta: T,
    c: &mut [T],
    ldc: usize,
    threads: usize,
) {
    let (a_rows, a_cols) = if ta == Trans::N { (m, k) } else { (k, m) };
    let (b_rows, b_cols) = if tb == Trans::N { (k, n) } else { (n, k) };
    let need = |rows: usize, cols: usize, ld: usize| if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols };
    assert!(lda >= a_cols && ldb >= b_cols && ldc >= n, "matmul: a row stride is shorter than its row");
    assert!(
        a.len() >= need(a_rows, a_cols, lda),
        "matmul: a has {} elements, needs {}",
        a.len(),
        need(a_rows, a_cols, lda)
    );
    assert!(
        b.len() >= need(b_rows, b_cols, ldb),
        "matmul: b has {} elements, needs {}",
        b.len(),
        need(b_rows, b_cols, ldb)
    );
    assert!(c.len() >= need(m, n, ldc), "matmul: c has {} elements, needs {}", c.len(), need(m, n, ldc));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for x in &mut c[i * ldc..i * ldc + n] {
                *x = if beta == T::zero() { T::zero() } else { *x * beta };
            }
        }
        return;
    }
    if threads > 1
        && let (Some(a32), Some(b32), Some(alpha32), Some(beta32)) =
            (T::as_f32(a), T::as_f32(b), alpha.to_f32(), beta.to_f32())
        && let Some(c32) = T::as_f32_mut(c)
        && super::blas::sgemm(ta == Trans::T, tb == Trans::T, m, n, k, alpha32, a32, lda, b32, ldb, beta32, c32, ldc)
    {
        return;
    }
    // (column stride, row stride) of op(x) as stored.
    let (a_cs, a_rs) = if ta == Trans::N { (1isize, lda as isize) } else { (lda as isize, 1isize) };
    let (b_cs, b_rs) = if tb == Trans::N { (1isize, ldb as isize) } else { (ldb as isize, 1isize) };
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let read_dst = beta != T::zero();
    // `gemm` computes dst = alpha * dst + beta * lhs·rhs (its naming: alpha scales dst).
    let dst_scale = if read_dst { beta } else { T::zero() };
    #[allow(unsafe_code)]
    // SAFETY: the asserts above check that every element `gemm` addresses lies in its slice:
    // op(a) is m×k and element (i, p) sits at i·rs + p·cs ≤ (rows−1)·ld + cols − 1 < a.len(),
    // likewise for b (k×n) and c (m×n, row stride ldc ≥ n so rows do not overlap). `c` is a
    // unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            read_dst,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            dst_scale,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testing::{assert_close, random};

    fn naive(ta: Trans, tb: Trans, m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let x = if ta == Trans::N { a[i * k + p] } else { a[p * m + i] };
                    let y = if tb == Trans::N { b[p * n + j] } else { b[j * k + p] };
                    c[i * n + j] += x * y;
                }
            }
        }
        c
    }

    #[test]
    fn every_transpose_combination_matches_naive() {
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 9, 33), (64, 70, 48)] {
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    let a = random(m * k, 1);
                    let b = random(k * n, 2);
                    let mut c = random(m * n, 3);
                    let c0 = c.clone();
                    matmul(ta, tb, m, n, k, 0.5, &a, &b, 2.0, &mut c);
                    let want: Vec<f64> =
                        naive(ta, tb, m, n, k, &a, &b).iter().zip(&c0).map(|(p, c)| 0.5 * p + 2.0 * c).collect();
                    assert_close(&c, &want, 1e-12, &format!("{ta:?}{tb:?} {m}x{n}x{k}"));
                    let mut c = vec![f64::NAN; m * n];
                    matmul(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut c);
                    assert_close(&c, &naive(ta, tb, m, n, k, &a, &b), 1e-12, "beta = 0 ignores old contents");
                }
            }
        }
    }

    /// Large f32 products take the multi-threaded path (OpenBLAS under `TREX_BLAS=openblas`):
    /// every transpose combination, beta 0 over NaN and beta 2, against an f64 reference.
    #[test]
    fn large_f32_products_match_naive_on_every_backend() {
        let (m, n, k) = (67, 70, 64);
        assert!(m * n * k >= 1 << 18, "the shape must be large enough for the threaded path");
        for ta in [Trans::N, Trans::T] {
            for tb in [Trans::N, Trans::T] {
                let (a, b, c) = (random(m * k, 4), random(k * n, 5), random(m * n, 6));
                let f = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                let (a32, b32) = (f(&a), f(&b));
                let mut got = f(&c);
                matmul(ta, tb, m, n, k, 0.5f32, &a32, &b32, 2.0, &mut got);
                let want: Vec<f64> =
                    naive(ta, tb, m, n, k, &a, &b).iter().zip(&c).map(|(p, c)| 0.5 * p + 2.0 * c).collect();
                let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                let what = format!("{} {ta:?}{tb:?}", crate::cpu::blas_backend());
                assert_close(&got, &want, 1e-4, &what);
                let mut got = vec![f32::NAN; m * n];
                matmul(ta, tb, m, n, k, 1.0f32, &a32, &b32, 0.0, &mut got);
                let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                assert_close(&got, &naive(ta, tb, m, n, k, &a, &b), 1e-4, &format!("{what}, beta = 0"));
            }
        }
    }

    /// Where OpenBLAS is in use, its strided products agree with the `gemm` crate's.
    #[test]
    fn openblas_and_gemm_agree_on_strided_products() {
        let (m, n, k, lda, ldb, ldc) = (80, 72, 60, 75, 90, 100);
        let a: Vec<f32> = random(m * lda, 7).iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = random(k * ldb, 8).iter().map(|&v| v as f32).collect();
        let c0: Vec<f32> = random(m * ldc, 9).iter().map(|&v| v as f32).collect();
        let (mut threaded, mut serial) = (c0.clone(), c0.clone());
        gemm_checked(Trans::N, Trans::N, m, n, k, 1.5, &a, lda, &b, ldb, 0.5, &mut threaded, ldc, 2);
        gemm_checked(Trans::N, Trans::N, m, n, k, 1.5, &a, lda, &b, ldb, 0.5, &mut serial, ldc, 1);
        let d = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        assert_close(&d(&threaded), &d(&serial), 1e-4, &crate::cpu::blas_backend());
        for i in 0..m {
            assert_eq!(
                threaded[i * ldc + n..(i + 1) * ldc],
                c0[i * ldc + n..(i + 1) * ldc],
                "row {i}: padding written"
            );
        }
    }

    #[test]
    fn strided_operands_match_contiguous() {
        // Multiply column blocks of wider matrices and write into a block of a larger one.
        let (m, n, k) = (5, 4, 3);
        let (lda, ldb, ldc) = (7, 9, 6);
        for ta in [Trans::N, Trans::T] {
            for tb in [Trans::N, Trans::T] {
                let (ar, ac) = if ta == Trans::N { (m, k) } else { (k, m) };
                let (br, bc) = if tb == Trans::N { (k, n) } else { (n, k) };
                let a_wide = random(ar * lda, 1);
                let b_wide = random(br * ldb, 2);
                let a: Vec<f64> = (0..ar).flat_map(|r| a_wide[r * lda..r * lda + ac].to_vec()).collect();
                let b: Vec<f64> = (0..br).flat_map(|r| b_wide[r * ldb..r * ldb + bc].to_vec()).collect();
                let mut c_wide = random(m * ldc, 3);
                let before = c_wide.clone();
                matmul_strided(ta, tb, m, n, k, 1.0, &a_wide, lda, &b_wide, ldb, 1.0, &mut c_wide, ldc);
                let want = naive(ta, tb, m, n, k, &a, &b);
                for i in 0..m {
                    for j in 0..ldc {
                        let expect = if j < n { before[i * ldc + j] + want[i * n + j] } else { before[i * ldc + j] };
                        assert!((c_wide[i * ldc + j] - expect).abs() < 1e-12, "{ta:?}{tb:?} ({i},{j})");
                    }
                }
            }
        }
    }

    #[test]
    fn f32_large_parallel_matches_f64() {
        let (m, n, k) = (96, 130, 200);
        let a = random(m * k, 4);
        let b = random(k * n, 5);
        let want = naive(Trans::N, Trans::T, m, n, k, &a, &b);
        let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
        let b32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
        let mut c = vec![0f32; m * n];
        matmul(Trans::N, Trans::T, m, n, k, 1.0, &a32, &b32, 0.0, &mut c);
        let c64: Vec<f64> = c.iter().map(|&x| x as f64).collect();
        assert_close(&c64, &want, 1e-4, "f32");
    }
}
