//! Times the f32 GEMM libraries trex could train with, on the exact products of one LoRA training
//! step of SmolLM2-135M (batch 2 × 512 tokens, rank 16, all seven targets), and prints one table.
//!
//! Every candidate multiplies the same row-major operands with the same transposes the trainer
//! uses (`core/model/src/llama.rs`): a frozen linear layer's forward is `x · Wᵀ` and its input
//! gradient `dy · W`; the LM head runs both on every position. The candidates run in alternating
//! rounds (a shared VM drifts), and each shape's figure is the median over rounds. The last column
//! weights every shape by how often one training step runs it, which is what decides the step
//! time.
//!
//! faer is timed but is **not safe to train with** here: faer 0.22.6, 0.23.2 and 0.24.4 (with
//! `private-gemm-x86` 0.1.20 and 0.1.22) corrupt the heap on this AVX-512 CPU in debug and release
//! builds — one `matmul` of 96×130×200 (`a · bᵀ`) or of 1024×1536×576 (`a · b`), in a minimal program, followed by
//! freeing the operands aborts with "double free or corruption" — so its figures below are
//! timings only, and trex does not use it.
//!
//! ```sh
//! cd kernels/gemm-candidates
//! cargo run --release -- --rounds 5
//! cargo run --release --features x86-v4 -- --rounds 5     # gemm with its AVX-512 kernels
//! cargo run --release --features openblas -- --rounds 5   # needs libopenblas-dev
//! ```

use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Trans {
    N,
    T,
}

/// One product of the training step: `c[m×n] = op(a)[m×k] · op(b)[k×n]`, run `per_step` times.
#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    per_step: usize,
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
}

/// The products of one step of the benchmark shape (`trex-host bench train --seq 512 --batch 2
/// --rank 16`), with how many times the step runs each.
fn training_shapes(tokens: usize, layers: usize, rank: usize) -> Vec<Shape> {
    let (d, kv, ff, vocab) = (576, 192, 1536, 49_152);
    let s = |name, per_step, ta, tb, m, n, k| Shape { name, per_step, ta, tb, m, n, k };
    use Trans::{N, T};
    vec![
        // Frozen weights, forward (x · Wᵀ) and input gradient (dy · W).
        s("q,o fwd", 2 * layers, N, T, tokens, d, d),
        s("k,v fwd", 2 * layers, N, T, tokens, kv, d),
        s("gate,up fwd", 2 * layers, N, T, tokens, ff, d),
        s("down fwd", layers, N, T, tokens, d, ff),
        s("q,o dx", 2 * layers, N, N, tokens, d, d),
        s("k,v dx", 2 * layers, N, N, tokens, d, kv),
        s("gate,up dx", 2 * layers, N, N, tokens, d, ff),
        s("down dx", layers, N, N, tokens, ff, d),
        s("lm head fwd", 1, N, T, tokens, vocab, d),
        s("lm head dx", 1, N, N, tokens, d, vocab),
        // LoRA: x · Aᵀ (thin), and the gradient of A (rank × in, summed over tokens).
        s("lora xa", 4 * layers, N, T, tokens, rank, d),
        s("lora dA", 4 * layers, T, N, rank, d, tokens),
    ]
}

/// A GEMM library under test.
trait Candidate {
    fn name(&self) -> String;
    /// `c = op(a) · op(b)`, overwriting `c`; all operands row-major and contiguous.
    fn run(&self, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]);
}

fn strides(t: Trans, rows: usize, cols: usize) -> (isize, isize) {
    // (row stride, column stride) of op(x) where op(x) is rows×cols.
    match t {
        Trans::N => (cols as isize, 1),
        Trans::T => (1, rows as isize),
    }
}

struct GemmCrate {
    threads: usize,
}

impl Candidate for GemmCrate {
    fn name(&self) -> String {
        if cfg!(feature = "x86-v4") { "gemm 0.19 (x86-v4)".into() } else { "gemm 0.19".into() }
    }
    fn run(&self, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (a_rs, a_cs) = strides(s.ta, s.m, s.k);
        let (b_rs, b_cs) = strides(s.tb, s.k, s.n);
        let par = if self.threads > 1 { gemm::Parallelism::Rayon(self.threads) } else { gemm::Parallelism::None };
        assert!(a.len() >= s.m * s.k && b.len() >= s.k * s.n && c.len() >= s.m * s.n);
        // SAFETY: the operands are contiguous and at least as long as the shape needs (asserted).
        unsafe {
            gemm::gemm(
                s.m,
                s.n,
                s.k,
                c.as_mut_ptr(),
                1,
                s.n as isize,
                false,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    }
}

struct Faer {
    threads: usize,
}

impl Candidate for Faer {
    fn name(&self) -> String {
        "faer 0.24".into()
    }
    fn run(&self, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
        use faer::{Accum, MatMut, MatRef, Par};
        let lhs = match s.ta {
            Trans::N => MatRef::from_row_major_slice(&a[..s.m * s.k], s.m, s.k),
            Trans::T => MatRef::from_row_major_slice(&a[..s.m * s.k], s.k, s.m).transpose(),
        };
        let rhs = match s.tb {
            Trans::N => MatRef::from_row_major_slice(&b[..s.k * s.n], s.k, s.n),
            Trans::T => MatRef::from_row_major_slice(&b[..s.k * s.n], s.n, s.k).transpose(),
        };
        let dst = MatMut::from_row_major_slice_mut(&mut c[..s.m * s.n], s.m, s.n);
        let par = if self.threads > 1 { Par::rayon(self.threads) } else { Par::Seq };
        faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0, par);
    }
}

struct MatrixMultiply;

impl Candidate for MatrixMultiply {
    fn name(&self) -> String {
        "matrixmultiply 0.3".into()
    }
    fn run(&self, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (a_rs, a_cs) = strides(s.ta, s.m, s.k);
        let (b_rs, b_cs) = strides(s.tb, s.k, s.n);
        assert!(a.len() >= s.m * s.k && b.len() >= s.k * s.n && c.len() >= s.m * s.n);
        // SAFETY: as for `GemmCrate`.
        unsafe {
            matrixmultiply::sgemm(
                s.m,
                s.k,
                s.n,
                1.0,
                a.as_ptr(),
                a_rs,
                a_cs,
                b.as_ptr(),
                b_rs,
                b_cs,
                0.0,
                c.as_mut_ptr(),
                s.n as isize,
                1,
            )
        }
    }
}

#[cfg(feature = "openblas")]
mod openblas {
    use super::{Candidate, Shape, Trans};

    #[link(name = "openblas")]
    unsafe extern "C" {
        fn cblas_sgemm(
            order: i32,
            ta: i32,
            tb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        fn openblas_set_num_threads(n: i32);
        fn openblas_get_corename() -> *const std::ffi::c_char;
    }

    pub struct OpenBlas;

    impl OpenBlas {
        pub fn new(threads: usize) -> Self {
            // SAFETY: plain calls into the library; the name is a static C string.
            let core = unsafe {
                openblas_set_num_threads(threads as i32);
                std::ffi::CStr::from_ptr(openblas_get_corename()).to_string_lossy().into_owned()
            };
            eprintln!("OpenBLAS kernels: {core}");
            OpenBlas
        }
    }

    impl Candidate for OpenBlas {
        fn name(&self) -> String {
            // SAFETY: as in `new`.
            let core = unsafe { std::ffi::CStr::from_ptr(openblas_get_corename()).to_string_lossy().into_owned() };
            format!("OpenBLAS ({core})")
        }
        fn run(&self, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
            const ROW_MAJOR: i32 = 101;
            let t = |t: Trans| if t == Trans::N { 111 } else { 112 };
            let lda = if s.ta == Trans::N { s.k } else { s.m };
            let ldb = if s.tb == Trans::N { s.n } else { s.k };
            assert!(a.len() >= s.m * s.k && b.len() >= s.k * s.n && c.len() >= s.m * s.n);
            // SAFETY: as for the other candidates; cblas reads and writes only within the shape.
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    t(s.ta),
                    t(s.tb),
                    s.m as i32,
                    s.n as i32,
                    s.k as i32,
                    1.0,
                    a.as_ptr(),
                    lda as i32,
                    b.as_ptr(),
                    ldb as i32,
                    0.0,
                    c.as_mut_ptr(),
                    s.n as i32,
                )
            }
        }
    }
}

/// Deterministic values in [-1, 1).
fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Median seconds of one product, repeated until at least `min_s` has passed (and at least twice).
fn time_one(cand: &dyn Candidate, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], min_s: f64) -> f64 {
    cand.run(s, a, b, c); // warm-up: packing buffers, thread pool, caches
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 2 || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        cand.run(s, black_box(a), black_box(b), c);
        black_box(&mut *c);
        times.push(t.elapsed().as_secs_f64());
    }
    median(&mut times)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() {
    let mut rounds = 3usize;
    let mut threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut min_s = 0.25f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| {
            args.next().unwrap_or_else(|| panic!("{flag} needs a value")).parse::<f64>().unwrap_or_else(|e| {
                eprintln!("{flag}: {e}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--rounds" => rounds = value("--rounds") as usize,
            "--threads" => threads = value("--threads") as usize,
            "--min-seconds" => min_s = value("--min-seconds"),
            "-h" | "--help" => {
                println!(
                    "trex-gemm-candidates [--rounds N (3)] [--threads N (all cores)] [--min-seconds S per shape (0.25)]\n\
                     Times gemm, faer, matrixmultiply (and OpenBLAS with --features openblas) on the products\n\
                     of one LoRA training step of SmolLM2-135M at 2 × 512 tokens, rank 16."
                );
                return;
            }
            other => {
                eprintln!("unknown argument {other:?} (see --help)");
                std::process::exit(2)
            }
        }
    }
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("the rayon pool starts once");
    // SAFETY: set before any matrixmultiply call starts its threads; nothing else reads it.
    unsafe { std::env::set_var("MATMUL_NUM_THREADS", threads.to_string()) };

    #[allow(unused_mut)]
    let mut cands: Vec<Box<dyn Candidate>> =
        vec![Box::new(GemmCrate { threads }), Box::new(Faer { threads }), Box::new(MatrixMultiply)];
    #[cfg(feature = "openblas")]
    cands.push(Box::new(openblas::OpenBlas::new(threads)));

    let shapes = training_shapes(1024, 30, 16);
    let biggest = |f: fn(&Shape) -> usize| shapes.iter().map(f).max().unwrap_or(0);
    let a = fill(biggest(|s| s.m * s.k), 1);
    let b = fill(biggest(|s| s.k * s.n), 2);
    let mut c = vec![0f32; biggest(|s| s.m * s.n)];
    let mut reference = vec![0f32; c.len()];

    // Agreement first: every candidate against the first, on every shape.
    let mut worst = vec![0f32; cands.len()];
    for s in &shapes {
        cands[0].run(s, &a, &b, &mut reference);
        for (i, cand) in cands.iter().enumerate().skip(1) {
            cand.run(s, &a, &b, &mut c);
            let n = s.m * s.n;
            let scale = reference[..n].iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
            let err = reference[..n].iter().zip(&c[..n]).fold(0f32, |m, (r, x)| m.max((r - x).abs())) / scale;
            worst[i] = worst[i].max(err);
        }
    }

    // times[cand][shape] over rounds
    let mut times = vec![vec![Vec::new(); shapes.len()]; cands.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (ci, cand) in cands.iter().enumerate() {
            for (si, s) in shapes.iter().enumerate() {
                times[ci][si].push(time_one(cand.as_ref(), s, &a, &b, &mut c, min_s));
            }
        }
    }

    let flop = |s: &Shape| 2.0 * (s.m * s.n * s.k) as f64;
    println!("GFLOP/s per product (median of {rounds} rounds, {threads} threads); the step column weights each product by its count in one step");
    print!("| product | m × n × k | op | per step |");
    for cand in &cands {
        print!(" {} |", cand.name());
    }
    println!();
    print!("|---|---|---|---|");
    for _ in &cands {
        print!("---|");
    }
    println!();
    let med: Vec<Vec<f64>> = times.iter().map(|per| per.iter().map(|t| median(&mut t.clone())).collect()).collect();
    for (si, s) in shapes.iter().enumerate() {
        let op = format!("{:?}{:?}", s.ta, s.tb);
        print!("| {} | {} × {} × {} | {op} | {} |", s.name, s.m, s.n, s.k, s.per_step);
        for m in &med {
            print!(" {:.1} |", flop(s) / m[si] / 1e9);
        }
        println!();
    }
    print!("| **one step's products** | | | |");
    for m in &med {
        let secs: f64 = shapes.iter().zip(m).map(|(s, t)| s.per_step as f64 * t).sum();
        let gflop: f64 = shapes.iter().map(|s| s.per_step as f64 * flop(s)).sum::<f64>() / 1e9;
        print!(" **{:.1}** ({:.2} s) |", gflop / secs, secs);
    }
    println!();
    print!("| max relative difference from {} | | | |", cands[0].name());
    for w in &worst {
        print!(" {w:.1e} |");
    }
    println!();
}
